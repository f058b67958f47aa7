//! The error type of every framing, startup and message decoder in this crate.
//!
//! Each variant names what was wrong with the bytes, never the bytes themselves, so an error
//! can be logged without leaking a client's data. SCRAM has its own error type in
//! [`crate::scram`]. Message layouts: <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

use std::fmt;

/// Why bytes read from a peer are not a valid protocol message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The message body (bytes after the length field) is longer than the limit for its kind.
    /// `tag` is 0 for the untagged startup-phase packets.
    #[error("message {} of {len} bytes exceeds the limit of {max} bytes", TagName(*tag))]
    MessageTooLong { tag: u8, len: usize, max: usize },
    /// The length field is impossible for this kind of message (below 4, negative, or not the
    /// fixed size the message type requires). `len` is the raw length field.
    #[error("message {} has an invalid length field {len}", TagName(*tag))]
    BadLength { tag: u8, len: i32 },
    /// The type byte is not one this direction of the protocol defines.
    #[error("unknown message type {}", TagName(*tag))]
    UnknownMessageType { tag: u8 },
    /// The message body does not follow the layout of its type.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A startup packet asked for a protocol whose major version is not 3.
    #[error("unsupported frontend protocol {}.{}", .0 >> 16, .0 & 0xffff)]
    UnsupportedProtocolVersion(u32),
}

/// Shows a message type byte as its letter (`'Q'`) when printable, else as hex (`0x00`).
struct TagName(u8);

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", char::from(self.0))
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ProtocolError;

    #[test]
    fn messages_name_the_tag_readably() {
        let err = ProtocolError::MessageTooLong {
            tag: b'Q',
            len: 20,
            max: 10,
        };
        assert_eq!(
            err.to_string(),
            "message 'Q' of 20 bytes exceeds the limit of 10 bytes"
        );
        let err = ProtocolError::BadLength { tag: 0, len: -1 };
        assert_eq!(
            err.to_string(),
            "message 0x00 has an invalid length field -1"
        );
        let err = ProtocolError::UnsupportedProtocolVersion(2 << 16);
        assert_eq!(err.to_string(), "unsupported frontend protocol 2.0");
    }
}
