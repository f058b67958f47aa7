//! Cancel requests through sluice. Clients get sluice-issued BackendKeyData; a
//! CancelRequest carrying it reaches the server connection running that client's query
//! (57014, and the session goes on), an unknown or wrong key cancels nothing, a client
//! still queued for a server connection is ended with FATAL 57014 without disturbing the
//! client it waits for, and cancelling an idle client — or a client whose last server
//! connection now runs someone else's query — does no harm.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::common::{
    assert_alive, direct_client, md5_tenant, raw_scalar, scalar, superuser, wait_until_running,
    PROMPTLY,
};
use crate::harness::{connect, error_text, literal, sqlstate, Sluice, TenantDb};
use crate::raw::{cancel_request, data_row, error_fields, field, query, Greeting, Next, RawConn};

async fn raw_login_with_key(sluice: &Sluice, tenant: &TenantDb) -> (RawConn, (i32, i32)) {
    let (conn, greeting): (RawConn, Greeting) = RawConn::login_md5_with(
        sluice.addr(),
        &tenant.user,
        &tenant.password,
        &tenant.database,
        &[],
    )
    .await;
    (conn, greeting.key.expect("BackendKeyData in the greeting"))
}

/// Sends a CancelRequest for `key` on a new connection and waits until sluice closed it
/// (it has handled the request then).
async fn send_cancel(sluice: &Sluice, (pid, secret): (i32, i32)) {
    let mut conn = RawConn::connect(sluice.addr()).await;
    conn.send(&cancel_request(pid, secret)).await;
    conn.expect_eof().await;
}

/// How many queries of the tenant matching `like` are running.
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

/// Waits for advisory lock 42 (held by a direct connection in the tests that use it),
/// then answers 'done'.
const BLOCKED_QUERY: &str = "SELECT 'done' FROM pg_advisory_lock(42), pg_advisory_unlock(42)";

