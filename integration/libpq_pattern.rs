//! The lib/pq pattern in transaction mode: an unnamed Parse + Describe + Sync, then, in a
//! separate Sync batch, Bind + Execute of that unnamed statement. When the second batch
//! lands on another server connection, or on one where another client's unnamed Parse
//! ran in between, sluice replays the client's own last unnamed Parse first; a client
//! that never parsed one gets PostgreSQL's error, never someone else's statement. The raw
//! client sends the exact sequence; psycopg (libpq's PQprepare/PQexecPrepared), when it
//! is installed, does the same from a real driver.

use std::process::Command;
use std::time::Duration;

use crate::common::{assert_alive, md5_tenant, raw_login, scalar, server_pids};
use crate::harness::{connect, conninfo, output_with_timeout};
use crate::raw::{
    bind, data_row, describe_statement, error_fields, execute, field, parse, parse_bind_execute,
    sync, RawConn,
};

/// Sends `messages`; returns the answers up to ReadyForQuery as type bytes, the first
/// column of each DataRow, and the SQLSTATEs of errors.
async fn exchange(conn: &mut RawConn, messages: &[Vec<u8>]) -> (String, Vec<String>, Vec<String>) {
    conn.send(&messages.concat()).await;
    let (mut tags, mut values, mut errors) = (String::new(), Vec::new(), Vec::new());
    for (tag, body) in conn.messages_until_ready().await {
        tags.push(tag as char);
        match tag {
            b'D' => values.push(data_row(&body)[0].clone().unwrap_or_default()),
            b'E' => errors.push(field(&error_fields(&body), b'C').to_owned()),
            _ => {}
        }
    }
    (tags, values, errors)
}

