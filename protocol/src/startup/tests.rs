//! Unit tests of `crate::startup`.

use bytes::BytesMut;

use super::*;

fn startup_bytes(params: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_startup(&mut buf, params);
    buf.to_vec()
}

/// A startup-phase packet from raw parts: length field, code, then `rest`.
fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
    let len = i32::try_from(8 + rest.len()).unwrap();
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend_from_slice(&code.to_be_bytes());
    bytes.extend_from_slice(rest);
    bytes
}

fn parse(bytes: &[u8]) -> Result<InitialPacket, ProtocolError> {
    let (parsed, consumed) = parse_initial_packet(bytes)?.expect("complete packet");
    assert_eq!(consumed, bytes.len());
    Ok(parsed)
}

fn parse_startup(bytes: &[u8]) -> Result<StartupMessage, ProtocolError> {
    match parse(bytes)? {
        InitialPacket::Startup(startup) => Ok(startup),
        other => panic!("expected a StartupMessage, got {other:?}"),
    }
}

#[test]
fn startup_round_trips() {
    let bytes = startup_bytes(&[
        ("user", "alice"),
        ("database", "shop"),
        ("application_name", ""),
    ]);
    let startup = parse_startup(&bytes).unwrap();
    assert_eq!(startup.protocol_minor, 0);
    assert_eq!(startup.user(), "alice");
    assert_eq!(startup.database(), "shop");
    assert_eq!(startup.get("application_name"), Some(""));
    assert_eq!(startup.get("options"), None);
    assert_eq!(
        startup.params,
        [
            ("user", "alice"),
            ("database", "shop"),
            ("application_name", "")
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
}

#[test]
fn database_defaults_to_the_user() {
    assert_eq!(
        parse_startup(&startup_bytes(&[("user", "bob")]))
            .unwrap()
            .database(),
        "bob"
    );
    let empty = startup_bytes(&[("user", "bob"), ("database", "")]);
    assert_eq!(parse_startup(&empty).unwrap().database(), "bob");
}

#[test]
fn newer_minor_versions_and_protocol_options_are_reported() {
    let bytes = packet(PROTOCOL_3_0 | 2, b"user\0u\0_pq_.compression\0on\0\0");
    let startup = parse_startup(&bytes).unwrap();
    assert_eq!(startup.protocol_minor, 2);
    assert_eq!(
        startup.protocol_options().collect::<Vec<_>>(),
        ["_pq_.compression"]
    );
}

#[test]
fn other_major_versions_are_refused() {
    for code in [2 << 16, 4 << 16, 1234 << 16 | 5681, 0] {
        let bytes = packet(code, b"user\0u\0\0");
        assert_eq!(
            parse_initial_packet(&bytes[..8]),
            Err(ProtocolError::UnsupportedProtocolVersion(code)),
            "refused before the rest arrives"
        );
    }
}

#[test]
fn negotiation_and_cancel_packets_round_trip() {
    let mut buf = BytesMut::new();
    encode_ssl_request(&mut buf);
    assert_eq!(&buf[..], [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    assert_eq!(parse(&buf), Ok(InitialPacket::SslRequest));
    assert_eq!(
        parse(&packet(GSSENC_REQUEST_CODE, b"")),
        Ok(InitialPacket::GssEncRequest)
    );
    let key = CancelKey {
        pid: 4242,
        secret: -7,
    };
    let mut buf = BytesMut::new();
    encode_cancel_request(&mut buf, key);
    assert_eq!(buf.len(), 16);
    assert_eq!(parse(&buf), Ok(InitialPacket::Cancel(key)));
}

#[test]
fn only_the_first_packet_is_consumed() {
    let mut bytes = packet(SSL_REQUEST_CODE, b"");
    bytes.extend_from_slice(&startup_bytes(&[("user", "u")]));
    let (parsed, consumed) = parse_initial_packet(&bytes).unwrap().unwrap();
    assert_eq!((parsed, consumed), (InitialPacket::SslRequest, 8));
    assert!(parse_startup(&bytes[consumed..]).is_ok());
}

#[test]
fn every_truncation_is_incomplete() {
    let packets = [
        startup_bytes(&[("user", "alice"), ("database", "db")]),
        packet(SSL_REQUEST_CODE, b""),
        packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 1, 0, 0, 0, 2]),
    ];
    for bytes in &packets {
        for end in 0..bytes.len() {
            assert_eq!(
                parse_initial_packet(&bytes[..end]),
                Ok(None),
                "{end} of {bytes:?}"
            );
        }
    }
}

#[test]
fn impossible_lengths_are_refused_from_the_length_field_alone() {
    for len in [i32::MIN, -1, 0, 3, 4, 7] {
        let err = parse_initial_packet(&len.to_be_bytes()).unwrap_err();
        assert_eq!(err, ProtocolError::BadLength { tag: 0, len });
    }
    let too_long = i32::try_from(MAX_LOGIN_MESSAGE_LEN + 5).unwrap();
    assert!(matches!(
        parse_initial_packet(&too_long.to_be_bytes()),
        Err(ProtocolError::MessageTooLong {
            tag: 0,
            len: 10_001,
            max: 10_000
        })
    ));
    assert!(parse_initial_packet(&i32::MAX.to_be_bytes()).is_err());
}

#[test]
fn the_longest_allowed_startup_packet_parses() {
    let value = "v".repeat(MAX_LOGIN_MESSAGE_LEN - 4 - "user\0u\0x\0".len() - 2);
    let bytes = startup_bytes(&[("user", "u"), ("x", &value)]);
    assert_eq!(bytes.len(), MAX_LOGIN_MESSAGE_LEN + 4);
    assert!(parse_startup(&bytes).is_ok());
}

#[test]
fn negotiation_and_cancel_packets_must_have_their_size() {
    assert_eq!(
        parse_initial_packet(&packet(SSL_REQUEST_CODE, b"\0\0\0\0")),
        Err(ProtocolError::BadLength { tag: 0, len: 12 })
    );
    assert!(parse_initial_packet(&packet(GSSENC_REQUEST_CODE, b"\0")).is_err());
    for rest in [&[0u8; 4][..], &[0; 9], &[0; 40]] {
        let bytes = packet(CANCEL_REQUEST_CODE, rest);
        let err = parse_initial_packet(&bytes[..8]).unwrap_err();
        assert!(
            err.to_string().contains("CancelRequest must be 16 bytes"),
            "{err}"
        );
    }
}

#[test]
fn parameters_must_be_well_formed() {
    let cases: [(&[u8], &str); 7] = [
        (b"user\0alice\0", "not NUL-terminated"),
        (b"user\0alice", "not NUL-terminated"),
        (b"", "not NUL-terminated"),
        (b"user\0alice\0\0junk", "after the startup parameters"),
        (b"user\0al\xffce\0\0", "UTF-8"),
        (b"user\0a\0user\0b\0\0", "repeats"),
        (b"database\0d\0\0", "\"user\""),
    ];
    for (rest, expected) in cases {
        let err = parse(&packet(PROTOCOL_3_0, rest)).unwrap_err();
        assert!(err.to_string().contains(expected), "{rest:?}: {err}");
    }
    let err = parse(&packet(PROTOCOL_3_0, b"user\0\0\0")).unwrap_err();
    assert!(err.to_string().contains("\"user\""), "empty user: {err}");
}

#[test]
fn cancel_key_debug_hides_the_secret() {
    let shown = format!(
        "{:?}",
        CancelKey {
            pid: 1,
            secret: 987_654
        }
    );
    assert!(!shown.contains("987654"), "{shown}");
    assert!(shown.contains("pid: 1"), "{shown}");
}
