//! The packets a client may send before the typed-message phase: SSLRequest, GSSENCRequest,
//! CancelRequest and StartupMessage. They have no type byte, only an Int32 length, and are
//! told apart by the Int32 code that follows it.
//!
//! Invariants: the length is checked against [`MAX_LOGIN_MESSAGE_LEN`] and the code against
//! the packet kind as soon as 8 bytes are buffered, before the rest is waited for; startup
//! parameters must be UTF-8, unique, and include a non-empty `user`.
//! See <https://www.postgresql.org/docs/current/protocol-message-formats.html> (StartupMessage,
//! SSLRequest, GSSENCRequest, CancelRequest) and
//! <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP>.

use std::collections::HashSet;
use std::fmt;

use bytes::{BufMut, BytesMut};

use crate::codec::{put_cstr, BodyReader};
use crate::frame::{self, MAX_LOGIN_MESSAGE_LEN};
use crate::ProtocolError;

/// Protocol 3.0, the version sluice speaks to servers.
pub const PROTOCOL_3_0: u32 = 3 << 16;
const PROTOCOL_MAJOR: u32 = 3;
const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Length field + code, the whole of an SSLRequest or GSSENCRequest.
const NEGOTIATION_PACKET_LEN: usize = 8;
/// Length field + code + pid + 4-byte secret.
const CANCEL_REQUEST_LEN: usize = 16;
/// Prefix of the startup parameters that are protocol options rather than settings.
const PROTOCOL_OPTION_PREFIX: &str = "_pq_.";

/// The pid and secret that identify a backend to a CancelRequest (from BackendKeyData).
/// `Debug` hides the secret so the key can be logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
}

impl fmt::Debug for CancelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelKey")
            .field("pid", &self.pid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The first packet on a new client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitialPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelKey),
    Startup(StartupMessage),
}

/// A StartupMessage: protocol 3.`protocol_minor` and the session parameters in client order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Minor version asked for; above 0 the caller answers NegotiateProtocolVersion.
    pub protocol_minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// Value of the parameter `name`, if the client sent it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The role to log in as; always non-empty in a message from [`parse_initial_packet`].
    pub fn user(&self) -> &str {
        self.get("user").unwrap_or_default()
    }

    /// The database to connect to; like PostgreSQL, the user name when absent or empty.
    pub fn database(&self) -> &str {
        self.get("database")
            .filter(|database| !database.is_empty())
            .unwrap_or_else(|| self.user())
    }

    /// Names of the `_pq_.` protocol options the client asked for. Sluice supports none, so
    /// they belong in NegotiateProtocolVersion's list of unsupported options.
    pub fn protocol_options(&self) -> impl Iterator<Item = &str> {
        self.params
            .iter()
            .map(|(key, _)| key.as_str())
            .filter(|key| key.starts_with(PROTOCOL_OPTION_PREFIX))
    }
}

/// Parses the packet at the front of `buf`, returning it and how many bytes it used.
///
/// `Ok(None)` until the whole packet is buffered. Errors: length field below 8 or body over
/// [`MAX_LOGIN_MESSAGE_LEN`]; negotiation packets of the wrong size; a CancelRequest of other
/// than 16 bytes (protocol 3.2's longer cancel keys are not supported); a protocol major
/// version other than 3; malformed, non-UTF-8 or repeated startup parameters; no `user`.
pub fn parse_initial_packet(buf: &[u8]) -> Result<Option<(InitialPacket, usize)>, ProtocolError> {
    let Some(len_field) = read_be_bytes(buf, 0).map(i32::from_be_bytes) else {
        return Ok(None);
    };
    let body_len = frame::body_len(0, len_field)?;
    if body_len > MAX_LOGIN_MESSAGE_LEN {
        return Err(ProtocolError::MessageTooLong {
            tag: 0,
            len: body_len,
            max: MAX_LOGIN_MESSAGE_LEN,
        });
    }
    let packet_len = body_len + 4;
    if packet_len < NEGOTIATION_PACKET_LEN {
        return Err(ProtocolError::BadLength {
            tag: 0,
            len: len_field,
        });
    }
    let Some(code) = read_be_bytes(buf, 4).map(u32::from_be_bytes) else {
        return Ok(None);
    };
    check_code(code, packet_len, len_field)?;
    let Some(packet) = buf.get(..packet_len) else {
        return Ok(None);
    };
    let parsed = match code {
        SSL_REQUEST_CODE => InitialPacket::SslRequest,
        GSSENC_REQUEST_CODE => InitialPacket::GssEncRequest,
        CANCEL_REQUEST_CODE => {
            let mut reader = BodyReader::new(&packet[NEGOTIATION_PACKET_LEN..]);
            let pid = reader.i32()?;
            let secret = reader.i32()?;
            InitialPacket::Cancel(CancelKey { pid, secret })
        }
        _ => InitialPacket::Startup(StartupMessage {
            protocol_minor: (code & 0xffff) as u16,
            params: parse_params(&packet[NEGOTIATION_PACKET_LEN..])?,
        }),
    };
    Ok(Some((parsed, packet_len)))
}