fn parse_and_describe(sql: &str) -> [Vec<u8>; 3] {
    [parse("", sql, &[]), describe_statement(""), sync()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statement_is_replayed_on_another_server_connection() {
    let (tenant, mut sluice) = md5_tenant("libpq_other_conn", |t| t.pool_size(2));
    let mut conn = raw_login(&sluice, &tenant).await;

    let (tags, _, errors) = exchange(&mut conn, &parse_and_describe("SELECT $1::int * 2")).await;
    assert_eq!(
        tags, "1tTZ",
        "ParseComplete, ParameterDescription, RowDescription: {errors:?}"
    );
    let first = server_pids(&tenant);
    assert_eq!(first.len(), 1, "batch 1 ran on the only server connection");

    // LIFO reuse would hand that connection back: a transaction holds it instead.
    let holder = connect(&sluice, &tenant).await;
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let held = scalar(&holder, "SELECT pg_backend_pid()").await;
    assert_eq!(held.as_deref(), Some(first[0].as_str()));

    let batch2 = [
        bind("", "", &[Some("21")]),
        execute(""),
        parse_bind_execute("SELECT pg_backend_pid()"),
        sync(),
    ];
    let (tags, values, errors) = exchange(&mut conn, &batch2).await;
    assert_eq!(errors, Vec::<String>::new(), "{tags}");
    assert_eq!(tags, "2DC12DCZ");
    assert_eq!(values[0], "42");
    assert_ne!(
        Some(&values[1]),
        held.as_ref(),
        "batch 2 ran on the other server connection"
    );
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_binds_its_own_unnamed_statement() {
    // One server connection: every client's batches run on it, one after the other.
    let (tenant, mut sluice) = md5_tenant("libpq_shared_conn", |t| t.pool_size(1));
    let mut x = raw_login(&sluice, &tenant).await;
    let mut y = raw_login(&sluice, &tenant).await;
    let run = [bind("", "", &[]), execute(""), sync()];

    let (tags, _, _) = exchange(&mut x, &parse_and_describe("SELECT 'x'")).await;
    assert_eq!(tags, "1tTZ");
    let (tags, _, _) = exchange(&mut y, &parse_and_describe("SELECT 'y'")).await;
    assert_eq!(tags, "1tTZ");
    // The server's unnamed statement is now y's; x must still get its own.
    for _ in 0..2 {
        let (tags, values, _) = exchange(&mut x, &run).await;
        assert_eq!((tags.as_str(), values), ("2DCZ", vec!["x".to_owned()]));
        let (tags, values, _) = exchange(&mut y, &run).await;
        assert_eq!((tags.as_str(), values), ("2DCZ", vec!["y".to_owned()]));
    }
    assert_alive(&mut sluice);
}

/// On PostgreSQL, Bind of the unnamed statement in a session that never parsed one
/// fails (26000). Through sluice the server connection may hold another client's
/// unnamed statement: that must not run instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statement_of_another_client_never_runs() {
    let (tenant, mut sluice) = md5_tenant("libpq_never_parsed", |t| t.pool_size(1));
    let mut other = raw_login(&sluice, &tenant).await;
    let mut never_parsed = raw_login(&sluice, &tenant).await;
    let (tags, _, _) = exchange(&mut other, &parse_and_describe("SELECT 'other'")).await;
    assert_eq!(tags, "1tTZ");
    let run = [bind("", "", &[]), execute(""), sync()];
    let (tags, values, errors) = exchange(&mut never_parsed, &run).await;
    assert_eq!(
        (tags.as_str(), errors),
        ("EZ", vec!["26000".to_owned()]),
        "binding an unnamed statement this client never parsed ran {values:?}"
    );
    assert_alive(&mut sluice);
}

/// On PostgreSQL a simple Query destroys the unnamed statement: a later Bind of it fails
/// (26000) instead of running the old query again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_drops_the_unnamed_statement() {
    let (tenant, mut sluice) = md5_tenant("libpq_simple_drops", |t| t.pool_size(1));
    let mut conn = raw_login(&sluice, &tenant).await;
    let (tags, _, _) = exchange(&mut conn, &parse_and_describe("SELECT 'old'")).await;
    assert_eq!(tags, "1tTZ");
    let (tags, _, _) = exchange(&mut conn, &[crate::raw::query("SELECT 1")]).await;
    assert_eq!(tags, "TDCZ");
    let run = [bind("", "", &[]), execute(""), sync()];
    let (tags, values, errors) = exchange(&mut conn, &run).await;
    assert_eq!(
        (tags.as_str(), errors),
        ("EZ", vec!["26000".to_owned()]),
        "the unnamed statement is gone after a simple query, yet Bind ran {values:?}"
    );
    assert_alive(&mut sluice);
}

/// libpq through psycopg: PQprepare("") and PQdescribePrepared("") in two Sync batches,
/// PQexecPrepared("") on another server connection; then psycopg's own named statements
/// (`prepare=True`) while a second connection keeps taking the first server connection.
const PSYCOPG_SCRIPT: &str = r#"
import sys
import psycopg
from psycopg import pq

dsn = sys.argv[1]
c = psycopg.connect(dsn, autocommit=True)
h = psycopg.connect(dsn, autocommit=True)
pg = c.pgconn
r = pg.prepare(b"", b"SELECT $1::int * 2")
assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
r = pg.describe_prepared(b"")
assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
assert r.nparams == 1, r.nparams
h.execute("BEGIN")
held = h.execute("SELECT pg_backend_pid()").fetchone()[0]
r = pg.exec_prepared(b"", [b"21"])
assert r.status == pq.ExecStatus.TUPLES_OK, r.error_message
print(r.get_value(0, 0).decode())
mine = c.execute("SELECT pg_backend_pid()").fetchone()[0]
print("moved" if mine != held else "same connection")
h.execute("COMMIT")

pids = set()
for i in range(20):
    if i % 3 == 0:
        h.execute("BEGIN")
        h.execute("SELECT 1")
    got = c.execute("SELECT %s::int + 1", [i], prepare=True).fetchone()[0]
    assert got == i + 1, (i, got)
    pids.add(c.execute("SELECT pg_backend_pid()").fetchone()[0])
    if i % 3 == 0:
        h.execute("COMMIT")
print("prepared ok on", len(pids), "connections")
"#;

fn psycopg_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import psycopg"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn psycopg_prepare_then_execute_on_another_server_connection() {
    if !psycopg_installed() {
        eprintln!("psycopg is not installed (pip install \"psycopg[binary]\"): skipped");
        return;
    }
    let (tenant, mut sluice) = md5_tenant("libpq_psycopg", |t| t.pool_size(2));
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PSYCOPG_SCRIPT])
        .arg(conninfo(&sluice, &tenant.user, &tenant.database))
        .env("PGPASSWORD", &tenant.password)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10");
    let out = output_with_timeout(&mut cmd, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psycopg script failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["42", "moved"], "{stdout}");
    assert!(
        lines[2] == "prepared ok on 2 connections",
        "psycopg's named statements ran on both server connections: {stdout}"
    );
    assert_alive(&mut sluice);
}
