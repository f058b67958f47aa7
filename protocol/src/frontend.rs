//! Messages a client sends: sluice decodes the login-phase ones from clients and encodes
//! them (plus the few it originates: Query, Sync, CopyFail, Terminate) toward servers.
//!
//! All of PasswordMessage, SASLInitialResponse and SASLResponse share type byte `'p'`; which
//! one arrives follows from the authentication request that was sent, so the caller picks
//! the decoder. Decoders are zero-copy views over a body and reject trailing bytes.
//! See <https://www.postgresql.org/docs/current/protocol-message-formats.html> and
//! <https://www.postgresql.org/docs/current/sasl-authentication.html>.

use bytes::{BufMut, BytesMut};

use crate::codec::{put_cstr, BodyReader};
use crate::frame::write_message;
use crate::ProtocolError;

/// Parses a PasswordMessage body (cleartext or md5 response): one NUL-terminated string.
pub fn parse_password(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut reader = BodyReader::new(body);
    let password = reader.cstr_bytes()?;
    reader.finish()?;
    Ok(password)
}

/// Parses a SASLInitialResponse body into (mechanism, initial client response).
///
/// A missing initial response (length -1) is an error: SCRAM, the only mechanism sluice
/// offers, always starts with the client-first-message.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let mut reader = BodyReader::new(body);
    let mechanism = reader.cstr()?;
    let len = usize::try_from(reader.i32()?)
        .map_err(|_| ProtocolError::Malformed("SASLInitialResponse carries no initial response"))?;
    let data = reader.bytes(len)?;
    reader.finish()?;
    Ok((mechanism, data))
}

/// Appends a PasswordMessage carrying a cleartext password or md5 response.
pub fn encode_password(buf: &mut BytesMut, password: &[u8]) {
    write_message(buf, b'p', |body| put_cstr(body, password));
}

/// Appends a SASLInitialResponse choosing `mechanism`, with the client-first-message `data`.
///
/// # Panics
/// If `data` is longer than `i32::MAX` bytes.
pub fn encode_sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let len = i32::try_from(data.len()).expect("SASL response longer than i32::MAX bytes");
    write_message(buf, b'p', |body| {
        put_cstr(body, mechanism.as_bytes());
        body.put_i32(len);
        body.put_slice(data);
    });
}

/// Appends a SASLResponse carrying a client-final-message.
pub fn encode_sasl_response(buf: &mut BytesMut, data: &[u8]) {
    write_message(buf, b'p', |body| body.put_slice(data));
}

/// Appends a simple Query.
pub fn encode_query(buf: &mut BytesMut, sql: &str) {
    write_message(buf, b'Q', |body| put_cstr(body, sql.as_bytes()));
}

/// Appends Sync, which ends an extended-query batch (the server answers ReadyForQuery).
pub fn encode_sync(buf: &mut BytesMut) {
    write_message(buf, b'S', |_| {});
}

/// Appends CopyFail, which aborts a COPY FROM STDIN with `message` as the reason.
pub fn encode_copy_fail(buf: &mut BytesMut, message: &str) {
    write_message(buf, b'f', |body| put_cstr(body, message.as_bytes()));
}

/// Appends Terminate.
pub fn encode_terminate(buf: &mut BytesMut) {
    write_message(buf, b'X', |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{frontend_header, split_message, MAX_LOGIN_MESSAGE_LEN};
    use crate::test_support::{assert_truncations_rejected, frame_body};

    #[test]
    fn password_round_trips() {
        let mut buf = BytesMut::new();
        encode_password(&mut buf, b"md5abc");
        assert_eq!(&buf[..], b"p\0\0\0\x0bmd5abc\0");
        let (tag, body) = split_message(&mut buf, MAX_LOGIN_MESSAGE_LEN)
            .unwrap()
            .unwrap();
        assert_eq!(tag, b'p');
        assert_eq!(parse_password(&body).unwrap(), b"md5abc");
    }

    #[test]
    fn password_must_be_one_terminated_string() {
        assert!(parse_password(b"secret").is_err());
        assert!(parse_password(b"sec\0ret\0").is_err());
        assert_eq!(parse_password(b"\0").unwrap(), b"");
    }

    #[test]
    fn sasl_initial_response_round_trips() {
        let mut buf = BytesMut::new();
        encode_sasl_initial_response(&mut buf, "SCRAM-SHA-256", b"n,,n=,r=abc");
        let body = frame_body(&buf);
        assert_eq!(
            parse_sasl_initial_response(body).unwrap(),
            ("SCRAM-SHA-256", &b"n,,n=,r=abc"[..])
        );
        assert_truncations_rejected(body, parse_sasl_initial_response);
    }

    #[test]
    fn sasl_initial_response_lengths_must_match() {
        assert!(parse_sasl_initial_response(b"SCRAM-SHA-256\0\xff\xff\xff\xff").is_err());
        assert!(parse_sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x05abc").is_err());
        assert!(parse_sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x01abc").is_err());
        assert!(parse_sasl_initial_response(b"SCRAM-SHA-256\0\x7f\xff\xff\xffabc").is_err());
    }

    #[test]
    fn sasl_response_query_and_terminate_frame_correctly() {
        let mut buf = BytesMut::new();
        encode_sasl_response(&mut buf, b"c=biws");
        assert_eq!(frame_body(&buf), b"c=biws");
        buf.clear();
        encode_query(&mut buf, "SELECT 1");
        assert_eq!(&buf[..], b"Q\0\0\0\x0dSELECT 1\0");
        buf.clear();
        encode_terminate(&mut buf);
        assert_eq!(&buf[..], b"X\0\0\0\x04");
        let header = frontend_header(&buf).unwrap().unwrap();
        assert_eq!((header.tag, header.body_len), (b'X', 0));
    }

    #[test]
    fn sync_and_copy_fail_frame_correctly() {
        let mut buf = BytesMut::new();
        encode_sync(&mut buf);
        assert_eq!(&buf[..], b"S\0\0\0\x04");
        assert!(frontend_header(&buf).unwrap().is_some());
        buf.clear();
        encode_copy_fail(&mut buf, "client went away");
        assert_eq!(frame_body(&buf), b"client went away\0");
        let header = frontend_header(&buf).unwrap().unwrap();
        assert_eq!((header.tag, header.message_len()), (b'f', buf.len()));
    }
}
