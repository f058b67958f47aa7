//! The hot path: relaying one logged-in client's messages to a server connection leased
//! from its tenant's pool, and the results back.
//!
//! Bytes are forwarded as they arrive, straight out of the read buffers; only message
//! headers are looked at, plus the few messages the proxy must understand: the status
//! byte of ReadyForQuery and, in transaction mode, the statement names of Parse, Bind,
//! Describe and Close (renamed and prepared on demand, see `statements`). Other bodies
//! are never buffered whole, so a huge row or COPY stream uses no more memory than a read.
//!
//! Transaction mode leases a server connection when the client sends something and
//! gives it back when the server reports ReadyForQuery 'I' with nothing else owed;
//! session mode keeps it until the client leaves. A client that leaves while its server
//! connection is busy or inside a transaction hands it to `server::reset`, which makes
//! it clean or closes it, so the next client never inherits its state.
//!
//! Both directions are driven by readiness (`readable`/`writable` plus `try_read`/
//! `try_write`), so a slow reader on one side never stops the other direction from
//! draining: no proxy-made deadlock when client and server both send a lot at once.

use super::timeouts::{Deadline, Timeouts};
use super::SessionError;
use crate::cancel::CancelTarget;
use crate::cluster::Disconnect;
use crate::params::Parameters;
use crate::pool::{self, PooledServer};
use crate::server::{self, InFlight, ServerConn};
use crate::shared::{Drain, Pause};
use crate::statements::{self, ClientStatements, Confirm, Plan, ResponseFilter};
use crate::stats::{add_micros, ClientState};
use crate::stream::Stream;
use crate::tenant::Tenant;
use crate::wire::{read_message, ReadError};
use bytes::{Buf, Bytes, BytesMut};
use deadpool::managed::Object;
use sluice_protocol::backend;
use sluice_protocol::extended::{self, encode_bind, encode_target};
use sluice_protocol::frame::{backend_header, frontend_header, Header, HEADER_LEN};
use sluice_protocol::frontend::encode_query;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

/// Client read size. Between reads the buffer holds at most a partial message.
const CLIENT_READ_CHUNK: usize = 8 * 1024;
/// How much a client may pipeline while it waits for a server connection.
const MAX_PENDING_WHILE_WAITING: usize = 64 * 1024;
/// ReadyForQuery is a header plus one status byte.
const READY_FOR_QUERY_LEN: usize = HEADER_LEN + 1;
/// Longest message expected in answer to the parameter-setting query.
const MAX_SYNC_ANSWER: usize = 64 * 1024;
/// Simple queries up to this size are read whole to spot `DISCARD ALL`/`DEALLOCATE ALL`.
const MAX_INSPECTED_QUERY: usize = 64;

/// What the client has asked of the server connection that is not yet answered.
struct Exchange {
    pending_ready: u32,
    unsynced: bool,
    copy_in: bool,
    status: u8,
}

/// Client bytes on their way to the server. Untouched messages are written straight
/// from `buf` (its first `direct` bytes); once a message had to be rewritten, output is
/// assembled in `assembled` until that drains, which keeps the order.
struct ToServer {
    buf: BytesMut,
    direct: usize,
    assembled: BytesMut,
    /// Bytes of the current message body not yet passed on.
    body_left: usize,
    /// A whole message must be buffered before it can be passed on: its total size.
    need_whole: usize,
}

impl ToServer {
    fn pending(&self) -> usize {
        self.direct + self.assembled.len()
    }

    /// Passes on `len` untouched bytes at the translation point.
    fn pass(&mut self, len: usize) {
        if self.assembled.is_empty() {
            self.direct += len;
        } else {
            self.assembled.extend_from_slice(&self.buf[..len]);
            self.buf.advance(len);
        }
    }

    /// Starts assembled output: what is already direct goes first.
    fn assemble(&mut self) -> &mut BytesMut {
        if self.direct > 0 {
            self.assembled.extend_from_slice(&self.buf[..self.direct]);
            self.buf.advance(self.direct);
            self.direct = 0;
        }
        &mut self.assembled
    }

    /// The untranslated bytes.
    fn untranslated(&self) -> &[u8] {
        &self.buf[self.direct..]
    }
}

/// Server bytes on their way to the client, straight from the server's read buffer.
#[derive(Default)]
struct ToClient {
    forwardable: usize,
    body_left: usize,
}