/// Polls until PostgreSQL shows [`BLOCKED_QUERY`] running (waiting for the lock).
async fn wait_for_blocked_query(tenant: &TenantDb) {
    let t = tenant.clone();
    tokio::task::spawn_blocking(move || wait_until_running(&t, "SELECT 'done' FROM%"))
        .await
        .expect("polling thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_token_cancels_the_running_query_and_the_session_goes_on() {
    let (tenant, mut sluice) = md5_tenant("cancel_running", |t| t.pool_size(2));
    let client = connect(&sluice, &tenant).await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let result = client.simple_query("SELECT pg_sleep(30)").await.map(drop);
        (client, result)
    });
    let t = tenant.clone();
    tokio::task::spawn_blocking(move || wait_until_running(&t, "SELECT pg_sleep(30)"))
        .await
        .expect("polling thread");

    let asked = Instant::now();
    token
        .cancel_query(NoTls)
        .await
        .unwrap_or_else(|e| panic!("sending the cancel: {}", error_text(&e)));
    let (client, result) = tokio::time::timeout(PROMPTLY, sleeper)
        .await
        .expect("the query ended soon after the cancel")
        .expect("sleeper task");
    let e = result.expect_err("the sleep was cancelled");
    assert_eq!(sqlstate(&e), Some("57014"), "{}", error_text(&e));
    assert!(asked.elapsed() < PROMPTLY, "took {:?}", asked.elapsed());
    assert_eq!(running(&tenant, "SELECT pg_sleep(30)"), "0");
    assert_eq!(
        scalar(&client, "SELECT 'next'").await.as_deref(),
        Some("next")
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cancel_keys_cancel_nothing() {
    let (tenant, mut sluice) = md5_tenant("cancel_forged", |t| t.pool_size(2));
    let (mut conn, (pid, secret)) = raw_login_with_key(&sluice, &tenant).await;
    // The query waits for a lock held outside sluice until the forged cancels are done.
    let blocker = direct_client(&tenant).await;
    blocker
        .batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .expect("lock");
    conn.send(&query(BLOCKED_QUERY)).await;
    wait_for_blocked_query(&tenant).await;

    let unknown_pid = (pid ^ 0x1234_5678) & 0x7fff_ffff;
    send_cancel(&sluice, (unknown_pid, secret)).await;
    send_cancel(&sluice, (unknown_pid, 0x0bad_cafe)).await;
    send_cancel(&sluice, (pid, secret ^ 1)).await;
    send_cancel(&sluice, (pid, !secret)).await;
    blocker
        .batch_execute("SELECT pg_advisory_unlock(42)")
        .await
        .expect("unlock");

    let answers = conn.messages_until_ready().await;
    let errors: Vec<_> = answers
        .iter()
        .filter(|(tag, _)| *tag == b'E')
        .map(|(_, body)| error_fields(body))
        .collect();
    assert!(
        errors.is_empty(),
        "a forged key cancelled the query: {errors:?}"
    );
    let rows: Vec<_> = answers
        .iter()
        .filter(|(tag, _)| *tag == b'D')
        .map(|(_, body)| data_row(body))
        .collect();
    assert_eq!(rows, [vec![Some("done".to_owned())]]);
    assert_eq!(
        raw_scalar(&mut conn, "SELECT 1").await.as_deref(),
        Some("1")
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_client_ends_it_with_57014_and_spares_the_holder() {
    let (tenant, mut sluice) = md5_tenant("cancel_queued", |t| t.pool_size(1));
    let holder = connect(&sluice, &tenant).await;
    holder
        .batch_execute("CREATE TABLE t (x int); BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("the holder's transaction");

    let (mut waiter, key) = raw_login_with_key(&sluice, &tenant).await;
    waiter.send(&query("INSERT INTO t VALUES (2)")).await;
    // The waiter is queued once sluice has read its query; until then a cancel finds it
    // idle and does nothing, so cancel until it answers.
    let asked = Instant::now();
    let answer = loop {
        send_cancel(&sluice, key).await;
        match waiter.try_next_within(Duration::from_millis(200)).await {
            Some(answer) => break answer,
            None => assert!(
                asked.elapsed() < PROMPTLY,
                "the queued client was not cancelled within {PROMPTLY:?}"
            ),
        }
    };
    let Next::Message(tag, body) = answer else {
        panic!("the waiter was closed without an error");
    };
    assert_eq!(tag, b'E', "an ErrorResponse");
    let fields = error_fields(&body);
    assert_eq!(field(&fields, b'C'), "57014", "{fields:?}");
    assert_eq!(field(&fields, b'S'), "FATAL", "{fields:?}");
    waiter.expect_eof().await;

    // The holder's transaction is untouched, the waiter's INSERT never ran, and the
    // server connection is free for the next client.
    assert_eq!(
        scalar(&holder, "SELECT count(*) FROM t").await.as_deref(),
        Some("1")
    );
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    let next = connect(&sluice, &tenant).await;
    assert_eq!(
        scalar(&next, "SELECT string_agg(x::text, ',') FROM t")
            .await
            .as_deref(),
        Some("1")
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_idle_client_does_no_harm() {
    let (tenant, mut sluice) = md5_tenant("cancel_idle", |t| t.pool_size(1));
    let (mut idle, idle_key) = raw_login_with_key(&sluice, &tenant).await;
    raw_scalar(&mut idle, "CREATE TABLE t (x int); SELECT 1").await;

    // Idle, outside a transaction: it holds no server connection. Its last one now runs
    // another client's query, which the cancel must not hit.
    let (mut busy, _) = raw_login_with_key(&sluice, &tenant).await;
    let blocker = direct_client(&tenant).await;
    blocker
        .batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .expect("lock");
    busy.send(&query(BLOCKED_QUERY)).await;
    wait_for_blocked_query(&tenant).await;
    send_cancel(&sluice, idle_key).await;
    blocker
        .batch_execute("SELECT pg_advisory_unlock(42)")
        .await
        .expect("unlock");
    let answers = busy.messages_until_ready().await;
    for (tag, body) in &answers {
        assert_ne!(
            *tag,
            b'E',
            "the other client's query was hit: {:?}",
            error_fields(body)
        );
    }
    let rows: Vec<_> = answers
        .iter()
        .filter(|(tag, _)| *tag == b'D')
        .map(|(_, body)| data_row(body))
        .collect();
    assert_eq!(rows, [vec![Some("done".to_owned())]]);
    assert_eq!(
        raw_scalar(&mut idle, "SELECT 2").await.as_deref(),
        Some("2")
    );

    // Idle inside a transaction: PostgreSQL ignores a cancel while it waits for a command.
    raw_scalar(&mut idle, "BEGIN; INSERT INTO t VALUES (1); SELECT 1").await;
    send_cancel(&sluice, idle_key).await;
    // The server takes the signal asynchronously; give it a moment to arrive before the
    // next command, or PostgreSQL itself would apply it to that command.
    tokio::time::sleep(Duration::from_millis(200)).await;
    raw_scalar(&mut idle, "INSERT INTO t VALUES (2); COMMIT; SELECT 1").await;
    assert_eq!(
        raw_scalar(&mut idle, "SELECT count(*) FROM t")
            .await
            .as_deref(),
        Some("2"),
        "the transaction went on and committed"
    );
    assert_alive(&mut sluice);
}
