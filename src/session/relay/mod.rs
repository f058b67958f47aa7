//! The hot path: relaying one logged-in client's messages to a server connection leased
//! from its tenant's pool, and the results back.
//!
//! Bytes are forwarded as they arrive, straight out of the read buffers; only message
//! headers are looked at, plus the few messages the proxy must understand: the status
//! byte of ReadyForQuery, ParameterStatus, simple queries up to 64 KiB (for the statements
//! in `effects`) and, in transaction mode, Parse, Bind, Describe and Close (renamed and
//! prepared on demand, see `statements`). Other bodies are never buffered whole, so a huge
//! row or COPY stream uses no more memory than a read.
//!
//! Every message in either direction goes through the server connection's
//! [`Exchange`](sluice_protocol::exchange::Exchange): what it owes, its phase and its
//! transaction status. A backend message that answers nothing sent closes the connection
//! (it is out of sync) instead of reaching the client. Transaction mode leases a server
//! connection when the client sends something and gives it back when the exchange is idle
//! (nothing owed, no batch open, status 'I') and every byte has moved; session mode keeps
//! it until the client leaves. A client that leaves while its server connection is not
//! idle hands it to `server::reset`, which makes it clean or closes it, so the next client
//! never inherits its state.
//!
//! Both directions are driven by one poll of both connections (`buffers::Ends`: writes
//! first, then reads, through `poll_write`/`poll_read`), so a slow reader on one side never
//! stops the other direction from draining: no proxy-made deadlock when client and server
//! both send a lot at once.
//!
//! Uses the pool, the server connection and the tenant it is given; knows nothing of the
//! listener, the console or other sessions.

mod buffers;
mod interrupts;
#[cfg(test)]
mod tests;
mod translate;

use buffers::{
    give_back_read_buffer, reserve_for_read, take_read_buffer, Ends, Flush, Io, ToClient, ToServer,
};
use interrupts::Interrupts;

use super::classify::{self, Effect};
use super::effects::{Effects, StatementEffects};
use super::pins::Pins;
use super::statements::{ClientStatements, ResponseFilter};
use super::timeouts::{Deadline, QueryDeadline, Timeouts};
use super::transaction::Transaction;
use crate::cancel::CancelTarget;
use crate::client::{report_error, SessionError};
use crate::lifecycle::{Drain, Pause};
use crate::net::{read_message, ReadError, Stream};
use crate::pool::cluster::Disconnect;
use crate::pool::CheckoutError;
use crate::pool::Lease;
use crate::server::parameters::Parameters;
use crate::server::{self, BackendError, ServerConn};
use crate::stats::{add_micros, ClientState};
use crate::tenant::listener::{ListenError, Subscription};
use crate::tenant::Tenant;
use bytes::{Buf, Bytes, BytesMut};
use sluice_protocol::backend;
use sluice_protocol::exchange::TransactionStatus;
use sluice_protocol::frame::{frontend_header, Header, HEADER_LEN};
use sluice_protocol::frontend::encode_query;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};
/// Client read size. Between reads the buffer holds at most a partial message.
const CLIENT_READ_CHUNK: usize = 8 * 1024;
/// How much a client may pipeline while it waits for a server connection.
const MAX_PENDING_WHILE_WAITING: usize = 64 * 1024;
/// Longest message expected in answer to the parameter-setting query.
const MAX_SYNC_ANSWER: usize = 64 * 1024;
/// Simple queries up to this size are read whole to spot the statements in `effects`; a
/// longer one leaves the connection's prepared statements and settings unknown.
const MAX_INSPECTED_QUERY: usize = 64 * 1024;

