//! Unit tests of `crate::frame`.

use bytes::BytesMut;

use super::*;

/// A header with type `tag` and a length field of `len`.
fn header(tag: u8, len: i32) -> Vec<u8> {
    let mut bytes = vec![tag];
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes
}

const FRONTEND_TAGS: &[u8] = b"BCcdDEfFHPpQSX";
const BACKEND_TAGS: &[u8] = b"RK123CdcGHWDIEVvnNAtSsZT";

#[test]
fn fewer_than_five_bytes_is_incomplete() {
    let bytes = header(b'Q', 10);
    for end in 0..HEADER_LEN {
        assert_eq!(frontend_header(&bytes[..end]), Ok(None));
        assert_eq!(backend_header(&bytes[..end]), Ok(None));
    }
}

#[test]
fn known_tags_are_exactly_the_protocol_ones() {
    for tag in 0..=u8::MAX {
        let frontend = frontend_header(&header(tag, 5)).map(|h| h.is_some());
        assert_eq!(
            !matches!(frontend, Err(ProtocolError::UnknownMessageType { .. })),
            FRONTEND_TAGS.contains(&tag),
            "frontend tag {tag}"
        );
        let backend = backend_header(&header(tag, 5));
        assert_eq!(
            !matches!(backend, Err(ProtocolError::UnknownMessageType { .. })),
            BACKEND_TAGS.contains(&tag),
            "backend tag {tag}"
        );
    }
}

#[test]
fn reads_tag_and_body_length() {
    let parsed = frontend_header(&header(b'Q', 13)).unwrap().unwrap();
    assert_eq!(
        parsed,
        Header {
            tag: b'Q',
            body_len: 9
        }
    );
    assert_eq!(parsed.message_len(), 14);
    let parsed = backend_header(&header(b'D', 1 << 20)).unwrap().unwrap();
    assert_eq!(parsed.body_len, (1 << 20) - 4);
}

#[test]
fn impossible_length_fields_are_rejected() {
    for len in [i32::MIN, -1, 0, 3] {
        assert_eq!(
            frontend_header(&header(b'Q', len)),
            Err(ProtocolError::BadLength { tag: b'Q', len })
        );
        assert_eq!(
            backend_header(&header(b'D', len)),
            Err(ProtocolError::BadLength { tag: b'D', len })
        );
    }
}

#[test]
fn bodies_over_the_limit_are_rejected() {
    let too_long = i32::try_from(MAX_MESSAGE_LEN + 5).unwrap();
    assert!(matches!(
        frontend_header(&header(b'Q', too_long)),
        Err(ProtocolError::MessageTooLong {
            tag: b'Q',
            max: MAX_MESSAGE_LEN,
            ..
        })
    ));
    assert!(matches!(
        backend_header(&header(b'D', i32::MAX)),
        Err(ProtocolError::MessageTooLong { tag: b'D', .. })
    ));
    // Messages that never carry user data have PostgreSQL's small limit.
    assert!(frontend_header(&header(b'E', 10_004)).unwrap().is_some());
    assert!(matches!(
        frontend_header(&header(b'E', 10_005)),
        Err(ProtocolError::MessageTooLong {
            tag: b'E',
            len: 10_001,
            max: 10_000
        })
    ));
}

