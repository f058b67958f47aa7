//! Unit tests of `crate::backend`.

use bytes::BytesMut;

use super::*;
use crate::frame::{backend_header, split_message, MAX_MESSAGE_LEN};
use crate::test_support::{assert_truncations_rejected, frame_body};

/// Encodes one message and checks it passes `backend_header`, returning tag and body.
fn encoded(encode: impl FnOnce(&mut BytesMut)) -> (u8, BytesMut) {
    let mut buf = BytesMut::new();
    encode(&mut buf);
    frame_body(&buf);
    let header = backend_header(&buf).unwrap().expect("a whole header");
    assert_eq!(header.message_len(), buf.len());
    let (tag, body) = split_message(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
    assert!(buf.is_empty());
    (tag, body)
}

/// Encodes an Authentication message, checks it parses back as `expected`, returns its body.
fn assert_auth_round_trip(
    encode: impl FnOnce(&mut BytesMut),
    expected: AuthRequest<'_>,
) -> BytesMut {
    let (tag, body) = encoded(encode);
    assert_eq!(tag, b'R');
    assert_eq!(parse_auth_request(&body).unwrap(), expected);
    body
}

#[test]
fn auth_requests_round_trip() {
    assert_auth_round_trip(encode_auth_ok, AuthRequest::Ok);
    assert_auth_round_trip(encode_auth_cleartext, AuthRequest::Cleartext);
    assert_auth_round_trip(
        |buf| encode_auth_md5(buf, *b"salt"),
        AuthRequest::Md5 { salt: *b"salt" },
    );
    assert_auth_round_trip(
        |buf| encode_auth_sasl(buf, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
        AuthRequest::Sasl {
            mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"],
        },
    );
    assert_auth_round_trip(
        |buf| encode_auth_sasl_continue(buf, b"r=abc,s=c2FsdA==,i=4096"),
        AuthRequest::SaslContinue(b"r=abc,s=c2FsdA==,i=4096"),
    );
    assert_auth_round_trip(
        |buf| encode_auth_sasl_final(buf, b"v=xyz"),
        AuthRequest::SaslFinal(b"v=xyz"),
    );
}

#[test]
fn auth_request_bytes_match_the_protocol() {
    let mut buf = BytesMut::new();
    encode_auth_md5(&mut buf, [1, 2, 3, 4]);
    assert_eq!(&buf[..], b"R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04");
    buf.clear();
    encode_auth_sasl(&mut buf, &["SCRAM-SHA-256"]);
    assert_eq!(&buf[..], b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
}

#[test]
fn fixed_auth_requests_reject_every_truncation_and_trailing_bytes() {
    let bodies = [
        assert_auth_round_trip(encode_auth_ok, AuthRequest::Ok),
        assert_auth_round_trip(encode_auth_cleartext, AuthRequest::Cleartext),
        assert_auth_round_trip(
            |buf| encode_auth_md5(buf, [9; 4]),
            AuthRequest::Md5 { salt: [9; 4] },
        ),
        assert_auth_round_trip(
            |buf| encode_auth_sasl(buf, &["SCRAM-SHA-256"]),
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256"],
            },
        ),
    ];
    for body in bodies {
        assert_truncations_rejected(&body, parse_auth_request);
        let mut longer = body.to_vec();
        longer.push(0);
        assert!(parse_auth_request(&longer).is_err());
    }
}

#[test]
fn sasl_data_requests_take_the_rest_of_the_body() {
    assert!(parse_auth_request(b"\0\0\0").is_err());
    assert_eq!(
        parse_auth_request(b"\0\0\0\x0b"),
        Ok(AuthRequest::SaslContinue(b""))
    );
    assert_eq!(
        parse_auth_request(b"\0\0\0\x0cv="),
        Ok(AuthRequest::SaslFinal(b"v="))
    );
}

#[test]
fn other_auth_methods_are_reported_unsupported() {
    assert_eq!(
        parse_auth_request(b"\0\0\0\x07"),
        Ok(AuthRequest::Unsupported(7))
    );
    assert_eq!(
        parse_auth_request(b"\xff\xff\xff\xff"),
        Ok(AuthRequest::Unsupported(-1))
    );
}

#[test]
fn sasl_mechanism_names_must_be_utf8() {
    assert!(parse_auth_request(b"\0\0\0\x0a\xff\0\0").is_err());
}

#[test]
fn parameter_status_round_trips() {
    let (tag, body) = encoded(|buf| encode_parameter_status(buf, "server_version", "17.2"));
    assert_eq!(tag, b'S');
    assert_eq!(
        parse_parameter_status(&body),
        Ok(("server_version", "17.2"))
    );
    assert_truncations_rejected(&body, parse_parameter_status);
    assert!(parse_parameter_status(b"a\0b\0c").is_err());
}

#[test]
fn backend_key_data_round_trips() {
    let key = CancelKey {
        pid: 31337,
        secret: i32::MIN,
    };
    let (tag, body) = encoded(|buf| encode_backend_key_data(buf, key));
    assert_eq!(tag, b'K');
    assert_eq!(parse_backend_key_data(&body), Ok(key));
    assert_truncations_rejected(&body, parse_backend_key_data);
    assert!(parse_backend_key_data(&[0; 9]).is_err());
}

#[test]
fn error_and_notice_round_trip() {
    let (tag, body) =
        encoded(|buf| encode_error(buf, "FATAL", "28P01", "password authentication failed"));
    assert_eq!(tag, b'E');
    assert_eq!(
        &body[..],
        b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0"
    );
    let fields = parse_error_fields(&body).unwrap();
    assert_eq!(fields.severity, "FATAL");
    assert_eq!(fields.code, "28P01");
    assert_eq!(fields.message, "password authentication failed");
    assert_truncations_rejected(&body, parse_error_fields);

    let (tag, body) = encoded(|buf| encode_notice(buf, "WARNING", "01000", "careful"));
    assert_eq!(tag, b'N');
    assert_eq!(parse_error_fields(&body).unwrap().message, "careful");
}

#[test]
fn error_fields_prefer_the_unlocalized_severity_and_tolerate_gaps() {
    let fields = parse_error_fields(b"SFEHLER\0VERROR\0Dsome detail\0\0").unwrap();
    assert_eq!(fields.severity, "ERROR");
    assert_eq!(fields.code, "");
    assert_eq!(fields.message, "");
    let fields = parse_error_fields(b"SERROR\0Mbad \xe9t\xe9\0\0").unwrap();
    assert_eq!(fields.severity, "ERROR");
    assert_eq!(fields.message, "bad \u{fffd}t\u{fffd}");
    assert!(parse_error_fields(b"\0\0").is_err());
    assert!(parse_error_fields(b"").is_err());
}

#[test]
fn ready_for_query_and_negotiate_protocol_version_bytes() {
    let (tag, body) = encoded(|buf| encode_ready_for_query(buf, b'T'));
    assert_eq!((tag, &body[..]), (b'Z', &b"T"[..]));

    let (tag, body) =
        encoded(|buf| encode_negotiate_protocol_version(buf, 0, &["_pq_.a", "_pq_.b"]));
    assert_eq!(tag, b'v');
    assert_eq!(&body[..], b"\0\x03\0\0\0\0\0\x02_pq_.a\0_pq_.b\0");
    let (_, full) = encoded(|buf| encode_negotiate_protocol_version(buf, PROTOCOL_3_0 | 2, &[]));
    assert_eq!(&full[..], b"\0\x03\0\x02\0\0\0\0");
}

/// One RowDescription field as decoded by [`parse_row_description`].
#[derive(Debug, PartialEq, Eq)]
struct Field<'a> {
    name: &'a str,
    table_oid: i32,
    attnum: i16,
    type_oid: i32,
    typlen: i16,
    typmod: i32,
    format: i16,
}

fn parse_row_description(body: &[u8]) -> Vec<Field<'_>> {
    let mut reader = crate::codec::BodyReader::new(body);
    let [hi, lo] = reader.array().unwrap();
    let count = i16::from_be_bytes([hi, lo]);
    let i16_of =
        |reader: &mut crate::codec::BodyReader<'_>| i16::from_be_bytes(reader.array().unwrap());
    let mut fields = Vec::new();
    for _ in 0..count {
        let name = reader.cstr().unwrap();
        let table_oid = reader.i32().unwrap();
        let attnum = i16_of(&mut reader);
        let type_oid = reader.i32().unwrap();
        let typlen = i16_of(&mut reader);
        let typmod = reader.i32().unwrap();
        let format = i16_of(&mut reader);
        fields.push(Field {
            name,
            table_oid,
            attnum,
            type_oid,
            typlen,
            typmod,
            format,
        });
    }
    reader.finish().unwrap();
    fields
}