pub struct Relay<'a> {
    client: &'a mut Stream,
    to_server: ToServer,
    to_client: ToClient,
    terminated: bool,
    server: Option<PooledServer>,
    exchange: Exchange,
    statements: Option<ClientStatements>,
    filter: ResponseFilter,
    timeouts: Timeouts,
    /// The session parameters the client asked for, kept up to date with its own SETs.
    desired: Parameters,
    /// What it asked for at login: where its RESETs go back to.
    startup: Parameters,
    /// Settings the client reset in the requests in flight: the server's reports of
    /// them show the connection's defaults, not the client's.
    resetting: Resetting,
    /// When the current server connection was leased.
    lease_started: Option<Instant>,
    /// When each request still owed a ReadyForQuery was sent.
    requests_started: VecDeque<Instant>,
    flush: Flush,
    tenant: &'a Tenant,
    cancel: &'a Arc<CancelTarget>,
    pause: &'a Pause,
    drain: &'a Drain,
}

/// What one poll of both connections achieved.
enum Io {
    ClientRead(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    ServerWrote(std::io::Result<usize>),
    /// TLS records buffered for the client were sent.
    Flushed(std::io::Result<()>),
    /// TLS records buffered for the server were sent.
    ServerFlushed(std::io::Result<()>),
}

/// TLS streams buffer records; after a direction's output is written they still need a
/// flush. Plain TCP never sets these.
#[derive(Default)]
struct Flush {
    client: bool,
    server: bool,
}

/// Both connections and the buffers between them, for one poll.
struct Ends<'s> {
    client: &'s mut Stream,
    server: &'s mut ServerConn,
    to_server: &'s mut ToServer,
    to_client: &'s ToClient,
    flush: &'s mut Flush,
    read_client: bool,
    read_server: bool,
}

impl Ends<'_> {
    /// Tries writes first (they free buffers and let the peers go on), then reads;
    /// ready with the first that made progress. Cancel-safe: nothing is lost when the
    /// caller drops the poll between calls.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Io> {
        let out = &mut *self.to_server;
        if out.pending() > 0 {
            let bytes = if out.assembled.is_empty() {
                &out.buf[..out.direct]
            } else {
                &out.assembled[..]
            };
            if let Poll::Ready(r) = Pin::new(&mut self.server.stream).poll_write(cx, bytes) {
                return Poll::Ready(Io::ServerWrote(r));
            }
        } else if self.flush.server {
            if let Poll::Ready(r) = Pin::new(&mut self.server.stream).poll_flush(cx) {
                self.flush.server = false;
                return Poll::Ready(Io::ServerFlushed(r));
            }
        }
        let forwardable = self.to_client.forwardable;
        if forwardable > 0 {
            let bytes = &self.server.read_buf[..forwardable];
            if let Poll::Ready(r) = Pin::new(&mut *self.client).poll_write(cx, bytes) {
                return Poll::Ready(Io::ClientWrote(r));
            }
        } else if self.flush.client {
            if let Poll::Ready(r) = Pin::new(&mut *self.client).poll_flush(cx) {
                self.flush.client = false;
                return Poll::Ready(Io::Flushed(r));
            }
        }
        if self.read_client {
            let read = self.client.read_buf(&mut self.to_server.buf);
            if let Poll::Ready(r) = pin!(read).poll(cx) {
                return Poll::Ready(Io::ClientRead(r));
            }
        }
        if self.read_server {
            let server = &mut *self.server;
            let read = server.stream.read_buf(&mut server.read_buf);
            if let Poll::Ready(r) = pin!(read).poll(cx) {
                return Poll::Ready(Io::ServerRead(r));
            }
        }
        Poll::Pending
    }
}

/// Settings a client is resetting.
enum Resetting {
    All,
    Names(Vec<String>),
}

impl Resetting {
    fn covers(&self, name: &str) -> bool {
        match self {
            Resetting::All => true,
            Resetting::Names(names) => names.iter().any(|n| n.eq_ignore_ascii_case(name)),
        }
    }
}

/// Who the relay works for.
pub struct ClientContext<'a> {
    pub tenant: &'a Tenant,
    pub cancel: &'a Arc<CancelTarget>,
    pub pause: &'a Pause,
    pub drain: &'a Drain,
    pub client_id: u64,
}

/// Records that `client` now holds `server`.
fn note_leased(tenant: &Tenant, cancel: &CancelTarget, server: &ServerConn, now: Instant) {
    tenant.stats.clients_active.fetch_add(1, Relaxed);
    cancel.client.set_state(ClientState::Active, now);
    cancel
        .client
        .server_pid
        .store(server.cancel_key.pid, Relaxed);
    let info = &server.entry.info;
    info.active.store(true, Relaxed);
    info.client_id.store(cancel.client.id, Relaxed);
}

