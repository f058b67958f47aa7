//! Making a server connection clean again after its client left it in an unknown state:
//! mid-query, mid-COPY, inside a transaction, or (session mode) with session state.
//!
//! The connection goes back to the pool only if every step succeeds and the server
//! reports an idle transaction status; otherwise the caller closes it. PostgreSQL then
//! rolls back whatever was open, so a failed reset never leaks state either.
//!
//! Works on one connection it is handed; whether it goes back to the pool is the caller's call.

use super::cancel::cancel_query;
use super::ServerConn;
use crate::net::flush;
use bytes::{Buf, BytesMut};
use sluice_protocol::backend::parse_parameter_status;
use sluice_protocol::extended::encode_target;
use sluice_protocol::frame::{backend_header, HEADER_LEN};
use sluice_protocol::frontend;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// A portal that never exists: describing it fails the abandoned batch.
const ABANDONED_PORTAL: &[u8] = b"sluice: client disconnected";

/// How long a reset may take before the connection is closed instead.
pub const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// What the departing client left running on the connection.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    /// ReadyForQuery messages still owed by the server (one per Query, Sync, FunctionCall).
    pub pending_ready: u32,
    /// Extended-protocol messages were sent after the last Sync.
    pub unsynced: bool,
    /// The server is waiting for COPY data from the client.
    pub copy_in: bool,
    /// A message was only partly sent to the server: the stream cannot be resumed.
    pub partial_message: bool,
    /// Transaction status from the last ReadyForQuery ('I', 'T' or 'E').
    pub status: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("a message was only partly sent to the server")]
    PartialMessage,
    #[error("reset did not finish within {RESET_TIMEOUT:?}")]
    Timeout,
    #[error("server connection failed during reset: {0}")]
    Io(#[from] std::io::Error),
    #[error("server sent a malformed message during reset: {0}")]
    Protocol(#[from] sluice_protocol::ProtocolError),
    #[error("server stayed in transaction status '{}' after reset", char::from(*.0))]
    NotIdle(u8),
    #[error("server entered a COPY BOTH stream during reset")]
    CopyBoth,
}

/// Brings `conn` back to an idle session: cancels and drains what is running, ends an
/// open transaction, and with `discard_all` also drops session state (`DISCARD ALL`).
pub async fn reset(
    conn: &mut ServerConn,
    in_flight: InFlight,
    discard_all: bool,
) -> Result<(), ResetError> {
    match tokio::time::timeout(RESET_TIMEOUT, reset_steps(conn, in_flight, discard_all)).await {
        Ok(result) => result,
        Err(_) => Err(ResetError::Timeout),
    }
}

async fn reset_steps(
    conn: &mut ServerConn,
    mut in_flight: InFlight,
    discard_all: bool,
) -> Result<(), ResetError> {
    if in_flight.partial_message {
        return Err(ResetError::PartialMessage);
    }
    let mut out = BytesMut::new();
    if in_flight.copy_in {
        frontend::encode_copy_fail(&mut out, "client disconnected");
    }
    if in_flight.unsynced {
        // A bare Sync would commit the implicit transaction of the unfinished batch; a
        // failing message first makes the server roll it back, as PostgreSQL does for a
        // client that disconnects mid-batch.
        encode_target(&mut out, b'D', b'P', ABANDONED_PORTAL);
        frontend::encode_sync(&mut out);
        in_flight.pending_ready += 1;
    }
    flush(&mut conn.stream, &mut out).await?;
    let mut status = in_flight.status;
    if in_flight.pending_ready > 0 {
        if !in_flight.copy_in {
            cancel_query(conn.addr, conn.cancel_key).await?;
        }
        status = drain(conn, in_flight.pending_ready).await?;
    }
    if status != b'I' {
        frontend::encode_query(&mut out, "ROLLBACK");
        flush(&mut conn.stream, &mut out).await?;
        status = drain(conn, 1).await?;
    }
    if discard_all && status == b'I' {
        frontend::encode_query(&mut out, "DISCARD ALL");
        flush(&mut conn.stream, &mut out).await?;
        status = drain(conn, 1).await?;
        conn.params.reset_to_login();
        conn.statements.clear();
    }
    if status == b'I' {
        Ok(())
    } else {
        Err(ResetError::NotIdle(status))
    }
}

/// Discards server output until `pending` ReadyForQuery messages have arrived; returns
/// the last transaction status. Answers a COPY FROM STDIN that starts meanwhile with
/// CopyFail. Bodies are skipped as they stream in, never buffered whole.
async fn drain(conn: &mut ServerConn, mut pending: u32) -> Result<u8, ResetError> {
    let buf = &mut conn.read_buf;
    let mut skip = 0usize;
    loop {
        loop {
            if skip > 0 {
                let n = skip.min(buf.len());
                buf.advance(n);
                skip -= n;
                if skip > 0 {
                    break;
                }
            }
            let Some(header) = backend_header(buf)? else {
                break;
            };
            match header.tag {
                b'Z' => {
                    if buf.len() < 6 {
                        break;
                    }
                    let status = buf[5];
                    buf.advance(6);
                    pending -= 1;
                    if pending == 0 {
                        return Ok(status);
                    }
                    continue;
                }
                b'G' => {
                    let mut out = BytesMut::new();
                    frontend::encode_copy_fail(&mut out, "client disconnected");
                    flush(&mut conn.stream, &mut out).await?;
                }
                b'W' => return Err(ResetError::CopyBoth),
                b'S' => {
                    // A rolled-back SET: keep the record of the session's values true.
                    let whole = header.message_len();
                    if buf.len() < whole {
                        break;
                    }
                    let (name, value) = parse_parameter_status(&buf[HEADER_LEN..whole])?;
                    conn.params.current.set(name, value);
                    buf.advance(whole);
                    continue;
                }
                _ => {}
            }
            buf.advance(5);
            skip = header.body_len;
        }
        buf.reserve(super::SERVER_READ_CHUNK);
        if conn.stream.read_buf(buf).await? == 0 {
            return Err(ResetError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}
