//! A client proving who it is: SCRAM-SHA-256 or md5 against a secret ([`ClientAuth`]), the
//! same for tenants and admins, and the answer to a newer protocol minor version. A SCRAM
//! proof yields the client's keys, with which sluice can log in to the server as that role.
//!
//! Knows nothing of which secret belongs to whom: the caller picks it.
//! See <https://www.postgresql.org/docs/current/sasl-authentication.html>.

use super::SessionError;
use crate::net::{flush, read_message, Stream};
use crate::tenant::ClientAuth;
use bytes::BytesMut;
use sluice_protocol::backend;
use sluice_protocol::frame::MAX_LOGIN_MESSAGE_LEN;
use sluice_protocol::frontend;
use sluice_protocol::md5::md5_salted;
use sluice_protocol::scram::{ScramError, ScramKeys, ScramServer};
use sluice_protocol::startup::StartupMessage;
use subtle::ConstantTimeEq;

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
    let (tag, body) = read_message(stream, buf, MAX_LOGIN_MESSAGE_LEN)
        .await
        .map_err(SessionError::client_read)?;
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