impl<'a> Relay<'a> {
    /// `client_buf` holds any bytes the client sent after its startup messages.
    /// `server` is the connection leased at login, if any (session mode).
    pub fn new(
        client: &'a mut Stream,
        client_buf: BytesMut,
        context: ClientContext<'a>,
        server: Option<PooledServer>,
        desired: Parameters,
    ) -> Self {
        let ClientContext {
            tenant,
            cancel,
            pause,
            drain,
            client_id,
        } = context;
        let now = Instant::now();
        let lease_started = server.as_ref().map(|server| {
            cancel.attach(server.addr, server.cancel_key);
            note_leased(tenant, cancel, server, now);
            now
        });
        let settings = &tenant.settings;
        let tracks_statements = !tenant.is_session_mode() && settings.max_prepared_statements > 0;
        Relay {
            client,
            to_server: ToServer {
                buf: client_buf,
                direct: 0,
                assembled: BytesMut::new(),
                body_left: 0,
                need_whole: 0,
            },
            to_client: ToClient::default(),
            terminated: false,
            server,
            exchange: Exchange {
                pending_ready: 0,
                unsynced: false,
                copy_in: false,
                status: b'I',
            },
            statements: tracks_statements.then(|| ClientStatements::new(client_id)),
            filter: ResponseFilter::default(),
            timeouts: Timeouts::new(settings),
            startup: desired.clone(),
            desired,
            resetting: Resetting::Names(Vec::new()),
            lease_started,
            requests_started: VecDeque::new(),
            flush: Flush::default(),
            tenant,
            cancel,
            pause,
            drain,
        }
    }

    /// Relays until the client leaves or something fails. Either way the server
    /// connection, if any, goes back to the pool clean or is closed, and a failure is
    /// reported to the client when that cannot cut a server message in two.
    pub async fn run(mut self) -> Result<(), SessionError> {
        let result = self.relay().await;
        let client_at_boundary = self.to_client.body_left == 0 && self.to_client.forwardable == 0;
        if self.is_releasable() && !self.tenant.is_session_mode() {
            self.release();
        } else if let Some(server) = self.server.take() {
            self.lease_ended(&server);
            let in_flight = InFlight {
                pending_ready: self.exchange.pending_ready,
                unsynced: self.exchange.unsynced,
                copy_in: self.exchange.copy_in,
                partial_message: self.to_server.body_left > 0,
                status: self.exchange.status,
            };
            let mut unsent = std::mem::take(&mut self.to_server.assembled);
            unsent.extend_from_slice(&self.to_server.buf[..self.to_server.direct]);
            let discard_all = self.tenant.is_session_mode();
            let cancel = self.cancel.detach().then(|| self.cancel.clone());
            tokio::spawn(async move {
                if let Some(cancel) = cancel {
                    cancel.cancels_finished().await;
                }
                reset_or_close(server, unsent.freeze(), in_flight, discard_all).await
            });
        }
        if let Err(e) = &result {
            if client_at_boundary {
                super::report_error(self.client, e).await;
            }
        }
        result
    }

    /// Gives the clean server connection back to the pool; if a cancel aimed at it is
    /// still in flight, only once that cancel has landed.
    fn release(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        self.lease_ended(&server);
        self.filter = ResponseFilter::default();
        if self.cancel.detach() {
            let cancel = self.cancel.clone();
            tokio::spawn(async move {
                cancel.cancels_finished().await;
                drop(server);
            });
        }
    }

    /// Statistics and state for the end of a lease.
    fn lease_ended(&mut self, server: &ServerConn) {
        let now = Instant::now();
        let stats = &self.tenant.stats;
        stats.clients_active.fetch_sub(1, Relaxed);
        stats.transactions.fetch_add(1, Relaxed);
        if let Some(started) = self.lease_started.take() {
            let leased = now - started;
            add_micros(&stats.transaction_micros, leased);
            self.tenant
                .cluster
                .metrics
                .transaction
                .record(leased.as_secs_f64());
        }
        self.requests_started.clear();
        let info = &server.entry.info;
        info.active.store(false, Relaxed);
        info.client_id.store(0, Relaxed);
        let client = &self.cancel.client;
        client.set_state(ClientState::Idle, now);
        client.server_pid.store(0, Relaxed);
    }

