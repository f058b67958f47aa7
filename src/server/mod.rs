//! Server connections: one authenticated TCP connection to PostgreSQL, logged in as a
//! tenant's own role, owned by that tenant's pool.
//!
//! A `ServerConn` carries the place it took in its cluster's connection budget, so
//! every way of dropping it (idle timeout, eviction, broken connection, shutdown) gives
//! the place back.

mod connect;
mod reset;

pub use connect::{
    connect, ConnectError, LearnedCredentials, ServerCredentials, ServerPassword, ServerTarget,
};
pub use reset::{reset, InFlight};

use crate::budget::Slot;
use crate::params::ServerParameters;
use crate::statements::ServerStatements;
use crate::stats::ServerEntry;
use crate::stream::Stream;
use bytes::BytesMut;
use sluice_protocol::startup::CancelKey;
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
    _slot: Slot,
}

impl ServerConn {
    /// True when the connection is idle and still open: no buffered bytes and nothing
    /// waiting on the socket. Costs no syscall when the socket has no readiness event.
    pub fn is_reusable(&self) -> bool {
        self.read_buf.is_empty() && self.stream.is_idle_and_open()
    }
}
