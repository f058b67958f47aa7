//! `parse_data_row` on an arbitrary body: never panics; an accepted row has as many values
//! as its count says, each value is the input's bytes right after its own length field, the
//! fields cover the body exactly, and a row of UTF-8 values re-encodes (`encode_data_row`)
//! to the same body.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::backend::{encode_data_row, parse_data_row};

fuzz_target!(|body: &[u8]| {
    let Ok(values) = parse_data_row(body) else {
        return;
    };
    let count = i16::from_be_bytes([body[0], body[1]]);
    assert_eq!(usize::try_from(count).ok(), Some(values.len()));

    // Walk the layout independently: Int16 count, then per column an Int32 length (-1 for
    // NULL) and that many bytes, which must be the very slice the decoder returned.
    let mut at = 2;
    for value in &values {
        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        at += 4;
        match value {
            None => assert_eq!(len, -1),
            Some(bytes) => {
                assert_eq!(usize::try_from(len).ok(), Some(bytes.len()));
                assert_eq!(
                    bytes.as_ptr_range(),
                    body[at..at + bytes.len()].as_ptr_range()
                );
                at += bytes.len();
            }
        }
    }
    assert_eq!(at, body.len());

    let text: Option<Vec<Option<&str>>> = values
        .iter()
        .map(|value| match value {
            None => Some(None),
            Some(bytes) => std::str::from_utf8(bytes).ok().map(Some),
        })
        .collect();
    if let Some(text) = text {
        let mut buf = BytesMut::new();
        encode_data_row(&mut buf, &text);
        assert_eq!(buf[0], b'D');
        assert_eq!(&buf[5..], body);
        assert_eq!(parse_data_row(&buf[5..]), Ok(values));
    }
});