    async fn relay(&mut self) -> Result<(), SessionError> {
        if self.server.is_some() {
            self.sync_parameters().await?;
        }
        loop {
            if self.server.is_none() {
                match frontend_header(self.to_server.untranslated())? {
                    Some(Header { tag: b'X', .. }) => return Ok(()),
                    Some(_) => self.attach().await?,
                    None if self.terminated => return Ok(()),
                    None => {
                        self.wait_idle().await?;
                        continue;
                    }
                }
            }
            self.translate()?;
            self.scan_server()?;
            if self.is_releasable() {
                if self.terminated {
                    return Ok(());
                }
                if self.drain.is_draining() {
                    return Err(SessionError::ShuttingDown);
                }
                if self.tenant.retired.is_draining() {
                    return Err(SessionError::TenantRemoved);
                }
                if !self.tenant.is_session_mode() {
                    self.release();
                    continue;
                }
            } else if self.terminated && self.to_server.pending() == 0 {
                return Ok(());
            }
            self.wait_and_transfer().await?;
        }
    }

    /// No server connection: waits for the client (bounded by `client_idle_timeout`).
    async fn wait_idle(&mut self) -> Result<(), SessionError> {
        if std::mem::take(&mut self.flush.client) {
            self.client.flush().await.map_err(SessionError::ClientIo)?;
        }
        let deadline = self.timeouts.idle_deadline(false);
        let buf = &mut self.to_server.buf;
        let wanted = self.to_server.need_whole.saturating_sub(buf.len());
        reserve_for_read(buf, CLIENT_READ_CHUNK.max(wanted));
        let read = tokio::select! {
            read = self.client.read_buf(buf) => read.map_err(SessionError::ClientIo)?,
            () = Deadline::sleep(deadline) => return Err(self.timeouts.expired(false)),
            () = self.cancel.killed() => return Err(SessionError::Killed),
            () = self.drain.started() => return Err(SessionError::ShuttingDown),
            () = self.tenant.retired.started() => return Err(SessionError::TenantRemoved),
        };
        self.client_read(read);
        Ok(())
    }

    /// Accounts for `n` bytes read from the client; 0 means it closed its side.
    fn client_read(&mut self, n: usize) {
        if n == 0 {
            self.terminated = true;
        } else {
            self.tenant
                .stats
                .received_bytes
                .fetch_add(n as u64, Relaxed);
            self.timeouts.client_active();
        }
    }

    /// Waits until bytes can move on either connection, or a timer fires, and moves
    /// them: one read or write per call. Each direction reads only when what it read
    /// before has been passed on, which bounds the buffers.
    async fn wait_and_transfer(&mut self) -> Result<(), SessionError> {
        let read_client = self.to_server.pending() == 0 && !self.terminated;
        let read_server = self.to_client.forwardable == 0;
        let in_transaction = self.exchange.status != b'I';
        let busy = self.exchange.pending_ready > 0;
        let releasable = self.is_releasable();
        let deadline = if busy {
            self.timeouts.query_deadline()
        } else {
            self.timeouts.idle_deadline(in_transaction)
        };
        let server: &mut ServerConn = self.server.as_mut().expect("attached");
        if read_client {
            let wanted = self
                .to_server
                .need_whole
                .saturating_sub(self.to_server.buf.len());
            reserve_for_read(&mut self.to_server.buf, CLIENT_READ_CHUNK.max(wanted));
        }
        if read_server {
            reserve_for_read(&mut server.read_buf, server::SERVER_READ_CHUNK);
        }
        let mut ends = Ends {
            client: &mut *self.client,
            server,
            to_server: &mut self.to_server,
            to_client: &self.to_client,
            flush: &mut self.flush,
            read_client,
            read_server,
        };
        let io = std::future::poll_fn(|cx| ends.poll(cx));
        let event = tokio::select! {
            event = io => event,
            () = self.cancel.killed() => return Err(SessionError::Killed),
            () = self.drain.started(), if releasable => return Err(SessionError::ShuttingDown),
            () = self.tenant.retired.started(), if releasable => {
                return Err(SessionError::TenantRemoved)
            }
            () = Deadline::sleep(deadline) => {
                if busy {
                    self.timeouts.query_cancelled();
                    let cancel = self.cancel.clone();
                    tokio::spawn(async move { cancel.cancel_current().await });
                    return Ok(());
                }
                return Err(self.timeouts.expired(in_transaction));
            }
        };
        let server_is_tls = self.server.as_ref().is_some_and(|s| s.stream.is_tls());
        match event {
            Io::ClientRead(Ok(n)) => self.client_read(n),
            Io::ServerRead(Ok(0)) => return Err(self.server_lost("server closed the connection")),
            Io::ServerRead(Ok(_)) | Io::Flushed(Ok(())) => {}
            Io::ServerWrote(Ok(n)) => {
                let out = &mut self.to_server;
                if out.assembled.is_empty() {
                    out.buf.advance(n);
                    out.direct -= n;
                } else {
                    out.assembled.advance(n);
                }
                self.flush.server = self.to_server.pending() == 0 && server_is_tls;
            }
            Io::ClientWrote(Ok(n)) => {
                let server = self.server.as_mut().expect("attached");
                server.read_buf.advance(n);
                self.to_client.forwardable -= n;
                self.tenant.stats.sent_bytes.fetch_add(n as u64, Relaxed);
                self.flush.client = self.to_client.forwardable == 0 && self.client.is_tls();
            }
            Io::ClientRead(Err(e)) | Io::ClientWrote(Err(e)) => {
                return Err(SessionError::ClientIo(e))
            }
            Io::ServerRead(Err(e)) | Io::ServerWrote(Err(e)) => {
                return Err(self.server_lost(&e.to_string()))
            }
            Io::Flushed(Err(e)) => return Err(SessionError::ClientIo(e)),
            Io::ServerFlushed(Ok(())) => {}
            Io::ServerFlushed(Err(e)) => return Err(self.server_lost(&e.to_string())),
        }
        Ok(())
    }

