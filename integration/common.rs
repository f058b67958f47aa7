//! Small helpers the test modules share: one-value queries over the simple protocol (which
//! works in transaction pooling whatever server connection a query lands on), a
//! tokio-postgres client whose connection can be cut without a Terminate, and the check
//! that sluice is still running and never panicked.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::harness::{error_text, sqlstate, try_connect, Endpoint, Sluice, TenantDb};

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
