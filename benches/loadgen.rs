//! Load generator for `benches/compare.sh`: the measurements pgbench cannot make. Each
//! subcommand talks to one target (sluice, PgBouncer or PostgreSQL itself) with tokio-postgres
//! and SCRAM-SHA-256, reads the target process's `/proc/PID` figures itself where `pid=` is
//! given, and prints one line of `key=value` pairs for the script to parse.
//!
//! ```text
//! loadgen --bench idle    port=P user=U password=W dbname=D clients=5000 [pid=PID] [parallel=50]
//! loadgen --bench login   port=P user=U password=W dbname=D seconds=5    [pid=PID] [parallel=32]
//! loadgen --bench tenants port=P password=W tenants=500 clients=2 seconds=5 [pid=PID] [per_db=10] [parallel=200]
//! ```
//!
//! - `idle`: opens `clients` authenticated connections (each login completes through
//!   ReadyForQuery), waits a second, and reports the target's VmRSS before, with all open, and
//!   after closing them all.
//! - `login`: for `seconds`, `parallel` workers each connect, run `SELECT 1` and disconnect,
//!   over and over; reports logins and the target's CPU ticks (user + system) meanwhile.
//! - `tenants`: tenant `i` (0-based) is user `t{i:04}` on database `tdb{i/per_db:03}`;
//!   `clients` connections per tenant each run `SELECT 1` in a loop for `seconds`; reports
//!   transactions, errors, latency, how many tenants got any transaction through, and how many
//!   clients had been waiting over a second for an answer when the time was up.
//!
//! `cargo test --all-targets` builds and runs this without `--bench`: it then returns at once.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, timeout_at};
use tokio_postgres::{Client, NoTls};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A many-tenants client whose query has waited this long when the run ends counts as stalled
/// (starved of a server connection, not merely caught in flight).
const STALLED: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        // Built and started by `cargo test --all-targets`: not a test, nothing to do.
        return ExitCode::SUCCESS;
    }
    let mut words = args
        .iter()
        .filter(|a| *a != "--bench" && !a.starts_with("--"));
    let Some(command) = words.next().cloned() else {
        eprintln!("usage: loadgen --bench idle|login|tenants key=value...");
        return ExitCode::FAILURE;
    };
    let mut opts = Opts::default();
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            eprintln!("loadgen: expected key=value, got {word:?}");
            return ExitCode::FAILURE;
        };
        opts.0.insert(key.to_string(), value.to_string());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.num("threads", 2))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match command.as_str() {
            "idle" => idle(&opts).await,
            "login" => login(&opts).await,
            "tenants" => tenants(&opts).await,
            other => Err(format!("unknown command {other:?}")),
        }
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Opts(HashMap<String, String>);

impl Opts {
    fn str(&self, key: &str, default: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        match self.0.get(key) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| panic!("{key}={v} is not a number")),
            None => default,
        }
    }

    fn pid(&self) -> Option<u32> {
        Some(self.num("pid", 0)).filter(|&p| p != 0)
    }

    fn config(&self, user: &str, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.str("host", "127.0.0.1"))
            .port(self.num("port", 6432))
            .user(user)
            .password(self.str("password", ""))
            .dbname(dbname)
            .application_name("sluice-loadgen")
            .connect_timeout(CONNECT_TIMEOUT);
        config
    }

    fn tenant_config(&self) -> tokio_postgres::Config {
        self.config(&self.str("user", "bench"), &self.str("dbname", "bench"))
    }
}

/// A connected client and the task driving its socket.
struct Conn {
    client: Client,
    driver: JoinHandle<()>,
}

/// An error with the server's SQLSTATE and message, which tokio-postgres' `Display` leaves out.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<Conn, String> {
    let started = Instant::now();
    let (client, connection) = timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| "login timed out".to_string())?
        .map_err(|e| format!("{} (after {:.1?})", describe(&e), started.elapsed()))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Conn { client, driver })
}

impl Conn {
    /// Sends Terminate and waits until the socket is closed.
    async fn close(self) {
        drop(self.client);
        let _ = timeout(Duration::from_secs(5), self.driver).await;
    }
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// utime + stime of `pid` (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let after = &stat[stat.rfind(')').ok_or("bad /proc stat")? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    match (field(14), field(15)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => Err(format!("bad /proc/{pid}/stat")),
    }
}

fn maybe_cpu(pid: Option<u32>) -> Result<u64, String> {
    pid.map_or(Ok(0), cpu_ticks)
}