    /// True when the server owes nothing and every byte it sent reached the client.
    fn is_releasable(&self) -> bool {
        let Some(server) = &self.server else {
            return true;
        };
        self.exchange.pending_ready == 0
            && !self.exchange.unsynced
            && self.exchange.status == b'I'
            && self.to_server.body_left == 0
            && self.to_server.pending() == 0
            && self.to_client.body_left == 0
            && server.read_buf.is_empty()
    }

    /// Leases a server connection for the client's pending messages. While waiting, the
    /// client may go on sending (bounded); its disconnect or a cancel request aborts the wait.
    async fn attach(&mut self) -> Result<(), SessionError> {
        let tenant = self.tenant;
        let cancel = self.cancel;
        let wait = tenant.settings.query_wait_timeout;
        let started = Instant::now();
        cancel.client.set_state(ClientState::Waiting, started);
        tenant.stats.clients_waiting.fetch_add(1, Relaxed);
        let leased = self.wait_for_server(wait).await;
        tenant.stats.clients_waiting.fetch_sub(1, Relaxed);
        cancel.set_waiting(false);
        let leased = match leased {
            Ok(leased) => leased,
            Err(e) => {
                cancel.client.set_state(ClientState::Idle, Instant::now());
                return Err(e);
            }
        };
        let now = Instant::now();
        let waited = now - started;
        tenant.stats.record_wait(waited);
        tenant
            .cluster
            .metrics
            .pool_wait
            .record(waited.as_secs_f64());
        debug!(server = %leased.addr, "server connection leased");
        cancel.attach(leased.addr, leased.cancel_key);
        note_leased(tenant, cancel, &leased, now);
        self.lease_started = Some(now);
        self.server = Some(leased);
        self.sync_parameters().await
    }

    /// Waits (while paused, then for a pool slot) for a server connection.
    async fn wait_for_server(&mut self, wait: Duration) -> Result<PooledServer, SessionError> {
        let tenant = self.tenant;
        let cancel = self.cancel;
        let resumed = self.pause.wait_resumed(tenant);
        tokio::pin!(resumed);
        let checkout = async {
            resumed.await;
            pool::checkout(&tenant.pool, wait).await
        };
        tokio::pin!(checkout);
        cancel.set_waiting(true);
        let leased = loop {
            let watch_client =
                !self.terminated && self.to_server.buf.len() < MAX_PENDING_WHILE_WAITING;
            tokio::select! {
                leased = &mut checkout => break leased,
                () = cancel.cancelled_while_waiting() => {
                    return Err(SessionError::CancelledWhileWaiting);
                }
                () = cancel.killed() => return Err(SessionError::Killed),
                read = self.client.read_buf(&mut self.to_server.buf), if watch_client => {
                    match read.map_err(SessionError::ClientIo)? {
                        0 => return Err(SessionError::ClientGone),
                        n => self.client_read(n),
                    }
                }
            }
        };
        leased.map_err(|e| SessionError::from_checkout(&tenant.name(), wait, e))
    }

