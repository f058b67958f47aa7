//! Small helpers the test modules share: one-value queries over the simple protocol (which
//! works in transaction pooling whatever server connection a query lands on), a
//! tokio-postgres client whose connection can be cut without a Terminate, raw-client
//! logins and queries, superuser looks at pg_stat_activity, cluster metrics, and the check
//! that sluice is still running and never panicked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::harness::{
    error_text, literal, poll_until, sqlstate, try_connect, Endpoint, Postgres, Sluice,
    SluiceConfig, Tenant, TenantDb,
};
use crate::raw::{data_row, error_fields, query, RawConn};

/// The first column of the first row `sql` returns (`None` for SQL NULL), over the simple
/// query protocol. Panics on an error or when there is no row.
pub async fn scalar(client: &Client, sql: &str) -> Option<String> {
    try_scalar(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)))
}

/// [`scalar`] that returns the error instead of panicking.
pub async fn try_scalar(
    client: &Client,
    sql: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    let row = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    match row {
        Some(row) => Ok(row.get(0).map(str::to_owned)),
        None => panic!("{sql}: no row returned"),
    }
}

/// `(current_user, current_database())` of the server connection the query runs on.
pub async fn identity(client: &Client) -> (String, String) {
    let messages = client
        .simple_query("SELECT current_user, current_database()")
        .await
        .unwrap_or_else(|e| panic!("identity query: {}", error_text(&e)));
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .expect("a row");
    (
        row.get(0).expect("current_user").to_owned(),
        row.get(1).expect("current_database").to_owned(),
    )
}

/// A client whose connection runs in the returned task: aborting the task closes the
/// socket without a Terminate message, as when the client process dies.
pub async fn connect_abortable(to: &impl Endpoint, tenant: &TenantDb) -> (Client, JoinHandle<()>) {
    let stream = TcpStream::connect(to.socket_addr())
        .await
        .expect("TCP connect");
    let (client, connection) = tokio_postgres::Config::new()
        .user(&tenant.user)
        .password(&tenant.password)
        .dbname(&tenant.database)
        .connect_raw(stream, NoTls)
        .await
        .unwrap_or_else(|e| panic!("login as {}: {}", tenant.user, error_text(&e)));
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

/// The error of a login that must fail; panics if it succeeds.
pub async fn refused_login(
    to: &impl Endpoint,
    user: &str,
    password: &str,
    db: &str,
) -> tokio_postgres::Error {
    match try_connect(to, user, password, db).await {
        Ok(_) => panic!("login as {user} to database {db} succeeded"),
        Err(e) => e,
    }
}

/// Logs in, retrying for up to [`PROMPTLY`] while sluice answers 53300 (a client slot or
/// server connection another client just gave up is freed asynchronously).
pub async fn connect_when_free(to: &impl Endpoint, tenant: &TenantDb) -> Client {
    let deadline = std::time::Instant::now() + PROMPTLY;
    loop {
        match try_connect(to, &tenant.user, &tenant.password, &tenant.database).await {
            Ok(client) => return client,
            Err(e) if sqlstate(&e) == Some("53300") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("login as {}: {}", tenant.user, error_text(&e)),
        }
    }
}

/// Cuts a connection made by [`connect_abortable`]: the task, and with it the socket, is
/// gone when this returns.
pub async fn cut(client: Client, task: JoinHandle<()>) {
    task.abort();
    let _ = task.await;
    drop(client);
}

/// Asserts that sluice is still running and its log shows no panic.
pub fn assert_alive(sluice: &mut Sluice) {
    if let Some(status) = sluice.try_exit_status() {
        panic!("sluice exited ({status}):\n{}", sluice.log());
    }
    let log = sluice.log();
    assert!(!log.contains("panicked"), "sluice panicked:\n{log}");
}

/// Upper bound for things that must happen "at once" (a lock freed, a slot given back):
/// generous for a loaded 2-core machine, far below the timeouts a failure would hit.
pub const PROMPTLY: Duration = Duration::from_secs(5);

/// A new tenant (md5, so [`RawConn`] can log in too) configured by `configure`, and a
/// sluice serving it.
pub fn md5_tenant(name: &str, configure: impl FnOnce(Tenant) -> Tenant) -> (TenantDb, Sluice) {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant(name);
    let config = configure(Tenant::new(&tenant).auth_type("md5"));
    let sluice = Sluice::start(&SluiceConfig::new(pg).tenant(config));
    (tenant, sluice)
}

/// A raw client logged in as the (md5) tenant.
pub async fn raw_login(sluice: &Sluice, tenant: &TenantDb) -> RawConn {
    RawConn::login_md5(
        sluice.addr(),
        &tenant.user,
        &tenant.password,
        &tenant.database,
    )
    .await
}

/// The first column of the first row of simple query `sql` on a raw client; panics on an
/// error or when there is no row.
pub async fn raw_scalar(conn: &mut RawConn, sql: &str) -> Option<String> {
    conn.send(&query(sql)).await;
    let mut first = None;
    for (tag, body) in conn.messages_until_ready().await {
        match tag {
            b'E' => panic!("{sql}: {:?}", error_fields(&body)),
            b'D' if first.is_none() => first = Some(data_row(&body).swap_remove(0)),
            _ => {}
        }
    }
    first.unwrap_or_else(|| panic!("{sql}: no row returned"))
}

/// Superuser query in the tenant's database, straight to PostgreSQL; psql's output.
pub fn superuser(tenant: &TenantDb, sql: &str) -> String {
    Postgres::shared().query_as_superuser_in(&tenant.database, sql)
}

/// The pids of the tenant's server sessions, as PostgreSQL lists them, sorted.
pub fn server_pids(tenant: &TenantDb) -> Vec<String> {
    let sql = format!(
        "SELECT pid FROM pg_stat_activity WHERE usename = {} ORDER BY pid",
        literal(&tenant.user)
    );
    let out = superuser(tenant, &sql);
    out.lines().map(str::to_owned).collect()
}

/// Polls (every 20 ms, up to 20 s) until PostgreSQL shows a query of the tenant matching
/// the SQL pattern `like` as running.
pub fn wait_until_running(tenant: &TenantDb, like: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = {} \
         AND state = 'active' AND query LIKE {}",
        literal(&tenant.user),
        literal(like)
    );
    let seen = poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
        (superuser(tenant, &sql) != "0").then_some(())
    });
    assert!(seen.is_some(), "{like} never showed up in pg_stat_activity");
}

