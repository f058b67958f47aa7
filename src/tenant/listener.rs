//! LISTEN/NOTIFY under transaction pooling: a pooled server connection serves whoever is
//! next, so it must never listen. Instead each tenant has one listening server connection,
//! opened on its clients' first LISTEN (a pool of one in the cluster's budget) and closed
//! after the last listener leaves; it LISTENs the union of its clients' channels, and each
//! NotificationResponse goes, in order, to exactly the clients listening on its channel.
//!
//! A client's notifications wait in a bounded queue until its session delivers them
//! between its queries. A client that does not read them past [`QUEUE_LIMIT`], or every
//! client when the listening connection is lost, has its queue closed with a reason, and its
//! session ends with an error: notifications are never silently skipped.
//!
//! Uses a pool of its own (the tenant's target) and nothing above `pool`; the session calls
//! it.

use crate::locks::lock;
use crate::net::{flush, read_message};
use crate::pool::{CheckoutError, Lease, Pool};
use crate::server::ServerConn;
use bytes::{Bytes, BytesMut};
use sluice_protocol::backend;
use sluice_protocol::frame::HEADER_LEN;
use sluice_protocol::frontend;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// Notifications a client may have waiting before it is disconnected.
pub const QUEUE_LIMIT: usize = 1024;

/// Largest message the listening connection accepts (a notification's payload is at most
/// 8000 bytes in PostgreSQL).
const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// Why a client's notifications ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It left more than [`QUEUE_LIMIT`] notifications unread.
    Overflow,
    /// The listening server connection was lost: notifications may have been missed.
    Lost,
}

/// One client's notifications, and why they ended when its queue closes (the listener
/// holds the only sender).
pub struct Subscription {
    /// Whole NotificationResponse messages, ready to forward.
    pub queue: mpsc::Receiver<Bytes>,
    ended: Arc<Mutex<Option<Ended>>>,
}

impl Subscription {
    /// Why the queue was closed: `None` when the client simply listens no more.
    pub fn why_ended(&self) -> Option<Ended> {
        *lock(&self.ended)
    }
}

/// Why a LISTEN could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("could not open the listening server connection: {0}")]
    Connect(#[from] CheckoutError),
    #[error("the listening server connection failed: {0}")]
    Lost(String),
    #[error("the server refused it: {message} (SQLSTATE {code})")]
    Refused { code: String, message: String },
}

/// A listening client's end of its queue.
struct Client {
    sender: mpsc::Sender<Bytes>,
    ended: Arc<Mutex<Option<Ended>>>,
}

enum Command {
    Listen(String, oneshot::Sender<Result<(), ListenError>>),
    Unlisten(String),
}

/// The tenant's listening connection and who listens on what.
pub struct Listener {
    pool: Arc<Pool>,
    wait: Duration,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    clients: HashMap<u64, Client>,
    /// Who listens on each channel.
    channels: HashMap<String, Vec<u64>>,
    /// To the task that owns the listening connection, while there is one.
    commands: Option<mpsc::UnboundedSender<Command>>,
}

impl Listener {
    /// Listening for a tenant through `pool` (of one connection, the tenant's target),
    /// waiting at most `wait` for it.
    pub fn new(pool: Arc<Pool>, wait: Duration) -> Self {
        Listener {
            pool,
            wait,
            state: Arc::default(),
        }
    }