fn text_field(name: &str) -> Field<'_> {
    Field {
        name,
        table_oid: 0,
        attnum: 0,
        type_oid: 25,
        typlen: -1,
        typmod: -1,
        format: 0,
    }
}

#[test]
fn row_description_describes_text_columns() {
    let (tag, body) = encoded(|buf| encode_row_description(buf, &["database", "cl_active"]));
    assert_eq!(tag, b'T');
    assert_eq!(
        parse_row_description(&body),
        [text_field("database"), text_field("cl_active")]
    );
    // Count, then per column: name, 18 bytes of attributes.
    assert_eq!(body.len(), 2 + (9 + 18) + (10 + 18));
}

#[test]
fn row_description_bytes_match_the_protocol() {
    let mut buf = BytesMut::new();
    encode_row_description(&mut buf, &["a"]);
    assert_eq!(
        &buf[..],
        b"T\0\0\0\x1a\0\x01a\0\
          \0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0"
    );
    buf.clear();
    encode_row_description(&mut buf, &[]);
    assert_eq!(&buf[..], b"T\0\0\0\x06\0\0");
}

#[test]
fn row_description_cuts_names_at_a_nul() {
    let (_, body) = encoded(|buf| encode_row_description(buf, &["x\0y"]));
    assert_eq!(parse_row_description(&body), [text_field("x")]);
}

