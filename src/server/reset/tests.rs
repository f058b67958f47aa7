//! Unit tests of the reset against a scripted server played message by message: the
//! connection's exchange is prepared as the relay would have left it (the frontend
//! messages it recorded, the backend messages it took), then `reset` runs while the test
//! plays the server's side.

use super::*;
use crate::server::{connect, ServerCredentials, ServerTarget, TcpOptions, SERVER_READ_CHUNK};
use crate::stats::ServerRegistry;
use crate::test_support::{within, AfterLogin, Peer, ScriptedServer, WITHIN};
use bytes::{BufMut, Bytes};
use sluice_protocol::backend;
use sluice_protocol::exchange::OutOfSync;
use sluice_protocol::frame::write_message;
use sluice_protocol::startup::CancelKey;
use std::sync::Arc;

/// A connection logged in to a scripted server, the server's end of it, and the server
/// (which receives the cancels).
async fn connected() -> (ServerConn, Peer, ScriptedServer) {
    let mut server = ScriptedServer::start(AfterLogin::HandOver).await;
    let target = ServerTarget {
        host: "127.0.0.1".into(),
        port: server.addr.port(),
        database: "acme".into(),
        user: "acme".into(),
        credentials: ServerCredentials::None,
        connect_timeout: WITHIN,
    };
    let tcp = TcpOptions {
        keepalive: Duration::ZERO,
        user_timeout: Duration::ZERO,
    };
    let registry = Arc::new(ServerRegistry::default());
    let conn = connect(&target, None, tcp, &registry)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let peer = server.next_session().await;
    (conn, peer, server)
}

/// Records frontend messages as the relay does when it forwards them.
fn sent(conn: &mut ServerConn, tags: &[u8]) {
    for &tag in tags {
        conn.exchange.frontend(tag).unwrap();
    }
}

/// Takes a backend message the relay had already forwarded.
fn taken(conn: &mut ServerConn, tag: u8, status: u8) {
    conn.exchange.backend(tag, status).unwrap();
}

fn message(tag: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    write_message(&mut out, tag, |b| b.put_slice(body));
    out
}

/// An ErrorResponse with `code`, then ReadyForQuery with `status`.
fn error_then_ready(code: &str, status: u8) -> BytesMut {
    let mut out = BytesMut::new();
    backend::encode_error(&mut out, "ERROR", code, "scripted error");
    backend::encode_ready_for_query(&mut out, status);
    out
}

/// CommandComplete `tag`, then ReadyForQuery with `status`.
fn complete_then_ready(tag: &str, status: u8) -> BytesMut {
    let mut out = BytesMut::new();
    backend::encode_command_complete(&mut out, tag);
    backend::encode_ready_for_query(&mut out, status);
    out
}

/// A CopyInResponse (`tag` b'G') or CopyBothResponse (b'W'): text, no columns.
fn copy_response(tag: u8) -> BytesMut {
    message(tag, &[0, 0, 0])
}

fn query_body(sql: &str) -> Vec<u8> {
    [sql.as_bytes(), b"\0"].concat()
}

/// Closes the client's end and asserts it sent nothing the test has not read.
async fn assert_nothing_more_sent(conn: ServerConn, mut peer: Peer) {
    drop(conn);
    let rest = peer.rest_until_closed().await;
    assert!(rest.is_empty(), "unexpected bytes sent: {rest:?}");
}

/// Asserts that the reset sent no cancel. A cancel waits until the server closes its
/// connection, which the scripted server does only once the test has taken it: a reset
/// that returned sent none, or it would not have returned.
fn assert_no_cancel(server: &mut ScriptedServer) {
    assert!(server.try_cancel().is_none(), "a cancel was sent");
}

/// Takes the cancel the reset sends, checks it carries the connection's own key, and
/// lets it land.
async fn take_cancel(server: &mut ScriptedServer, key: CancelKey) {
    let seen = server.next_cancel().await;
    assert_eq!(seen.key, key, "the server's key");
}

#[tokio::test]
async fn an_idle_connection_is_reset_without_a_word_to_the_server() {
    let (mut conn, peer, mut server) = connected().await;
    within("the reset", reset(&mut conn, &[], false, false))
        .await
        .unwrap();
    assert!(conn.exchange.is_idle());
    assert_no_cancel(&mut server);
    assert_nothing_more_sent(conn, peer).await;
}

#[tokio::test]
async fn a_running_query_is_cancelled_with_the_servers_key_and_drained() {
    let (mut conn, mut peer, mut server) = connected().await;
    sent(&mut conn, b"Q");
    let key = conn.cancel_key;
    let script = async {
        // Rows already on their way when the client left.
        let mut rows = BytesMut::new();
        backend::encode_row_description(&mut rows, &["n"]);
        backend::encode_data_row(&mut rows, &[Some("1")]);
        peer.send(&rows).await;
        take_cancel(&mut server, key).await;
        peer.send(&error_then_ready("57014", b'I')).await;
    };
    let (reset, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &[], false, false), script)
    })
    .await;
    reset.unwrap();
    assert!(conn.exchange.is_idle());
    assert_nothing_more_sent(conn, peer).await;
}

