//! The everyday protocol through sluice (PRODUCT.md, "What must work"): psql as the
//! tenant, multi-statement query strings, errors inside a transaction, NOTICE
//! pass-through, a 20 MiB row each way, a 200,000-row result, COPY in and out with psql's
//! `\copy`, `pg_isready`, and tokio-postgres' extended protocol: parameters, transactions
//! and pipelined queries.

use std::fs;
use std::process::Output;
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

use crate::common::{identity, scalar};
use crate::harness::{
    connect, conninfo, error_text, free_port, output_with_timeout, pg_command, psql, psql_ok,
    sqlstate, Endpoint, Postgres, Sluice, SluiceConfig, Tenant, TenantDb,
};

fn tenant_and_sluice(name: &str, tenant: impl FnOnce(Tenant) -> Tenant) -> (TenantDb, Sluice) {
    let pg = Postgres::shared();
    let db = pg.create_tenant(name);
    let sluice = Sluice::start(&SluiceConfig::new(pg).tenant(tenant(Tenant::new(&db))));
    (db, sluice)
}

/// Runs `script` with `psql -X -q -A -t -f` as the tenant, without ON_ERROR_STOP, so a
/// failing statement is reported on stderr and the session goes on.
fn psql_script(to: &impl Endpoint, tenant: &TenantDb, script: &str) -> Output {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    fs::write(file.path(), script).expect("writing the script");
    let mut cmd = pg_command("psql", &tenant.password);
    cmd.args(["-X", "-q", "-A", "-t", "-f"])
        .arg(file.path())
        .arg("-d")
        .arg(conninfo(to, &tenant.user, &tenant.database));
    output_with_timeout(&mut cmd, Duration::from_secs(60))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn psql_runs_as_the_tenant() {
    let (tenant, sluice) = tenant_and_sluice("basic_psql", |t| t);
    let out = psql_ok(
        &sluice,
        &tenant.user,
        &tenant.password,
        &tenant.database,
        "SELECT current_user, current_database()",
    );
    assert_eq!(out, format!("{}|{}", tenant.user, tenant.database));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_query_strings() {
    let (tenant, sluice) = tenant_and_sluice("basic_multi", |t| t);
    let sql = |table: &str| {
        format!(
            "CREATE TABLE {table} (x int); INSERT INTO {table} VALUES (1), (2); \
             INSERT INTO {table} SELECT x + 2 FROM {table}; SELECT sum(x) FROM {table}"
        )
    };
    let out = psql_ok(
        &sluice,
        &tenant.user,
        &tenant.password,
        &tenant.database,
        &sql("m"),
    );
    assert_eq!(out.lines().last(), Some("10"), "psql output:\n{out}");

    // The same string as one simple-protocol Query: one CommandComplete per statement.
    let client = connect(&sluice, &tenant).await;
    let messages = client
        .simple_query(&sql("n"))
        .await
        .unwrap_or_else(|e| panic!("{}", error_text(&e)));
    let completed: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(rows) => Some(*rows),
            _ => None,
        })
        .collect();
    assert_eq!(
        completed,
        [0, 2, 2, 1],
        "rows of CREATE, INSERT, INSERT, SELECT"
    );
    assert_eq!(
        scalar(&client, "SELECT sum(x) FROM n").await.as_deref(),
        Some("10")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_inside_a_transaction_then_rollback() {
    let (tenant, sluice) = tenant_and_sluice("basic_tx_error", |t| t);
    let script = "BEGIN;\nSELECT 1/0;\nSELECT 'after the error';\nROLLBACK;\nSELECT 'continued';\n";
    let out = psql_script(&sluice, &tenant, script);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stderr.contains("division by zero"), "{stderr}");
    assert!(
        stderr.contains("current transaction is aborted"),
        "{stderr}"
    );
    assert_eq!(stdout.trim_end(), "continued", "stderr: {stderr}");

    // The same with tokio-postgres, checking the SQLSTATEs.
    let client = connect(&sluice, &tenant).await;
    client.batch_execute("BEGIN").await.expect("BEGIN");
    let e = client.batch_execute("SELECT 1/0").await.expect_err("1/0");
    assert_eq!(sqlstate(&e), Some("22012"), "{}", error_text(&e));
    let e = client
        .batch_execute("SELECT 1")
        .await
        .expect_err("in a failed transaction");
    assert_eq!(sqlstate(&e), Some("25P02"), "{}", error_text(&e));
    client.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    assert_eq!(scalar(&client, "SELECT 'ok'").await.as_deref(), Some("ok"));
    assert_eq!(
        identity(&client).await,
        (tenant.user.clone(), tenant.database.clone())
    );
}

#[test]
fn notice_reaches_psql() {
    let (tenant, sluice) = tenant_and_sluice("basic_notice", |t| t);
    let out = psql(
        &sluice,
        &tenant.user,
        &tenant.password,
        &tenant.database,
        "DO $$ BEGIN RAISE NOTICE 'hi from %', current_user; END $$",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = format!("NOTICE:  hi from {}", tenant.user);
    assert!(
        text(&out.stderr).contains(&expected),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_and_large_results() {
    const MIB_20: usize = 20 * 1024 * 1024;
    let (tenant, sluice) = tenant_and_sluice("basic_large", |t| t);
    let (user, pw, db) = (&tenant.user, &tenant.password, &tenant.database);

    let row = psql_ok(
        &sluice,
        user,
        pw,
        db,
        "SELECT repeat('x', 20 * 1024 * 1024)",
    );
    assert_eq!(row.len(), MIB_20);
    assert!(row.bytes().all(|b| b == b'x'), "the row arrived intact");

    let rows = psql_ok(
        &sluice,
        user,
        pw,
        db,
        "SELECT g FROM generate_series(1, 200000) g",
    );
    let lines: Vec<&str> = rows.lines().collect();
    assert_eq!(lines.len(), 200_000);
    assert_eq!((lines[0], lines[199_999]), ("1", "200000"));

    // And 20 MiB from client to server, as a parameter.
    let client = connect(&sluice, &tenant).await;
    let big = "y".repeat(MIB_20);
    let row = client
        .query_typed_one(
            "SELECT length($1::text), md5($1::text)",
            &[(&big, tokio_postgres::types::Type::TEXT)],
        )
        .await
        .unwrap_or_else(|e| panic!("{}", error_text(&e)));
    assert_eq!(row.get::<_, i32>(0) as usize, MIB_20);
    let md5_on_server: String = row.get(1);
    let expected = scalar(&client, "SELECT md5(repeat('y', 20 * 1024 * 1024))").await;
    assert_eq!(Some(md5_on_server), expected);
}

#[test]
fn copy_in_and_out_with_psql() {
    let (tenant, sluice) = tenant_and_sluice("basic_copy", |t| t);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let bad = dir.path().join("bad.csv");
    let rows: String = (1..=50_000).map(|i| format!("{i},row {i}\n")).collect();
    fs::write(&input, &rows).expect("in.csv");
    fs::write(&bad, "1,fine\nnot a number,oops\n").expect("bad.csv");

    let script = format!(
        "CREATE TABLE c (id int, label text);\n\
         \\copy c FROM '{input}' WITH (FORMAT csv)\n\
         SELECT count(*), sum(id) FROM c;\n\
         \\copy c FROM '{bad}' WITH (FORMAT csv)\n\
         SELECT count(*) FROM c;\n\
         \\copy (SELECT id, label FROM c ORDER BY id) TO '{output}' WITH (FORMAT csv)\n",
        input = input.display(),
        bad = bad.display(),
        output = output.display(),
    );
    let out = psql_script(&sluice, &tenant, &script);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["50000|1250025000", "50000"],
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("invalid input syntax for type integer"),
        "the bad COPY fails, and only it: {stderr}"
    );
    assert_eq!(stderr.matches("ERROR").count(), 1, "{stderr}");
    let copied = fs::read_to_string(&output).expect("out.csv");
    assert!(
        copied == rows,
        "COPY TO STDOUT returned what COPY FROM STDIN stored"
    );
}

#[test]
fn pg_isready_reports_sluice_up() {
    let (tenant, sluice) = tenant_and_sluice("basic_isready", |t| t);
    let isready = |port: u16| {
        let mut cmd = pg_command("pg_isready", "");
        cmd.args(["-h", "127.0.0.1", "-t", "5", "-p", &port.to_string()])
            .args(["-U", &tenant.user, "-d", &tenant.database]);
        output_with_timeout(&mut cmd, Duration::from_secs(30))
    };
    let up = isready(sluice.port());
    assert_eq!(up.status.code(), Some(0), "{}", text(&up.stdout));
    // The check can tell: nothing listens on a fresh port.
    let down = isready(free_port());
    assert_eq!(down.status.code(), Some(2), "{}", text(&down.stdout));
}

#[tokio::test]
async fn tokio_postgres_extended_protocol() {
    // One server connection: tokio-postgres names its statements, and named statements
    // only survive transaction pooling on the connection that prepared them (README).
    let (tenant, sluice) = tenant_and_sluice("basic_extended", |t| t.pool_size(1));
    let mut client = connect(&sluice, &tenant).await;

    let row = client
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .unwrap_or_else(|e| panic!("{}", error_text(&e)));
    assert_eq!(row.get::<_, i32>(0), 42);

    client
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .expect("CREATE TABLE");
    let tx = client.transaction().await.expect("BEGIN");
    tx.execute("INSERT INTO t VALUES ($1)", &[&1i32])
        .await
        .expect("INSERT");
    tx.commit().await.expect("COMMIT");
    let tx = client.transaction().await.expect("BEGIN");
    tx.execute("INSERT INTO t VALUES ($1)", &[&2i32])
        .await
        .expect("INSERT");
    let inside: i64 = tx
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(inside, 2, "the transaction sees its own row");
    tx.rollback().await.expect("ROLLBACK");
    let kept: Vec<i32> = client
        .query("SELECT x FROM t ORDER BY x", &[])
        .await
        .expect("SELECT")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        kept,
        [1],
        "the committed row stays, the rolled-back one is gone"
    );

    // Pipelined: all requests are written before the first answer is read.
    let times_ten = client
        .prepare("SELECT $1::int * 10")
        .await
        .expect("prepare");
    let ask = |n: i32| {
        let (client, stmt) = (&client, &times_ten);
        async move {
            client
                .query_one(stmt, &[&n])
                .await
                .map(|r| r.get::<_, i32>(0))
        }
    };
    let (a, b, c, d, user, e) = tokio::join!(
        ask(1),
        ask(2),
        ask(3),
        ask(4),
        client.query_typed_one("SELECT current_user::text", &[]),
        ask(5),
    );
    let answers: Vec<i32> = [a, b, c, d, e]
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{}", error_text(&e))))
        .collect();
    assert_eq!(answers, [10, 20, 30, 40, 50]);
    let user = user.unwrap_or_else(|e| panic!("{}", error_text(&e)));
    assert_eq!(user.get::<_, String>(0), tenant.user);
}
