//! Server connections: one authenticated connection to PostgreSQL, logged in as a tenant's
//! own role: opening it (`connect`), what its session holds (`parameters`, `statements`),
//! what it owes (its `Exchange`, fed by every message either way), cancelling its query
//! (`cancel`) and making it clean again after a client left it busy (`reset`).
//!
//! Depends on nothing above it: it knows neither pools nor budgets (the pool pairs each
//! connection with its budget place) nor the clients that use it.

pub mod cancel;
mod connect;
pub mod parameters;
mod reset;
pub mod statements;

pub use connect::{
    connect, ConnectError, LearnedCredentials, ServerCredentials, ServerPassword, ServerTarget,
    TcpOptions,
};
pub use reset::reset;

use crate::net::Stream;
use crate::stats::ServerEntry;
use bytes::BytesMut;
use parameters::ServerParameters;
use sluice_protocol::backend::parse_parameter_status;
use sluice_protocol::exchange::{Answer, Exchange, OutOfSync};
use sluice_protocol::frame::{backend_header, Header, HEADER_LEN};
use sluice_protocol::startup::CancelKey;
use sluice_protocol::ProtocolError;
use statements::ServerStatements;
use std::net::SocketAddr;
use std::time::Instant;

/// Initial capacity of a server connection's read buffer; results stream through it.
pub const SERVER_READ_CHUNK: usize = 16 * 1024;

/// Longest ParameterStatus accepted: it is read whole (a setting's name and value).
const MAX_PARAMETER_STATUS: usize = 64 * 1024;

/// An idle-or-leased connection to PostgreSQL.
pub struct ServerConn {
    /// This connection in its tenant's registry (for `SHOW SERVERS`).
    pub entry: ServerEntry,
    pub stream: Stream,
    /// Bytes read from the server and not yet forwarded (at most a partial header
    /// between uses).
    pub read_buf: BytesMut,
    /// The server's own cancel key, used to cancel a query running on this connection.
    pub cancel_key: CancelKey,
    pub addr: SocketAddr,
    /// The session parameters of this connection, as reported and as sluice set them.
    pub params: ServerParameters,
    /// The prepared statements this connection holds (transaction mode).
    pub statements: ServerStatements,
    /// What the server owes and is doing: every message sent to it and received from it
    /// goes through this, in the relay and in the reset alike.
    pub exchange: Exchange,
    /// When the login completed, for `server_lifetime`.
    pub opened_at: Instant,
}

/// Why a backend message could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("malformed server message: {0}")]
    Malformed(#[from] ProtocolError),
    #[error(transparent)]
    OutOfSync(#[from] OutOfSync),
}

impl ServerConn {
    /// True when the connection is idle and still open: the server owes nothing, no bytes
    /// are buffered (in sluice or, for TLS, in rustls) and nothing waits on the socket.
    /// Costs no syscall when the socket has no readiness event.
    pub fn is_reusable(&mut self) -> bool {
        self.exchange.is_idle() && self.read_buf.is_empty() && self.stream.is_idle_and_open()
    }

    /// Takes the backend message that starts `at` bytes into the read buffer: checks its
    /// header, moves [`Exchange`] forward with it, and follows a ParameterStatus into
    /// `params`. `None` until its header (and, for ReadyForQuery and ParameterStatus, its
    /// body) has arrived. The caller forwards or skips the message; nothing here consumes
    /// bytes.
    pub fn take_backend(&mut self, at: usize) -> Result<Option<(Header, Answer)>, BackendError> {
        let rest = &self.read_buf[at..];
        let Some(header) = backend_header(rest)? else {
            return Ok(None);
        };
        let whole = header.message_len();
        let status = match header.tag {
            b'S' if header.body_len > MAX_PARAMETER_STATUS => {
                return Err(ProtocolError::MessageTooLong {
                    tag: b'S',
                    len: header.body_len,
                    max: MAX_PARAMETER_STATUS,
                }
                .into())
            }
            b'Z' | b'S' if rest.len() < whole => return Ok(None),
            b'Z' => rest[HEADER_LEN],
            b'S' => {
                let (name, value) = parse_parameter_status(&rest[HEADER_LEN..whole])?;
                self.params.current.set(name, value);
                0
            }
            _ => 0,
        };
        let answer = self.exchange.backend(header.tag, status)?;
        Ok(Some((header, answer)))
    }
}
