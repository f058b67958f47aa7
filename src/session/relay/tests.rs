//! The relay forwards messages in steady state without touching the heap. A client and a
//! stand-in PostgreSQL server run on threads of their own with blocking sockets; sluice's
//! session runs on the test's thread (a current-thread runtime), whose allocations the
//! test build's allocator counts (`alloc_count`). No metrics recorder is installed, so
//! the histograms are no-ops here (`benches/README.md` covers the exporter's own cost).

use crate::alloc_count;
use crate::config::Config;
use crate::listener;
use crate::shared::Shared;
use metrics_exporter_prometheus::PrometheusBuilder;
use sluice_protocol::md5::{md5_client_response, md5_password_hash};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread;

const USER: &str = "steady";
const PASSWORD: &str = "steady-pw";
/// Round trips before counting: every buffer and queue reaches its working size.
const WARM_UP_ROUNDS: usize = 200;
const MEASURED_ROUNDS: usize = 1000;
/// Messages through sluice per round: Query and its four answers; Parse, Bind, Describe,
/// Execute, Sync and their six answers.
const MESSAGES_PER_ROUND: usize = 5 + 11;

#[test]
fn steady_state_relay_allocates_nothing_per_message() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = server.local_addr().unwrap().port();
    thread::spawn(move || serve_canned_answers(server.accept().unwrap().0));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\n\
             metrics_listen = \"127.0.0.1:0\"\n\
             [defaults]\npool_mode = \"transaction\"\npool_size = 1\nauth_type = \"md5\"\n\
             [clusters.main]\nhost = \"127.0.0.1\"\nport = {server_port}\ntls = \"disable\"\n\
             [[tenants]]\ndatabase = \"db\"\nuser = \"{USER}\"\ncluster = \"main\"\n\
             password = \"{}\"\nserver_password = \"{PASSWORD}\"\n",
            md5_password_hash(USER, PASSWORD)
        ),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let metrics = PrometheusBuilder::new().build_recorder().handle();
    let shared = Arc::new(Shared::new(config, path, metrics).unwrap());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (allocations, messages) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let (go, go_rx) = mpsc::channel();
        let (done, mut done_rx) = tokio::sync::mpsc::channel(1);
        let client = thread::spawn(move || run_client(proxy, &go_rx, &done));
        let (tcp, peer) = listener.accept().await.unwrap();
        let session =
            tokio::spawn(async move { listener::connection(tcp, peer, 1, &shared).await });

        done_rx.recv().await.expect("client warmed up");
        // Nothing else runs on this thread until the next await, so the window holds
        // exactly the measured rounds.
        go.send(()).unwrap();
        let before = alloc_count::on_this_thread();
        done_rx.recv().await.expect("client done");
        let allocations = alloc_count::on_this_thread() - before;

        go.send(()).unwrap();
        session.await.unwrap();
        client.join().unwrap();
        (allocations, MEASURED_ROUNDS * MESSAGES_PER_ROUND)
    });
    assert_eq!(
        allocations, 0,
        "{allocations} allocations while relaying {messages} messages"
    );
}

/// Logs in, runs the warm-up rounds, then the measured ones when told, then leaves.
fn run_client(proxy: SocketAddr, go: &mpsc::Receiver<()>, done: &tokio::sync::mpsc::Sender<()>) {
    let mut conn = TcpStream::connect(proxy).unwrap();
    conn.set_nodelay(true).unwrap();
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608u32.to_be_bytes());
    for word in ["user", USER, "database", "db", ""] {
        startup.extend_from_slice(word.as_bytes());
        startup.push(0);
    }
    let mut packet = (startup.len() as u32 + 4).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    conn.write_all(&packet).unwrap();
    let (tag, body) = read_message(&mut conn);
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &5u32.to_be_bytes()[..]),
        "md5 asked"
    );
    let salt = body[4..8].try_into().unwrap();
    let mut response = md5_client_response(USER, PASSWORD, salt).into_bytes();
    response.push(0);
    conn.write_all(&message(b'p', &response)).unwrap();
    read_until_ready(&mut conn);

    let mut round = Vec::new();
    round.extend_from_slice(&message(b'Q', b"SELECT 1\0"));
    round.extend_from_slice(&message(b'P', b"\0SELECT 1\0\0\0"));
    round.extend_from_slice(&message(b'B', b"\0\0\0\0\0\0\0\0"));
    round.extend_from_slice(&message(b'D', b"P\0"));
    round.extend_from_slice(&message(b'E', b"\0\0\0\0\0"));
    round.extend_from_slice(&message(b'S', b""));
    let mut run = |rounds| {
        for _ in 0..rounds {
            conn.write_all(&round).unwrap();
            read_until_ready(&mut conn);
            read_until_ready(&mut conn);
        }
    };
    run(WARM_UP_ROUNDS);
    done.blocking_send(()).unwrap();
    go.recv().unwrap();
    run(MEASURED_ROUNDS);
    done.blocking_send(()).unwrap();
    go.recv().unwrap();
    conn.write_all(&message(b'X', b"")).unwrap();
}

/// A stand-in PostgreSQL: trusts the login, answers every query with one row.
fn serve_canned_answers(mut conn: TcpStream) {
    conn.set_nodelay(true).unwrap();
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).unwrap();
    let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    conn.read_exact(&mut startup).unwrap();
    let mut greeting = message(b'R', &0u32.to_be_bytes());
    greeting.extend_from_slice(&message(b'S', b"client_encoding\0UTF8\0"));
    greeting.extend_from_slice(&message(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
    greeting.extend_from_slice(&message(b'Z', b"I"));
    conn.write_all(&greeting).unwrap();

    let mut row_description = 1u16.to_be_bytes().to_vec();
    row_description.extend_from_slice(b"x\0");
    for field in [
        &0u32.to_be_bytes()[..],
        &[0, 0],
        &23u32.to_be_bytes(),
        &[0, 4],
    ] {
        row_description.extend_from_slice(field);
    }
    row_description.extend_from_slice(&(-1i32).to_be_bytes());
    row_description.extend_from_slice(&[0, 0]);
    let row_description = message(b'T', &row_description);
    let row = message(b'D', &[0, 1, 0, 0, 0, 1, b'1']);
    let complete = message(b'C', b"SELECT 1\0");
    let ready = message(b'Z', b"I");
    // Sluice keeps the connection until its pool goes: the end of the test closes it.
    while let Some((tag, _)) = try_read_message(&mut conn) {
        let answer: Vec<u8> = match tag {
            b'Q' => [&row_description[..], &row, &complete, &ready].concat(),
            b'P' => message(b'1', b""),
            b'B' => message(b'2', b""),
            b'D' => row_description.clone(),
            b'E' => [&row[..], &complete].concat(),
            b'S' => ready.clone(),
            other => panic!("unexpected message '{}'", other.escape_ascii()),
        };
        if conn.write_all(&answer).is_err() {
            return;
        }
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn read_message(conn: &mut TcpStream) -> (u8, Vec<u8>) {
    try_read_message(conn).expect("a message, not the end of the connection")
}

fn try_read_message(conn: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    conn.read_exact(&mut header).ok()?;
    let len = u32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    conn.read_exact(&mut body).ok()?;
    Some((header[0], body))
}

fn read_until_ready(conn: &mut TcpStream) {
    loop {
        let (tag, body) = read_message(conn);
        assert_ne!(tag, b'E', "error: {}", String::from_utf8_lossy(&body));
        if tag == b'Z' {
            return;
        }
    }
}
