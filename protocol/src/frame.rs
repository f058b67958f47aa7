//! Message framing: the 5-byte header (type byte + Int32 length) of every message after
//! startup, the limits a length must respect, and the helper every encoder uses to write one.
//!
//! Invariants: a header is validated (known type, length ≥ 4, within the limit for its type,
//! exact size for fixed-size messages) as soon as its 5 bytes are present, before the body is
//! waited for or allocated; incomplete input is `Ok(None)`, never an error.
//! Limits in this crate apply to the *body*: the bytes after the length field.
//! See <https://www.postgresql.org/docs/current/protocol-overview.html#PROTOCOL-MESSAGE-CONCEPTS>
//! and <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

use bytes::{Buf, BufMut, BytesMut};

use crate::ProtocolError;

/// Type byte plus Int32 length.
pub const HEADER_LEN: usize = 5;

/// Largest body accepted for any message: PostgreSQL's own bound (`PQ_LARGE_MESSAGE_LIMIT`,
/// just under 1 GiB) for queries, binds and copy data.
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

/// Largest body accepted for the startup packet and the password / SASL messages of the login
/// phase (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_LOGIN_MESSAGE_LEN: usize = 10_000;

/// PostgreSQL's `PQ_SMALL_MESSAGE_LIMIT`: the server refuses longer bodies for the frontend
/// messages that never carry user data (Sync, Flush, Close, Describe, Execute, ...), so a proxy
/// can refuse them as early.
const SMALL_MESSAGE_LEN: usize = 10_000;

/// A validated message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Length field minus the 4 bytes of the length field itself.
    pub body_len: usize,
}

impl Header {
    /// Header plus body: how many bytes the whole message occupies.
    pub fn message_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }
}

/// Body sizes allowed for one message type.
struct BodyBounds {
    min: usize,
    max: usize,
}

const fn bounds(min: usize, max: usize) -> Option<BodyBounds> {
    Some(BodyBounds { min, max })
}

/// Body bounds of the messages a client sends; `None` for a type the protocol does not define.
fn frontend_bounds(tag: u8) -> Option<BodyBounds> {
    match tag {
        // Sync, Flush, Terminate, CopyDone.
        b'S' | b'H' | b'X' | b'c' => bounds(0, 0),
        // Close, Describe, Execute, CopyFail, PasswordMessage / SASL / GSS responses.
        b'C' | b'D' | b'E' | b'f' | b'p' => bounds(0, SMALL_MESSAGE_LEN),
        // Bind, FunctionCall, Parse, Query (at least the SQL's NUL), CopyData.
        b'B' | b'F' | b'P' | b'd' => bounds(0, MAX_MESSAGE_LEN),
        b'Q' => bounds(1, MAX_MESSAGE_LEN),
        _ => None,
    }
}

/// Body bounds of the messages a server sends; `None` for a type the protocol does not define.
fn backend_bounds(tag: u8) -> Option<BodyBounds> {
    match tag {
        // ParseComplete, BindComplete, CloseComplete, NoData, EmptyQueryResponse,
        // PortalSuspended, CopyDone.
        b'1' | b'2' | b'3' | b'n' | b'I' | b's' | b'c' => bounds(0, 0),
        // ReadyForQuery: one status byte.
        b'Z' => bounds(1, 1),
        // BackendKeyData: pid + 4-byte secret. Protocol 3.2 allows longer secrets, but sluice
        // only ever asks servers for protocol 3.0.
        b'K' => bounds(8, 8),
        // Authentication: at least the Int32 code.
        b'R' => bounds(4, MAX_MESSAGE_LEN),
        // NegotiateProtocolVersion: two Int32s.
        b'v' => bounds(8, MAX_MESSAGE_LEN),
        // CopyInResponse, CopyOutResponse, CopyBothResponse: Int8 + Int16.
        b'G' | b'H' | b'W' => bounds(3, MAX_MESSAGE_LEN),
        // ParameterStatus: two strings.
        b'S' => bounds(2, MAX_MESSAGE_LEN),
        // DataRow, RowDescription, ParameterDescription: an Int16 count.
        b'D' | b'T' | b't' => bounds(2, MAX_MESSAGE_LEN),
        // CommandComplete, ErrorResponse, NoticeResponse: at least one NUL.
        b'C' | b'E' | b'N' => bounds(1, MAX_MESSAGE_LEN),
        // FunctionCallResponse: Int32 length.
        b'V' => bounds(4, MAX_MESSAGE_LEN),
        // NotificationResponse: pid + two strings.
        b'A' => bounds(6, MAX_MESSAGE_LEN),
        // CopyData.
        b'd' => bounds(0, MAX_MESSAGE_LEN),
        _ => None,
    }
}

