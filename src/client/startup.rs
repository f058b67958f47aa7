//! The first packets of a client connection, before anyone knows what it is: SSLRequest
//! (answered 'S' when `client_tls` allows it, then the TLS handshake), PostgreSQL 17's direct
//! TLS, GSSENCRequest (refused with 'N'), then the startup packet or a CancelRequest.
//!
//! Reads only what the protocol crate bounds; knows nothing of tenants or the console.
//! See <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP>.

use super::SessionError;
use crate::config::ClientTlsMode;
use crate::net::Stream;
use crate::tls::ClientTls;
use bytes::{Buf, BytesMut};
use sluice_protocol::startup::{parse_initial_packet, CancelKey, InitialPacket, StartupMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// First byte of a TLS handshake record: a client opening with direct TLS.
const TLS_HANDSHAKE: u8 = 0x16;

/// What the first packets of a connection asked for.
pub enum Opening {
    Startup(StartupMessage),
    Cancel(CancelKey),
}

/// Reads the initial packet(s): negotiates TLS (an SSLRequest answered 'S' when
/// `client_tls` allows it, or PostgreSQL 17's direct TLS), refuses GSS encryption with
/// 'N', and enforces `client_tls = "require"` for logins. Bytes after the packet stay in
/// `buf`.
pub async fn read_opening(
    stream: &mut Stream,
    buf: &mut BytesMut,
    tls: &ClientTls,
) -> Result<Opening, SessionError> {
    if let Some(acceptor) = &tls.acceptor {
        // Direct TLS starts with a TLS handshake record instead of a PostgreSQL packet.
        if stream
            .peek_first_byte()
            .await
            .map_err(SessionError::ClientIo)?
            == Some(TLS_HANDSHAKE)
        {
            stream
                .accept_tls(acceptor)
                .await
                .map_err(SessionError::ClientIo)?;
            if stream.alpn_protocol() != Some(b"postgresql") {
                return Err(SessionError::Protocol(
                    "direct TLS requires the ALPN protocol \"postgresql\"".into(),
                ));
            }
        }
    }
    loop {
        match parse_initial_packet(buf)? {
            Some((packet, consumed)) => {
                buf.advance(consumed);
                match packet {
                    InitialPacket::SslRequest if !stream.is_tls() && tls.acceptor.is_some() => {
                        if !buf.is_empty() {
                            // Bytes sent before the handshake must not be read as if they
                            // had come over TLS (CVE-2021-23214).
                            return Err(SessionError::Protocol(
                                "data received after SSLRequest before the TLS handshake".into(),
                            ));
                        }
                        stream
                            .write_all(b"S")
                            .await
                            .map_err(SessionError::ClientIo)?;
                        let acceptor = tls.acceptor.as_ref().expect("checked above");
                        stream
                            .accept_tls(acceptor)
                            .await
                            .map_err(SessionError::ClientIo)?;
                    }
                    InitialPacket::SslRequest | InitialPacket::GssEncRequest => {
                        stream
                            .write_all(b"N")
                            .await
                            .map_err(SessionError::ClientIo)?;
                    }
                    InitialPacket::Cancel(key) => return Ok(Opening::Cancel(key)),
                    InitialPacket::Startup(_)
                        if tls.mode == ClientTlsMode::Require && !stream.is_tls() =>
                    {
                        return Err(SessionError::TlsRequired)
                    }
                    InitialPacket::Startup(startup) => return Ok(Opening::Startup(startup)),
                }
            }
            None => {
                buf.reserve(512);
                if stream.read_buf(buf).await.map_err(SessionError::ClientIo)? == 0 {
                    return Err(SessionError::ClientGone);
                }
            }
        }
    }
}
