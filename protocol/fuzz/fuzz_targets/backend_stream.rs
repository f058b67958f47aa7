//! An arbitrary server byte stream split with `backend_header`: accepted lengths respect each
//! type's bounds, splitting advances and stays inside the buffer, and splitting it whole or
//! chunk by chunk gives the same messages and the same end (see `check_stream`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::frame::{backend_header, MAX_MESSAGE_LEN};
use sluice_protocol_fuzz::check_stream;

/// Body bounds from the message formats page: fixed-size messages exactly, others the limit.
fn body_bounds(tag: u8) -> (usize, usize) {
    match tag {
        b'1' | b'2' | b'3' | b'n' | b'I' | b's' | b'c' => (0, 0),
        b'Z' => (1, 1),
        b'K' => (8, 8),
        _ => (0, MAX_MESSAGE_LEN),
    }
}

fuzz_target!(|data: &[u8]| check_stream(data, backend_header, body_bounds));