#[test]
fn fixed_size_messages_must_have_their_size() {
    for tag in *b"SHXc" {
        assert!(frontend_header(&header(tag, 4)).unwrap().is_some());
        assert_eq!(
            frontend_header(&header(tag, 5)),
            Err(ProtocolError::BadLength { tag, len: 5 })
        );
    }
    assert_eq!(
        frontend_header(&header(b'Q', 4)),
        Err(ProtocolError::BadLength { tag: b'Q', len: 4 })
    );
    for (tag, body) in [
        (b'Z', 1),
        (b'K', 8),
        (b'1', 0),
        (b'2', 0),
        (b'3', 0),
        (b'n', 0),
        (b'I', 0),
        (b's', 0),
        (b'c', 0),
    ] {
        let len = body + 4;
        assert!(backend_header(&header(tag, len)).unwrap().is_some());
        assert_eq!(
            backend_header(&header(tag, len + 1)),
            Err(ProtocolError::BadLength { tag, len: len + 1 })
        );
        assert_eq!(
            backend_header(&header(tag, i32::MAX)),
            Err(ProtocolError::BadLength { tag, len: i32::MAX })
        );
    }
    assert_eq!(
        backend_header(&header(b'R', 7)),
        Err(ProtocolError::BadLength { tag: b'R', len: 7 })
    );
}

#[test]
fn split_message_returns_whole_messages_only() {
    let mut stream = BytesMut::new();
    write_message(&mut stream, b'R', |body| body.put_i32(0));
    write_message(&mut stream, b'Z', |body| body.put_u8(b'I'));
    let stream = stream.freeze();
    for end in 0..=stream.len() {
        let mut buf = BytesMut::from(&stream[..end]);
        let first = split_message(&mut buf, MAX_LOGIN_MESSAGE_LEN).unwrap();
        if end < 9 {
            assert_eq!(first, None, "{end} bytes");
            assert_eq!(buf.len(), end, "incomplete input is left alone");
            continue;
        }
        assert_eq!(first, Some((b'R', BytesMut::from(&[0u8, 0, 0, 0][..]))));
        let second = split_message(&mut buf, MAX_LOGIN_MESSAGE_LEN).unwrap();
        if end < stream.len() {
            assert_eq!(second, None);
        } else {
            assert_eq!(second, Some((b'Z', BytesMut::from(&b"I"[..]))));
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn split_message_checks_the_limit_before_the_body_arrives() {
    let mut buf = BytesMut::from(&header(b'p', 10_005)[..]);
    assert_eq!(
        split_message(&mut buf, MAX_LOGIN_MESSAGE_LEN),
        Err(ProtocolError::MessageTooLong {
            tag: b'p',
            len: 10_001,
            max: MAX_LOGIN_MESSAGE_LEN
        })
    );
    let mut buf = BytesMut::from(&header(b'p', 3)[..]);
    assert_eq!(
        split_message(&mut buf, MAX_LOGIN_MESSAGE_LEN),
        Err(ProtocolError::BadLength { tag: b'p', len: 3 })
    );
    let mut buf = BytesMut::from(&header(b'p', -4)[..]);
    assert!(split_message(&mut buf, MAX_LOGIN_MESSAGE_LEN).is_err());
}

#[test]
fn split_message_reserves_room_for_a_valid_incomplete_message() {
    let mut buf = BytesMut::from(&header(b'd', 4 + 5_000)[..]);
    assert_eq!(split_message(&mut buf, MAX_MESSAGE_LEN), Ok(None));
    assert!(buf.capacity() >= HEADER_LEN + 5_000);
}

#[test]
fn split_message_shares_the_buffer() {
    let mut buf = BytesMut::new();
    write_message(&mut buf, b'd', |body| body.put_slice(b"payload"));
    let start = buf.as_ptr() as usize;
    let (_, body) = split_message(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
    assert_eq!(body.as_ptr() as usize, start + HEADER_LEN);
    assert_eq!(&body[..], b"payload");
}

#[test]
fn write_message_patches_the_length_after_existing_bytes() {
    let mut buf = BytesMut::from(&b"xyz"[..]);
    write_message(&mut buf, b'Q', |body| body.put_slice(b"SELECT 1\0"));
    assert_eq!(&buf[..], b"xyzQ\0\0\0\x0dSELECT 1\0");
    let mut buf = BytesMut::new();
    write_untyped(&mut buf, |body| body.put_u32(7));
    assert_eq!(&buf[..], b"\0\0\0\x08\0\0\0\x07");
}
