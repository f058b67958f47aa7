//! The rest of the protocol passes through transaction pooling: COPY FROM STDIN and TO
//! STDOUT with tokio-postgres (10 MB each way), CopyFail (the COPY fails, the session goes
//! on), FunctionCall ('F', answered by FunctionCallResponse 'V'), and, in session mode,
//! NotificationResponse for a LISTENing client that sits idle. Results stream: a 200 MB
//! result, read by a client that first stalls, grows sluice's resident memory by only a
//! few MB.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

use crate::common::{assert_alive, md5_tenant, raw_login, raw_scalar, scalar};
use crate::harness::{connect, error_text};
use crate::raw::{copy_fail, error_fields, field, function_call, message, query};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_with_tokio_postgres() {
    let (tenant, mut sluice) = md5_tenant("copy_tokio", |t| t.pool_size(2));
    let client = connect(&sluice, &tenant).await;
    client
        .batch_execute("CREATE TABLE c (id int, label text)")
        .await
        .expect("CREATE TABLE");

    // 100,000 rows of about 107 bytes: 10 MB, sent in 64 KiB chunks.
    let rows: String = (1..=100_000)
        .map(|i| format!("{i}\t{i:0>8}-{}\n", "y".repeat(90)))
        .collect();
    assert!(rows.len() > 10_000_000);
    let sink = client
        .copy_in("COPY c (id, label) FROM STDIN")
        .await
        .unwrap_or_else(|e| panic!("COPY FROM STDIN: {}", error_text(&e)));
    futures_util::pin_mut!(sink);
    for chunk in rows.as_bytes().chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk))
            .await
            .unwrap_or_else(|e| panic!("CopyData: {}", error_text(&e)));
    }
    let copied = sink
        .finish()
        .await
        .unwrap_or_else(|e| panic!("CopyDone: {}", error_text(&e)));
    assert_eq!(copied, 100_000);
    assert_eq!(
        scalar(&client, "SELECT count(*) || ' ' || sum(id) FROM c")
            .await
            .as_deref(),
        Some("100000 5000050000")
    );

    let stream = client
        .copy_out("COPY (SELECT id, label FROM c ORDER BY id) TO STDOUT")
        .await
        .unwrap_or_else(|e| panic!("COPY TO STDOUT: {}", error_text(&e)));
    futures_util::pin_mut!(stream);
    let mut out = Vec::with_capacity(rows.len());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("CopyData: {}", error_text(&e)));
        out.extend_from_slice(&chunk);
    }
    assert!(
        out == rows.as_bytes(),
        "COPY TO STDOUT returned what COPY FROM STDIN stored ({} of {} bytes)",
        out.len(),
        rows.len()
    );
    assert_eq!(
        scalar(&client, "SELECT 'after'").await.as_deref(),
        Some("after")
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_fail_fails_the_copy_and_the_session_goes_on() {
    let (tenant, mut sluice) = md5_tenant("copy_fail", |t| t.pool_size(1));
    let mut conn = raw_login(&sluice, &tenant).await;
    raw_scalar(&mut conn, "CREATE TABLE t (x int); SELECT 1").await;

    conn.send(&query("COPY t FROM STDIN")).await;
    let (tag, _) = conn.expect_message().await;
    assert_eq!(tag, b'G', "CopyInResponse");
    conn.send(&[message(b'd', b"1\n2\n3\n"), copy_fail("client says no")].concat())
        .await;
    let answers = conn.messages_until_ready().await;
    let tags: Vec<u8> = answers.iter().map(|(tag, _)| *tag).collect();
    assert_eq!(tags, b"EZ", "an error, then ReadyForQuery");
    let fields = error_fields(&answers[0].1);
    assert_eq!(field(&fields, b'C'), "57014", "{fields:?}");
    assert!(
        field(&fields, b'M').contains("client says no"),
        "{fields:?}"
    );
    assert_eq!(answers[1].1, b"I");

    assert_eq!(
        raw_scalar(&mut conn, "SELECT count(*) FROM t")
            .await
            .as_deref(),
        Some("0"),
        "nothing of the failed COPY was stored"
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_gets_its_function_call_response() {
    let (tenant, mut sluice) = md5_tenant("copy_fncall", |t| t.pool_size(1));
    let mut conn = raw_login(&sluice, &tenant).await;
    let oid = |name: &str| format!("SELECT '{name}'::regproc::oid");
    let int4pl: u32 = raw_scalar(&mut conn, &oid("int4pl"))
        .await
        .expect("an oid")
        .parse()
        .expect("a number");
    let int4div: u32 = raw_scalar(&mut conn, &oid("int4div"))
        .await
        .expect("an oid")
        .parse()
        .expect("a number");

    let args = [5i32.to_be_bytes(), 7i32.to_be_bytes()];
    conn.send(&function_call(int4pl, &[&args[0], &args[1]]))
        .await;
    let answers = conn.messages_until_ready().await;
    let tags: Vec<u8> = answers.iter().map(|(tag, _)| *tag).collect();
    assert_eq!(tags, b"VZ", "FunctionCallResponse, ReadyForQuery");
    let mut twelve = 4i32.to_be_bytes().to_vec();
    twelve.extend_from_slice(&12i32.to_be_bytes());
    assert_eq!(answers[0].1, twelve, "int4pl(5, 7) = 12, binary");

    // A failing call is an error, and the session goes on.
    let zero = 0i32.to_be_bytes();
    conn.send(&function_call(int4div, &[&args[0], &zero])).await;
    let answers = conn.messages_until_ready().await;
    let tags: Vec<u8> = answers.iter().map(|(tag, _)| *tag).collect();
    assert_eq!(tags, b"EZ");
    assert_eq!(field(&error_fields(&answers[0].1), b'C'), "22012");
    assert_eq!(
        raw_scalar(&mut conn, "SELECT 1").await.as_deref(),
        Some("1")
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_reaches_an_idle_listener_in_session_mode() {
    let (tenant, mut sluice) = md5_tenant("copy_notify", |t| t.pool_mode("session"));
    let mut listener = raw_login(&sluice, &tenant).await;
    listener.send(&query("LISTEN news")).await;
    listener.read_until_ready().await;

    let notifier = connect(&sluice, &tenant).await;
    notifier
        .batch_execute("NOTIFY news, 'hello listener'")
        .await
        .expect("NOTIFY");
    let (tag, body) = listener.expect_message().await;
    assert_eq!(tag, b'A', "NotificationResponse");
    let mut parts = body[4..].split(|&b| b == 0);
    assert_eq!(parts.next(), Some(&b"news"[..]), "channel");
    assert_eq!(parts.next(), Some(&b"hello listener"[..]), "payload");
    assert_eq!(
        raw_scalar(&mut listener, "SELECT 'still listening'")
            .await
            .as_deref(),
        Some("still listening")
    );
    assert_alive(&mut sluice);
}

/// Resident memory of process `pid` in KiB (VmRSS of /proc/<pid>/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_result_streams_without_growing_sluice() {
    const ROWS: u64 = 200_000;
    const GROWTH_LIMIT_KIB: u64 = 20 * 1024;
    let (tenant, mut sluice) = md5_tenant("copy_stream_rss", |t| t.pool_size(1));
    let pid = sluice.pid();
    let mut conn = raw_login(&sluice, &tenant).await;
    // Warm up: buffers, threads and allocator arenas a session needs anyway.
    conn.send(&query(
        "SELECT repeat('x', 1000) FROM generate_series(1, 20000)",
    ))
    .await;
    conn.drain_until_ready(|_| {}).await;
    let before = rss_kib(pid);

    conn.send(&query(&format!(
        "SELECT repeat('x', 1000) FROM generate_series(1, {ROWS})"
    )))
    .await;
    // The client stalls: PostgreSQL keeps producing, so whatever sluice reads and cannot
    // write on would pile up in its memory.
    let mut most = before;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        most = most.max(rss_kib(pid));
    }
    let drained = conn
        .drain_until_ready(|_| most = most.max(rss_kib(pid)))
        .await;
    most = most.max(rss_kib(pid));
    assert_eq!(drained.rows, ROWS);
    assert!(drained.bytes > 200_000_000, "{} bytes", drained.bytes);
    assert_eq!(drained.status, b'I');
    let growth = most.saturating_sub(before);
    eprintln!("sluice RSS: {before} KiB before, at most {most} KiB while streaming");
    assert!(
        growth < GROWTH_LIMIT_KIB,
        "sluice's RSS grew by {growth} KiB while 200 MB streamed through it \
         (from {before} KiB to {most} KiB)"
    );
    assert_eq!(
        raw_scalar(&mut conn, "SELECT 1").await.as_deref(),
        Some("1")
    );
    assert_alive(&mut sluice);
}
