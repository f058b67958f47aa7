//! The hot path: relaying one logged-in client's messages to a server connection leased
//! from its tenant's pool, and the results back.
//!
//! Bytes are forwarded as they arrive, straight out of the read buffers; only message
//! headers are looked at (and the status byte of ReadyForQuery). Message bodies are
//! never buffered whole, so a huge row or COPY stream uses no more memory than a read.
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

use super::SessionError;
use crate::cancel::CancelTarget;
use crate::pool::{self, PooledServer};
use crate::server::{self, InFlight, ServerConn};
use crate::tenant::Tenant;
use bytes::{Buf, Bytes, BytesMut};
use deadpool::managed::Object;
use sluice_protocol::frame::{backend_header, frontend_header, HEADER_LEN};
use std::io::ErrorKind::WouldBlock;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// Client read size. Between reads the buffer holds at most a partial header.
const CLIENT_READ_CHUNK: usize = 8 * 1024;
/// How much a client may pipeline while it waits for a server connection.
const MAX_PENDING_WHILE_WAITING: usize = 64 * 1024;
/// ReadyForQuery is a header plus one status byte.
const READY_FOR_QUERY_LEN: usize = HEADER_LEN + 1;

/// Position in a byte stream of messages: how much of the buffer's front is classified
/// and may be forwarded, and how much of the current message body is still to come.
#[derive(Default)]
struct Cursor {
    forwardable: usize,
    body_left: usize,
}

impl Cursor {
    /// Marks as forwardable the part of an announced body that has arrived; true when
    /// the body is complete and the next header can be read.
    fn take_body(&mut self, buffered: usize) -> bool {
        let take = self.body_left.min(buffered - self.forwardable);
        self.forwardable += take;
        self.body_left -= take;
        self.body_left == 0
    }

    fn at_boundary(&self) -> bool {
        self.body_left == 0
    }
}

/// What the client has asked of the server connection that is not yet answered.
struct Exchange {
    pending_ready: u32,
    unsynced: bool,
    copy_in: bool,
    status: u8,
}

pub struct Relay<'a> {
    client: &'a mut TcpStream,
    client_buf: BytesMut,
    from_client: Cursor,
    from_server: Cursor,
    terminated: bool,
    server: Option<PooledServer>,
    exchange: Exchange,
    tenant: &'a Tenant,
    cancel: &'a Arc<CancelTarget>,
}

impl<'a> Relay<'a> {
    /// `client_buf` holds any bytes the client sent after its startup messages.
    /// `server` is the connection leased at login, if any (session mode).
    pub fn new(
        client: &'a mut TcpStream,
        client_buf: BytesMut,
        tenant: &'a Tenant,
        cancel: &'a Arc<CancelTarget>,
        server: Option<PooledServer>,
    ) -> Self {
        if let Some(server) = &server {
            cancel.attach(server.addr, server.cancel_key);
        }
        Relay {
            client,
            client_buf,
            from_client: Cursor::default(),
            from_server: Cursor::default(),
            terminated: false,
            server,
            exchange: Exchange {
                pending_ready: 0,
                unsynced: false,
                copy_in: false,
                status: b'I',
            },
            tenant,
            cancel,
        }
    }

