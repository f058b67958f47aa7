//! Clients pointed at sluice or straight at PostgreSQL (anything that is an [`Endpoint`]):
//! psql and pgbench as child processes with deadlines, tokio-postgres in-process.
//!
//! psql and pgbench get the password through `PGPASSWORD` and a scrubbed environment (no
//! stray `PGHOST`, `PGSSLMODE`… from the caller); otherwise libpq's defaults apply, as they
//! would for a user (e.g. `sslmode=prefer`).

use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::postgres::TenantDb;
use super::process::{output_with_timeout, pg_tool};

/// Something clients can connect to over TCP: [`super::Sluice`], [`super::Postgres`], or a
/// bare `SocketAddr`.
pub trait Endpoint {
    fn socket_addr(&self) -> SocketAddr;
}

impl Endpoint for SocketAddr {
    fn socket_addr(&self) -> SocketAddr {
        *self
    }
}

const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
const PGBENCH_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A libpq connection string for `to` (without the password).
pub fn conninfo(to: &impl Endpoint, user: &str, database: &str) -> String {
    let addr = to.socket_addr();
    format!(
        "host={} port={} user={} dbname={}",
        addr.ip(),
        addr.port(),
        conninfo_value(user),
        conninfo_value(database)
    )
}

fn conninfo_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A libpq tool with `password` in `PGPASSWORD` and the caller's other `PG*` variables
/// removed.
pub fn pg_command(tool: &str, password: &str) -> Command {
    let mut cmd = Command::new(pg_tool(tool));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT.as_secs().to_string());
    cmd
}

/// `psql -X -A -t -v ON_ERROR_STOP=1 -c <sql>` as `user`; stdout holds the rows (`|`
/// between columns), stderr the errors. Panics only if psql hangs for a minute.
pub fn psql(to: &impl Endpoint, user: &str, password: &str, db: &str, sql: &str) -> Output {
    let mut cmd = pg_command("psql", password);
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(conninfo(to, user, db))
        .arg("-c")
        .arg(sql);
    output_with_timeout(&mut cmd, PSQL_TIMEOUT)
}

/// psql with `extra` appended to the connection string (e.g. `"sslmode=verify-full
/// sslrootcert=/path host=localhost hostaddr=127.0.0.1"`: a later keyword wins) and one
/// `-c` per entry of `commands` (backslash commands such as `\\conninfo` work too).
pub fn psql_with(
    to: &impl Endpoint,
    user: &str,
    password: &str,
    db: &str,
    extra: &str,
    commands: &[&str],
) -> Output {
    let mut cmd = pg_command("psql", password);
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!("{} {extra}", conninfo(to, user, db)));
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    output_with_timeout(&mut cmd, PSQL_TIMEOUT)
}

/// [`psql`] that must succeed: returns stdout without the final newline.
pub fn psql_ok(to: &impl Endpoint, user: &str, password: &str, db: &str, sql: &str) -> String {
    let out = psql(to, user, password, db, sql);
    assert!(
        out.status.success(),
        "psql as {user}@{db} failed ({}): {sql}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim_end_matches('\n')
        .to_owned()
}

/// What a pgbench run reports.
#[derive(Debug)]
pub struct PgbenchSummary {
    pub status: ExitStatus,
    /// "number of transactions actually processed".
    pub processed: u64,
    /// "number of failed transactions" (0 when pgbench does not print it).
    pub failed: u64,
    /// "tps = … (without initial connection time)".
    pub tps: Option<f64>,
    pub stdout: String,
    pub stderr: String,
}

/// `pgbench -h … -p … -U user <args> db`, e.g. `&["-n", "-S", "-c", "10", "-t", "100"]`.
/// Does not panic when pgbench fails: check `status` (pgbench exits 2 when clients abort).
pub fn pgbench(
    to: &impl Endpoint,
    user: &str,
    password: &str,
    db: &str,
    args: &[&str],
) -> PgbenchSummary {
    let addr = to.socket_addr();
    let mut cmd = pg_command("pgbench", password);
    cmd.arg("-h")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .arg("-U")
        .arg(user)
        .args(args)
        .arg(db);
    let out = output_with_timeout(&mut cmd, PGBENCH_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|rest| rest.trim_start().to_owned())
    };
    let number = |label: &str| {
        field(label)
            .and_then(|v| v.split(['/', ' ']).next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    PgbenchSummary {
        status: out.status,
        processed: number("number of transactions actually processed:"),
        failed: number("number of failed transactions:"),
        tps: field("tps =").and_then(|v| v.split(' ').next()?.parse().ok()),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout,
    }
}

/// `pgbench -i -q -s <scale>` as `user` into `db`; panics unless it succeeds.
pub fn pgbench_init(to: &impl Endpoint, user: &str, password: &str, db: &str, scale: u32) {
    let scale = scale.to_string();
    let run = pgbench(to, user, password, db, &["-i", "-q", "-s", &scale]);
    assert!(
        run.status.success(),
        "pgbench -i failed ({}):\n{}{}",
        run.status,
        run.stdout,
        run.stderr
    );
}

/// A tokio-postgres connection as the tenant; the connection task is spawned on the current
/// tokio runtime. Panics if the login fails.
pub async fn connect(to: &impl Endpoint, tenant: &TenantDb) -> Client {
    try_connect(to, &tenant.user, &tenant.password, &tenant.database)
        .await
        .unwrap_or_else(|e| panic!("login as {}: {}", tenant.user, error_text(&e)))
}

/// A tokio-postgres connection with explicit credentials (no TLS), for tests that expect
/// the login to fail.
pub async fn try_connect(
    to: &impl Endpoint,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    let addr = to.socket_addr();
    let (client, connection) = tokio_postgres::Config::new()
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .password(password)
        .dbname(db)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect(NoTls)
        .await?;
    tokio::spawn(async move {
        // Errors surface on the client's next call; nothing to report here.
        let _ = connection.await;
    });
    Ok(client)
}

/// The SQLSTATE of a server error (`None` for I/O and other client-side errors).
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|db| db.code().code())
}

/// A tokio-postgres error with its cause (its `Display` alone says only "db error").
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}