    /// Gives the server session the client's parameter values where they differ, in
    /// one round trip before any of the client's messages.
    async fn sync_parameters(&mut self) -> Result<(), SessionError> {
        let server: &mut ServerConn = self.server.as_mut().expect("attached");
        let Some(sql) = server.params.sync_sql(&self.desired) else {
            return Ok(());
        };
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        encode_query(&mut out, &sql);
        let mut rejected = None;
        let exchange = async {
            server.stream.write_all(&out).await?;
            loop {
                let (tag, body) =
                    read_message(&mut server.stream, &mut server.read_buf, MAX_SYNC_ANSWER).await?;
                match tag {
                    b'S' => {
                        let (name, value) = backend::parse_parameter_status(&body)?;
                        server.params.current.set(name, value);
                        self.desired.set(name, value);
                    }
                    b'E' => {
                        let fields = backend::parse_error_fields(&body)?;
                        rejected = Some((fields.code.into_owned(), fields.message.into_owned()));
                    }
                    b'Z' => return Ok::<_, ReadError>(()),
                    _ => {}
                }
            }
        };
        if let Err(e) = exchange.await {
            return Err(self.server_lost(&format!("setting session parameters: {e}")));
        }
        match rejected {
            None => Ok(()),
            Some((code, message)) => {
                // What the server now has is unknown: close it rather than reuse it.
                if let Some(server) = self.server.take() {
                    self.lease_ended(&server);
                    self.cancel.detach();
                    self.tenant
                        .cluster
                        .metrics
                        .disconnected(Disconnect::ResetFailed);
                    drop(Object::take(server));
                }
                Err(SessionError::ParameterRejected { code, message })
            }
        }
    }

    /// Moves client messages towards the server as far as the buffered bytes allow,
    /// counting what the server will owe and rewriting statement names.
    fn translate(&mut self) -> Result<(), SessionError> {
        loop {
            let out = &mut self.to_server;
            if out.body_left > 0 {
                let take = out.body_left.min(out.untranslated().len());
                out.pass(take);
                out.body_left -= take;
                if out.body_left > 0 {
                    return Ok(());
                }
            }
            if self.terminated {
                return Ok(());
            }
            let Some(header) = frontend_header(out.untranslated())? else {
                return Ok(());
            };
            let whole = header.message_len();
            let tracked = self.statements.is_some();
            let needs_whole = (tracked && matches!(header.tag, b'P' | b'B' | b'D' | b'C'))
                || (header.tag == b'Q' && header.body_len <= MAX_INSPECTED_QUERY);
            if needs_whole && out.untranslated().len() < whole {
                out.need_whole = whole;
                return Ok(());
            }
            out.need_whole = 0;
            match header.tag {
                b'X' => {
                    // Terminate ends the client, not the pooled server session.
                    let at = out.direct;
                    out.buf.truncate(at);
                    self.terminated = true;
                    return Ok(());
                }
                b'Q' | b'F' | b'S' => {
                    self.exchange.pending_ready += 1;
                    self.requests_started.push_back(Instant::now());
                    self.timeouts.request_sent(self.exchange.pending_ready);
                    self.filter.batch_sent();
                    if header.tag == b'S' {
                        self.exchange.unsynced = false;
                    }
                    if header.tag == b'Q' {
                        self.simple_query(&header);
                    }
                }
                b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => self.exchange.unsynced = true,
                _ => {}
            }
            if needs_whole && header.tag != b'Q' && tracked {
                if self.statement_message(header.tag, whole)? {
                    continue;
                }
                if header.tag == b'C' {
                    self.filter.close_sent(false);
                }
            }
            let out = &mut self.to_server;
            out.pass(HEADER_LEN);
            out.body_left = header.body_len;
        }
    }

    /// A short simple query: `DISCARD ALL` and `DEALLOCATE ALL` drop every prepared
    /// statement, and any simple query drops the unnamed one.
    fn simple_query(&mut self, header: &Header) {
        let server: &mut ServerConn = self.server.as_mut().expect("attached");
        server.statements.set_unnamed(None);
        if let Some(client) = &mut self.statements {
            client.forget_unnamed();
        }
        if header.body_len > MAX_INSPECTED_QUERY {
            return;
        }
        let body = &self.to_server.untranslated()[HEADER_LEN..header.message_len()];
        // Only DISCARD, DEALLOCATE and RESET matter here; skip everything else cheaply.
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if !matches!(first, Some(b'd' | b'D' | b'r' | b'R')) {
            return;
        }
        let sql = String::from_utf8_lossy(body).to_ascii_lowercase();
        for statement in sql.trim_end_matches('\0').split(';') {
            let words: Vec<&str> = statement.split_whitespace().collect();
            match words[..] {
                ["discard", "all"] | ["deallocate", "all"] => {
                    server.statements.clear();
                    if let Some(client) = &mut self.statements {
                        client.clear();
                    }
                }
                _ => {}
            }
            // PostgreSQL resets settings to the session's startup values; the server
            // connection has other ones, so sluice restores the client's (re-applied
            // at its next lease) and keeps the server's reports from overriding them.
            match words[..] {
                ["discard", "all"] | ["reset", "all"] => {
                    server.params.reset_to_login();
                    self.desired = self.startup.clone();
                    self.resetting = Resetting::All;
                }
                ["reset", name] => {
                    server.params.current.forget(name);
                    self.desired
                        .restore(name, &self.startup, &server.params.login);
                    if let Resetting::Names(names) = &mut self.resetting {
                        names.push(name.to_owned());
                    }
                }
                _ => {}
            }
        }
    }

