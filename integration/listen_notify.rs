//! LISTEN/NOTIFY under transaction pooling (issue 13, part 3): sluice answers LISTEN and
//! UNLISTEN itself and delivers each notification to exactly the clients listening on its
//! channel, between their queries, in order; a client that never reads is disconnected
//! with an error past its queue; the listening connection counts in the budget and closes
//! after the last listener leaves. Every test runs on a pool smaller than its busy clients,
//! so pooled connections rotate while notifications flow.

use std::time::{Duration, Instant};

use crate::common::{assert_alive, md5_tenant, raw_login, raw_scalar, superuser};
use crate::harness::{literal, poll_until, TenantDb};
use crate::raw::{data_row, error_fields, field, query, Next, RawConn};

/// Sends a simple query and asserts it succeeded with `tag` as its CommandComplete.
async fn command(conn: &mut RawConn, sql: &str, tag: &str) {
    conn.send(&query(sql)).await;
    let answers = conn.messages_until_ready().await;
    let completed: Vec<String> = answers
        .iter()
        .map(|(t, body)| match t {
            b'E' => panic!("{sql}: {:?}", error_fields(body)),
            b'C' => String::from_utf8_lossy(&body[..body.len() - 1]).into_owned(),
            _ => String::new(),
        })
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(completed, [tag], "{sql}");
}

/// A notification's channel and payload.
fn notification(body: &[u8]) -> (String, String) {
    let rest = &body[4..];
    let mut parts = rest.split(|&b| b == 0);
    let channel = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
    let payload = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
    (channel, payload)
}

/// The notifications that arrive within `quiet` of each other, as (channel, payload).
async fn notifications(conn: &mut RawConn, expected: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while got.len() < expected {
        match conn.next_within(Duration::from_secs(10)).await {
            Next::Message(b'A', body) => got.push(notification(&body)),
            Next::Message(tag, body) => panic!(
                "expected a notification, got '{}': {:?}",
                char::from(tag),
                error_fields(&body)
            ),
            Next::Eof => panic!("connection closed with {got:?} received"),
        }
    }
    got
}

/// Asserts nothing at all arrives within `wait`.
async fn silent(conn: &mut RawConn, wait: Duration, who: &str) {
    if let Some(next) = conn.try_next_within(wait).await {
        panic!("{who} received {next:?}");
    }
}