    /// Relays until the client leaves or something fails. Either way the server
    /// connection, if any, goes back to the pool clean or is closed, and a failure is
    /// reported to the client when that cannot cut a server message in two.
    pub async fn run(mut self) -> Result<(), SessionError> {
        let result = self.relay().await;
        let client_at_boundary =
            self.from_server.at_boundary() && self.from_server.forwardable == 0;
        if self.is_releasable() && !self.tenant.is_session_mode() {
            self.release();
        } else if let Some(server) = self.server.take() {
            let in_flight = InFlight {
                pending_ready: self.exchange.pending_ready,
                unsynced: self.exchange.unsynced,
                copy_in: self.exchange.copy_in,
                partial_message: !self.from_client.at_boundary(),
                status: self.exchange.status,
            };
            let unsent = self
                .client_buf
                .split_to(self.from_client.forwardable)
                .freeze();
            let discard_all = self.tenant.is_session_mode();
            let cancels_pending = self.cancel.detach();
            let cancel = cancels_pending.then(|| self.cancel.clone());
            tokio::spawn(async move {
                if let Some(cancel) = cancel {
                    cancel.cancels_finished().await;
                }
                reset_or_close(server, unsent, in_flight, discard_all).await
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
        if self.cancel.detach() {
            let cancel = self.cancel.clone();
            tokio::spawn(async move {
                cancel.cancels_finished().await;
                drop(server);
            });
        }
    }

    async fn relay(&mut self) -> Result<(), SessionError> {
        loop {
            if self.server.is_none() {
                if self.from_client.forwardable == 0 {
                    if self.terminated {
                        return Ok(());
                    }
                    self.client
                        .readable()
                        .await
                        .map_err(SessionError::ClientIo)?;
                    if !self.read_client()? && !self.from_client.at_boundary() {
                        // The client left in the middle of a message: nothing to send.
                        return Ok(());
                    }
                    continue;
                }
                self.attach().await?;
            }
            if self.from_client.forwardable > 0 {
                self.write_to_server()?;
            }
            if self.from_server.forwardable > 0 {
                self.write_to_client()?;
            }
            if self.is_releasable() {
                if self.terminated {
                    return Ok(());
                }
                if !self.tenant.is_session_mode() {
                    self.release();
                    continue;
                }
            } else if self.terminated && self.from_client.forwardable == 0 {
                return Ok(());
            }
            self.wait_and_transfer().await?;
        }
    }

    /// Waits for the next readiness event on either socket and moves bytes.
    async fn wait_and_transfer(&mut self) -> Result<(), SessionError> {
        let server = &self.server.as_ref().expect("attached").stream;
        let client = &*self.client;
        let read_client = self.from_client.forwardable == 0 && !self.terminated;
        let read_server = self.from_server.forwardable == 0;
        let write_server = self.from_client.forwardable > 0;
        let write_client = self.from_server.forwardable > 0;
        tokio::select! {
            r = client.readable(), if read_client => {
                r.map_err(SessionError::ClientIo)?;
                if !self.read_client()? {
                    self.terminated = true;
                }
            }
            r = server.readable(), if read_server => {
                r.map_err(|e| SessionError::ServerLost(e.to_string()))?;
                self.read_server()?;
            }
            r = server.writable(), if write_server => {
                r.map_err(|e| SessionError::ServerLost(e.to_string()))?;
            }
            r = client.writable(), if write_client => {
                r.map_err(SessionError::ClientIo)?;
            }
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
            && self.from_client.at_boundary()
            && self.from_server.at_boundary()
            && server.read_buf.is_empty()
    }

    /// Leases a server connection for the client's pending messages. While waiting, the
    /// client may go on sending (bounded); its disconnect or a cancel request aborts the wait.
    async fn attach(&mut self) -> Result<(), SessionError> {
        let tenant = self.tenant;
        let cancel = self.cancel;
        let wait = tenant.settings.query_wait_timeout;
        let checkout = pool::checkout(&tenant.pool, wait);
        tokio::pin!(checkout);
        cancel.set_waiting(true);
        let leased = loop {
            let watch_client =
                !self.terminated && self.client_buf.len() < MAX_PENDING_WHILE_WAITING;
            tokio::select! {
                leased = &mut checkout => break leased,
                () = cancel.cancelled_while_waiting() => {
                    cancel.set_waiting(false);
                    return Err(SessionError::CancelledWhileWaiting);
                }
                r = self.client.readable(), if watch_client => {
                    r.map_err(SessionError::ClientIo)?;
                    if !self.read_client()? {
                        return Err(SessionError::ClientGone);
                    }
                }
            }
        };
        cancel.set_waiting(false);
        let server = leased.map_err(|e| SessionError::from_checkout(&tenant.name(), wait, e))?;
        debug!(server = %server.addr, "server connection leased");
        cancel.attach(server.addr, server.cancel_key);
        self.server = Some(server);
        Ok(())
    }

    /// Reads what the client sent and classifies complete headers. False on EOF.
    fn read_client(&mut self) -> Result<bool, SessionError> {
        reserve_for_read(&mut self.client_buf, CLIENT_READ_CHUNK);
        match self.client.try_read_buf(&mut self.client_buf) {
            Ok(0) => Ok(false),
            Ok(_) => {
                self.scan_client()?;
                Ok(true)
            }
            Err(e) if e.kind() == WouldBlock => Ok(true),
            Err(e) => Err(SessionError::ClientIo(e)),
        }
    }

    fn scan_client(&mut self) -> Result<(), SessionError> {
        let buf = &mut self.client_buf;
        let cursor = &mut self.from_client;
        while !self.terminated && cursor.take_body(buf.len()) {
            let Some(header) = frontend_header(&buf[cursor.forwardable..])? else {
                break;
            };
            match header.tag {
                b'X' => {
                    // Terminate ends the client, not the pooled server session.
                    buf.truncate(cursor.forwardable);
                    self.terminated = true;
                    break;
                }
                b'Q' | b'F' => self.exchange.pending_ready += 1,
                b'S' => {
                    self.exchange.pending_ready += 1;
                    self.exchange.unsynced = false;
                }
                b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => self.exchange.unsynced = true,
                _ => {}
            }
            cursor.forwardable += HEADER_LEN;
            cursor.body_left = header.body_len;
        }
        Ok(())
    }

    /// Reads what the server sent and classifies complete headers.
    fn read_server(&mut self) -> Result<(), SessionError> {
        let server: &mut ServerConn = self.server.as_mut().expect("attached");
        reserve_for_read(&mut server.read_buf, server::SERVER_READ_CHUNK);
        let read = server.stream.try_read_buf(&mut server.read_buf);
        match read {
            Ok(0) => Err(self.server_lost("server closed the connection")),
            Ok(_) => self.scan_server(),
            Err(e) if e.kind() == WouldBlock => Ok(()),
            Err(e) => Err(self.server_lost(&e.to_string())),
        }
    }

    fn scan_server(&mut self) -> Result<(), SessionError> {
        let buf = &self.server.as_ref().expect("attached").read_buf;
        let cursor = &mut self.from_server;
        while cursor.take_body(buf.len()) {
            let rest = &buf[cursor.forwardable..];
            let header = match backend_header(rest) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(e) => {
                    return Err(SessionError::ServerLost(format!(
                        "malformed server message: {e}"
                    )))
                }
            };
            match header.tag {
                b'Z' => {
                    if rest.len() < READY_FOR_QUERY_LEN {
                        break;
                    }
                    self.exchange.status = rest[HEADER_LEN];
                    self.exchange.pending_ready = self.exchange.pending_ready.saturating_sub(1);
                    self.exchange.copy_in = false;
                }
                b'G' => self.exchange.copy_in = true,
                _ => {}
            }
            cursor.forwardable += HEADER_LEN;
            cursor.body_left = header.body_len;
        }
        Ok(())
    }

    fn write_to_server(&mut self) -> Result<(), SessionError> {
        let server = self.server.as_mut().expect("attached");
        let written = server
            .stream
            .try_write(&self.client_buf[..self.from_client.forwardable]);
        match written {
            Ok(n) => {
                self.client_buf.advance(n);
                self.from_client.forwardable -= n;
                Ok(())
            }
            Err(e) if e.kind() == WouldBlock => Ok(()),
            Err(e) => Err(self.server_lost(&e.to_string())),
        }
    }

    fn write_to_client(&mut self) -> Result<(), SessionError> {
        let server = self.server.as_mut().expect("attached");
        let ready = &server.read_buf[..self.from_server.forwardable];
        match self.client.try_write(ready) {
            Ok(n) => {
                server.read_buf.advance(n);
                self.from_server.forwardable -= n;
                Ok(())
            }
            Err(e) if e.kind() == WouldBlock => Ok(()),
            Err(e) => Err(SessionError::ClientIo(e)),
        }
    }

    /// The server connection failed: it is closed rather than returned to the pool, and
    /// the client is told if it sits at a message boundary.
    fn server_lost(&mut self, why: &str) -> SessionError {
        if let Some(server) = self.server.take() {
            warn!(server = %server.addr, reason = why, "server connection lost");
            drop(Object::take(server));
        }
        SessionError::ServerLost(why.to_owned())
    }
}

/// Makes room for one read, reusing the buffer's allocation when it is drained.
fn reserve_for_read(buf: &mut BytesMut, chunk: usize) {
    if buf.capacity() - buf.len() < chunk / 4 {
        buf.reserve(chunk - buf.len().min(chunk / 2));
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
