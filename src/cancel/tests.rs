//! Unit tests of the client registry and cancel requests, with a scripted server taking
//! the forwarded cancels: keys, key checking, cancels in flight, cancels of queued
//! clients, kills.

use super::*;
use crate::test_support::{poll_once, within, AfterLogin, ScriptedServer};
use std::collections::HashSet;

/// The cancel key of the server connection a client holds: what a forwarded cancel
/// must carry.
const SERVER_KEY: CancelKey = CancelKey {
    pid: 4242,
    secret: 0x1234_5678,
};

fn client(id: u64, database: &str) -> Arc<ClientInfo> {
    let peer = "127.0.0.1:40000".parse().unwrap();
    Arc::new(ClientInfo::new(id, peer, database, "alice", "test"))
}

/// A CancelRequest for `key` as the protocol documentation spells it: length 16, code
/// 80877102, the pid, the secret.
fn cancel_request_bytes(key: CancelKey) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&16i32.to_be_bytes());
    bytes[4..8].copy_from_slice(&80_877_102i32.to_be_bytes());
    bytes[8..12].copy_from_slice(&key.pid.to_be_bytes());
    bytes[12..].copy_from_slice(&key.secret.to_be_bytes());
    bytes
}

#[test]
fn keys_have_unique_positive_pids_and_leave_with_their_client() {
    let registry = Arc::new(CancelRegistry::default());
    let handles: Vec<CancelHandle> = (0..2000)
        .map(|id| registry.register(client(id, "acme")))
        .collect();
    let pids: HashSet<i32> = handles.iter().map(|h| h.key.pid).collect();
    assert_eq!(pids.len(), handles.len(), "every pid is unique");
    assert!(
        pids.iter().all(|&pid| pid > 0),
        "pids are positive, never 0"
    );
    assert_eq!(registry.clients().len(), 2000);
    drop(handles);
    assert!(registry.clients().is_empty());
}

#[tokio::test]
async fn a_cancel_with_a_wrong_secret_or_an_unknown_pid_cancels_nothing() {
    let mut server = ScriptedServer::start(AfterLogin::StayIdle).await;
    let registry = Arc::new(CancelRegistry::default());
    let handle = registry.register(client(1, "acme"));
    handle.target.attach(server.addr, SERVER_KEY);
    let key = handle.key;
    let wrong_secret = CancelKey {
        secret: key.secret.wrapping_add(1),
        ..key
    };
    let unknown_pid = CancelKey {
        pid: key.pid.wrapping_add(1),
        ..key
    };
    registry.cancel(wrong_secret).await;
    registry.cancel(unknown_pid).await;
    // `cancel` returns only once a forwarded cancel has been taken (or has timed out),
    // and the server takes none before this test lets it: had either been forwarded,
    // the server would hold it now.
    assert!(server.try_cancel().is_none(), "nothing reached the server");
    assert!(!handle.target.detach(), "no cancel is in flight");

    // The same client with its right key is cancelled: the setup above would have shown
    // a forwarded cancel.
    handle.target.attach(server.addr, SERVER_KEY);
    let cancelling = registry.cancel(key);
    let taken = async {
        let seen = server.next_cancel().await;
        assert_eq!(seen.key, SERVER_KEY);
    };
    within("the right key's cancel", async {
        tokio::join!(cancelling, taken)
    })
    .await;
}

#[tokio::test]
async fn a_cancel_reaches_the_held_server_connection_with_the_servers_key() {
    let mut server = ScriptedServer::start(AfterLogin::StayIdle).await;
    let registry = Arc::new(CancelRegistry::default());
    let handle = registry.register(client(1, "acme"));
    handle.target.attach(server.addr, SERVER_KEY);
    let mut cancelling = Box::pin(registry.cancel(handle.key));
    let seen = tokio::select! {
        seen = server.next_cancel() => seen,
        () = cancelling.as_mut() => panic!("the cancel ended before the server took it"),
    };
    assert_eq!(seen.bytes, cancel_request_bytes(SERVER_KEY));
    assert_ne!(seen.key, handle.key, "never the key sluice gave the client");
    assert!(
        poll_once(cancelling.as_mut()).await.is_pending(),
        "the cancel waits until the server has taken it"
    );
    drop(seen);
    within("the cancel to end", cancelling).await;
}

