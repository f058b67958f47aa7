//! Named prepared statements in transaction mode: a client's statements keep working on
//! whichever server connection it lands on (sluice prepares them there on demand), each
//! server connection keeps at most `max_prepared_statements` of them, and Close,
//! `DISCARD ALL` and `DEALLOCATE ALL` behave as on a plain PostgreSQL session. An injected
//! Parse that fails reports its error as the client's own. pgbench `-M prepared` and
//! tokio-postgres (which names the statements of `prepare()` and of every parameterised
//! `query()`) with more clients than server connections; the raw client for name reuse.

use std::collections::BTreeSet;

use tokio_postgres::{Client, SimpleQueryMessage, Statement, Transaction};

use crate::common::{assert_alive, md5_tenant, raw_login, scalar, superuser, try_scalar};
use crate::harness::{connect, error_text, pgbench, pgbench_init, sqlstate, Sluice, TenantDb};
use crate::raw::{bind, close_statement, data_row, error_fields, execute, field, parse, sync};

/// Runs pgbench against sluice on a blocking thread; asserts it succeeded with no failed
/// transaction.
async fn pgbench_ok(sluice: &Sluice, tenant: &TenantDb, args: &'static [&'static str]) {
    let (addr, tenant) = (sluice.addr(), tenant.clone());
    let run = tokio::task::spawn_blocking(move || {
        pgbench(
            &addr,
            &tenant.user,
            &tenant.password,
            &tenant.database,
            args,
        )
    })
    .await
    .expect("pgbench thread");
    assert!(
        run.status.success(),
        "pgbench {args:?} failed ({}):\n{}{}",
        run.status,
        run.stdout,
        run.stderr
    );
    assert_eq!(run.failed, 0, "pgbench {args:?}:\n{}", run.stdout);
    assert!(run.processed > 0, "pgbench {args:?}:\n{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_mode_on_a_small_pool() {
    let (tenant, mut sluice) = md5_tenant("prep_pgbench", |t| t.pool_size(3));
    pgbench_init(&sluice, &tenant.user, &tenant.password, &tenant.database, 1);
    // Select-only: 50 clients, 2 threads, onto 3 server connections.
    let select_only = &[
        "-n", "-M", "prepared", "-S", "-c", "50", "-j", "2", "-T", "2",
    ];
    pgbench_ok(&sluice, &tenant, select_only).await;
    // TPC-B: pgbench prepares synchronously, blocking its thread; with one client per
    // thread no client inside a transaction waits for a thread stuck on a pool slot.
    let tpcb = &["-n", "-M", "prepared", "-c", "8", "-j", "8", "-T", "2"];
    pgbench_ok(&sluice, &tenant, tpcb).await;
    assert_alive(&mut sluice);
}

/// What one client saw: the server pids its transactions ran on.
async fn client_rounds(mut client: Client, id: i32, rounds: i32) -> Result<BTreeSet<i32>, String> {
    let e =
        |what: &'static str| move |e: tokio_postgres::Error| format!("{what}: {}", error_text(&e));
    // Every client prepares the same texts in a different order, so tokio-postgres' names
    // ("s0", "s1"…) stand for different queries in different clients.
    let texts = [
        "SELECT $1::int * $2::int",
        "INSERT INTO t VALUES ($1, $2)",
        "SELECT pg_backend_pid()",
        "SELECT count(*), sum(n)::int FROM t WHERE client = $1",
    ];
    let mut statements: [Option<Statement>; 4] = Default::default();
    for k in 0..texts.len() {
        let at = (k + id as usize) % texts.len();
        statements[at] = Some(client.prepare(texts[at]).await.map_err(e("prepare"))?);
    }
    let [multiply, insert, pid, count] = statements.map(|s| s.expect("prepared"));
    let mut pids = BTreeSet::new();
    for n in 0..rounds {
        let tx = client.transaction().await.map_err(e("BEGIN"))?;
        let product: i32 = tx
            .query_one(&multiply, &[&id, &n])
            .await
            .map_err(e("multiply"))?
            .get(0);
        if product != id * n {
            return Err(format!("{id} * {n} = {product}"));
        }
        tx.execute(&insert, &[&id, &n]).await.map_err(e("insert"))?;
        pids.insert(tx.query_one(&pid, &[]).await.map_err(e("pid"))?.get(0));
        tx.commit().await.map_err(e("COMMIT"))?;
    }
    let row = client.query_one(&count, &[&id]).await.map_err(e("count"))?;
    let (rows, sum): (i64, i32) = (row.get(0), row.get(1));
    let expected = (rounds as i64, (0..rounds).sum::<i32>());
    if (rows, sum) != expected {
        return Err(format!(
            "client {id}: (count, sum) = {:?}, expected {expected:?}",
            (rows, sum)
        ));
    }
    Ok(pids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_statements_survive_moving_between_server_connections() {
    let (tenant, mut sluice) = md5_tenant("prep_move", |t| t.pool_size(2));
    let setup = connect(&sluice, &tenant).await;
    setup
        .batch_execute("CREATE TABLE t (client int, n int)")
        .await
        .expect("CREATE TABLE");
    let mut tasks = Vec::new();
    for id in 0..10 {
        let client = connect(&sluice, &tenant).await;
        tasks.push(tokio::spawn(client_rounds(client, id, 20)));
    }
    let mut all_pids = BTreeSet::new();
    let mut moved = 0;
    for (id, task) in tasks.into_iter().enumerate() {
        let pids = task
            .await
            .expect("client task")
            .unwrap_or_else(|e| panic!("client {id}: {e}"));
        moved += usize::from(pids.len() > 1);
        all_pids.extend(pids);
    }
    assert!(
        all_pids.len() <= 2,
        "pool_size is 2, transactions ran on {all_pids:?}"
    );
    assert!(
        moved > 0,
        "no client ever ran on a second server connection: the test proved nothing"
    );
    assert_eq!(
        scalar(&setup, "SELECT count(*) FROM t").await.as_deref(),
        Some("200")
    );
    assert_alive(&mut sluice);
}

/// A one-value simple query inside a transaction.
async fn tx_scalar(tx: &Transaction<'_>, sql: &str) -> String {
    let messages = tx
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_recently_used_statements_are_closed_beyond_the_limit() {
    let (tenant, mut sluice) = md5_tenant("prep_lru", |t| {
        t.pool_size(1).line("max_prepared_statements = 3")
    });
    let mut client = connect(&sluice, &tenant).await;
    let mut statements = Vec::new();
    for i in 0..10 {
        let sql = format!("SELECT $1::int + {i}");
        let statement = client
            .prepare(&sql)
            .await
            .unwrap_or_else(|e| panic!("prepare {sql}: {}", error_text(&e)));
        statements.push(statement);
    }
    let mut x: u32 = 0x2545_f491;
    let mut most = 0;
    for round in 0..60 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let i = (x % 10) as i32;
        let tx = client.transaction().await.expect("BEGIN");
        let value: i32 = tx
            .query_one(&statements[i as usize], &[&round])
            .await
            .unwrap_or_else(|e| panic!("round {round}, statement {i}: {}", error_text(&e)))
            .get(0);
        assert_eq!(value, round + i, "round {round}, statement {i}");
        // The view lists the named statements of the server connection this runs on.
        let held: u32 = tx_scalar(&tx, "SELECT count(*) FROM pg_prepared_statements")
            .await
            .parse()
            .expect("a count");
        assert!(
            (1..=3).contains(&held),
            "round {round}: the server connection holds {held} prepared statements, \
             max_prepared_statements is 3"
        );
        most = most.max(held);
        tx.commit().await.expect("COMMIT");
    }
    assert_eq!(most, 3, "the server connection keeps up to the limit");
    assert_alive(&mut sluice);
}

/// Sends `messages` and returns what came back up to ReadyForQuery: the type bytes, and
/// for DataRow the first column and for ErrorResponse the SQLSTATE.
async fn exchange(conn: &mut crate::raw::RawConn, messages: &[Vec<u8>]) -> Vec<String> {
    conn.send(&messages.concat()).await;
    conn.messages_until_ready()
        .await
        .into_iter()
        .map(|(tag, body)| match tag {
            b'D' => format!("D {}", data_row(&body)[0].as_deref().unwrap_or("NULL")),
            b'E' => format!("E {}", field(&error_fields(&body), b'C')),
            b'Z' => format!("Z {}", body[0] as char),
            _ => (tag as char).to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_statement_name_can_be_reused_for_another_query() {
    let (tenant, mut sluice) = md5_tenant("prep_close", |t| t.pool_size(2));
    let mut conn = raw_login(&sluice, &tenant).await;
    let run = || [bind("", "s1", &[]), execute(""), sync()];

    let parsed = exchange(&mut conn, &[parse("s1", "SELECT 'A'", &[]), sync()]).await;
    assert_eq!(parsed, ["1", "Z I"]);
    assert_eq!(exchange(&mut conn, &run()).await, ["2", "D A", "C", "Z I"]);
    let closed = exchange(&mut conn, &[close_statement("s1"), sync()]).await;
    assert_eq!(closed, ["3", "Z I"], "CloseComplete");
    assert_eq!(
        exchange(&mut conn, &run()).await,
        ["E 26000", "Z I"],
        "a closed statement does not exist"
    );
    let mut reparse = vec![parse("s1", "SELECT 'B'", &[])];
    reparse.extend(run());
    assert_eq!(
        exchange(&mut conn, &reparse).await,
        ["1", "2", "D B", "C", "Z I"]
    );

    // On another server connection (the first is held by a transaction), s1 is B too.
    let holder = connect(&sluice, &tenant).await;
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let held = scalar(&holder, "SELECT pg_backend_pid()").await;
    let mut with_pid = run().to_vec();
    with_pid.insert(2, crate::raw::parse_bind_execute("SELECT pg_backend_pid()"));
    let answers = exchange(&mut conn, &with_pid).await;
    assert_eq!(answers[..3], ["2", "D B", "C"], "{answers:?}");
    let pid = answers[5].strip_prefix("D ").map(str::to_owned);
    assert_ne!(pid, held, "ran on the other server connection: {answers:?}");
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    assert_alive(&mut sluice);
}

/// PostgreSQL refuses a Parse under a name that is in use (42P05); a client relying on
/// that must not find its old statement silently replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_of_a_name_in_use_fails_as_on_postgres() {
    let (tenant, mut sluice) = md5_tenant("prep_dup_name", |t| t.pool_size(1));
    let mut conn = raw_login(&sluice, &tenant).await;
    let parsed = exchange(&mut conn, &[parse("s1", "SELECT 'A'", &[]), sync()]).await;
    assert_eq!(parsed, ["1", "Z I"]);
    let again = exchange(&mut conn, &[parse("s1", "SELECT 'B'", &[]), sync()]).await;
    assert_eq!(
        again,
        ["E 42P05", "Z I"],
        "prepared statement \"s1\" already exists"
    );
    let used = exchange(&mut conn, &[bind("", "s1", &[]), execute(""), sync()]).await;
    assert_eq!(
        used,
        ["2", "D A", "C", "Z I"],
        "s1 is still the first query"
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_injected_parse_is_the_error_of_the_clients_bind() {
    let (tenant, mut sluice) = md5_tenant("prep_inject_fail", |t| t.pool_size(2));
    let client = connect(&sluice, &tenant).await;
    client
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
        .await
        .expect("setup");
    let select = client.prepare("SELECT x FROM t").await.expect("prepare");
    let first: i32 = client.query_one(&select, &[]).await.expect("use").get(0);
    assert_eq!(first, 7);

    // The holder takes the server connection that has the statement; the client's next
    // use needs a new one, where sluice has to prepare the statement first.
    let holder = connect(&sluice, &tenant).await;
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let held = scalar(&holder, "SELECT pg_backend_pid()").await;
    superuser(&tenant, "DROP TABLE t");
    let e = client
        .query_one(&select, &[])
        .await
        .expect_err("the table is gone");
    assert_eq!(sqlstate(&e), Some("42P01"), "{}", error_text(&e));
    assert_ne!(
        scalar(&client, "SELECT pg_backend_pid()").await,
        held,
        "the client ran on the other server connection"
    );
    // The session goes on, and the statement works again once the table is back.
    assert_eq!(scalar(&client, "SELECT 1").await.as_deref(), Some("1"));
    client
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (8)")
        .await
        .expect("recreating t");
    let again: i32 = client
        .query_one(&select, &[])
        .await
        .unwrap_or_else(|e| panic!("after recreating t: {}", error_text(&e)))
        .get(0);
    assert_eq!(again, 8);
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_and_deallocate_all_forget_the_clients_statements() {
    let (tenant, mut sluice) = md5_tenant("prep_discard", |t| t.pool_size(2));
    let client = connect(&sluice, &tenant).await;
    for command in ["DISCARD ALL", "DEALLOCATE ALL", "deallocate all;"] {
        let old = client.prepare("SELECT $1::int").await.expect("prepare");
        let one: i32 = client.query_one(&old, &[&1]).await.expect("use").get(0);
        assert_eq!(one, 1);
        client.batch_execute(command).await.expect(command);
        let e = client
            .query_one(&old, &[&2])
            .await
            .expect_err("the statement was deallocated");
        assert_eq!(sqlstate(&e), Some("26000"), "{command}: {}", error_text(&e));
        let text = e.as_db_error().expect("db error").message().to_owned();
        assert!(
            text.contains("prepared statement") && text.contains("does not exist"),
            "{command}: {text}"
        );
        let fresh = client.prepare("SELECT $1::int").await.expect("prepare");
        let three: i32 = client.query_one(&fresh, &[&3]).await.expect("use").get(0);
        assert_eq!(three, 3, "{command}: a fresh prepare works");
    }
    assert_eq!(
        try_scalar(&client, "SELECT 'still here'")
            .await
            .expect("the session goes on")
            .as_deref(),
        Some("still here")
    );
    assert_alive(&mut sluice);
}

/// Holds the server connection a raw client just used inside a transaction, so the raw
/// client's next batch runs on another one; returns the holder and the held pid.
async fn hold_current_connection(sluice: &Sluice, tenant: &TenantDb) -> (Client, Option<String>) {
    let holder = connect(sluice, tenant).await;
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let held = scalar(&holder, "SELECT pg_backend_pid()").await;
    (holder, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_of_a_statement_prepared_on_another_connection() {
    let (tenant, mut sluice) = md5_tenant("prep_describe", |t| t.pool_size(2));
    let mut conn = raw_login(&sluice, &tenant).await;
    let parsed = exchange(
        &mut conn,
        &[parse("s1", "SELECT $1::int AS doubled", &[]), sync()],
    )
    .await;
    assert_eq!(parsed, ["1", "Z I"]);
    let (holder, held) = hold_current_connection(&sluice, &tenant).await;
    let described = exchange(
        &mut conn,
        &[
            crate::raw::describe_statement("s1"),
            crate::raw::parse_bind_execute("SELECT pg_backend_pid()"),
            sync(),
        ],
    )
    .await;
    assert_eq!(
        described[..2],
        ["t", "T"],
        "ParameterDescription, RowDescription: {described:?}"
    );
    assert_ne!(
        described[4].strip_prefix("D ").map(str::to_owned),
        held,
        "described on the other server connection: {described:?}"
    );
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    assert_alive(&mut sluice);
}

/// An error earlier in a batch makes the server skip the Close and Parse sluice injected
/// before a later Bind of the same batch: sluice must not count the statement as
/// prepared there, and prepares it again at the next use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_parse_skipped_after_an_error_is_injected_again() {
    let (tenant, mut sluice) = md5_tenant("prep_skipped", |t| t.pool_size(2));
    let mut conn = raw_login(&sluice, &tenant).await;
    let parsed = exchange(&mut conn, &[parse("s1", "SELECT $1::int + 1", &[]), sync()]).await;
    assert_eq!(parsed, ["1", "Z I"]);
    let (holder, _held) = hold_current_connection(&sluice, &tenant).await;
    let use_s1 = |n: &'static str| [bind("", "s1", &[Some(n)]), execute("")].concat();
    let failed = exchange(
        &mut conn,
        &[
            crate::raw::parse_bind_execute("SELECT 1/0"),
            use_s1("1"),
            sync(),
        ],
    )
    .await;
    assert_eq!(
        failed,
        ["1", "E 22012", "Z I"],
        "the rest of the batch is skipped"
    );
    for n in ["2", "3"] {
        let used = exchange(&mut conn, &[use_s1(n), sync()]).await;
        let expected = format!("D {}", n.parse::<i32>().expect("n") + 1);
        assert_eq!(used, ["2", expected.as_str(), "C", "Z I"]);
    }
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    assert_alive(&mut sluice);
}

/// On PostgreSQL a named Parse that fails creates no statement: a Bind of that name then
/// fails with 26000, and the name is free for a correct Parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_parse_leaves_no_statement_behind() {
    let (tenant, mut sluice) = md5_tenant("prep_failed_parse", |t| t.pool_size(1));
    let mut conn = raw_login(&sluice, &tenant).await;
    let parsed = exchange(&mut conn, &[parse("bad", "SELEC 1", &[]), sync()]).await;
    assert_eq!(parsed, ["E 42601", "Z I"]);
    let used = exchange(&mut conn, &[bind("", "bad", &[]), execute(""), sync()]).await;
    assert_eq!(used, ["E 26000", "Z I"], "no statement \"bad\" exists");
    let mut fixed = vec![parse("bad", "SELECT 'fixed'", &[])];
    fixed.extend([bind("", "bad", &[]), execute(""), sync()]);
    assert_eq!(
        exchange(&mut conn, &fixed).await,
        ["1", "2", "D fixed", "C", "Z I"]
    );
    assert_alive(&mut sluice);
}
