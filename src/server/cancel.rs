//! Cancelling the query running on a server connection: PostgreSQL's CancelRequest, sent on a
//! connection of its own with the server's cancel key. Used for a client's cancel, for
//! `query_timeout` and by the reset of a connection its client left busy.
//!
//! See <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-CANCELING-REQUESTS>.

use bytes::BytesMut;
use sluice_protocol::startup::{encode_cancel_request, CancelKey};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a CancelRequest for the query running on the connection whose key is `key` at
/// `addr`, and waits until the server has taken it (it closes the cancel connection): only
/// then is it certain the signal cannot land on a later query. The caller bounds the time.
pub async fn cancel_query(addr: SocketAddr, key: CancelKey) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut out = BytesMut::with_capacity(16);
    encode_cancel_request(&mut out, key);
    stream.write_all(&out).await?;
    let mut sink = [0u8; 64];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}