    /// Handles a complete Parse, Bind, Describe or Close at the translation point.
    /// Returns true when the message was replaced by its rewrite (already in the
    /// output), false to pass it on as is (after anything injected before it).
    fn statement_message(&mut self, tag: u8, whole: usize) -> Result<bool, SessionError> {
        let server = &mut self.server.as_mut().expect("attached").statements;
        let client = self.statements.as_mut().expect("tracking statements");
        let capacity = self.tenant.settings.max_prepared_statements as usize;
        let message = &self.to_server.untranslated()[..whole];
        let body = &message[HEADER_LEN..];
        let mut name_in_use = false;
        let plan = match tag {
            b'P' => {
                let parse = extended::parse_parse(body)?;
                if parse.statement.is_empty() {
                    server.set_unnamed(None);
                    let owner = client.remember_unnamed(message);
                    self.filter.parse_sent(false, Confirm::Unnamed(owner));
                    return Ok(false);
                }
                if client.get(parse.statement).is_some() {
                    // PostgreSQL refuses a name in use (42P05) and keeps the statement:
                    // make sure the server has it, then ask it to prepare it again.
                    name_in_use = true;
                    Plan::for_use(server, client, capacity, parse.statement)
                } else {
                    // The client's own Parse: its ParseComplete is the client's to see,
                    // and the name stays known only if the server accepts it.
                    let name = Bytes::copy_from_slice(parse.statement);
                    let statement = client.prepare(parse.statement, parse.rest);
                    Plan::prepare(server, capacity, statement, Some(name))
                }
            }
            b'B' => {
                let bind = extended::parse_bind(body)?;
                Plan::for_use(server, client, capacity, bind.statement)
            }
            b'D' => {
                let target = extended::parse_target(body)?;
                if !target.is_statement() {
                    return Ok(false);
                }
                Plan::for_use(server, client, capacity, target.name)
            }
            _ => {
                let target = extended::parse_target(body)?;
                if !target.is_statement() {
                    self.filter.close_sent(false);
                    return Ok(false);
                }
                if target.name.is_empty() {
                    server.set_unnamed(None);
                    client.forget_unnamed();
                    self.filter.close_sent(false);
                    return Ok(false);
                }
                let Some(statement) = client.close(target.name) else {
                    self.filter.close_sent(false);
                    return Ok(false);
                };
                server.forget(&statement.server_name);
                Plan {
                    rename: Some(statement.server_name.clone()),
                    ..Plan::default()
                }
            }
        };
        if matches!(tag, b'B' | b'D') && plan.rename.is_some() {
            let stats = &self.tenant.stats;
            let counter = if plan.parse.is_some() {
                &stats.prepared_misses
            } else {
                &stats.prepared_hits
            };
            counter.fetch_add(1, Relaxed);
        }
        if plan.is_nothing() {
            if tag == b'C' {
                self.filter.close_sent(false);
            }
            return Ok(false);
        }
        let out = &mut self.to_server;
        let assembled = out.assemble();
        for name in plan.close.iter().flatten() {
            statements::encode_close_statement(assembled, name);
            self.filter.close_sent(true);
        }
        if let Some((parse, confirm, swallow)) = plan.parse {
            assembled.extend_from_slice(&parse);
            self.filter.parse_sent(swallow, confirm);
        }
        // A new named Parse was replaced by its server-side form above; a Bind, Describe,
        // Close, or a Parse of a name in use, is replaced when it names a statement
        // sluice renamed.
        let server_name = match (tag, plan.rename) {
            (b'P', _) if !name_in_use => Bytes::new(),
            (_, Some(server_name)) => server_name,
            (_, None) => return Ok(false),
        };
        let message = out.buf.split_to(whole);
        let body = &message[HEADER_LEN..];
        match tag {
            b'P' if name_in_use => {
                let parse = extended::parse_parse(body)?;
                extended::encode_parse(&mut out.assembled, &server_name, parse.rest);
                let confirm = Confirm::Prepared {
                    server_name,
                    client: None,
                };
                self.filter.parse_sent(false, confirm);
            }
            b'P' => {}
            b'B' => {
                let bind = extended::parse_bind(body)?;
                encode_bind(&mut out.assembled, bind.portal, &server_name, bind.rest);
            }
            b'D' => encode_target(&mut out.assembled, b'D', b'S', &server_name),
            _ => {
                statements::encode_close_statement(&mut out.assembled, &server_name);
                self.filter.close_sent(false);
            }
        }
        Ok(true)
    }