/// A tokio-postgres client of the tenant connected straight to PostgreSQL, bypassing
/// sluice: e.g. to hold an advisory lock that a query through sluice then waits for.
pub async fn direct_client(tenant: &TenantDb) -> Client {
    let pg = Postgres::shared();
    try_connect(pg, &tenant.user, &tenant.password, &tenant.database)
        .await
        .unwrap_or_else(|e| panic!("direct login as {}: {}", tenant.user, error_text(&e)))
}

/// An HTTP response read to the end of the connection.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `addr` over a plain `std::net::TcpStream` (HTTP/1.1, `Connection: close`),
/// read to EOF within [`PROMPTLY`]. Checks `Content-Length` against the body. Blocking:
/// fine for the metrics port, which answers at once. Panics on I/O or framing errors.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> HttpResponse {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, PROMPTLY)
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(PROMPTLY))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(PROMPTLY))
        .expect("write timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("GET {path}: reading the response: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no end of headers in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("GET {path}: bad header line {line:?}"));
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let response = HttpResponse {
        status,
        headers,
        body: String::from_utf8(body.to_vec())
            .unwrap_or_else(|e| panic!("GET {path}: body is not UTF-8: {e}")),
    };
    assert_ne!(
        response.header("transfer-encoding"),
        Some("chunked"),
        "GET {path}: chunked bodies are not expected from sluice"
    );
    if let Some(length) = response.header("content-length") {
        assert_eq!(
            length.parse::<usize>().ok(),
            Some(body.len()),
            "GET {path}: Content-Length does not match the body"
        );
    }
    response
}

/// The result set of one admin-console command: its column names and rows (`None` is NULL).
#[derive(Debug)]
pub struct ShowResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// One row of a [`ShowResult`], addressed by column name.
#[derive(Debug, Clone, Copy)]
pub struct ShowRow<'a> {
    columns: &'a [String],
    values: &'a [Option<String>],
}

