//! Making a server connection clean again after its client left it in an unknown state:
//! mid-query, mid-COPY, inside an extended-query batch or a transaction, or (session mode)
//! with session state.
//!
//! The connection's [`Exchange`](sluice_protocol::exchange::Exchange) says what is owed,
//! the same record the relay kept: the reset ends a COPY FROM STDIN with CopyFail, a batch
//! with a failing message and a Sync, cancels what still runs, reads every answer through
//! the same model, rolls back, and (session mode) runs `DISCARD ALL`. The connection goes
//! back to the pool only if the model ends idle; otherwise the caller closes it, and
//! PostgreSQL rolls back whatever was open, so a failed reset never leaks state either.
//!
//! Works on one connection it is handed; whether it goes back to the pool is the caller's
//! call. Everything, the client's unsent bytes included, runs within [`RESET_TIMEOUT`].

use super::cancel::cancel_query;
use super::{BackendError, ServerConn};
use crate::net::flush;
use bytes::{Buf, BytesMut};
use sluice_protocol::exchange::{Answer, Phase, TransactionStatus};
use sluice_protocol::extended::encode_target;
use sluice_protocol::frontend;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A portal that never exists: describing it fails the abandoned batch.
const ABANDONED_PORTAL: &[u8] = b"sluice: client disconnected";

/// How long a reset may take before the connection is closed instead.
pub const RESET_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("a message was only partly sent to the server")]
    PartialMessage,
    #[error("reset did not finish within {RESET_TIMEOUT:?}")]
    Timeout,
    #[error("server connection failed during reset: {0}")]
    Io(#[from] std::io::Error),
    #[error("during reset: {0}")]
    Backend(#[from] BackendError),
    #[error("server stayed in transaction status '{}' after reset", char::from(.0.as_byte()))]
    NotIdle(TransactionStatus),
    #[error("server entered a COPY BOTH stream during reset")]
    CopyBoth,
}

/// Brings `conn` back to an idle session. `unsent` are complete client messages the
/// relay already recorded in the exchange but had not written; `partial` says a message
/// was only partly written (the stream cannot be resumed). With `discard_all` also drops
/// session state (`DISCARD ALL`).
pub async fn reset(
    conn: &mut ServerConn,
    unsent: &[u8],
    partial: bool,
    discard_all: bool,
) -> Result<(), ResetError> {
    if partial {
        return Err(ResetError::PartialMessage);
    }
    match tokio::time::timeout(RESET_TIMEOUT, reset_steps(conn, unsent, discard_all)).await {
        Ok(result) => result,
        Err(_) => Err(ResetError::Timeout),
    }
}

async fn reset_steps(
    conn: &mut ServerConn,
    unsent: &[u8],
    discard_all: bool,
) -> Result<(), ResetError> {
    conn.stream.write_all(unsent).await?;
    let mut out = BytesMut::new();
    let copying = conn.exchange.awaits_copy_data();
    // Decided before the reset records messages of its own, which make the exchange busy
    // but need no cancel. Nor does a COPY FROM STDIN waiting for data: CopyFail ends it.
    let running = conn.exchange.is_busy() && !copying;
    if copying {
        fail_copy(conn, &mut out);
    }
    if conn.exchange.needs_sync() {
        // A bare Sync would commit the implicit transaction of the unfinished batch; a
        // failing message first makes the server roll it back, as PostgreSQL does for a
        // client that disconnects mid-batch.
        encode_target(&mut out, b'D', b'P', ABANDONED_PORTAL);
        sent(conn, b'D');
        frontend::encode_sync(&mut out);
        sent(conn, b'S');
    }
    flush(&mut conn.stream, &mut out).await?;
    if running {
        cancel_query(conn.addr, conn.cancel_key).await?;
    }
    drain(conn).await?;
    if conn.exchange.status() != TransactionStatus::Idle {
        run(conn, "ROLLBACK").await?;
    }
    if discard_all && conn.exchange.status() == TransactionStatus::Idle {
        run(conn, "DISCARD ALL").await?;
        conn.params.reset_to_login();
        conn.statements.clear();
    }
    match conn.exchange.status() {
        TransactionStatus::Idle if conn.exchange.is_idle() => Ok(()),
        status => Err(ResetError::NotIdle(status)),
    }
}

/// Records a message the reset sends.
fn sent(conn: &mut ServerConn, tag: u8) {
    // Only the query-phase messages the model knows are sent here.
    let _request = conn
        .exchange
        .frontend(tag)
        .expect("the reset sends query-phase messages only");
}

/// Ends a COPY FROM STDIN the client left unfinished.
fn fail_copy(conn: &mut ServerConn, out: &mut BytesMut) {
    frontend::encode_copy_fail(out, "client disconnected");
    sent(conn, b'f');
}

/// Runs one simple query and reads its answers.
async fn run(conn: &mut ServerConn, sql: &str) -> Result<(), ResetError> {
    let mut out = BytesMut::new();
    frontend::encode_query(&mut out, sql);
    sent(conn, b'Q');
    flush(&mut conn.stream, &mut out).await?;
    drain(conn).await
}

/// Discards server output until the server owes nothing more, every message taken through
/// the connection's exchange. Answers a COPY FROM STDIN that starts meanwhile with
/// CopyFail. Bodies are skipped as they stream in, never buffered whole (but for the small
/// ReadyForQuery and ParameterStatus).
async fn drain(conn: &mut ServerConn) -> Result<(), ResetError> {
    let mut skip = 0usize;
    while conn.exchange.is_busy() {
        if conn.exchange.phase() == Phase::CopyBoth {
            return Err(ResetError::CopyBoth);
        }
        if skip > 0 {
            let n = skip.min(conn.read_buf.len());
            conn.read_buf.advance(n);
            skip -= n;
        }
        if skip == 0 {
            if let Some((header, answer)) = conn.take_backend(0)? {
                if let Answer::CopyIn { .. } = answer {
                    let mut out = BytesMut::new();
                    fail_copy(conn, &mut out);
                    flush(&mut conn.stream, &mut out).await?;
                }
                let whole = header.message_len();
                let here = whole.min(conn.read_buf.len());
                conn.read_buf.advance(here);
                skip = whole - here;
                continue;
            }
        }
        conn.read_buf.reserve(super::SERVER_READ_CHUNK);
        if conn.stream.read_buf(&mut conn.read_buf).await? == 0 {
            return Err(ResetError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
