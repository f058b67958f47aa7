//! The extended-query messages whose statement names sluice rewrites: Parse, Bind,
//! Describe and Close. Decoders split a body into its names and the untouched rest, so a
//! message can be re-encoded under another statement name without looking at (or copying
//! more than) the parts that do not change.
//!
//! Formats: <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

use crate::codec::{put_cstr, BodyReader};
use crate::frame::write_message;
use crate::ProtocolError;
use bytes::{BufMut, BytesMut};

/// Parse ('P'): a statement name, then the query text and parameter types (`rest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    pub statement: &'a [u8],
    /// Query string (NUL-terminated), parameter type count and OIDs, as sent.
    pub rest: &'a [u8],
}

/// Bind ('B'): portal and statement names, then formats and values (`rest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

/// Describe ('D') or Close ('C'): whether it targets a statement (`b'S'`) or a portal
/// (`b'P'`), and the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub kind: u8,
    pub name: &'a [u8],
}

impl Target<'_> {
    pub fn is_statement(&self) -> bool {
        self.kind == b'S'
    }
}

pub fn parse_parse(body: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    let mut reader = BodyReader::new(body);
    let statement = reader.cstr_bytes()?;
    let rest = reader.rest();
    if !rest.contains(&0) {
        return Err(ProtocolError::Malformed(
            "Parse query is not NUL-terminated",
        ));
    }
    Ok(Parse { statement, rest })
}

pub fn parse_bind(body: &[u8]) -> Result<Bind<'_>, ProtocolError> {
    let mut reader = BodyReader::new(body);
    let portal = reader.cstr_bytes()?;
    let statement = reader.cstr_bytes()?;
    Ok(Bind {
        portal,
        statement,
        rest: reader.rest(),
    })
}

/// Decodes the body of a Describe or a Close, which share one layout.
pub fn parse_target(body: &[u8]) -> Result<Target<'_>, ProtocolError> {
    let mut reader = BodyReader::new(body);
    let [kind] = reader.array::<1>()?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError::Malformed(
            "Describe/Close target must be 'S' or 'P'",
        ));
    }
    let name = reader.cstr_bytes()?;
    reader.finish()?;
    Ok(Target { kind, name })
}

pub fn encode_parse(buf: &mut BytesMut, statement: &[u8], rest: &[u8]) {
    write_message(buf, b'P', |b| {
        put_cstr(b, statement);
        b.put_slice(rest);
    });
}

pub fn encode_bind(buf: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    write_message(buf, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_slice(rest);
    });
}

