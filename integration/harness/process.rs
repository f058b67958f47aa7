//! Process and network helpers the harness is built from: free ports, signals, commands
//! run with a deadline, bounded polling, random tokens, and finding PostgreSQL's binaries.
//!
//! Everything here shells out to POSIX tools (`kill`, `id`) rather than calling libc, so the
//! test crate stays free of `unsafe`.

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it for a listener that
/// is closed again before returning), never the same one twice in this process, so tests
/// running in parallel cannot be handed the same port. Another process may still take it
/// in between; that race is accepted.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return port;
        }
    }
}

/// Whether `port` on 127.0.0.1 can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Whether this process runs as root (PostgreSQL then has to run as the `postgres` user).
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// Sends signal `sig` (a name such as `"TERM"`, `"HUP"`, `"KILL"`) to `pid` with the `kill`
/// command. Returns whether `kill` succeeded (false once the process is gone).
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs `cmd` to completion with stdin closed and stdout/stderr captured. Panics if it
/// cannot be started or has not finished within `timeout` (it is SIGKILLed first), so a
/// hung proxy fails the test instead of hanging it.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let what = describe(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(result) => result.unwrap_or_else(|e| panic!("waiting for {what}: {e}")),
        Err(_) => {
            // Not reaped yet (the thread is still waiting), so the pid is still ours.
            signal(pid, "KILL");
            panic!("{what} did not finish within {timeout:?}")
        }
    }
}

/// Program and arguments of `cmd`, without its environment (which may hold a password).
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Calls `probe` every `every` until it returns `Some` or `timeout` has passed. This is a
/// readiness check with a deadline, not a sleep used as synchronisation.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(every);
    }
}

/// 32 hex characters, different on every call; good enough for throwaway passwords.
pub fn random_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = String::with_capacity(32);
    for round in 0..2u64 {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u64(n);
        h.write_u64(round);
        h.write_u32(std::process::id());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// `name` found in a directory of `$PATH`.
pub fn which(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let name = name.as_ref();
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The directory holding PostgreSQL's server binaries (`initdb`, `postgres`, `pg_isready`):
/// where `initdb` on `$PATH` really lives, else the newest `/usr/lib/postgresql/<ver>/bin`
/// (Debian installs them only there).
pub fn pg_bindir() -> Option<PathBuf> {
    if let Some(initdb) = which("initdb") {
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        return real.parent().map(Path::to_path_buf);
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    versions
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("bin/initdb").is_file())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            Some((version?, e.path().join("bin")))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// A PostgreSQL tool (`psql`, `pgbench`, `pg_isready`…): from [`pg_bindir`] when it is
/// there (avoids Debian's Perl wrapper in /usr/bin), else from `$PATH`.
pub fn pg_tool(name: &str) -> PathBuf {
    static BINDIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let own = BINDIR.get_or_init(pg_bindir).as_ref().map(|d| d.join(name));
    match own {
        Some(p) if p.is_file() => p,
        _ => which(name).unwrap_or_else(|| PathBuf::from(name)),
    }
}