pub struct Relay<'a> {
    client: &'a mut Stream,
    to_server: ToServer,
    to_client: ToClient,
    terminated: bool,
    server: Option<Lease>,
    statements: Option<ClientStatements>,
    filter: ResponseFilter,
    /// Effects of the client's statements waiting for the server to confirm them.
    effects: Effects,
    /// What the client's prepared statements and unnamed portal do.
    statement_effects: StatementEffects,
    /// The transaction the client is in, as its statements describe it.
    transaction: Transaction,
    /// Session state that keeps the client on its server connection.
    pins: Pins,
    /// A statement sluice could not read may have left anything on the server connection:
    /// it is reset with DISCARD ALL before another client gets it.
    unknown_state: bool,
    /// The client's notifications, once it has LISTENed (transaction mode).
    subscription: Option<Subscription>,
    timeouts: Timeouts,
    /// The session parameters the client asked for, kept up to date with its own SETs.
    desired: Parameters,
    /// What it asked for at login: where its RESETs go back to.
    startup: Parameters,
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
        server: Option<Lease>,
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
            statements: tracks_statements.then(|| ClientStatements::new(client_id)),
            filter: ResponseFilter::default(),
            effects: Effects::default(),
            statement_effects: StatementEffects::default(),
            transaction: Transaction::default(),
            pins: Pins::default(),
            unknown_state: false,
            subscription: None,
            timeouts: Timeouts::new(settings),
            startup: desired.clone(),
            desired,
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
        if self.subscription.is_some() {
            self.tenant.listener().unlisten_all(self.cancel.client.id);
        }
        let client_at_boundary = self.to_client.body_left == 0 && self.to_client.forwardable == 0;
        if self.is_releasable() && !self.tenant.is_session_mode() {
            self.release();
        } else {
            self.hand_over_for_reset();
        }
        if let Err(e) = &result {
            if client_at_boundary {
                report_error(self.client, e).await;
            }
        }
        result
    }

    /// Hands the server connection, not idle or holding session state, to a reset that
    /// makes it clean (`DISCARD ALL` where session state may remain) or closes it.
    fn hand_over_for_reset(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        self.lease_ended(&server);
        let partial = self.to_server.body_left > 0;
        let mut unsent = std::mem::take(&mut self.to_server.assembled);
        unsent.extend_from_slice(&self.to_server.buf[..self.to_server.direct]);
        let discard_all =
            self.tenant.is_session_mode() || !self.pins.is_empty() || self.unknown_state;
        if self.pins.must_close() {
            // A loaded library cannot be taken off a connection.
            self.tenant
                .cluster
                .metrics
                .disconnected(Disconnect::ResetFailed);
            self.cancel.detach();
            server.close();
        } else {
            let cancel = self.cancel.detach().then(|| self.cancel.clone());
            tokio::spawn(async move {
                if let Some(cancel) = cancel {
                    cancel.cancels_finished().await;
                }
                reset_or_close(server, unsent.freeze(), partial, discard_all).await
            });
        }
        self.pins = Pins::default();
        self.unknown_state = false;
        self.transaction.abandon();
        self.cancel.client.set_pins(0);
    }

    /// Gives the clean server connection back to the pool; if a cancel aimed at it is
    /// still in flight, only once that cancel has landed.
    fn release(&mut self) {
        if self.unknown_state {
            return self.hand_over_for_reset();
        }
        let Some(server) = self.server.take() else {
            return;
        };
        self.lease_ended(&server);
        self.filter.clear();
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
        self.effects.clear();
        let info = &server.entry.info;
        info.active.store(false, Relaxed);
        info.client_id.store(0, Relaxed);
        let client = &self.cancel.client;
        client.set_state(ClientState::Idle, now);
        client.server_pid.store(0, Relaxed);
    }

    async fn relay(&mut self) -> Result<(), SessionError> {
        // Registered once for the whole session, not on every wait (see `interrupts`).
        let (cancel, drain, retired) = (&**self.cancel, self.drain, &self.tenant.retired);
        let mut killed = pin!(cancel.kill_notified());
        let mut draining = pin!(drain.notified());
        let mut removed = pin!(retired.notified());
        let interrupts = &mut Interrupts::new(
            cancel,
            drain,
            retired,
            [killed.as_mut(), draining.as_mut(), removed.as_mut()],
        );
        if self.server.is_some() {
            self.sync_parameters(interrupts).await?;
        }
        loop {
            if self.at_request_boundary() {
                match self.listen_request()? {
                    ListenRequest::Answer(effect, len) => {
                        self.answer_listen(effect, len).await?;
                        continue;
                    }
                    // The client left in the middle of a query no server has seen.
                    ListenRequest::Incomplete(_) if self.server.is_none() && self.terminated => {
                        return Ok(())
                    }
                    ListenRequest::Incomplete(len) if self.server.is_none() => {
                        // Read the query whole before leasing anything for it.
                        self.to_server.need_whole = len;
                        self.wait_idle(interrupts).await?;
                        continue;
                    }
                    ListenRequest::Incomplete(_) | ListenRequest::Other => {}
                }
            }
            if self.server.is_none() {
                match frontend_header(self.to_server.untranslated())? {
                    Some(Header { tag: b'X', .. }) => return Ok(()),
                    Some(_) => self.attach(interrupts).await?,
                    None if self.terminated => return Ok(()),
                    None => {
                        self.wait_idle(interrupts).await?;
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
                // A short message still arriving (read whole, see `translate`) keeps the
                // connection while the rest is read: released, it would be leased again at
                // once, over and over, without the client being read.
                if !self.tenant.is_session_mode() && self.to_server.need_whole == 0 {
                    self.release();
                    continue;
                }
            } else if self.terminated && self.to_server.pending() == 0 {
                return Ok(());
            }
            self.wait_and_transfer(interrupts).await?;
        }
    }

    /// No server connection: waits for the client (bounded by `client_idle_timeout`).
    async fn wait_idle(&mut self, interrupts: &mut Interrupts<'_, '_>) -> Result<(), SessionError> {
        if std::mem::take(&mut self.flush.client) {
            self.client.flush().await.map_err(SessionError::ClientIo)?;
        }
        let deadline = self.timeouts.idle_deadline(false);
        if self.to_server.buf.is_empty() {
            if let Some(tcp) = self.client.as_plain() {
                // Nothing buffered: the idle client holds no read buffer while it is silent.
                give_back_read_buffer(std::mem::take(&mut self.to_server.buf));
                tokio::select! {
                    biased;
                    error = poll_fn(|cx| interrupts.poll(cx, true)) => return Err(error),
                    () = Deadline::sleep(deadline) => return Err(self.timeouts.expired(false)),
                    delivery = next_notification(&mut self.subscription) => {
                        self.to_server.buf = take_read_buffer();
                        return self.deliver(delivery).await;
                    }
                    ready = tcp.readable() => ready.map_err(SessionError::ClientIo)?,
                }
                // The read below then completes at once. It goes through `poll_read`, not
                // `try_read`: a short read clears the socket's readiness there, so the next
                // read waits for epoll instead of costing a `recvfrom` that finds nothing.
                self.to_server.buf = take_read_buffer();
            }
        }
        let buf = &mut self.to_server.buf;
        let wanted = self.to_server.need_whole.saturating_sub(buf.len());
        reserve_for_read(buf, CLIENT_READ_CHUNK.max(wanted));
        // Biased, interrupts first: they cost two atomic loads and must win over a
        // client that never stops sending. Every branch is cancel-safe.
        let read = tokio::select! {
            biased;
            error = poll_fn(|cx| interrupts.poll(cx, true)) => return Err(error),
            () = Deadline::sleep(deadline) => return Err(self.timeouts.expired(false)),
            delivery = next_notification(&mut self.subscription) => {
                return self.deliver(delivery).await;
            }
            read = self.client.read_buf(buf) => read.map_err(SessionError::ClientIo)?,
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
    async fn wait_and_transfer(
        &mut self,
        interrupts: &mut Interrupts<'_, '_>,
    ) -> Result<(), SessionError> {
        let releasable = self.is_releasable();
        let deliverable = self.at_request_boundary();
        let exchange = &self.server.as_ref().expect("attached").exchange;
        // A client that pipelines without reading is not read further until the server
        // answers: the exchange's record of what is owed stays bounded.
        let read_client = self.to_server.pending() == 0 && !self.terminated && !exchange.is_full();
        let read_server = self.to_client.forwardable == 0;
        let in_transaction = exchange.status() != TransactionStatus::Idle;
        let busy = exchange.is_busy();
        let pinned = !self.pins.is_empty() && !in_transaction;
        let deadline = if busy {
            self.timeouts.query_deadline()
        } else if pinned {
            self.timeouts.pinned_idle_deadline()
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
        // Between the client's requests only, as PostgreSQL delivers them.
        let subscription = if deliverable {
            &mut self.subscription
        } else {
            &mut None
        };
        let notification = next_notification(subscription);
        // Biased: interrupts, then timers, then I/O, so a connection that always has
        // bytes to move cannot starve a kill or a query timeout. Every branch is
        // cancel-safe (`Ends::poll` loses nothing when dropped between calls).
        let event = tokio::select! {
            biased;
            error = poll_fn(|cx| interrupts.poll(cx, releasable)) => return Err(error),
            () = Deadline::sleep(deadline) => {
                if pinned && !busy {
                    return Err(self.timeouts.pinned_expired());
                }
                if !busy {
                    return Err(self.timeouts.expired(in_transaction));
                }
                match self.timeouts.query_deadline_passed() {
                    QueryDeadline::Cancel => {
                        // Marked in flight now, before this session can release the
                        // connection: the cancel can only land on this query.
                        if let Some(server) = self.cancel.begin_cancel() {
                            let cancel = self.cancel.clone();
                            tokio::spawn(async move { cancel.forward(server).await });
                        }
                        return Ok(());
                    }
                    QueryDeadline::GiveUp => {
                        warn!("the server did not answer a query_timeout cancel; closing its connection");
                        self.close_server(Disconnect::Stalled);
                        return Err(self.timeouts.gave_up());
                    }
                }
            }
            delivery = notification => return self.deliver(delivery).await,
            event = io => event,
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

    /// Transaction mode, between the client's requests: no server connection, or an idle
    /// one with no byte in flight (a pinned client between transactions).
    fn at_request_boundary(&self) -> bool {
        if self.tenant.is_session_mode() {
            return false;
        }
        match &self.server {
            None => true,
            Some(server) => {
                server.exchange.is_idle()
                    && self.to_server.pending() == 0
                    && self.to_server.body_left == 0
                    && self.to_client.forwardable == 0
                    && self.to_client.body_left == 0
            }
        }
    }

    /// Whether the client's next message is a LISTEN or UNLISTEN sluice answers itself: a
    /// simple query holding only that statement.
    fn listen_request(&self) -> Result<ListenRequest, SessionError> {
        let untranslated = self.to_server.untranslated();
        let Some(header) = frontend_header(untranslated)? else {
            return Ok(ListenRequest::Other);
        };
        if header.tag != b'Q' || header.body_len > MAX_INSPECTED_QUERY {
            return Ok(ListenRequest::Other);
        }
        let whole = header.message_len();
        if untranslated.len() < whole {
            return Ok(ListenRequest::Incomplete(whole));
        }
        let body = &untranslated[HEADER_LEN..whole];
        let text = body.strip_suffix(b"\0").unwrap_or(body);
        let listen = sluice_protocol::sql::first_word(text).is_some_and(|word| {
            word.eq_ignore_ascii_case(b"listen") || word.eq_ignore_ascii_case(b"unlisten")
        });
        if !listen || sluice_protocol::sql::statements(text).count() != 1 {
            return Ok(ListenRequest::Other);
        }
        let mut found = None;
        classify::effects_of(text, |_, effect| found = Some(effect));
        Ok(match found {
            Some(effect @ (Effect::Listen(_) | Effect::Unlisten(_) | Effect::UnlistenAll)) => {
                ListenRequest::Answer(effect, whole)
            }
            _ => ListenRequest::Other,
        })
    }

    /// Answers a LISTEN or UNLISTEN (the next `len` bytes from the client) through the
    /// tenant's listening connection.
    async fn answer_listen(&mut self, effect: Effect, len: usize) -> Result<(), SessionError> {
        self.to_server.buf.advance(len);
        // As any simple query, it drops the unnamed statement.
        if let Some(server) = self.server.as_mut() {
            server.statements.set_unnamed(None);
        }
        if let Some(client) = &mut self.statements {
            client.forget_unnamed();
        }
        self.statement_effects.query_sent();
        let listener = self.tenant.listener();
        let client_id = self.cancel.client.id;
        let mut out = BytesMut::new();
        match effect {
            Effect::Listen(channel) => {
                match listener
                    .listen(&mut self.subscription, client_id, &channel)
                    .await
                {
                    Ok(()) => backend::encode_command_complete(&mut out, "LISTEN"),
                    Err(e) => {
                        let code = match &e {
                            ListenError::Connect(CheckoutError::Timeout) => "53300".to_owned(),
                            ListenError::Refused { code, .. } => code.clone(),
                            _ => "08006".to_owned(),
                        };
                        warn!(error = %e, "LISTEN failed");
                        backend::encode_error(
                            &mut out,
                            "ERROR",
                            &code,
                            &format!("LISTEN failed: {e}"),
                        );
                    }
                }
            }
            Effect::Unlisten(channel) => {
                listener.unlisten(client_id, &channel);
                backend::encode_command_complete(&mut out, "UNLISTEN");
            }
            _ => {
                listener.unlisten_all(client_id);
                backend::encode_command_complete(&mut out, "UNLISTEN");
            }
        }
        backend::encode_ready_for_query(&mut out, b'I');
        self.client
            .write_all(&out)
            .await
            .map_err(SessionError::ClientIo)
    }

    /// Forwards a notification to the client, or ends the session if its notifications
    /// ended (its queue overflowed, or the listening connection was lost).
    async fn deliver(&mut self, delivery: Option<Bytes>) -> Result<(), SessionError> {
        match delivery {
            Some(notification) => self
                .client
                .write_all(&notification)
                .await
                .map_err(SessionError::ClientIo),
            None => match self.subscription.take().and_then(|s| s.why_ended()) {
                Some(why) => Err(SessionError::NotificationsEnded(why)),
                // It listens on no channel any more.
                None => Ok(()),
            },
        }
    }

    /// True when the server owes nothing and every byte it sent reached the client.
    fn is_releasable(&self) -> bool {
        let Some(server) = &self.server else {
            return true;
        };
        server.exchange.is_idle()
            && self.pins.is_empty()
            && self.to_server.body_left == 0
            && self.to_server.pending() == 0
            && self.to_client.body_left == 0
            && server.read_buf.is_empty()
    }

    /// Leases a server connection for the client's pending messages. While waiting, the
    /// client may go on sending (bounded); its disconnect or a cancel request aborts the wait.
    async fn attach(&mut self, interrupts: &mut Interrupts<'_, '_>) -> Result<(), SessionError> {
        let tenant = self.tenant;
        let cancel = self.cancel;
        let wait = tenant.settings.query_wait_timeout;
        let started = Instant::now();
        cancel.client.set_state(ClientState::Waiting, started);
        tenant.stats.clients_waiting.fetch_add(1, Relaxed);
        let leased = self.wait_for_server(wait, interrupts).await;
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
        self.sync_parameters(interrupts).await
    }

    /// Waits (while paused, then for a pool slot) for a server connection.
    async fn wait_for_server(
        &mut self,
        wait: Duration,
        interrupts: &mut Interrupts<'_, '_>,
    ) -> Result<Lease, SessionError> {
        let tenant = self.tenant;
        let cancel = self.cancel;
        let resumed = self.pause.wait_resumed(&tenant.paused);
        tokio::pin!(resumed);
        let checkout = async {
            resumed.await;
            tenant.pool.checkout(wait).await
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
                error = poll_fn(|cx| interrupts.poll(cx, false)) => return Err(error),
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
    /// one round trip before any of the client's messages, and tells the client of
    /// server-describing values that changed since it was last told (after a failover).
    /// Bounded by `server_connect_timeout`, and ended by a kill or a shutdown.
    async fn sync_parameters(
        &mut self,
        interrupts: &mut Interrupts<'_, '_>,
    ) -> Result<(), SessionError> {
        let server: &mut ServerConn = self.server.as_mut().expect("attached");
        let sync = server.params.sync(&mut self.desired);
        if !sync.report.is_empty() {
            let mut status = BytesMut::new();
            for (name, value) in &sync.report {
                backend::encode_parameter_status(&mut status, name, value);
            }
            self.client
                .write_all(&status)
                .await
                .map_err(SessionError::ClientIo)?;
        }
        let Some(sql) = sync.sql else {
            return Ok(());
        };
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        encode_query(&mut out, &sql);
        let _request = server.exchange.frontend(b'Q');
        let mut rejected = None;
        let desired = &mut self.desired;
        let exchange = async {
            server.stream.write_all(&out).await?;
            loop {
                let (tag, body) =
                    read_message(&mut server.stream, &mut server.read_buf, MAX_SYNC_ANSWER).await?;
                let status = if tag == b'Z' {
                    body.first().copied().unwrap_or(0)
                } else {
                    0
                };
                server
                    .exchange
                    .backend(tag, status)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                match tag {
                    b'S' => {
                        let (name, value) = backend::parse_parameter_status(&body)?;
                        server.params.current.set(name, value);
                        desired.set(name, value);
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
        let bound = self.tenant.settings.server_connect_timeout;
        let outcome = tokio::select! {
            biased;
            error = poll_fn(|cx| interrupts.poll(cx, true)) => return Err(error),
            outcome = tokio::time::timeout(bound, exchange) => outcome,
        };
        match outcome {
            Err(_) => {
                warn!(
                    ?bound,
                    "setting session parameters took longer than server_connect_timeout"
                );
                self.close_server(Disconnect::Stalled);
                return Err(SessionError::ServerLost(format!(
                    "setting session parameters took longer than server_connect_timeout ({bound:?})"
                )));
            }
            Ok(Err(e)) => return Err(self.server_lost(&format!("setting session parameters: {e}"))),
            Ok(Ok(())) => {}
        }
        match rejected {
            None => Ok(()),
            Some((code, message)) => {
                // What the server now has is unknown: close it rather than reuse it.
                self.close_server(Disconnect::ResetFailed);
                Err(SessionError::ParameterRejected { code, message })
            }
        }
    }

    /// A backend message could not be taken: malformed, or out of sync with what was sent.
    /// Either way the connection is closed, never reused.
    fn backend_failed(&mut self, error: BackendError) -> SessionError {
        match error {
            BackendError::Malformed(e) => {
                self.server_lost(&format!("malformed server message: {e}"))
            }
            BackendError::OutOfSync(e) => {
                if let Some(server) = &self.server {
                    warn!(server = %server.addr, error = %e, "server connection out of sync");
                }
                self.tenant.cluster.metrics.out_of_sync.increment(1);
                self.close_server(Disconnect::OutOfSync);
                SessionError::ServerOutOfSync(e.to_string())
            }
        }
    }

    /// The server connection failed: it is closed rather than returned to the pool.
    fn server_lost(&mut self, why: &str) -> SessionError {
        if let Some(server) = &self.server {
            warn!(server = %server.addr, reason = why, "server connection lost");
        }
        self.close_server(Disconnect::Broken);
        SessionError::ServerLost(why.to_owned())
    }

    /// Ends the lease and closes the server connection instead of returning it.
    fn close_server(&mut self, reason: Disconnect) {
        if let Some(server) = self.server.take() {
            self.lease_ended(&server);
            self.cancel.detach();
            self.tenant.cluster.metrics.disconnected(reason);
            server.close();
        }
    }
}

/// Whether the client's next message is a LISTEN sluice answers.
enum ListenRequest {
    /// The effect, and the message's length.
    Answer(Effect, usize),
    /// A simple query not yet read whole (its length).
    Incomplete(usize),
    Other,
}

/// The client's next notification; `None` once its queue closed; never, without one.
/// Cancel-safe.
async fn next_notification(subscription: &mut Option<Subscription>) -> Option<Bytes> {
    match subscription {
        Some(subscription) => subscription.queue.recv().await,
        None => std::future::pending().await,
    }
}

/// Returns a connection its client left busy to the pool after resetting it, or closes it.
/// `unsent` are complete client messages already recorded in its exchange but not yet
/// written to the server; `partial` says one was only partly written.
async fn reset_or_close(mut server: Lease, unsent: Bytes, partial: bool, discard_all: bool) {
    let conn: &mut ServerConn = &mut server;
    match server::reset(conn, &unsent, partial, discard_all).await {
        Ok(()) => debug!(server = %conn.addr, "server connection reset and returned to the pool"),
        Err(e) => {
            debug!(server = %conn.addr, error = %e, "server connection closed instead of reused");
            server.close();
        }
    }
}
