//! The sluice binary under test as a child process: its config written to a temp dir,
//! stdout and stderr captured to `sluice.log` there, ready once `listen` accepts TCP.
//!
//! Cleanup: `Drop` SIGKILLs the process (and prints its log if the test is panicking). For
//! the cases where `Drop` never runs (abort, SIGKILL of the test process) a tiny `sh`
//! watchdog holds the read end of a pipe from this process and SIGKILLs sluice when that
//! pipe closes, and removes the temp dir. The harness only ever stops the watchdog with SIGKILL (it never sees EOF
//! then), so it cannot signal a pid that was recycled after sluice was reaped.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::client::Endpoint;
use super::config::SluiceConfig;
use super::process::{poll_until, signal};

/// A running sluice; see the module docs.
pub struct Sluice {
    child: Child,
    watchdog: Option<Child>,
    exit: Option<ExitStatus>,
    config: SluiceConfig,
    dir: TempDir,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);
/// `$1` is sluice's pid, `$2` the temp dir; runs only if the harness process vanished.
const WATCHDOG: &str = r#"read -r _; kill -KILL "$1" 2>/dev/null; rm -rf "$2""#;

impl Sluice {
    /// Starts the `sluice` binary of this test crate; panics with the log if it does not
    /// come up. Only in the test binary (Cargo sets `CARGO_BIN_EXE_sluice` for tests, not
    /// for examples: the demo uses [`Sluice::start_bin`]).
    pub fn start(config: &SluiceConfig) -> Sluice {
        Self::try_start(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Sluice::start`], but a sluice that exits or never listens is an `Err` holding
    /// its exit status and log (for tests of bad configs).
    pub fn try_start(config: &SluiceConfig) -> Result<Sluice, String> {
        let bin = option_env!("CARGO_BIN_EXE_sluice")
            .ok_or("CARGO_BIN_EXE_sluice is only set in tests: use Sluice::start_bin")?;
        Self::try_start_bin(Path::new(bin), config)
    }

    pub fn start_bin(bin: &Path, config: &SluiceConfig) -> Sluice {
        Self::try_start_bin(bin, config).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start_bin(bin: &Path, config: &SluiceConfig) -> Result<Sluice, String> {
        let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
        let dir = tempfile::Builder::new()
            .prefix("sluice-")
            .tempdir()
            .map_err(io("creating a temp dir"))?;
        let config_path = dir.path().join("sluice.toml");
        fs::write(&config_path, config.render()).map_err(io("writing sluice.toml"))?;
        let log = File::create(dir.path().join("sluice.log")).map_err(io("sluice.log"))?;
        let mut cmd = Command::new(bin);
        // Hermetic: the caller's SLUICE_* overrides must not leak into a test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLUICE_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--config")
            .arg(&config_path)
            .args(&config.args)
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("sluice.log"))?)
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let watchdog = Command::new("/bin/sh")
            .args(["-c", WATCHDOG, "sluice-watchdog"])
            .arg(child.id().to_string())
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok();
        let mut sluice = Sluice {
            child,
            watchdog,
            exit: None,
            config: config.clone(),
            dir,
        };
        match sluice.wait_listening() {
            Ok(()) => Ok(sluice),
            Err(e) => Err(format!("{e}\n--- sluice log ---\n{}", sluice.log())),
        }
    }

    /// Polls until `listen` accepts a TCP connection, failing early if the process exits.
    fn wait_listening(&mut self) -> Result<(), String> {
        let addr = self.config.listen;
        let ready = poll_until(START_TIMEOUT, POLL, || {
            if let Some(status) = self.try_exit_status() {
                return Some(Err(format!(
                    "sluice exited ({status}) before listening on {addr}"
                )));
            }
            let up = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
            up.then_some(Ok(()))
        });
        ready.unwrap_or_else(|| {
            Err(format!(
                "sluice not listening on {addr} after {START_TIMEOUT:?}"
            ))
        })
    }

    /// The client-facing address (`listen`).
    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }

    pub fn port(&self) -> u16 {
        self.config.listen.port()
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.config.metrics_listen
    }

    /// The config it was started with (or last given to [`Sluice::write_config`]).
    pub fn config(&self) -> &SluiceConfig {
        &self.config
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluice.toml")
    }

    /// Everything sluice wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default()
    }

    /// Polls the log until it contains `needle`; returns the log, panics on timeout.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        poll_until(timeout, POLL, || {
            Some(self.log()).filter(|l| l.contains(needle))
        })
        .unwrap_or_else(|| {
            panic!(
                "{needle:?} not in the log after {timeout:?}:\n{}",
                self.log()
            )
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (`"TERM"`, `"HUP"`, `"INT"`…); false if the process is gone.
    pub fn signal(&self, sig: &str) -> bool {
        self.exit.is_none() && signal(self.pid(), sig)
    }

    /// SIGTERM: drain and exit. Follow with [`Sluice::wait_exit`].
    pub fn terminate(&self) -> bool {
        self.signal("TERM")
    }

    /// SIGHUP: reload the config file.
    pub fn reload(&self) -> bool {
        self.signal("HUP")
    }

    /// SIGHUP, then waits (up to `timeout`) until the log reports the outcome: `Ok` once a
    /// new "configuration reloaded" line appeared, `Err` with the log if a new "not
    /// reloaded" line did (the old configuration stays in force). Panics if neither shows
    /// up in time.
    pub fn reload_and_wait(&self, timeout: Duration) -> Result<(), String> {
        let count = |needle: &str| self.log().matches(needle).count();
        let (reloaded, refused) = (
            count("configuration reloaded"),
            count("configuration not reloaded"),
        );
        assert!(self.reload(), "SIGHUP not delivered");
        let outcome = poll_until(timeout, POLL, || {
            if count("configuration reloaded") > reloaded {
                return Some(Ok(()));
            }
            (count("configuration not reloaded") > refused).then(|| Err(self.log()))
        });
        outcome.unwrap_or_else(|| {
            panic!(
                "no reload outcome in the log {timeout:?} after SIGHUP:\n{}",
                self.log()
            )
        })
    }

    /// Rewrites the config file (e.g. before [`Sluice::reload`]). Keep `listen` and
    /// `metrics_listen` from [`Sluice::config`] unless the test is about changing them.
    pub fn write_config(&mut self, config: &SluiceConfig) {
        fs::write(self.config_path(), config.render()).expect("rewriting sluice.toml");
        self.config = config.clone();
    }

    /// The exit status if sluice has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                self.stop_watchdog();
            }
        }
        self.exit
    }

    /// Waits up to `timeout` for sluice to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, POLL, || self.try_exit_status())
    }

    fn stop_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Endpoint for Sluice {
    fn socket_addr(&self) -> SocketAddr {
        self.addr()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.stop_watchdog();
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("--- sluice log ({}) ---\n{}", self.addr(), self.log());
        }
    }
}