#[test]
fn data_row_round_trips_values_and_nulls() {
    let values = [Some("pool"), None, Some(""), Some("12 ü")];
    let (tag, body) = encoded(|buf| encode_data_row(buf, &values));
    assert_eq!(tag, b'D');
    assert_eq!(
        parse_data_row(&body).unwrap(),
        [
            Some(&b"pool"[..]),
            None,
            Some(&b""[..]),
            Some("12 ü".as_bytes())
        ]
    );
    assert_eq!(body.len(), 2 + (4 + 4) + 4 + 4 + (4 + 5));
}

#[test]
fn data_row_bytes_match_the_protocol() {
    let mut buf = BytesMut::new();
    encode_data_row(&mut buf, &[Some("ab"), None]);
    assert_eq!(&buf[..], b"D\0\0\0\x10\0\x02\0\0\0\x02ab\xff\xff\xff\xff");
    buf.clear();
    encode_data_row(&mut buf, &[]);
    assert_eq!(&buf[..], b"D\0\0\0\x06\0\0");
}

#[test]
fn column_counts_stop_at_the_int16_limit() {
    let names = vec!["c"; MAX_COLUMNS + 3];
    let (_, body) = encoded(|buf| encode_row_description(buf, &names));
    assert_eq!(parse_row_description(&body).len(), MAX_COLUMNS);
    let values = vec![None; MAX_COLUMNS + 3];
    let (_, body) = encoded(|buf| encode_data_row(buf, &values));
    assert_eq!(parse_data_row(&body).unwrap().len(), MAX_COLUMNS);
}

#[test]
fn command_complete_and_empty_query_response_bytes() {
    let (tag, body) = encoded(|buf| encode_command_complete(buf, "SHOW"));
    assert_eq!((tag, &body[..]), (b'C', &b"SHOW\0"[..]));
    let mut buf = BytesMut::new();
    encode_command_complete(&mut buf, "PAUSE");
    assert_eq!(&buf[..], b"C\0\0\0\x0aPAUSE\0");

    let (tag, body) = encoded(encode_empty_query_response);
    assert_eq!((tag, &body[..]), (b'I', &b""[..]));
    buf.clear();
    encode_empty_query_response(&mut buf);
    assert_eq!(&buf[..], b"I\0\0\0\x04");
}

#[test]
fn a_result_set_splits_back_into_its_messages() {
    let mut buf = BytesMut::new();
    encode_row_description(&mut buf, &["name", "value"]);
    encode_data_row(&mut buf, &[Some("listen_port"), Some("6432")]);
    encode_data_row(&mut buf, &[Some("auth_file"), None]);
    encode_command_complete(&mut buf, "SHOW");
    encode_ready_for_query(&mut buf, b'I');
    let mut tags = Vec::new();
    while let Some((tag, body)) = split_message(&mut buf, MAX_MESSAGE_LEN).unwrap() {
        if tag == b'D' {
            assert_eq!(parse_data_row(&body).unwrap().len(), 2);
        }
        tags.push(tag);
    }
    assert!(buf.is_empty());
    assert_eq!(tags, b"TDDCZ");
}

#[test]
fn data_rows_decode_values_and_nulls() {
    let (tag, body) = encoded(|buf| encode_data_row(buf, &[Some("alice"), None, Some("")]));
    assert_eq!(tag, b'D');
    assert_eq!(
        parse_data_row(&body).unwrap(),
        vec![Some(&b"alice"[..]), None, Some(&b""[..])]
    );
}

#[test]
fn malformed_data_rows_are_refused_before_allocating() {
    // 32,767 columns announced in a six-byte body.
    assert!(parse_data_row(b"\x7f\xff\0\0\0\0").is_err());
    assert!(parse_data_row(b"\xff\xff").is_err());
    assert!(parse_data_row(b"\0\x01\xff\xff\xff\xfe").is_err());
    assert!(parse_data_row(b"\0\x01\0\0\0\x05ab").is_err());
    assert!(parse_data_row(b"\0\x01\xff\xff\xff\xffx").is_err());
    let (_, body) = encoded(|buf| encode_data_row(buf, &[Some("abc"), None]));
    for end in 0..body.len() {
        assert!(parse_data_row(&body[..end]).is_err());
    }
}

#[test]
fn notifications_parse_and_refuse_truncations() {
    let mut body = 42i32.to_be_bytes().to_vec();
    body.extend_from_slice(b"ch1\0hello\0");
    assert_eq!(
        parse_notification(&body),
        Ok(Notification {
            pid: 42,
            channel: "ch1",
            payload: "hello"
        })
    );
    for len in 0..body.len() {
        assert!(parse_notification(&body[..len]).is_err(), "{len} bytes");
    }
}