/// Reads the 5-byte header of a message sent by a client (after startup).
///
/// `Ok(None)` if fewer than 5 bytes are buffered. Rejects unknown types, length fields below 4,
/// bodies over the limit for the type and wrong sizes for fixed-size messages.
pub fn frontend_header(buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
    checked_header(buf, frontend_bounds)
}

/// Reads the 5-byte header of a message sent by a server; same rules as [`frontend_header`].
pub fn backend_header(buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
    checked_header(buf, backend_bounds)
}

fn checked_header(
    buf: &[u8],
    bounds_of: fn(u8) -> Option<BodyBounds>,
) -> Result<Option<Header>, ProtocolError> {
    let Some((tag, len)) = raw_header(buf) else {
        return Ok(None);
    };
    let bounds = bounds_of(tag).ok_or(ProtocolError::UnknownMessageType { tag })?;
    let body_len = body_len(tag, len)?;
    let fixed_size = bounds.min == bounds.max;
    if body_len > bounds.max && !fixed_size {
        return Err(ProtocolError::MessageTooLong {
            tag,
            len: body_len,
            max: bounds.max,
        });
    }
    if body_len < bounds.min || body_len > bounds.max {
        return Err(ProtocolError::BadLength { tag, len });
    }
    Ok(Some(Header { tag, body_len }))
}

fn raw_header(buf: &[u8]) -> Option<(u8, i32)> {
    let (&tag, rest) = buf.split_first()?;
    let len: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    Some((tag, i32::from_be_bytes(len)))
}

/// Body length for a length field, which counts itself and must therefore be at least 4.
pub(crate) fn body_len(tag: u8, len: i32) -> Result<usize, ProtocolError> {
    usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_sub(4))
        .ok_or(ProtocolError::BadLength { tag, len })
}

/// Takes one complete typed message of either direction off the front of `buf`, returning
/// its type byte and body (sharing `buf`'s allocation).
///
/// The length is checked against `max_body` as soon as the header is present; if the message
/// is valid but incomplete, `buf` reserves room for the rest and `Ok(None)` is returned. The
/// type byte is not checked: the login phase calls this where a few types are expected and
/// the caller matches on them.
pub fn split_message(
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<Option<(u8, BytesMut)>, ProtocolError> {
    let Some((tag, len)) = raw_header(buf) else {
        return Ok(None);
    };
    let body_len = body_len(tag, len)?;
    if body_len > max_body {
        return Err(ProtocolError::MessageTooLong {
            tag,
            len: body_len,
            max: max_body,
        });
    }
    let total = HEADER_LEN + body_len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut body = buf.split_to(total);
    body.advance(HEADER_LEN);
    Ok(Some((tag, body)))
}

/// Appends one typed message: `tag`, a length placeholder, the body `write_body` appends,
/// then the real length patched in.
///
/// # Panics
/// If the body exceeds the protocol's hard limit of `i32::MAX - 4` bytes, which no valid
/// message can; callers encode bodies far below [`MAX_MESSAGE_LEN`].
pub fn write_message(buf: &mut BytesMut, tag: u8, write_body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    write_length_prefixed(buf, write_body);
}

/// Appends a length-prefixed packet without a type byte, as the startup-phase packets are.
pub(crate) fn write_untyped(buf: &mut BytesMut, write_body: impl FnOnce(&mut BytesMut)) {
    write_length_prefixed(buf, write_body);
}

fn write_length_prefixed(buf: &mut BytesMut, write_body: impl FnOnce(&mut BytesMut)) {
    let len_at = buf.len();
    buf.put_i32(0);
    write_body(buf);
    let len = i32::try_from(buf.len() - len_at)
        .expect("message body exceeds the protocol's 2 GiB length field");
    buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests;
