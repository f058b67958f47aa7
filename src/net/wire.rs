//! Reading whole protocol messages from a socket during the phases where sluice must
//! understand every message: client login, server login and connection cleanup.
//!
//! The relay (`session::relay`) never uses this: it forwards raw bytes. Here every
//! message is bounded by a caller-given limit before anything is buffered for it.
//!
//! Knows framing (from the protocol crate), not what the messages mean.

use bytes::BytesMut;
use sluice_protocol::frame::split_message;
use sluice_protocol::ProtocolError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("peer closed the connection")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Reads one complete typed message (tag, body) of at most `max_body` bytes.
///
/// Bytes after the message stay in `buf` for the next call. Cancel-safe: a message is
/// only taken off `buf` once complete, and `read_buf` on a socket loses nothing when
/// dropped.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<(u8, BytesMut), ReadError> {
    loop {
        if let Some(message) = split_message(buf, max_body)? {
            return Ok(message);
        }
        buf.reserve(1024);
        if stream.read_buf(buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
}

/// Writes `out` completely and clears it, so the caller can reuse the allocation.
pub async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
) -> std::io::Result<()> {
    stream.write_all(out).await?;
    out.clear();
    Ok(())
}
