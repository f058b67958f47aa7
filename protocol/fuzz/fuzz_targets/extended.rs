//! `parse_parse`, `parse_bind` and `parse_target` on an arbitrary body: never panic, and
//! whatever decodes re-encodes (`encode_parse`, `encode_bind`, `encode_target`) to a framed
//! message whose body is the input byte for byte and decodes to the same fields.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::extended::{
    encode_bind, encode_parse, encode_target, parse_bind, parse_parse, parse_target,
};
use sluice_protocol::frame::{frontend_header, split_message, MAX_MESSAGE_LEN};

/// Splits the one message `encode` appends, checks its type byte and that `frontend_header`
/// agrees with its length whenever it accepts it, and returns the body.
fn reencoded(expected_tag: u8, encode: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(&mut buf);
    if let Ok(Some(header)) = frontend_header(&buf) {
        assert_eq!(header.message_len(), buf.len());
    }
    let (tag, body) = split_message(&mut buf, MAX_MESSAGE_LEN)
        .expect("an encoded message frames")
        .expect("an encoded message is complete");
    assert_eq!(tag, expected_tag);
    assert!(buf.is_empty());
    body
}

fuzz_target!(|body: &[u8]| {
    if let Ok(parse) = parse_parse(body) {
        let again = reencoded(b'P', |buf| encode_parse(buf, parse.statement, parse.rest));
        assert_eq!(&again[..], body);
        assert_eq!(parse_parse(&again), Ok(parse));
    }
    if let Ok(bind) = parse_bind(body) {
        let again = reencoded(b'B', |buf| {
            encode_bind(buf, bind.portal, bind.statement, bind.rest)
        });
        assert_eq!(&again[..], body);
        assert_eq!(parse_bind(&again), Ok(bind));
    }
    if let Ok(target) = parse_target(body) {
        assert!(target.kind == b'S' || target.kind == b'P');
        for tag in [b'D', b'C'] {
            let again = reencoded(tag, |buf| encode_target(buf, tag, target.kind, target.name));
            assert_eq!(&again[..], body);
            assert_eq!(parse_target(&again), Ok(target));
        }
    }
});
