//! Pipelining in transaction mode: a client may send several Sync-terminated batches
//! before reading any answer, and Flush to get answers before its Sync. The answers come
//! back complete and in order, an error in one batch skips only the rest of that batch,
//! and the server connection stays with the client until every batch it sent has been
//! answered with ReadyForQuery 'I' — with `pool_size = 1`, a second client is served only
//! after the pipeline, never in the middle of it.

use std::time::Duration;

use crate::common::{
    assert_alive, direct_client, md5_tenant, raw_login, scalar, wait_until_running,
};
use crate::harness::connect;
use crate::raw::{
    bind, data_row, error_fields, execute, field, flush, parse, parse_bind_execute, sync, RawConn,
};

/// Reads `batches` answers up to ReadyForQuery each; returns them as readable strings:
/// type byte, DataRow's first column, ErrorResponse's SQLSTATE, ReadyForQuery's status.
async fn read_batches(conn: &mut RawConn, batches: usize) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for _ in 0..batches {
        let answers = conn
            .messages_until_ready()
            .await
            .into_iter()
            .map(|(tag, body)| match tag {
                b'D' => format!("D {}", data_row(&body)[0].as_deref().unwrap_or("NULL")),
                b'E' => format!("E {}", field(&error_fields(&body), b'C')),
                b'Z' => format!("Z {}", body[0] as char),
                _ => (tag as char).to_string(),
            })
            .collect();
        all.push(answers);
    }
    all
}

fn pbe(sql: &str) -> Vec<u8> {
    parse_bind_execute(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_batches_in_flight_keep_the_server_connection_until_the_last() {
    let (tenant, mut sluice) = md5_tenant("pipe_batches", |t| t.pool_size(1));
    let setup = connect(&sluice, &tenant).await;
    setup
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .expect("CREATE TABLE");
    let mut conn = raw_login(&sluice, &tenant).await;

    // Batch 1 waits for a lock held outside sluice. It ends idle ('I'), but batches 2
    // and 3 are already sent: the server connection must not go to a waiting client
    // then. Batch 2 leaves a transaction open, batch 3 commits it.
    let blocker = direct_client(&tenant).await;
    blocker
        .batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .expect("lock");
    let pipeline = [
        pbe("SELECT 'first' FROM pg_advisory_lock(42), pg_advisory_unlock(42)"),
        sync(),
        pbe("BEGIN"),
        pbe("INSERT INTO t VALUES (1)"),
        sync(),
        pbe("SELECT count(*) FROM t"),
        pbe("COMMIT"),
        sync(),
    ]
    .concat();
    conn.send(&pipeline).await;
    let t = tenant.clone();
    tokio::task::spawn_blocking(move || wait_until_running(&t, "SELECT 'first'%"))
        .await
        .expect("polling thread");

    // Meanwhile another client asks for the only server connection. Its wait cannot be
    // observed from outside: give it a moment to queue before batch 1 completes.
    let waiter = connect(&sluice, &tenant).await;
    let waiting = tokio::spawn(async move {
        let seen = scalar(&waiter, "SELECT count(*) FROM t").await;
        (waiter, seen)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    blocker
        .batch_execute("SELECT pg_advisory_unlock(42)")
        .await
        .expect("unlock");

    let answers = read_batches(&mut conn, 3).await;
    assert_eq!(
        answers,
        [
            vec!["1", "2", "D first", "C", "Z I"],
            vec!["1", "2", "C", "1", "2", "C", "Z T"],
            vec!["1", "2", "D 1", "C", "1", "2", "C", "Z I"],
        ],
        "every batch answered in order"
    );
    let (_waiter, seen) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiter is served once the pipeline is done")
        .expect("waiter task");
    assert_eq!(
        seen.as_deref(),
        Some("1"),
        "the waiter ran after the COMMIT, not between the batches"
    );
    // The raw client still works.
    conn.send(&[pbe("SELECT 'after'"), sync()].concat()).await;
    assert_eq!(
        read_batches(&mut conn, 1).await,
        [vec!["1", "2", "D after", "C", "Z I"]]
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_skips_only_the_rest_of_its_batch() {
    let (tenant, mut sluice) = md5_tenant("pipe_error", |t| t.pool_size(1));
    let mut conn = raw_login(&sluice, &tenant).await;
    let add_one = |n: &str| [bind("", "inc", &[Some(n)]), execute("")].concat();
    let pipeline = [
        parse("inc", "SELECT $1::int + 1", &[]),
        sync(),
        add_one("1"),
        pbe("SELECT 1/0"),
        add_one("5"),
        sync(),
        add_one("10"),
        sync(),
    ]
    .concat();
    conn.send(&pipeline).await;
    let answers = read_batches(&mut conn, 3).await;
    assert_eq!(
        answers,
        [
            vec!["1", "Z I"],
            vec!["2", "D 2", "C", "1", "E 22012", "Z I"],
            vec!["2", "D 11", "C", "Z I"],
        ]
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_returns_results_before_sync_and_keeps_the_connection() {
    let (tenant, mut sluice) = md5_tenant("pipe_flush", |t| t.pool_size(1));
    let mut conn = raw_login(&sluice, &tenant).await;
    let waiter = connect(&sluice, &tenant).await;

    conn.send(&[pbe("SELECT 42"), flush()].concat()).await;
    let mut before_sync = Vec::new();
    while before_sync.last() != Some(&b'C') {
        let (tag, body) = conn.expect_message().await;
        assert_ne!(tag, b'E', "{:?}", error_fields(&body));
        if tag == b'D' {
            assert_eq!(data_row(&body), [Some("42".to_owned())]);
        }
        before_sync.push(tag);
    }
    assert_eq!(before_sync, b"12DC", "answers before the Sync");

    // The batch is open until its Sync: the only server connection stays with it.
    let waiting = tokio::spawn(async move {
        let answer = scalar(&waiter, "SELECT 'waiter'").await;
        (waiter, answer)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the waiter got the server connection while a batch was open"
    );

    conn.send(&[pbe("SELECT 43"), sync()].concat()).await;
    assert_eq!(
        read_batches(&mut conn, 1).await,
        [vec!["1", "2", "D 43", "C", "Z I"]]
    );
    let (_waiter, answer) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiter is served after the Sync")
        .expect("waiter task");
    assert_eq!(answer.as_deref(), Some("waiter"));
    assert_alive(&mut sluice);
}
