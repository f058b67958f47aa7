//! `frontend_header`, `backend_header` and `split_message` on arbitrary bytes: never panic,
//! accepted headers respect the limits, and splitting consumes exactly whole messages.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::frame::{
    backend_header, frontend_header, split_message, MAX_LOGIN_MESSAGE_LEN, MAX_MESSAGE_LEN,
};

fuzz_target!(|data: &[u8]| {
    for header in [frontend_header(data), backend_header(data)] {
        if let Ok(Some(header)) = header {
            assert!(header.body_len <= MAX_MESSAGE_LEN);
        }
    }
    let mut buf = BytesMut::from(data);
    while let Ok(Some((_, body))) = split_message(&mut buf, MAX_LOGIN_MESSAGE_LEN) {
        assert!(body.len() <= MAX_LOGIN_MESSAGE_LEN);
    }
    assert!(buf.len() <= data.len());
});
