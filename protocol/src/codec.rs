//! Helpers shared by the message decoders and encoders: a cursor that reads the protocol's
//! data types out of a body slice without copying, and NUL-terminated string writing.
//!
//! Data types: <https://www.postgresql.org/docs/current/protocol-message-types.html>.

use bytes::{BufMut, BytesMut};

use crate::ProtocolError;

/// Reads Int32s, C strings and byte runs from the front of a message body. Every read checks
/// the remaining length first and fails with [`ProtocolError::Malformed`], never panics.
pub(crate) struct BodyReader<'a> {
    rest: &'a [u8],
}

impl<'a> BodyReader<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ProtocolError> {
        self.array().map(i32::from_be_bytes)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ProtocolError> {
        self.array().map(i16::from_be_bytes)
    }

    /// How many bytes are left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        self.bytes(N)?
            .try_into()
            .map_err(|_| ProtocolError::Malformed("message body ends early"))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.rest.len() < n {
            return Err(ProtocolError::Malformed("message body ends early"));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    /// A NUL-terminated string, without its NUL, as raw bytes.
    pub(crate) fn cstr_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let nul = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::Malformed("string is not NUL-terminated"))?;
        let text = self.bytes(nul)?;
        self.bytes(1)?;
        Ok(text)
    }

    /// A NUL-terminated string that must be valid UTF-8.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        std::str::from_utf8(self.cstr_bytes()?)
            .map_err(|_| ProtocolError::Malformed("string is not valid UTF-8"))
    }

    /// Everything not read yet.
    pub(crate) fn rest(self) -> &'a [u8] {
        self.rest
    }

    /// Fails unless the whole body has been read.
    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Malformed(
                "unexpected bytes after the message",
            ))
        }
    }
}

/// Writes `text` as a protocol String: its bytes up to the first NUL, then a NUL. Cutting at
/// an embedded NUL keeps the message well-formed; the receiver would stop there anyway, and
/// nothing after it can be smuggled in as another field.
pub(crate) fn put_cstr(buf: &mut BytesMut, text: &[u8]) {
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    buf.put_slice(&text[..end]);
    buf.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_type_and_checks_lengths() {
        let mut reader = BodyReader::new(b"\x00\x00\x01\x02abc\0xy");
        assert_eq!(reader.i32().unwrap(), 0x0102);
        assert_eq!(reader.cstr().unwrap(), "abc");
        assert!(reader.bytes(3).is_err());
        assert_eq!(reader.bytes(2).unwrap(), b"xy");
        reader.finish().unwrap();
    }

    #[test]
    fn rejects_short_unterminated_and_non_utf8_input() {
        assert!(BodyReader::new(b"\x00\x00\x01").i32().is_err());
        assert!(BodyReader::new(b"abc").cstr().is_err());
        assert!(BodyReader::new(b"\xff\0").cstr().is_err());
        assert_eq!(BodyReader::new(b"\xff\0").cstr_bytes().unwrap(), b"\xff");
        assert!(BodyReader::new(b"x").finish().is_err());
    }

    #[test]
    fn put_cstr_stops_at_an_embedded_nul() {
        let mut buf = BytesMut::new();
        put_cstr(&mut buf, b"user\0injected");
        put_cstr(&mut buf, b"");
        assert_eq!(&buf[..], b"user\0\0");
    }
}
