//! An arbitrary client byte stream split with `frontend_header`: accepted lengths respect each
//! type's bounds, splitting advances and stays inside the buffer, and splitting it whole or
//! chunk by chunk gives the same messages and the same end (see `check_stream`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::frame::{frontend_header, MAX_MESSAGE_LEN};
use sluice_protocol_fuzz::check_stream;

/// Body bounds from the message formats page: Sync, Flush, Terminate and CopyDone are empty;
/// messages that carry no user data stay under PostgreSQL's small-message limit.
fn body_bounds(tag: u8) -> (usize, usize) {
    match tag {
        b'S' | b'H' | b'X' | b'c' => (0, 0),
        b'C' | b'D' | b'E' | b'f' | b'p' => (0, 10_000),
        b'Q' => (1, MAX_MESSAGE_LEN),
        _ => (0, MAX_MESSAGE_LEN),
    }
}

fuzz_target!(|data: &[u8]| check_stream(data, frontend_header, body_bounds));