/// Opens `count` connections with at most `parallel` logins in flight.
async fn open_many(
    configs: Vec<tokio_postgres::Config>,
    parallel: usize,
) -> (Vec<Option<Conn>>, Vec<String>) {
    let gate = Arc::new(Semaphore::new(parallel));
    let tasks: Vec<_> = configs
        .into_iter()
        .map(|config| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore");
                connect(&config).await
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(tasks.len());
    let mut errors = Vec::new();
    for task in tasks {
        match task.await.expect("connect task") {
            Ok(conn) => conns.push(Some(conn)),
            Err(e) => {
                errors.push(e);
                conns.push(None);
            }
        }
    }
    (conns, errors)
}

fn first_error(errors: &[String]) {
    if let Some(e) = errors.first() {
        eprintln!("loadgen: {} errors, first: {e}", errors.len());
    }
}

async fn idle(opts: &Opts) -> Result<String, String> {
    let clients: usize = opts.num("clients", 5000);
    let pid = opts.pid().ok_or("idle needs pid=")?;
    let config = opts.tenant_config();
    sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let started = Instant::now();
    let (conns, errors) = open_many(vec![config; clients], opts.num("parallel", 50)).await;
    let open_secs = started.elapsed().as_secs_f64();
    first_error(&errors);
    sleep(Duration::from_secs(1)).await;
    let open = rss_kib(pid)?;
    let opened = conns.iter().flatten().count();
    let closing: Vec<_> = conns
        .into_iter()
        .flatten()
        .map(|c| tokio::spawn(c.close()))
        .collect();
    for task in closing {
        let _ = task.await;
    }
    sleep(Duration::from_secs(1)).await;
    let closed = rss_kib(pid)?;
    Ok(format!(
        "opened={opened} failed={} rss_before_kib={before} rss_open_kib={open} \
         rss_closed_kib={closed} open_secs={open_secs:.2}",
        errors.len()
    ))
}

async fn login(opts: &Opts) -> Result<String, String> {
    let seconds: f64 = opts.num("seconds", 5.0);
    let parallel: usize = opts.num("parallel", 32);
    let pid = opts.pid();
    let config = Arc::new(opts.tenant_config());
    let cpu_before = maybe_cpu(pid)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0u64, Vec::new());
                while Instant::now() < deadline {
                    let one = async {
                        let conn = connect(&config).await?;
                        conn.client
                            .simple_query("SELECT 1")
                            .await
                            .map_err(|e| describe(&e))?;
                        conn.close().await;
                        Ok::<_, String>(())
                    };
                    match one.await {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            errors.push(e);
                            sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    let (mut logins, mut errors) = (0, Vec::new());
    for worker in workers {
        let (ok, errs) = worker.await.expect("login worker");
        logins += ok;
        errors.extend(errs);
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_ticks = maybe_cpu(pid)? - cpu_before;
    first_error(&errors);
    Ok(format!(
        "logins={logins} failed={} secs={secs:.3} cpu_ticks={cpu_ticks}",
        errors.len()
    ))
}

/// Only the first query error of a many-tenants run is printed.
static QUERY_ERROR_SHOWN: AtomicBool = AtomicBool::new(false);

/// What one client of the many-tenants run did.
#[derive(Default)]
struct ClientRun {
    latencies_us: Vec<u32>,
    errors: u64,
    /// Still waiting for an answer, sent over a second earlier, when the time was up.
    stalled: bool,
}

async fn tenants(opts: &Opts) -> Result<String, String> {
    let tenants: usize = opts.num("tenants", 500);
    let per_tenant: usize = opts.num("clients", 2);
    let per_db: usize = opts.num("per_db", 10);
    let seconds: f64 = opts.num("seconds", 5.0);
    let pid = opts.pid();
    let configs: Vec<_> = (0..tenants)
        .flat_map(|i| {
            let config = opts.config(&format!("t{i:04}"), &format!("tdb{:03}", i / per_db));
            std::iter::repeat_n(config, per_tenant)
        })
        .collect();
    let (conns, errors) = open_many(configs, opts.num("parallel", 200)).await;
    first_error(&errors);
    let connected = conns.iter().flatten().count();

    let cpu_before = maybe_cpu(pid)?;
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + Duration::from_secs_f64(seconds));
    let mut runs: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            tokio::spawn(async move {
                let mut run = ClientRun::default();
                let Some(conn) = conn else {
                    return (run, None);
                };
                while tokio::time::Instant::now() < deadline {
                    let sent = Instant::now();
                    match timeout_at(deadline, conn.client.simple_query("SELECT 1")).await {
                        Err(_) => run.stalled = sent.elapsed() > STALLED,
                        Ok(Ok(_)) => run
                            .latencies_us
                            .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        Ok(Err(e)) => {
                            run.errors += 1;
                            if !QUERY_ERROR_SHOWN.swap(true, Relaxed) {
                                eprintln!("loadgen tenants: first query error: {}", describe(&e));
                            }
                            if conn.client.is_closed() {
                                break;
                            }
                            sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (run, Some(conn))
            })
        })
        .collect();
    let mut all = Vec::new();
    let (mut errors_seen, mut stalled, mut served) = (0, 0, 0);
    let mut conns = Vec::new();
    for chunk in runs.chunks_mut(per_tenant) {
        let mut tenant_tx = 0;
        for task in chunk {
            let (run, conn) = task.await.expect("tenant client");
            tenant_tx += run.latencies_us.len();
            errors_seen += run.errors;
            stalled += u64::from(run.stalled);
            all.extend(run.latencies_us);
            conns.extend(conn);
        }
        served += usize::from(tenant_tx > 0);
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_ticks = maybe_cpu(pid)? - cpu_before;
    for conn in conns {
        conn.close().await;
    }
    all.sort_unstable();
    let tx = all.len();
    let avg_us = if tx == 0 {
        0.0
    } else {
        all.iter().map(|&l| f64::from(l)).sum::<f64>() / tx as f64
    };
    let p99_us = if tx == 0 {
        0
    } else {
        all[(tx * 99).div_ceil(100) - 1]
    };
    Ok(format!(
        "connected={connected} connect_failed={} tx={tx} errors={errors_seen} \
         stalled={stalled} tenants_served={served} tenants={tenants} secs={secs:.3} \
         avg_us={avg_us:.0} p99_us={p99_us} cpu_ticks={cpu_ticks}",
        errors.len()
    ))
}
