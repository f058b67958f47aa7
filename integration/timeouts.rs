//! Timeouts (tenant keys; "0s" turns one off): `query_timeout` cancels a query running
//! too long (the client gets the server's 57014 and goes on), `idle_transaction_timeout`
//! ends a client idle inside a transaction (FATAL 25P03, the transaction rolled back),
//! `client_idle_timeout` ends one idle outside a transaction (FATAL 57P05),
//! `server_idle_timeout` closes server connections idle in the pool, and
//! `server_lifetime` keeps an old server connection from being reused, without cutting
//! it while a client is using it.

use std::time::{Duration, Instant};

use crate::common::{
    assert_alive, md5_tenant, raw_login, raw_scalar, scalar, server_pids, superuser, try_scalar,
    PROMPTLY,
};
use crate::harness::{connect, error_text, literal, poll_until, sqlstate};
use crate::raw::{error_fields, field, query, Next};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_a_long_query_and_the_session_goes_on() {
    let (tenant, mut sluice) = md5_tenant("to_query", |t| {
        t.pool_size(2).line("query_timeout = \"1s\"")
    });
    let client = connect(&sluice, &tenant).await;

    let started = Instant::now();
    let e = try_scalar(&client, "SELECT pg_sleep(5)")
        .await
        .expect_err("cancelled by query_timeout");
    let took = started.elapsed();
    assert_eq!(sqlstate(&e), Some("57014"), "{}", error_text(&e));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cancelled after {took:?}, query_timeout is 1s"
    );
    assert_eq!(
        scalar(&client, "SELECT 'next'").await.as_deref(),
        Some("next")
    );

    // The extended protocol too.
    let started = Instant::now();
    let e = client
        .execute("SELECT pg_sleep($1)", &[&5.0f64])
        .await
        .expect_err("cancelled by query_timeout");
    assert_eq!(sqlstate(&e), Some("57014"), "{}", error_text(&e));
    assert!(started.elapsed() < Duration::from_secs(4));

    // The limit is per query: a transaction of short queries may take longer.
    let started = Instant::now();
    client.batch_execute("BEGIN").await.expect("BEGIN");
    for _ in 0..2 {
        client
            .batch_execute("SELECT pg_sleep(0.6)")
            .await
            .unwrap_or_else(|e| panic!("a 0.6 s query: {}", error_text(&e)));
    }
    client.batch_execute("COMMIT").await.expect("COMMIT");
    assert!(started.elapsed() >= Duration::from_millis(1200));
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_ends_the_client_and_rolls_back() {
    let (tenant, mut sluice) = md5_tenant("to_idle_tx", |t| {
        t.pool_size(2).line("idle_transaction_timeout = \"1s\"")
    });
    let setup = connect(&sluice, &tenant).await;
    setup
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .expect("CREATE TABLE");
    // Idle outside a transaction for as long: not affected.
    let mut outside = raw_login(&sluice, &tenant).await;

    let mut conn = raw_login(&sluice, &tenant).await;
    conn.send(&query("BEGIN; INSERT INTO t VALUES (1)")).await;
    let tags = conn.read_until_ready().await;
    assert_eq!(tags.last(), Some(&b'Z'));
    let idle_since = Instant::now();
    let (tag, body) = match conn.next_within(PROMPTLY).await {
        Next::Message(tag, body) => (tag, body),
        Next::Eof => panic!("closed without an error"),
    };
    let waited = idle_since.elapsed();
    assert_eq!(tag, b'E');
    let fields = error_fields(&body);
    assert_eq!(field(&fields, b'C'), "25P03", "{fields:?}");
    assert_eq!(field(&fields, b'S'), "FATAL", "{fields:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "ended after {waited:?} idle, idle_transaction_timeout is 1s"
    );
    conn.expect_eof().await;

    // Rolled back: the row is gone and no session of the tenant idles in a transaction.
    let in_transaction = format!(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE usename = {} AND state LIKE 'idle in transaction%'",
        literal(&tenant.user)
    );
    let clean = poll_until(PROMPTLY, Duration::from_millis(50), || {
        (superuser(&tenant, &in_transaction) == "0").then_some(())
    });
    assert!(
        clean.is_some(),
        "a server session still idles in the transaction"
    );
    assert_eq!(superuser(&tenant, "SELECT count(*) FROM t"), "0");
    assert_eq!(
        raw_scalar(&mut outside, "SELECT 'outside'")
            .await
            .as_deref(),
        Some("outside"),
        "a client idle outside a transaction stays"
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_ends_an_idle_client_with_57p05() {
    let (tenant, mut sluice) = md5_tenant("to_client_idle", |t| {
        t.pool_size(2).line("client_idle_timeout = \"1s\"")
    });
    // Inside a transaction, client_idle_timeout does not apply.
    let mut in_transaction = raw_login(&sluice, &tenant).await;
    raw_scalar(&mut in_transaction, "BEGIN; SELECT 1").await;

    let mut conn = raw_login(&sluice, &tenant).await;
    // Active clients stay: 3 queries 400 ms apart span more than the timeout.
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let sql = format!("SELECT {i}");
        assert_eq!(raw_scalar(&mut conn, &sql).await, Some(i.to_string()));
    }
    let idle_since = Instant::now();
    let (tag, body) = match conn.next_within(PROMPTLY).await {
        Next::Message(tag, body) => (tag, body),
        Next::Eof => panic!("closed without an error"),
    };
    let waited = idle_since.elapsed();
    assert_eq!(tag, b'E');
    let fields = error_fields(&body);
    assert_eq!(field(&fields, b'C'), "57P05", "{fields:?}");
    assert_eq!(field(&fields, b'S'), "FATAL", "{fields:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "ended after {waited:?} idle, client_idle_timeout is 1s"
    );
    conn.expect_eof().await;

    assert_eq!(
        raw_scalar(&mut in_transaction, "SELECT 'still in'; COMMIT")
            .await
            .as_deref(),
        Some("still in")
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_closes_idle_server_connections() {
    let (tenant, mut sluice) = md5_tenant("to_server_idle", |t| {
        t.pool_size(2).line("server_idle_timeout = \"1s\"")
    });
    let client = connect(&sluice, &tenant).await;
    let pid = scalar(&client, "SELECT pg_backend_pid()")
        .await
        .expect("pid");
    assert!(server_pids(&tenant).contains(&pid));

    let gone = poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
        server_pids(&tenant).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "the tenant's server connections are still open 15 s after their last use \
         (server_idle_timeout is 1s): {:?}",
        server_pids(&tenant)
    );
    // The client still works, on a new server connection.
    let new_pid = scalar(&client, "SELECT pg_backend_pid()")
        .await
        .expect("pid");
    assert_ne!(new_pid, pid);
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_retires_old_server_connections_between_transactions() {
    let (tenant, mut sluice) = md5_tenant("to_lifetime", |t| {
        t.pool_size(1).line("server_lifetime = \"1s\"")
    });
    let client = connect(&sluice, &tenant).await;
    let pid = || scalar(&client, "SELECT pg_backend_pid()");
    let first = pid().await;
    assert_eq!(pid().await, first, "a young connection is reused");

    client.batch_execute("BEGIN").await.expect("BEGIN");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        pid().await,
        first,
        "a connection past its lifetime is not cut while a transaction uses it"
    );
    client.batch_execute("COMMIT").await.expect("COMMIT");
    let next = pid().await;
    assert_ne!(
        next, first,
        "a connection older than server_lifetime was reused"
    );
    let first = first.expect("pid");
    let closed = poll_until(PROMPTLY, Duration::from_millis(50), || {
        (!server_pids(&tenant).contains(&first)).then_some(())
    });
    assert!(
        closed.is_some(),
        "the retired connection {first} is still open"
    );
    assert_alive(&mut sluice);
}
