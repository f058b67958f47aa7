//! Helpers shared by the unit tests of several modules (`server`, `pool`, `cancel`): a
//! scripted PostgreSQL server on 127.0.0.1, so no real PostgreSQL is needed, and a way to
//! poll a future once.
//!
//! The server tells a CancelRequest from a StartupMessage by its code. A login gets
//! AuthenticationOk, a BackendKeyData of its own and ReadyForQuery at once, unless the
//! test planned otherwise ([`Login`]). After the login the connection either stays idle
//! (the server reads until the client closes it, and counts it open until then) or is
//! handed to the test as a [`Peer`] that plays the server's side message by message. A
//! CancelRequest is handed to the test too ([`SeenCancel`]); its connection stays open
//! until the test drops it, which is how PostgreSQL says it has taken the cancel.
//!
//! Every wait here is bounded by [`WITHIN`], so a bug fails a test instead of hanging it.

use crate::locks::lock;
use bytes::BytesMut;
use sluice_protocol::backend;
use sluice_protocol::frame::split_message;
use sluice_protocol::startup::CancelKey;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Longest a test waits for something the scripted server or the code under test should
/// do promptly; far above what any of it takes, so only a bug reaches it.
pub const WITHIN: Duration = Duration::from_secs(5);

/// `CancelRequest`'s code, and a StartupMessage's protocol 3.0, as the wire spells them.
const CANCEL_REQUEST_CODE: u32 = 80_877_102;
const PROTOCOL_3_0: u32 = 3 << 16;

/// Largest startup packet the scripted server reads (sluice sends two parameters).
const MAX_STARTUP_LEN: usize = 10_000;

/// Polls `future` once with the calling task's waker: `Pending` tells the future reached
/// an await point (a waiter registered, say) without finishing. Later polls or an `.await`
/// of the same future carry on from there.
pub async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// Awaits `future`, failing the test with `what` if it takes longer than [`WITHIN`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(WITHIN, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {WITHIN:?} waiting for {what}"),
    }
}

/// How the scripted server answers one login (a StartupMessage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login {
    /// AuthenticationOk, BackendKeyData and ReadyForQuery at once.
    Accept,
    /// Nothing until the test decides through the [`HeldLogin`] it receives.
    Hold,
    /// A FATAL ErrorResponse, then the connection is closed.
    Refuse,
}

/// What the scripted server does with a connection once it has logged in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterLogin {
    /// Reads (and drops) whatever the client sends until it closes the connection.
    StayIdle,
    /// Hands the connection to the test ([`ScriptedServer::next_session`]).
    HandOver,
}

/// What the scripted server has seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// StartupMessages received: connections a client tried to log in on.
    pub logins: usize,
    /// Of those, the ones neither side has closed yet.
    pub open: usize,
}

/// What the accept loop and the connections it serves share.
struct Script {
    after: AfterLogin,
    /// Answers for the next logins, in order; `Login::Accept` once empty.
    plan: Mutex<VecDeque<Login>>,
    counts: watch::Sender<Counts>,
    held: mpsc::UnboundedSender<HeldLogin>,
    cancels: mpsc::UnboundedSender<SeenCancel>,
    sessions: mpsc::UnboundedSender<Peer>,
}

/// A scripted PostgreSQL server listening on 127.0.0.1; see the module docs.
pub struct ScriptedServer {
    pub addr: SocketAddr,
    script: Arc<Script>,
    counts: watch::Receiver<Counts>,
    held: mpsc::UnboundedReceiver<HeldLogin>,
    cancels: mpsc::UnboundedReceiver<SeenCancel>,
    sessions: mpsc::UnboundedReceiver<Peer>,
    accepting: JoinHandle<()>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl ScriptedServer {
    pub async fn start(after: AfterLogin) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (counts_tx, counts) = watch::channel(Counts::default());
        let (held_tx, held) = mpsc::unbounded_channel();
        let (cancels_tx, cancels) = mpsc::unbounded_channel();
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let script = Arc::new(Script {
            after,
            plan: Mutex::new(VecDeque::new()),
            counts: counts_tx,
            held: held_tx,
            cancels: cancels_tx,
            sessions: sessions_tx,
        });
        let accepting = tokio::spawn(accept_loop(listener, script.clone()));
        ScriptedServer {
            addr,
            script,
            counts,
            held,
            cancels,
            sessions,
            accepting,
        }
    }

    /// Answers the next logins with `logins`, in order (after any planned before).
    pub fn plan(&self, logins: impl IntoIterator<Item = Login>) {
        lock(&self.script.plan).extend(logins);
    }

    pub fn counts(&self) -> Counts {
        *self.counts.borrow()
    }

    /// Waits until exactly `open` login connections are open: closes travel through the
    /// network, so the server notices them a little after the client made them.
    pub async fn wait_open(&self, open: usize) {
        let mut counts = self.counts.clone();
        let reached = counts.wait_for(|counts| counts.open == open);
        if tokio::time::timeout(WITHIN, reached).await.is_err() {
            panic!(
                "expected {open} open connections at the server, still {:?}",
                self.counts()
            );
        }
    }

    /// The next login planned as [`Login::Hold`], once its StartupMessage has arrived.
    pub async fn next_held(&mut self) -> HeldLogin {
        within("a held login", self.held.recv())
            .await
            .expect("the server runs")
    }

    /// The next CancelRequest that arrived.
    pub async fn next_cancel(&mut self) -> SeenCancel {
        within("a cancel request", self.cancels.recv())
            .await
            .expect("the server runs")
    }

    /// A CancelRequest that has arrived already, if any.
    pub fn try_cancel(&mut self) -> Option<SeenCancel> {
        self.cancels.try_recv().ok()
    }