    /// Makes client `client_id` receive the notifications of `channel`, in `subscription`
    /// (made on its first LISTEN); returns once the listening connection LISTENs on it.
    pub async fn listen(
        &self,
        subscription: &mut Option<Subscription>,
        client_id: u64,
        channel: &str,
    ) -> Result<(), ListenError> {
        let ask = {
            let mut state = lock(&self.state);
            if !state.clients.contains_key(&client_id) || subscription.is_none() {
                // A first LISTEN, or one after the queue was closed: a fresh queue.
                let (sender, queue) = mpsc::channel(QUEUE_LIMIT);
                let ended = Arc::<Mutex<Option<Ended>>>::default();
                state.clients.insert(
                    client_id,
                    Client {
                        sender,
                        ended: ended.clone(),
                    },
                );
                *subscription = Some(Subscription { queue, ended });
            }
            if let Some(listeners) = state.channels.get_mut(channel) {
                if !listeners.contains(&client_id) {
                    listeners.push(client_id);
                }
                return Ok(());
            }
            let (reply, answer) = oneshot::channel();
            let commands = state.commands.get_or_insert_with(|| self.start());
            let _ = commands.send(Command::Listen(channel.to_owned(), reply));
            answer
        };
        let listened = match ask.await {
            Ok(listened) => listened,
            Err(_) => Err(ListenError::Lost("the listening connection ended".into())),
        };
        let mut state = lock(&self.state);
        if listened.is_ok() && state.clients.contains_key(&client_id) {
            let listeners = state.channels.entry(channel.to_owned()).or_default();
            if !listeners.contains(&client_id) {
                listeners.push(client_id);
            }
        }
        close_if_unused(&mut state);
        listened
    }

    /// The client stops listening on `channel`.
    pub fn unlisten(&self, client_id: u64, channel: &str) {
        let mut state = lock(&self.state);
        if let Some(listeners) = state.channels.get_mut(channel) {
            listeners.retain(|id| *id != client_id);
            if listeners.is_empty() {
                state.channels.remove(channel);
                if let Some(commands) = &state.commands {
                    let _ = commands.send(Command::Unlisten(channel.to_owned()));
                }
            }
        }
        if !state.channels.values().any(|l| l.contains(&client_id)) {
            state.clients.remove(&client_id);
        }
        close_if_unused(&mut state);
    }

    /// The client stops listening on every channel (UNLISTEN *, DISCARD ALL, it left).
    pub fn unlisten_all(&self, client_id: u64) {
        let channels: Vec<String> = {
            let state = lock(&self.state);
            state
                .channels
                .iter()
                .filter(|(_, listeners)| listeners.contains(&client_id))
                .map(|(channel, _)| channel.clone())
                .collect()
        };
        for channel in channels {
            self.unlisten(client_id, &channel);
        }
        lock(&self.state).clients.remove(&client_id);
    }

    /// Starts the task owning the listening connection; returns where to send it commands.
    fn start(&self) -> mpsc::UnboundedSender<Command> {
        let (commands, received) = mpsc::unbounded_channel();
        let pool = self.pool.clone();
        let state = self.state.clone();
        let wait = self.wait;
        tokio::spawn(async move { serve(pool, wait, state, received).await });
        commands
    }
}

/// With no channel left, the task's command channel is dropped: it closes the connection.
fn close_if_unused(state: &mut State) {
    if state.channels.is_empty() {
        state.commands = None;
    }
}

/// The listening connection's task: opens it, runs LISTEN/UNLISTEN as asked, and fans the
/// notifications out until no one listens or the connection is lost.
async fn serve(
    pool: Arc<Pool>,
    wait: Duration,
    state: Arc<Mutex<State>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut conn = match pool.checkout(wait).await {
        Ok(conn) => conn,
        Err(e) => {
            let why = e.to_string();
            while let Ok(command) = commands.try_recv() {
                if let Command::Listen(_, reply) = command {
                    let _ = reply.send(Err(ListenError::Lost(why.clone())));
                }
            }
            lock(&state).commands = None;
            return;
        }
    };
    debug!(server = %conn.addr, "listening server connection opened");
    let outcome = loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => break Ok(()),
                Some(Command::Listen(channel, reply)) => {
                    let done = run(&mut conn, &state, "LISTEN", &channel).await;
                    let failed = matches!(done, Err(ListenError::Lost(_)));
                    let _ = reply.send(done);
                    if failed {
                        break Err("the listening server connection failed".to_owned());
                    }
                }
                Some(Command::Unlisten(channel)) => {
                    if let Err(e) = run(&mut conn, &state, "UNLISTEN", &channel).await {
                        break Err(e.to_string());
                    }
                }
            },
            message = read_server(&mut conn) => {
                match message {
                    Ok((b'A', body)) => deliver(&state, &body),
                    Ok((b'E', body)) => break Err(error_text(&body)),
                    Ok(_) => {}
                    Err(e) => break Err(e.to_string()),
                }
            }
        }
    };
    // Listening, it must never serve a client: closed, not returned.
    conn.close();
    if let Err(why) = outcome {
        warn!(error = %why, "listening server connection lost; its listeners are disconnected");
        let mut state = lock(&state);
        for (_, client) in state.clients.drain() {
            *lock(&client.ended) = Some(Ended::Lost);
        }
        state.channels.clear();
        state.commands = None;
    }
}