impl ShowResult {
    pub fn rows(&self) -> impl Iterator<Item = ShowRow<'_>> {
        self.rows.iter().map(|values| ShowRow {
            columns: &self.columns,
            values,
        })
    }

    /// The rows whose `column` is `value`.
    pub fn rows_where<'a>(
        &'a self,
        column: &'a str,
        value: &'a str,
    ) -> impl Iterator<Item = ShowRow<'a>> + 'a {
        self.rows().filter(move |row| row.get(column) == value)
    }

    /// The one row whose `column` is `value`; panics unless there is exactly one.
    pub fn row_where(&self, column: &str, value: &str) -> ShowRow<'_> {
        let mut found = self.rows().filter(|row| row.get(column) == value);
        let row = found
            .next()
            .unwrap_or_else(|| panic!("no row with {column} = {value:?} in {self:?}"));
        assert!(
            found.next().is_none(),
            "several rows with {column} = {value:?} in {self:?}"
        );
        row
    }
}

impl<'a> ShowRow<'a> {
    /// The text of `column` ("" for NULL); panics if there is no such column.
    pub fn get(&self, column: &str) -> &'a str {
        let at = self
            .columns
            .iter()
            .position(|c| c == column)
            .unwrap_or_else(|| panic!("no column {column:?} in {:?}", self.columns));
        self.values[at].as_deref().unwrap_or_default()
    }

    /// `column` as an integer; panics if it is not one.
    pub fn int(&self, column: &str) -> i64 {
        let text = self.get(column);
        text.parse()
            .unwrap_or_else(|_| panic!("{column} = {text:?} is not an integer"))
    }
}

/// Runs one admin-console command over the simple protocol; its result set (empty for a
/// command without one) or the error.
pub async fn try_console(client: &Client, sql: &str) -> Result<ShowResult, tokio_postgres::Error> {
    let mut result = ShowResult {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for message in client.simple_query(sql).await? {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                result.columns = columns.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                let values = (0..row.len()).map(|i| row.get(i).map(str::to_owned));
                result.rows.push(values.collect());
            }
            _ => {}
        }
    }
    Ok(result)
}

/// [`try_console`] that must succeed.
pub async fn console(client: &Client, sql: &str) -> ShowResult {
    try_console(client, sql)
        .await
        .unwrap_or_else(|e| panic!("admin console {sql:?}: {}", error_text(&e)))
}

/// A tokio-postgres session on the admin console (database `sluice` or `pgbouncer`).
pub async fn console_login(to: &impl Endpoint, user: &str, password: &str, db: &str) -> Client {
    try_connect(to, user, password, db)
        .await
        .unwrap_or_else(|e| panic!("admin login as {user} to {db}: {}", error_text(&e)))
}

/// Server connections PostgreSQL has open for roles whose names start with `prefix`.
pub async fn server_connections(observer: &tokio_postgres::Client, prefix: &str) -> usize {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE {}",
        literal(&format!("{prefix}%"))
    );
    let row = observer
        .query_one(&sql, &[])
        .await
        .expect("pg_stat_activity");
    row.get::<_, i64>(0) as usize
}

/// Samples [`server_connections`] until `running` turns false; returns the most seen.
pub fn sample_server_connections(
    pg: &'static Postgres,
    prefix: String,
    running: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let observer = pg.superuser_client().await;
        let (mut most, mut samples) = (0, 0);
        while running.load(Ordering::Relaxed) {
            most = most.max(server_connections(&observer, &prefix).await);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (most, samples)
    })
}

/// A counter or gauge of `/metrics` for cluster `main` (0 when absent).
pub fn cluster_metric(sluice: &Sluice, name: &str) -> f64 {
    series_value(sluice, &format!("{name}{{cluster=\"main\"}}"))
}

/// `sluice_server_disconnects_total` of cluster `main` for `reason`.
pub fn disconnects(sluice: &Sluice, reason: &str) -> f64 {
    let series = format!("sluice_server_disconnects_total{{cluster=\"main\",reason=\"{reason}\"}}");
    series_value(sluice, &series)
}

/// The value of one series (name and labels exactly as exported) of `/metrics`, 0 when absent.
fn series_value(sluice: &Sluice, series: &str) -> f64 {
    let body = http_get(sluice.metrics_addr(), "/metrics").body;
    let prefix = format!("{series} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0.0, |value| value.parse().expect("a number"))
}
