//! Nothing a client leaves behind reaches the next client (PRODUCT.md, "What must work"):
//! a client that vanishes mid-transaction, mid-query, mid-COPY, before the Sync of an
//! extended-protocol batch or while a huge result streams, or that sends Terminate inside
//! a transaction, leaves no open transaction, lock or row on the server connection the
//! next client gets, and a running query is cancelled rather than waited for. In session
//! mode no SET, temp table, prepared statement or advisory lock survives either, and a
//! second client waits for the one connection.
//!
//! Every tenant here has `pool_size = 1`, so the next client necessarily gets the very
//! server connection (or its replacement) the departed client was using.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::common::{
    assert_alive, connect_abortable, connect_when_free, cut, identity, refused_login, scalar,
    PROMPTLY,
};
use crate::harness::{
    connect, conninfo, error_text, literal, pg_command, poll_until, sqlstate, Postgres, Sluice,
    SluiceConfig, Tenant, TenantDb,
};
use crate::raw::{message, parse_bind_execute, query, RawConn};

/// Sluice with one tenant whose pool is a single connection (transaction mode unless
/// `session`), and a committed, empty table `t`. Clients authenticate with md5 so raw
/// clients ([`RawConn`]) can log in too.
async fn one_connection_tenant(name: &str, session: bool) -> (TenantDb, Sluice) {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant(name);
    let mut config = Tenant::new(&tenant).pool_size(1).auth_type("md5");
    if session {
        config = config.pool_mode("session");
    }
    let sluice = Sluice::start(&SluiceConfig::new(pg).tenant(config));
    let setup = connect(&sluice, &tenant).await;
    setup
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .expect("CREATE TABLE");
    (tenant, sluice)
}

async fn raw_login(sluice: &Sluice, tenant: &TenantDb) -> RawConn {
    RawConn::login_md5(
        sluice.addr(),
        &tenant.user,
        &tenant.password,
        &tenant.database,
    )
    .await
}

/// How many queries of the tenant matching `like` PostgreSQL shows as running.
fn running(tenant: &TenantDb, like: &str) -> String {
    superuser(
        tenant,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = {} \
             AND state = 'active' AND query LIKE {}",
            literal(&tenant.user),
            literal(like)
        ),
    )
}

/// Polls until PostgreSQL shows one query of the tenant matching `like` as running.
fn wait_until_running(tenant: &TenantDb, like: &str) {
    let seen = poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
        (running(tenant, like) == "1").then_some(())
    });
    assert!(seen.is_some(), "{like} never showed up in pg_stat_activity");
}

/// A child process that is SIGKILLed (and reaped) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the departing clients do before they go: an uncommitted row and the strongest
/// lock on `t`, inside an open transaction.
const DIRTY_TRANSACTION: &str =
    "BEGIN; INSERT INTO t VALUES (1); LOCK TABLE t IN ACCESS EXCLUSIVE MODE";

/// Superuser query in the tenant's database; psql output as a string.
fn superuser(tenant: &TenantDb, sql: &str) -> String {
    Postgres::shared().query_as_superuser_in(&tenant.database, sql)
}

fn exclusive_locks_on_t(tenant: &TenantDb) -> String {
    superuser(
        tenant,
        "SELECT count(*) FROM pg_locks \
         WHERE relation = 't'::regclass AND mode = 'AccessExclusiveLock' AND granted",
    )
}