#[tokio::test]
async fn unsent_client_messages_go_out_first_and_are_cancelled_too() {
    let (mut conn, mut peer, mut server) = connected().await;
    sent(&mut conn, b"Q");
    let mut unsent = BytesMut::new();
    frontend::encode_query(&mut unsent, "SELECT 1");
    let key = conn.cancel_key;
    let script = async {
        let (tag, body) = peer.read_message().await;
        assert_eq!((tag, &body[..]), (b'Q', &query_body("SELECT 1")[..]));
        take_cancel(&mut server, key).await;
        peer.send(&error_then_ready("57014", b'I')).await;
    };
    let (reset, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &unsent, false, false), script)
    })
    .await;
    reset.unwrap();
    assert_nothing_more_sent(conn, peer).await;
}

#[tokio::test]
async fn an_awaited_copy_from_stdin_is_ended_with_copy_fail() {
    let (mut conn, mut peer, mut server) = connected().await;
    sent(&mut conn, b"Q");
    taken(&mut conn, b'G', 0);
    assert!(conn.exchange.awaits_copy_data());
    let script = async {
        let (tag, _) = peer.read_message().await;
        assert_eq!(tag, b'f', "CopyFail");
        peer.send(&error_then_ready("57014", b'I')).await;
    };
    let (reset, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &[], false, false), script)
    })
    .await;
    reset.unwrap();
    assert_no_cancel(&mut server);
    assert_nothing_more_sent(conn, peer).await;
}

#[tokio::test]
async fn an_open_batch_is_failed_with_a_missing_portal_then_synced() {
    let (mut conn, mut peer, mut server) = connected().await;
    // Parse and Bind answered; the client left before its Execute and Sync.
    sent(&mut conn, b"PB");
    taken(&mut conn, b'1', 0);
    taken(&mut conn, b'2', 0);
    assert!(conn.exchange.needs_sync());
    let script = async {
        let (tag, body) = peer.read_message().await;
        let expected = [&b"P"[..], ABANDONED_PORTAL, b"\0"].concat();
        assert_eq!((tag, &body[..]), (b'D', &expected[..]), "Describe portal");
        let (tag, body) = peer.read_message().await;
        assert_eq!((tag, body.len()), (b'S', 0), "Sync");
        peer.send(&error_then_ready("34000", b'I')).await;
    };
    let (reset, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &[], false, false), script)
    })
    .await;
    reset.unwrap();
    assert!(conn.exchange.is_idle());
    assert_no_cancel(&mut server);
    assert_nothing_more_sent(conn, peer).await;
}

#[tokio::test]
async fn a_running_execute_is_cancelled_and_its_batch_failed_and_synced() {
    let (mut conn, mut peer, mut server) = connected().await;
    // The Execute runs; the client left before its Sync.
    sent(&mut conn, b"PBE");
    taken(&mut conn, b'1', 0);
    taken(&mut conn, b'2', 0);
    let key = conn.cancel_key;
    let script = async {
        assert_eq!(peer.read_message().await.0, b'D');
        assert_eq!(peer.read_message().await.0, b'S');
        take_cancel(&mut server, key).await;
        // The Execute fails; the server skips the Describe up to the Sync.
        peer.send(&error_then_ready("57014", b'I')).await;
    };
    let (reset, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &[], false, false), script)
    })
    .await;
    reset.unwrap();
    assert!(conn.exchange.is_idle());
    assert_nothing_more_sent(conn, peer).await;
}

#[tokio::test]
async fn an_open_transaction_is_rolled_back() {
    let (mut conn, mut peer, mut server) = connected().await;
    sent(&mut conn, b"Q");
    taken(&mut conn, b'C', 0);
    taken(&mut conn, b'Z', b'T');
    let script = async {
        let (tag, body) = peer.read_message().await;
        assert_eq!((tag, &body[..]), (b'Q', &query_body("ROLLBACK")[..]));
        peer.send(&complete_then_ready("ROLLBACK", b'I')).await;
    };
    let (reset, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &[], false, false), script)
    })
    .await;
    reset.unwrap();
    assert_no_cancel(&mut server);
    assert_nothing_more_sent(conn, peer).await;
}

#[tokio::test]
async fn a_query_that_ends_inside_a_transaction_is_rolled_back_after_the_drain() {
    let (mut conn, mut peer, mut server) = connected().await;
    sent(&mut conn, b"Q");
    let key = conn.cancel_key;
    let script = async {
        take_cancel(&mut server, key).await;
        // The query ("BEGIN") had finished before the cancel landed.
        peer.send(&complete_then_ready("BEGIN", b'T')).await;
        let (tag, body) = peer.read_message().await;
        assert_eq!((tag, &body[..]), (b'Q', &query_body("ROLLBACK")[..]));
        peer.send(&complete_then_ready("ROLLBACK", b'I')).await;
    };
    let (reset, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &[], false, false), script)
    })
    .await;
    reset.unwrap();
    assert_nothing_more_sent(conn, peer).await;
}