    /// The server's end of the next logged-in connection ([`AfterLogin::HandOver`]).
    pub async fn next_session(&mut self) -> Peer {
        within("a logged-in connection", self.sessions.recv())
            .await
            .expect("the server runs")
    }
}

async fn accept_loop(listener: TcpListener, script: Arc<Script>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(serve(socket, script.clone()));
    }
}

/// Counts a login connection open while it lives.
struct OpenGuard(Arc<Script>);

impl OpenGuard {
    /// Counts a new login; returns the guard and the login's number, from 1.
    fn new(script: &Arc<Script>) -> (Self, usize) {
        let mut number = 0;
        script.counts.send_modify(|counts| {
            counts.logins += 1;
            counts.open += 1;
            number = counts.logins;
        });
        (OpenGuard(script.clone()), number)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.counts.send_modify(|counts| counts.open -= 1);
    }
}

async fn serve(mut socket: TcpStream, script: Arc<Script>) {
    let Ok(len) = socket.read_u32().await else {
        return;
    };
    let len = len as usize;
    assert!(
        (8..=MAX_STARTUP_LEN).contains(&len),
        "initial packet of {len} bytes"
    );
    let mut packet = vec![0u8; len];
    packet[..4].copy_from_slice(&(len as u32).to_be_bytes());
    if socket.read_exact(&mut packet[4..]).await.is_err() {
        return;
    }
    let code = u32::from_be_bytes(packet[4..8].try_into().unwrap());
    if code == CANCEL_REQUEST_CODE {
        assert_eq!(len, 16, "a CancelRequest is 16 bytes");
        let word = |at: usize| i32::from_be_bytes(packet[at..at + 4].try_into().unwrap());
        let key = CancelKey {
            pid: word(8),
            secret: word(12),
        };
        let seen = SeenCancel {
            bytes: packet.try_into().unwrap(),
            key,
            _socket: socket,
        };
        // A test that does not look for cancels has dropped the receiver: then the
        // connection closes at once, as a cancel PostgreSQL took.
        let _ = script.cancels.send(seen);
        return;
    }
    assert_eq!(code, PROTOCOL_3_0, "a StartupMessage of protocol 3.0");
    let (guard, login_number) = OpenGuard::new(&script);
    let key = server_key(login_number);
    let planned = lock(&script.plan).pop_front().unwrap_or(Login::Accept);
    let accepted = match planned {
        Login::Accept => true,
        Login::Refuse => false,
        Login::Hold => {
            let (release, decision) = oneshot::channel();
            let _ = script.held.send(HeldLogin { release });
            let mut probe = [0u8; 1];
            tokio::select! {
                decided = decision => matches!(decided, Ok(Login::Accept)),
                // The client gave up on the login (its checkout was dropped).
                _ = socket.read(&mut probe) => return,
            }
        }
    };
    let mut out = BytesMut::new();
    if !accepted {
        backend::encode_error(
            &mut out,
            "FATAL",
            "57P03",
            "the database system is starting up",
        );
        let _ = socket.write_all(&out).await;
        return;
    }
    backend::encode_auth_ok(&mut out);
    backend::encode_backend_key_data(&mut out, key);
    backend::encode_ready_for_query(&mut out, b'I');
    if socket.write_all(&out).await.is_err() {
        return;
    }
    match script.after {
        AfterLogin::StayIdle => {
            let mut sink = [0u8; 1024];
            while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        AfterLogin::HandOver => {
            let peer = Peer {
                socket,
                buf: BytesMut::new(),
                _open: guard,
            };
            let _ = script.sessions.send(peer);
        }
    }
}

/// The cancel key the scripted server gives its `n`-th login: distinct per login, and
/// unlike the keys sluice issues to clients only by chance.
fn server_key(n: usize) -> CancelKey {
    let pid = 10_000 + n as i32;
    CancelKey {
        pid,
        secret: pid.wrapping_mul(7919),
    }
}

/// A login the scripted server holds after its StartupMessage, until the test decides.
/// Dropped undecided, the login is refused.
pub struct HeldLogin {
    release: oneshot::Sender<Login>,
}

impl HeldLogin {
    pub fn accept(self) {
        let _ = self.release.send(Login::Accept);
    }

    pub fn refuse(self) {
        let _ = self.release.send(Login::Refuse);
    }
}

/// A CancelRequest the scripted server received. Its connection stays open until this is
/// dropped: a sender that waits for the server to close it waits until then.
pub struct SeenCancel {
    /// The 16 bytes as they arrived.
    pub bytes: [u8; 16],
    pub key: CancelKey,
    _socket: TcpStream,
}

/// The server's end of a logged-in connection, played by the test.
pub struct Peer {
    socket: TcpStream,
    buf: BytesMut,
    _open: OpenGuard,
}

impl Peer {
    /// The next message the client sent: its type byte and body.
    pub async fn read_message(&mut self) -> (u8, BytesMut) {
        within("a message from the client", async {
            loop {
                if let Some(message) = split_message(&mut self.buf, 1 << 20).unwrap() {
                    return message;
                }
                let read = self.socket.read_buf(&mut self.buf).await.unwrap();
                assert_ne!(read, 0, "the client closed the connection");
            }
        })
        .await
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).await.unwrap();
    }

    /// Everything the client sent and this peer has not read, up to the client's close:
    /// empty when it sent nothing more. The client must close its end.
    pub async fn rest_until_closed(&mut self) -> Vec<u8> {
        let mut rest = self.buf.split().to_vec();
        within("the client to close", self.socket.read_to_end(&mut rest))
            .await
            .unwrap();
        rest
    }
}