fn read_be_bytes(buf: &[u8], at: usize) -> Option<[u8; 4]> {
    buf.get(at..at + 4)?.try_into().ok()
}

/// Checks that a packet's code fits its length, before the rest of it is waited for.
fn check_code(code: u32, packet_len: usize, len_field: i32) -> Result<(), ProtocolError> {
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if packet_len != NEGOTIATION_PACKET_LEN => {
            Err(ProtocolError::BadLength {
                tag: 0,
                len: len_field,
            })
        }
        CANCEL_REQUEST_CODE if packet_len != CANCEL_REQUEST_LEN => Err(ProtocolError::Malformed(
            "CancelRequest must be 16 bytes; protocol 3.2 cancel keys are not supported",
        )),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => Ok(()),
        _ if code >> 16 != PROTOCOL_MAJOR => Err(ProtocolError::UnsupportedProtocolVersion(code)),
        _ => Ok(()),
    }
}

/// Name/value string pairs ending with an empty name, which must be the last byte.
fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let not_terminated = |_| ProtocolError::Malformed("startup parameters are not NUL-terminated");
    let mut reader = BodyReader::new(body);
    let mut params = Vec::new();
    let mut seen = HashSet::new();
    loop {
        let name = reader.cstr_bytes().map_err(not_terminated)?;
        if name.is_empty() {
            break;
        }
        let value = reader.cstr_bytes().map_err(not_terminated)?;
        let (name, value) = match (std::str::from_utf8(name), std::str::from_utf8(value)) {
            (Ok(name), Ok(value)) => (name, value),
            _ => {
                return Err(ProtocolError::Malformed(
                    "startup parameter is not valid UTF-8",
                ))
            }
        };
        if !seen.insert(name) {
            return Err(ProtocolError::Malformed(
                "startup packet repeats a parameter",
            ));
        }
        params.push((name.to_owned(), value.to_owned()));
    }
    reader
        .finish()
        .map_err(|_| ProtocolError::Malformed("bytes after the startup parameters' terminator"))?;
    if !params
        .iter()
        .any(|(name, value)| name == "user" && !value.is_empty())
    {
        return Err(ProtocolError::Malformed(
            "startup packet has no \"user\" parameter",
        ));
    }
    Ok(params)
}

/// Appends a protocol 3.0 StartupMessage with `params` (name, value) in order.
pub fn encode_startup(buf: &mut BytesMut, params: &[(&str, &str)]) {
    frame::write_untyped(buf, |body| {
        body.put_u32(PROTOCOL_3_0);
        for (name, value) in params {
            put_cstr(body, name.as_bytes());
            put_cstr(body, value.as_bytes());
        }
        body.put_u8(0);
    });
}

/// Appends an SSLRequest.
pub fn encode_ssl_request(buf: &mut BytesMut) {
    frame::write_untyped(buf, |body| body.put_u32(SSL_REQUEST_CODE));
}

/// Appends a CancelRequest for `key`.
pub fn encode_cancel_request(buf: &mut BytesMut, key: CancelKey) {
    frame::write_untyped(buf, |body| {
        body.put_u32(CANCEL_REQUEST_CODE);
        body.put_i32(key.pid);
        body.put_i32(key.secret);
    });
}

#[cfg(test)]
mod tests;