#[tokio::test]
async fn discard_all_drops_the_session_state() {
    let (mut conn, mut peer, mut server) = connected().await;
    let statement = Bytes::from_static(b"s1");
    conn.statements.prepared(statement.clone());
    let script = async {
        let (tag, body) = peer.read_message().await;
        assert_eq!((tag, &body[..]), (b'Q', &query_body("DISCARD ALL")[..]));
        peer.send(&complete_then_ready("DISCARD ALL", b'I')).await;
    };
    let (reset, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &[], false, true), script)
    })
    .await;
    reset.unwrap();
    assert!(
        !conn.statements.touch(&statement),
        "the server forgot its prepared statements, and so does sluice"
    );
    assert_no_cancel(&mut server);
    assert_nothing_more_sent(conn, peer).await;
}

#[tokio::test]
async fn a_partly_sent_message_fails_the_reset_without_sending_anything() {
    let (mut conn, peer, mut server) = connected().await;
    sent(&mut conn, b"Q");
    let result = reset(&mut conn, b"Q\0\0", true, false).await;
    assert!(
        matches!(result, Err(ResetError::PartialMessage)),
        "{result:?}"
    );
    assert_no_cancel(&mut server);
    assert_nothing_more_sent(conn, peer).await;
}

#[tokio::test]
async fn an_answer_out_of_sync_fails_the_reset() {
    let (mut conn, mut peer, _server) = connected().await;
    let script = async {
        let (tag, _) = peer.read_message().await;
        assert_eq!(tag, b'Q');
        // ParseComplete answers no query.
        peer.send(&message(b'1', &[])).await;
    };
    let (result, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &[], false, true), script)
    })
    .await;
    assert!(
        matches!(
            result,
            Err(ResetError::Backend(BackendError::OutOfSync(OutOfSync {
                tag: b'1',
                ..
            })))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_server_that_closes_fails_the_reset() {
    let (mut conn, mut peer, _server) = connected().await;
    sent(&mut conn, b"Q");
    taken(&mut conn, b'C', 0);
    taken(&mut conn, b'Z', b'T');
    let script = async move {
        let (tag, _) = peer.read_message().await;
        assert_eq!(tag, b'Q');
        drop(peer);
    };
    let (result, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &[], false, false), script)
    })
    .await;
    assert!(
        matches!(&result, Err(ResetError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_large_row_is_skipped_as_it_streams() {
    let (mut conn, mut peer, mut server) = connected().await;
    sent(&mut conn, b"Q");
    let key = conn.cancel_key;
    let big = "x".repeat(20 * SERVER_READ_CHUNK);
    let script = async {
        take_cancel(&mut server, key).await;
        let mut rows = BytesMut::new();
        backend::encode_row_description(&mut rows, &["blob"]);
        backend::encode_data_row(&mut rows, &[Some(&big)]);
        rows.extend_from_slice(&complete_then_ready("SELECT 1", b'I'));
        peer.send(&rows).await;
    };
    let (reset, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &[], false, false), script)
    })
    .await;
    reset.unwrap();
    assert!(conn.read_buf.is_empty());
    assert!(
        conn.read_buf.capacity() < big.len(),
        "the row was not buffered whole"
    );
    assert_nothing_more_sent(conn, peer).await;
}

#[tokio::test]
async fn a_copy_that_starts_during_the_drain_is_failed() {
    let (mut conn, mut peer, mut server) = connected().await;
    sent(&mut conn, b"Q");
    let key = conn.cancel_key;
    let script = async {
        take_cancel(&mut server, key).await;
        peer.send(&copy_response(b'G')).await;
        let (tag, _) = peer.read_message().await;
        assert_eq!(tag, b'f', "CopyFail");
        peer.send(&error_then_ready("57014", b'I')).await;
    };
    let (reset, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &[], false, false), script)
    })
    .await;
    reset.unwrap();
    assert_nothing_more_sent(conn, peer).await;
}

#[tokio::test]
async fn copy_both_fails_the_reset() {
    let (mut conn, mut peer, mut server) = connected().await;
    sent(&mut conn, b"Q");
    let key = conn.cancel_key;
    let script = async {
        take_cancel(&mut server, key).await;
        peer.send(&copy_response(b'W')).await;
    };
    let (result, ()) = within("the reset", async {
        tokio::join!(reset(&mut conn, &[], false, false), script)
    })
    .await;
    assert!(matches!(result, Err(ResetError::CopyBoth)), "{result:?}");
}