/// Busy neighbours of the tenant looping short transactions until told to stop; each
/// checks every one of its answers and never receives a notification.
fn neighbours(
    sluice: &crate::harness::Sluice,
    tenant: &TenantDb,
    count: usize,
) -> (
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<usize>>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tasks = (0..count)
        .map(|i| {
            let addr = sluice.addr();
            let tenant = tenant.clone();
            let stopped = stopped.clone();
            tokio::spawn(async move {
                let mut conn =
                    RawConn::login_md5(addr, &tenant.user, &tenant.password, &tenant.database)
                        .await;
                let mut rounds = 0;
                while !*stopped.borrow() {
                    conn.send(&query(&format!("SELECT {i}"))).await;
                    for (tag, body) in conn.messages_until_ready().await {
                        assert_ne!(tag, b'A', "a neighbour received a notification");
                        assert_ne!(tag, b'E', "neighbour error: {:?}", error_fields(&body));
                        if tag == b'D' {
                            assert_eq!(data_row(&body), [Some(i.to_string())]);
                        }
                    }
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    (stop, tasks)
}

async fn stop(stop: tokio::sync::watch::Sender<bool>, tasks: Vec<tokio::task::JoinHandle<usize>>) {
    stop.send(true).unwrap();
    for task in tasks {
        assert!(task.await.expect("neighbour") > 0, "a neighbour never ran");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_exactly_the_clients_listening_on_their_channel() {
    let (tenant, mut sluice) = md5_tenant("ln_fanout", |t| t.pool_size(2));
    let (stopper, tasks) = neighbours(&sluice, &tenant, 6);
    let mut one = raw_login(&sluice, &tenant).await;
    let mut both = raw_login(&sluice, &tenant).await;
    let mut two = raw_login(&sluice, &tenant).await;
    let mut deaf = raw_login(&sluice, &tenant).await;
    let mut notifier = raw_login(&sluice, &tenant).await;
    command(&mut one, "LISTEN ch1", "LISTEN").await;
    command(&mut both, "listen ch1", "LISTEN").await;
    command(&mut both, "LISTEN \"ch2\"", "LISTEN").await;
    command(&mut two, "LISTEN ch2", "LISTEN").await;
    // The deaf client listened once and stopped: it must get nothing either.
    command(&mut deaf, "LISTEN ch1", "LISTEN").await;
    command(&mut deaf, "UNLISTEN ch1", "UNLISTEN").await;

    for i in 0..20 {
        command(&mut notifier, &format!("NOTIFY ch1, 'a{i}'"), "NOTIFY").await;
        raw_scalar(&mut notifier, &format!("SELECT pg_notify('ch2', 'b{i}')")).await;
    }
    let ch1: Vec<(String, String)> = (0..20).map(|i| ("ch1".into(), format!("a{i}"))).collect();
    let ch2: Vec<(String, String)> = (0..20).map(|i| ("ch2".into(), format!("b{i}"))).collect();
    assert_eq!(notifications(&mut one, 20).await, ch1, "ch1 in order");
    assert_eq!(notifications(&mut two, 20).await, ch2, "ch2 in order");
    let mut seen = notifications(&mut both, 40).await;
    let (mut got1, mut got2): (Vec<_>, Vec<_>) = seen.drain(..).partition(|(c, _)| c == "ch1");
    assert_eq!(got1, ch1);
    assert_eq!(got2, ch2);
    got1.clear();
    got2.clear();
    silent(
        &mut deaf,
        Duration::from_millis(300),
        "the client that unlistened",
    )
    .await;
    silent(&mut notifier, Duration::from_millis(100), "the notifier").await;
    silent(
        &mut one,
        Duration::from_millis(100),
        "ch1's listener (no ch2)",
    )
    .await;
    stop(stopper, tasks).await;
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_waits_until_the_listeners_query_is_answered() {
    let (tenant, mut sluice) = md5_tenant("ln_between", |t| t.pool_size(2));
    let mut listener = raw_login(&sluice, &tenant).await;
    let mut notifier = raw_login(&sluice, &tenant).await;
    command(&mut listener, "LISTEN ch", "LISTEN").await;
    listener.send(&query("SELECT pg_sleep(0.5), 'done'")).await;
    command(&mut notifier, "NOTIFY ch, 'while you slept'", "NOTIFY").await;
    // Everything of the query comes first, then the notification.
    let answers = listener.messages_until_ready().await;
    assert!(
        answers.iter().all(|(tag, _)| *tag != b'A'),
        "a notification arrived inside the query's answers"
    );
    assert_eq!(
        notifications(&mut listener, 1).await,
        [("ch".to_owned(), "while you slept".to_owned())]
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_where_sluice_cannot_answer_it_is_refused_with_0a000() {
    let (tenant, mut sluice) = md5_tenant("ln_refused", |t| t.pool_size(1));
    let mut conn = raw_login(&sluice, &tenant).await;
    for sql in ["SELECT 1; LISTEN ch", "BEGIN; LISTEN ch; COMMIT"] {
        conn.send(&query(sql)).await;
        let answers = conn.messages_until_ready().await;
        let error = answers
            .iter()
            .find(|(tag, _)| *tag == b'E')
            .unwrap_or_else(|| panic!("{sql}: no error"));
        let fields = error_fields(&error.1);
        assert_eq!(field(&fields, b'C'), "0A000", "{sql}");
        assert!(field(&fields, b'M').contains("LISTEN"), "{fields:?}");
    }
    // Inside a transaction block: refused, and the block is aborted as after any error.
    command(&mut conn, "BEGIN", "BEGIN").await;
    conn.send(&query("LISTEN ch")).await;
    let answers = conn.messages_until_ready().await;
    assert!(answers.iter().any(|(tag, _)| *tag == b'E'));
    assert_eq!(
        answers.last().map(|(_, body)| body.clone()),
        Some(b"E".to_vec())
    );
    command(&mut conn, "ROLLBACK", "ROLLBACK").await;
    // Nothing listens on a pooled connection afterwards.
    let listening = superuser(
        &tenant,
        "SELECT count(*) FROM pg_stat_activity a, pg_listening_channels() c \
         WHERE a.pid = pg_backend_pid()",
    );
    assert_eq!(listening, "0");
    assert_eq!(
        raw_scalar(&mut conn, "SELECT 'still fine'")
            .await
            .as_deref(),
        Some("still fine")
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listening_connection_counts_and_closes_after_the_last_listener() {
    let (tenant, mut sluice) = md5_tenant("ln_budget", |t| t.pool_size(1));
    let count = || {
        superuser(
            &tenant,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = {} AND query LIKE 'LISTEN%'",
                literal(&tenant.user)
            ),
        )
    };
    let mut a = raw_login(&sluice, &tenant).await;
    let mut b = raw_login(&sluice, &tenant).await;
    command(&mut a, "LISTEN x", "LISTEN").await;
    command(&mut b, "LISTEN y", "LISTEN").await;
    assert_eq!(count(), "1", "one listening connection for the tenant");
    // Its pool of one lets the tenant's own pool of one serve queries meanwhile.
    assert_eq!(raw_scalar(&mut a, "SELECT 7").await.as_deref(), Some("7"));
    command(&mut a, "UNLISTEN *", "UNLISTEN").await;
    drop(b);
    let closed = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        (count() == "0").then_some(())
    });
    assert!(
        closed.is_some(),
        "the listening connection outlived its last listener"
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_never_reads_is_disconnected_with_an_error() {
    let (tenant, mut sluice) = md5_tenant("ln_overflow", |t| t.pool_size(2));
    let mut sleeper = raw_login(&sluice, &tenant).await;
    let mut reader = raw_login(&sluice, &tenant).await;
    let mut notifier = raw_login(&sluice, &tenant).await;
    command(&mut sleeper, "LISTEN flood", "LISTEN").await;
    command(&mut reader, "LISTEN flood", "LISTEN").await;
    // The reader reads all along; the sleeper does not read at all.
    let reading = tokio::spawn(async move { notifications(&mut reader, 3000).await });
    // 3,000 notifications of 4 KB: more than the socket buffers and the queue of 1,024
    // hold for a client that does not read.
    let started = Instant::now();
    for _ in 0..3 {
        raw_scalar(
            &mut notifier,
            "SELECT count(pg_notify('flood', i::text || repeat('x', 4000))) \
             FROM generate_series(1, 1000) i",
        )
        .await;
    }
    // The reader gets all of them, in order.
    let got = reading.await.expect("reader");
    for (i, (_, payload)) in got.iter().enumerate() {
        let n: usize = payload.trim_end_matches('x').parse().unwrap();
        assert_eq!(n, i % 1000 + 1, "out of order at {i}");
    }
    // The sleeper, reading at last, finds notifications, then an error, then the end.
    let mut delivered = 0;
    let error = loop {
        match sleeper.next_within(Duration::from_secs(10)).await {
            Next::Message(b'A', _) => delivered += 1,
            Next::Message(b'E', body) => break error_fields(&body),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(field(&error, b'C'), "53400", "{error:?}");
    assert!(delivered < 3000, "it got everything: {delivered}");
    sleeper.expect_eof().await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_listening_connection_ends_its_listeners_with_an_error() {
    let (tenant, mut sluice) = md5_tenant("ln_lost", |t| t.pool_size(1));
    let mut listener = raw_login(&sluice, &tenant).await;
    let mut other = raw_login(&sluice, &tenant).await;
    command(&mut listener, "LISTEN gone", "LISTEN").await;
    superuser(
        &tenant,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = {} AND query LIKE 'LISTEN%'",
            literal(&tenant.user)
        ),
    );
    let message = listener.expect_error_then_eof("08006").await;
    assert!(
        message.contains("notifications may have been missed"),
        "{message}"
    );
    // Others are not affected.
    assert_eq!(
        raw_scalar(&mut other, "SELECT 1").await.as_deref(),
        Some("1")
    );
    assert_alive(&mut sluice);
}