#[tokio::test]
async fn a_cancel_in_flight_holds_the_server_connection_until_it_has_landed() {
    let mut server = ScriptedServer::start(AfterLogin::StayIdle).await;
    let registry = Arc::new(CancelRegistry::default());
    let handle = registry.register(client(1, "acme"));
    let target = &handle.target;
    target.attach(server.addr, SERVER_KEY);
    let first = target
        .begin_cancel()
        .expect("the client holds a server connection");
    assert_eq!(first, (server.addr, SERVER_KEY));
    let second = target.begin_cancel().expect("still held");
    assert!(target.detach(), "the connection must wait for the cancels");
    let mut finished = Box::pin(target.cancels_finished());
    assert!(poll_once(finished.as_mut()).await.is_pending());

    for (destination, last) in [(first, false), (second, true)] {
        let mut forward = Box::pin(target.forward(destination));
        let seen = tokio::select! {
            seen = server.next_cancel() => seen,
            () = forward.as_mut() => panic!("forwarded before the server took it"),
        };
        assert_eq!(seen.bytes, cancel_request_bytes(SERVER_KEY));
        assert!(
            poll_once(finished.as_mut()).await.is_pending(),
            "not finished while the server has not taken the cancel"
        );
        drop(seen);
        within("the forward to end", forward).await;
        assert_eq!(
            poll_once(finished.as_mut()).await.is_ready(),
            last,
            "finished once every cancel in flight has landed"
        );
    }
    target.attach(server.addr, SERVER_KEY);
    assert!(!target.detach(), "nothing in flight any more");
}

#[tokio::test]
async fn a_cancel_while_queued_wakes_the_waiting_client_and_forwards_nothing() {
    let registry = Arc::new(CancelRegistry::default());
    let handle = registry.register(client(1, "acme"));
    let target = &handle.target;
    target.set_waiting(true);
    let mut woken = Box::pin(target.cancelled_while_waiting());
    assert!(poll_once(woken.as_mut()).await.is_pending());
    // No server connection is held: nothing to forward, so this returns at once.
    within("the cancel", registry.cancel(handle.key)).await;
    assert!(poll_once(woken.as_mut()).await.is_ready());
    assert!(!target.detach(), "no cancel in flight");

    // A cancel that came before the wait is looked at is not lost either.
    target.set_waiting(false);
    target.set_waiting(true);
    within("the cancel", registry.cancel(handle.key)).await;
    let mut late = Box::pin(target.cancelled_while_waiting());
    assert!(poll_once(late.as_mut()).await.is_ready());

    // The next wait starts clean.
    target.set_waiting(false);
    target.set_waiting(true);
    let mut next = Box::pin(target.cancelled_while_waiting());
    assert!(poll_once(next.as_mut()).await.is_pending());
}

#[tokio::test]
async fn a_cancel_for_a_client_doing_nothing_is_dropped() {
    let registry = Arc::new(CancelRegistry::default());
    let handle = registry.register(client(1, "acme"));
    within("the cancel", registry.cancel(handle.key)).await;
    handle.target.set_waiting(true);
    let mut woken = Box::pin(handle.target.cancelled_while_waiting());
    assert!(
        poll_once(woken.as_mut()).await.is_pending(),
        "a cancel before the client queued does not cancel its wait"
    );
}

#[tokio::test]
async fn kill_database_and_kill_all_mark_the_right_clients() {
    let registry = Arc::new(CancelRegistry::default());
    let first = registry.register(client(1, "a"));
    let second = registry.register(client(2, "a"));
    let other = registry.register(client(3, "b"));
    let mut first_killed = Box::pin(first.target.kill_notified());
    first_killed.as_mut().enable();
    let mut other_killed = Box::pin(other.target.kill_notified());
    other_killed.as_mut().enable();

    assert_eq!(registry.kill_database("a"), 2);
    assert!(first.target.is_killed() && second.target.is_killed());
    assert!(!other.target.is_killed());
    assert!(poll_once(first_killed.as_mut()).await.is_ready());
    assert!(poll_once(other_killed.as_mut()).await.is_pending());
    assert_eq!(registry.kill_database("nobody"), 0);

    assert_eq!(registry.kill_all(), 3);
    assert!(other.target.is_killed());
    assert!(poll_once(other_killed.as_mut()).await.is_ready());
}