/// The client's server connection is outside any transaction, sees none of the departed
/// client's rows, can take the lock at once, and nobody else holds a lock on `t`.
async fn assert_clean(client: &Client, tenant: &TenantDb) {
    assert_eq!(
        scalar(client, "SELECT txid_current_if_assigned()").await,
        None,
        "no transaction id assigned: not inside the departed client's transaction"
    );
    assert_eq!(
        scalar(client, "SELECT now() = statement_timestamp()")
            .await
            .as_deref(),
        Some("t"),
        "the transaction started with this statement"
    );
    assert_eq!(
        scalar(client, "SELECT count(*) FROM t").await.as_deref(),
        Some("0"),
        "none of the departed client's rows is visible"
    );
    let started = Instant::now();
    client
        .batch_execute(
            "BEGIN; SET LOCAL lock_timeout = '2s'; \
             LOCK TABLE t IN ACCESS EXCLUSIVE MODE; COMMIT",
        )
        .await
        .unwrap_or_else(|e| panic!("taking the lock: {}", error_text(&e)));
    assert!(started.elapsed() < PROMPTLY, "the lock was free at once");
    assert_eq!(exclusive_locks_on_t(tenant), "0");
    let idle_in_transaction = superuser(
        tenant,
        &format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = {} AND state LIKE 'idle in transaction%'",
            literal(&tenant.user)
        ),
    );
    assert_eq!(
        idle_in_transaction, "0",
        "no session of the tenant idles in a transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cut_mid_transaction_leaves_no_lock_or_rows() {
    let (tenant, mut sluice) = one_connection_tenant("hyg_cut_in_tx", false).await;

    let (departing, task) = connect_abortable(&sluice, &tenant).await;
    departing
        .batch_execute(DIRTY_TRANSACTION)
        .await
        .expect("the dirty transaction");
    assert_eq!(
        exclusive_locks_on_t(&tenant),
        "1",
        "the lock is held before the cut"
    );
    cut(departing, task).await;

    let next = connect(&sluice, &tenant).await;
    assert_clean(&next, &tenant).await;
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_query_is_cancelled_and_rolled_back() {
    let (tenant, mut sluice) = one_connection_tenant("hyg_kill_mid_query", false).await;

    let mut psql = pg_command("psql", &tenant.password);
    psql.args(["-X", "-d"])
        .arg(conninfo(&sluice, &tenant.user, &tenant.database))
        .arg("-c")
        .arg(format!("{DIRTY_TRANSACTION}; SELECT pg_sleep(30)"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let psql = KillOnDrop(psql.spawn().expect("starting psql"));
    wait_until_running(&tenant, "%pg_sleep(30)");
    drop(psql);

    let asked = Instant::now();
    let next = connect(&sluice, &tenant).await;
    assert_eq!(scalar(&next, "SELECT 1").await.as_deref(), Some("1"));
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the next client waited {waited:?}: the 30 s sleep was not cancelled"
    );
    assert_eq!(
        running(&tenant, "%pg_sleep(30)"),
        "0",
        "the sleep was cancelled"
    );
    assert_clean(&next, &tenant).await;
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_inside_a_transaction_rolls_it_back() {
    let (tenant, mut sluice) = one_connection_tenant("hyg_terminate_in_tx", false).await;

    let departing = connect(&sluice, &tenant).await;
    departing
        .batch_execute(DIRTY_TRANSACTION)
        .await
        .expect("the dirty transaction");
    assert_eq!(
        exclusive_locks_on_t(&tenant),
        "1",
        "the lock is held before Terminate"
    );
    // Dropping the last handle makes tokio-postgres send Terminate and close.
    drop(departing);

    let next = connect(&sluice, &tenant).await;
    assert_clean(&next, &tenant).await;
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_discards_session_state_before_reuse() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("hyg_session_state");
    let config =
        SluiceConfig::new(pg).tenant(Tenant::new(&tenant).pool_mode("session").pool_size(1));
    let mut sluice = Sluice::start(&config);

    let first = connect(&sluice, &tenant).await;
    first
        .batch_execute(
            "SET application_name = 'leak'; CREATE TEMP TABLE t (x int); \
             PREPARE p AS SELECT 1; SELECT pg_advisory_lock(42)",
        )
        .await
        .expect("leaving session state behind");
    let first_pid = scalar(&first, "SELECT pg_backend_pid()").await;
    // The state is really there while the first client is connected.
    assert_eq!(
        scalar(&first, "SHOW application_name").await.as_deref(),
        Some("leak")
    );
    assert_eq!(
        scalar(&first, "SELECT count(*) FROM pg_prepared_statements")
            .await
            .as_deref(),
        Some("1")
    );
    drop(first);

    let next = connect(&sluice, &tenant).await;
    assert_eq!(
        scalar(&next, "SELECT pg_backend_pid()").await,
        first_pid,
        "the one server connection was reset and reused, not replaced"
    );
    let application_name = scalar(&next, "SHOW application_name").await;
    assert_ne!(application_name.as_deref(), Some("leak"));
    assert_eq!(
        scalar(&next, "SELECT to_regclass('pg_temp.t') IS NULL")
            .await
            .as_deref(),
        Some("t"),
        "no temp table t"
    );
    assert_eq!(
        scalar(&next, "SELECT count(*) FROM pg_prepared_statements")
            .await
            .as_deref(),
        Some("0")
    );
    assert_eq!(
        scalar(
            &next,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        )
        .await
        .as_deref(),
        Some("0")
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_second_client_waits_for_the_only_connection() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("hyg_session_wait");
    let config = SluiceConfig::new(pg).tenant(
        Tenant::new(&tenant)
            .pool_mode("session")
            .pool_size(1)
            .query_wait_timeout("1s"),
    );
    let mut sluice = Sluice::start(&config);

    let first = connect(&sluice, &tenant).await;
    let asked = Instant::now();
    // The only connection belongs to the first client.
    let e = refused_login(&sluice, &tenant.user, &tenant.password, &tenant.database).await;
    let waited = asked.elapsed();
    assert_eq!(sqlstate(&e), Some("53300"), "{}", error_text(&e));
    let name = format!("{}/{}", tenant.database, tenant.user);
    assert!(
        error_text(&e).contains(&name),
        "names the tenant: {}",
        error_text(&e)
    );
    assert!(
        waited >= Duration::from_millis(900),
        "refused after {waited:?}, before query_wait_timeout (1s)"
    );

    // The first client's session is untouched, and once it leaves the next one gets in.
    assert_eq!(
        identity(&first).await,
        (tenant.user.clone(), tenant.database.clone())
    );
    assert_eq!(scalar(&first, "SELECT 5").await.as_deref(), Some("5"));
    drop(first);
    let next = connect_when_free(&sluice, &tenant).await;
    assert_eq!(scalar(&next, "SELECT 6").await.as_deref(), Some("6"));
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_client_cut_mid_transaction_leaves_nothing() {
    let (tenant, mut sluice) = one_connection_tenant("hyg_session_cut", true).await;

    let (departing, task) = connect_abortable(&sluice, &tenant).await;
    departing
        .batch_execute(DIRTY_TRANSACTION)
        .await
        .expect("the dirty transaction");
    let departed_pid = scalar(&departing, "SELECT pg_backend_pid()").await;
    cut(departing, task).await;

    let next = connect(&sluice, &tenant).await;
    assert_eq!(
        scalar(&next, "SELECT pg_backend_pid()").await,
        departed_pid,
        "the one server connection was reset and reused"
    );
    assert_clean(&next, &tenant).await;
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_copy_in_stores_nothing() {
    let (tenant, mut sluice) = one_connection_tenant("hyg_cut_copy", false).await;

    // COPY outside a transaction block: only a CopyFail keeps the rows out; CopyDone
    // would commit them.
    let mut departing = raw_login(&sluice, &tenant).await;
    departing.send(&query("COPY t FROM STDIN")).await;
    let (tag, _) = departing.expect_message().await;
    assert_eq!(tag, b'G', "CopyInResponse");
    departing.send(&message(b'd', b"1\n2\n3\n")).await;
    drop(departing);

    let next = connect(&sluice, &tenant).await;
    assert_clean(&next, &tenant).await;
    assert_alive(&mut sluice);
}

/// Extended protocol without the closing Sync: PostgreSQL commits the implicit
/// transaction of Parse/Bind/Execute only at Sync, and rolls it back when the client
/// disconnects first. Through sluice the row must not be committed either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_before_sync_commits_nothing() {
    let (tenant, mut sluice) = one_connection_tenant("hyg_cut_unsynced", false).await;

    let mut departing = raw_login(&sluice, &tenant).await;
    let mut batch = parse_bind_execute("INSERT INTO t VALUES (1)");
    batch.extend(message(b'H', b"")); // Flush: the server runs the INSERT and says so
    departing.send(&batch).await;
    let mut tags = Vec::new();
    while tags.last() != Some(&b'C') {
        let (tag, body) = departing.expect_message().await;
        assert_ne!(tag, b'E', "{:?}", crate::raw::error_fields(&body));
        tags.push(tag);
    }
    assert_eq!(tags, b"12C", "ParseComplete, BindComplete, CommandComplete");
    drop(departing);

    let next = connect(&sluice, &tenant).await;
    assert_clean(&next, &tenant).await;
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_while_a_huge_result_streams_is_cancelled() {
    let (tenant, mut sluice) = one_connection_tenant("hyg_cut_streaming", false).await;

    // About 2 GB of rows that the client never reads.
    let mut departing = raw_login(&sluice, &tenant).await;
    let huge = "SELECT repeat('x', 1000) FROM generate_series(1, 2000000)";
    departing.send(&query(huge)).await;
    let like = "%generate_series(1, 2000000)";
    wait_until_running(&tenant, like);
    drop(departing);

    let asked = Instant::now();
    let next = connect(&sluice, &tenant).await;
    assert_eq!(scalar(&next, "SELECT 1").await.as_deref(), Some("1"));
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the next client waited {waited:?}"
    );
    assert_eq!(running(&tenant, like), "0", "the query was cancelled");
    assert_clean(&next, &tenant).await;
    assert_alive(&mut sluice);
}