/// Encodes a Describe (`tag` b'D') or Close (`tag` b'C').
pub fn encode_target(buf: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    write_message(buf, tag, |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

/// Appends a Parse of `query` as `statement`, leaving every parameter's type to the server.
pub fn encode_parse_query(buf: &mut BytesMut, statement: &[u8], query: &str) {
    write_message(buf, b'P', |b| {
        put_cstr(b, statement);
        put_cstr(b, query.as_bytes());
        b.put_i16(0);
    });
}

/// Appends a Bind of `statement` to `portal` with text parameters (`None` is NULL) and
/// text results. Parameters past the 32,767 an Int16 count carries are left out.
///
/// # Panics
/// If a parameter exceeds the protocol's 2 GiB length field.
pub fn encode_bind_text(
    buf: &mut BytesMut,
    portal: &[u8],
    statement: &[u8],
    params: &[Option<&str>],
) {
    let params = &params[..params.len().min(i16::MAX as usize)];
    write_message(buf, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_i16(0); // parameter formats: all text
        b.put_i16(params.len() as i16);
        for param in params {
            match param {
                None => b.put_i32(-1),
                Some(text) => {
                    let len = i32::try_from(text.len())
                        .expect("parameter exceeds the protocol's 2 GiB length field");
                    b.put_i32(len);
                    b.put_slice(text.as_bytes());
                }
            }
        }
        b.put_i16(0); // result formats: all text
    });
}

/// Appends an Execute of `portal`, returning at most `max_rows` rows (0: all).
pub fn encode_execute(buf: &mut BytesMut, portal: &[u8], max_rows: i32) {
    write_message(buf, b'E', |b| {
        put_cstr(b, portal);
        b.put_i32(max_rows);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::split_message;

    fn body_of(encoded: &mut BytesMut) -> (u8, BytesMut) {
        split_message(encoded, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn parse_round_trips_with_a_new_name() {
        let mut buf = BytesMut::new();
        encode_parse(&mut buf, b"s1", b"SELECT $1\0\0\x01\0\0\0\x17");
        let (tag, body) = body_of(&mut buf);
        assert_eq!(tag, b'P');
        let parse = parse_parse(&body).unwrap();
        assert_eq!(parse.statement, b"s1");
        assert_eq!(parse.rest, b"SELECT $1\0\0\x01\0\0\0\x17");
        let mut renamed = BytesMut::new();
        encode_parse(&mut renamed, b"sluice_x", parse.rest);
        let (_, body) = body_of(&mut renamed);
        assert_eq!(parse_parse(&body).unwrap().statement, b"sluice_x");
    }

    #[test]
    fn bind_keeps_everything_after_the_names() {
        let mut buf = BytesMut::new();
        encode_bind(&mut buf, b"", b"s1", b"\0\0\0\x01\0\0\0\x011\0\0");
        let (_, body) = body_of(&mut buf);
        let bind = parse_bind(&body).unwrap();
        assert_eq!((bind.portal, bind.statement), (&b""[..], &b"s1"[..]));
        assert_eq!(bind.rest, b"\0\0\0\x01\0\0\0\x011\0\0");
    }

    #[test]
    fn targets_round_trip_and_reject_bad_kinds() {
        let mut buf = BytesMut::new();
        encode_target(&mut buf, b'C', b'S', b"s1");
        let (tag, body) = body_of(&mut buf);
        assert_eq!(tag, b'C');
        let target = parse_target(&body).unwrap();
        assert!(target.is_statement());
        assert_eq!(target.name, b"s1");
        assert!(parse_target(b"Xs1\0").is_err());
        assert!(parse_target(b"Ss1").is_err());
        assert!(parse_target(b"Ss1\0extra").is_err());
    }

    #[test]
    fn text_query_messages_have_the_documented_layout() {
        let mut buf = BytesMut::new();
        encode_parse_query(&mut buf, b"", "SELECT $1");
        let (tag, body) = body_of(&mut buf);
        assert_eq!((tag, &body[..]), (b'P', &b"\0SELECT $1\0\0\0"[..]));

        encode_bind_text(&mut buf, b"", b"", &[Some("ab"), None]);
        let (tag, body) = body_of(&mut buf);
        assert_eq!(tag, b'B');
        assert_eq!(&body[..], b"\0\0\0\0\0\x02\0\0\0\x02ab\xff\xff\xff\xff\0\0");
        let bind = parse_bind(&body).unwrap();
        assert_eq!((bind.portal, bind.statement), (&b""[..], &b""[..]));

        encode_execute(&mut buf, b"", 0);
        let (tag, body) = body_of(&mut buf);
        assert_eq!((tag, &body[..]), (b'E', &b"\0\0\0\0\0"[..]));
    }

    #[test]
    fn truncated_bodies_are_errors_not_panics() {
        let mut buf = BytesMut::new();
        encode_bind(&mut buf, b"portal", b"statement", b"");
        let (_, body) = body_of(&mut buf);
        for end in 0..body.len() - 1 {
            let _ = parse_bind(&body[..end]);
            let _ = parse_parse(&body[..end]);
            let _ = parse_target(&body[..end]);
        }
        assert!(parse_parse(b"name\0no terminator").is_err());
    }
}