    /// Classifies the server's complete headers: counts ReadyForQuery, notes COPY IN, and
    /// drops the answers to messages sluice injected.
    fn scan_server(&mut self) -> Result<(), SessionError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let server: &mut ServerConn = server;
        let to_client = &mut self.to_client;
        loop {
            let buf = &server.read_buf;
            if to_client.body_left > 0 {
                let take = to_client.body_left.min(buf.len() - to_client.forwardable);
                to_client.forwardable += take;
                to_client.body_left -= take;
                if to_client.body_left > 0 {
                    return Ok(());
                }
            }
            let rest = &buf[to_client.forwardable..];
            let header = match backend_header(rest) {
                Ok(Some(header)) => header,
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(SessionError::ServerLost(format!(
                        "malformed server message: {e}"
                    )))
                }
            };
            match header.tag {
                b'Z' => {
                    if rest.len() < READY_FOR_QUERY_LEN {
                        return Ok(());
                    }
                    self.exchange.status = rest[HEADER_LEN];
                    self.exchange.pending_ready = self.exchange.pending_ready.saturating_sub(1);
                    self.exchange.copy_in = false;
                    self.filter.batch_done(self.statements.as_mut());
                    if self.exchange.pending_ready == 0 {
                        self.resetting = Resetting::Names(Vec::new());
                    }
                    self.timeouts.ready_received(self.exchange.pending_ready);
                    if let Some(sent) = self.requests_started.pop_front() {
                        let took = sent.elapsed();
                        let stats = &self.tenant.stats;
                        stats.queries.fetch_add(1, Relaxed);
                        add_micros(&stats.query_micros, took);
                        self.tenant.cluster.metrics.query.record(took.as_secs_f64());
                    }
                }
                b'G' => self.exchange.copy_in = true,
                b'S' => {
                    // The client's own SET (or its rollback): follow it to the next server.
                    let whole = header.message_len();
                    if rest.len() < whole {
                        return Ok(());
                    }
                    let parsed = backend::parse_parameter_status(&rest[HEADER_LEN..whole]);
                    let (name, value) = parsed.map_err(|e| {
                        SessionError::ServerLost(format!("malformed server message: {e}"))
                    })?;
                    server.params.current.set(name, value);
                    if !self.resetting.covers(name) {
                        self.desired.set(name, value);
                    }
                }
                b'1' | b'3' => {
                    // Answers must be matched in order, so one to swallow waits until
                    // everything before it has been written to the client.
                    if self.filter.may_swallow() && to_client.forwardable > 0 {
                        return Ok(());
                    }
                    let swallow = if header.tag == b'1' {
                        self.filter.parse_complete(&mut server.statements)
                    } else {
                        self.filter.close_complete()
                    };
                    if swallow {
                        server.read_buf.advance(HEADER_LEN);
                        continue;
                    }
                }
                _ => {}
            }
            to_client.forwardable += HEADER_LEN;
            to_client.body_left = header.body_len;
        }
    }

    /// The server connection failed: it is closed rather than returned to the pool.
    fn server_lost(&mut self, why: &str) -> SessionError {
        if let Some(server) = self.server.take() {
            warn!(server = %server.addr, reason = why, "server connection lost");
            self.lease_ended(&server);
            self.cancel.detach();
            self.tenant.cluster.metrics.disconnected(Disconnect::Broken);
            drop(Object::take(server));
        }
        SessionError::ServerLost(why.to_owned())
    }
}

/// Makes room for one read of `chunk` bytes, reusing the buffer's allocation when it is
/// drained.
fn reserve_for_read(buf: &mut BytesMut, chunk: usize) {
    if buf.capacity() - buf.len() < chunk.min(CLIENT_READ_CHUNK) / 4
        || buf.capacity() - buf.len() < chunk / 2
    {
        buf.reserve(chunk);
    }
}

/// Returns a connection its client left busy to the pool after resetting it, or closes it.
/// `unsent` are complete client messages already counted in `in_flight` but not yet
/// written to the server.
async fn reset_or_close(
    mut server: PooledServer,
    unsent: Bytes,
    in_flight: InFlight,
    discard_all: bool,
) {
    let conn: &mut ServerConn = &mut server;
    let reset = async {
        conn.stream.write_all(&unsent).await?;
        server::reset(conn, in_flight, discard_all).await
    };
    match reset.await {
        Ok(()) => debug!(server = %conn.addr, "server connection reset and returned to the pool"),
        Err(e) => {
            debug!(server = %conn.addr, error = %e, "server connection closed instead of reused");
            drop(Object::take(server));
        }
    }
}