/// Runs `LISTEN channel` or `UNLISTEN channel` on the listening connection, delivering the
/// notifications that arrive meanwhile.
async fn run(
    conn: &mut Lease,
    state: &Mutex<State>,
    verb: &str,
    channel: &str,
) -> Result<(), ListenError> {
    let mut out = BytesMut::new();
    frontend::encode_query(
        &mut out,
        &format!("{verb} \"{}\"", channel.replace('"', "\"\"")),
    );
    let lost = |e: &dyn std::fmt::Display| ListenError::Lost(e.to_string());
    flush(&mut conn.stream, &mut out)
        .await
        .map_err(|e| lost(&e))?;
    let mut refused = None;
    loop {
        let (tag, body) = read_server(conn).await.map_err(|e| lost(&e))?;
        match tag {
            b'A' => deliver(state, &body),
            b'E' => {
                refused = Some(match backend::parse_error_fields(&body) {
                    Ok(fields) => ListenError::Refused {
                        code: fields.code.into_owned(),
                        message: fields.message.into_owned(),
                    },
                    Err(e) => ListenError::Lost(e.to_string()),
                })
            }
            b'Z' => break,
            _ => {}
        }
    }
    refused.map_or(Ok(()), Err)
}

/// Sends a notification (its body) to every client listening on its channel; a client
/// whose queue is full stops listening, its queue closed with the reason.
fn deliver(state: &Mutex<State>, body: &[u8]) {
    let Ok(notification) = backend::parse_notification(body) else {
        return;
    };
    let mut message = BytesMut::with_capacity(HEADER_LEN + body.len());
    sluice_protocol::frame::write_message(&mut message, b'A', |m| m.extend_from_slice(body));
    let message = message.freeze();
    let mut state = lock(state);
    let Some(listeners) = state.channels.get(notification.channel) else {
        return;
    };
    let mut overflowed = Vec::new();
    for id in listeners {
        let Some(client) = state.clients.get(id) else {
            continue;
        };
        if client.sender.try_send(message.clone()).is_err() {
            *lock(&client.ended) = Some(Ended::Overflow);
            overflowed.push(*id);
        }
    }
    // An overflowed client's sender is dropped, which closes its queue; it listens no more.
    for id in overflowed {
        state.clients.remove(&id);
        let emptied: Vec<String> = state
            .channels
            .iter_mut()
            .filter_map(|(channel, listeners)| {
                listeners.retain(|l| *l != id);
                listeners.is_empty().then(|| channel.clone())
            })
            .collect();
        for channel in emptied {
            state.channels.remove(&channel);
            if let Some(commands) = &state.commands {
                let _ = commands.send(Command::Unlisten(channel));
            }
        }
    }
    close_if_unused(&mut state);
}

/// The next whole message from the listening connection.
async fn read_server(conn: &mut Lease) -> Result<(u8, BytesMut), crate::net::ReadError> {
    let server: &mut ServerConn = conn;
    read_message(&mut server.stream, &mut server.read_buf, MAX_MESSAGE_LEN).await
}

fn error_text(body: &[u8]) -> String {
    backend::parse_error_fields(body).map_or_else(
        |e| e.to_string(),
        |fields| format!("{} (SQLSTATE {})", fields.message, fields.code),
    )
}
