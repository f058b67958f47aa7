//! The client's side of connection startup: SSLRequest/GSSENCRequest (refused with 'N'
//! until TLS lands), the startup packet, routing (database, user) to a tenant, and
//! authentication with SCRAM-SHA-256 or md5 against the tenant's secret.
//!
//! See <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP>.

use super::SessionError;
use crate::config::ClientTlsMode;
use crate::stream::Stream;
use crate::tls::ClientTls;

/// First byte of a TLS handshake record: a client opening with direct TLS.
const TLS_HANDSHAKE: u8 = 0x16;
use crate::server::ServerCredentials;
use crate::tenant::{ClientAuth, ClientSlot, ResolveError, Resolved, Tenant, Tenants, Unknown};
use crate::wire::{flush, read_message};
use bytes::{Buf, BytesMut};
use sluice_protocol::backend;
use sluice_protocol::frame::MAX_LOGIN_MESSAGE_LEN;
use sluice_protocol::frontend;
use sluice_protocol::md5::md5_salted;
use sluice_protocol::scram::{ScramError, ScramKeys, ScramServer};
use sluice_protocol::startup::{parse_initial_packet, CancelKey, InitialPacket, StartupMessage};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A client that proved it is a tenant's role and fits under the tenant's client limit.
pub struct LoggedIn {
    pub tenant: Arc<Tenant>,
    pub slot: ClientSlot,
}

/// Routes the startup packet to a tenant and authenticates the client. On success the
/// client has received everything up to (not including) AuthenticationOk.
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    startup: &StartupMessage,
    tenants: &Tenants,
) -> Result<LoggedIn, SessionError> {
    let mut out = BytesMut::with_capacity(256);
    negotiate_version(startup, &mut out);
    let user = startup.user();
    let database = startup.database();
    let tenant = match tenants.resolve(database, user).await {
        Ok(Resolved::Tenant(tenant)) => tenant,
        Ok(Resolved::UnknownRole(auth_type)) => {
            // The same exchange as for a wrong password, so the client cannot tell.
            prove(stream, buf, &mut out, &ClientAuth::decoy(auth_type), user).await?;
            return Err(SessionError::BadPassword(user.to_owned()));
        }
        Err(ResolveError::Unknown(Unknown::Database)) => {
            return Err(SessionError::UnknownDatabase(database.to_owned()))
        }
        Err(ResolveError::Unknown(Unknown::User)) => {
            return Err(SessionError::UnknownUser {
                database: database.to_owned(),
                user: user.to_owned(),
            })
        }
        Err(ResolveError::Lookup(source)) => {
            return Err(SessionError::AuthQuery {
                user: user.to_owned(),
                source,
            })
        }
    };
    let proof = prove(stream, buf, &mut out, &tenant.auth, user).await?;
    let proven = match (proof, &tenant.auth) {
        (Some(keys), _) => Some(ServerCredentials::ScramKeys(keys)),
        (None, ClientAuth::Md5 { hash }) => Some(ServerCredentials::Md5Hash(hash.clone())),
        (None, ClientAuth::Scram(_)) => None,
    };
    if let Some(credentials) = proven {
        tenant.learn_server_credentials(credentials);
    }
    let slot = tenant
        .admit_client()
        .ok_or_else(|| SessionError::TooManyClients {
            tenant: tenant.name(),
            max: tenant.settings.max_client_connections,
        })?;
    Ok(LoggedIn { tenant, slot })
}

/// Answers a request for a newer protocol minor version with the one sluice speaks.
pub fn negotiate_version(startup: &StartupMessage, out: &mut BytesMut) {
    if startup.protocol_minor > 0 {
        let unsupported: Vec<&str> = startup
            .params
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| name.starts_with("_pq_."))
            .collect();
        backend::encode_negotiate_protocol_version(out, 0, &unsupported);
    }
}

/// Makes the client prove it knows `auth`'s secret (after whatever is already in
/// `out`); fails with 28P01 when it does not. A SCRAM proof gives the client's keys,
/// with which sluice can log in to the server as that role (pass-through).
pub async fn prove(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    auth: &ClientAuth,
    user: &str,
) -> Result<Option<ScramKeys>, SessionError> {
    let (proven, keys) = match auth {
        ClientAuth::Scram(secret) => match scram(stream, buf, out, secret.clone()).await? {
            Some(keys) => (true, Some(keys)),
            None => (false, None),
        },
        ClientAuth::Md5 { hash } => (md5(stream, buf, out, hash).await?, None),
    };
    if !proven {
        return Err(SessionError::BadPassword(user.to_owned()));
    }
    flush(stream, out).await.map_err(SessionError::ClientIo)?;
    Ok(keys)
}

async fn password_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<BytesMut, SessionError> {
    let (tag, body) = read_message(stream, buf, MAX_LOGIN_MESSAGE_LEN).await?;
    if tag != b'p' {
        return Err(SessionError::Protocol(format!(
            "expected a password message, got message type '{}'",
            tag.escape_ascii()
        )));
    }
    Ok(body)
}

/// Runs a SCRAM-SHA-256 exchange; `Ok(None)` means the proof did not match, otherwise
/// the keys it proved.
async fn scram(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    secret: sluice_protocol::scram::ScramSecret,
) -> Result<Option<ScramKeys>, SessionError> {
    backend::encode_auth_sasl(out, &["SCRAM-SHA-256"]);
    flush(stream, out).await.map_err(SessionError::ClientIo)?;
    let body = password_message(stream, buf).await?;
    let (mechanism, data) = frontend::parse_sasl_initial_response(&body)?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(SessionError::Protocol(format!(
            "client selected an unsupported SASL mechanism \"{mechanism}\""
        )));
    }
    let mut server = ScramServer::new(secret, &crate::random::bytes::<18>());
    let server_first = server.client_first(data).map_err(scram_violation)?;
    backend::encode_auth_sasl_continue(out, &server_first);
    flush(stream, out).await.map_err(SessionError::ClientIo)?;
    let body = password_message(stream, buf).await?;
    match server.client_final(&body) {
        Ok(server_final) => {
            backend::encode_auth_sasl_final(out, &server_final);
            Ok(server.keys())
        }
        Err(ScramError::InvalidProof) => Ok(None),
        Err(e) => Err(scram_violation(e)),
    }
}

fn scram_violation(e: ScramError) -> SessionError {
    SessionError::Protocol(format!("SCRAM exchange failed: {e}"))
}

/// Runs an md5 challenge; `Ok(false)` means the response did not match.
async fn md5(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    hash: &str,
) -> Result<bool, SessionError> {
    let salt = crate::random::bytes::<4>();
    backend::encode_auth_md5(out, salt);
    flush(stream, out).await.map_err(SessionError::ClientIo)?;
    let body = password_message(stream, buf).await?;
    let response = frontend::parse_password(&body)?;
    let expected = md5_salted(hash, salt);
    Ok(bool::from(response.ct_eq(expected.as_bytes())))
}
