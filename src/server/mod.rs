//! Server connections: one authenticated connection to PostgreSQL, logged in as a tenant's
//! own role: opening it (`connect`), what its session holds (`parameters`, `statements`),
//! cancelling its query (`cancel`) and making it clean again after a client left it busy
//! (`reset`).
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
};
pub use reset::{reset, InFlight};

use crate::net::Stream;
use crate::stats::ServerEntry;
use bytes::BytesMut;
use parameters::ServerParameters;
use sluice_protocol::startup::CancelKey;
use statements::ServerStatements;
use std::net::SocketAddr;
use std::time::Instant;

/// Initial capacity of a server connection's read buffer; results stream through it.
pub const SERVER_READ_CHUNK: usize = 16 * 1024;

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
    /// When the login completed, for `server_lifetime`.
    pub opened_at: Instant,
}

impl ServerConn {
    /// True when the connection is idle and still open: no buffered bytes and nothing
    /// waiting on the socket. Costs no syscall when the socket has no readiness event.
    pub fn is_reusable(&self) -> bool {
        self.read_buf.is_empty() && self.stream.is_idle_and_open()
    }
}
