//! `parse_auth_request` on an arbitrary Authentication message body: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::backend::parse_auth_request;

fuzz_target!(|body: &[u8]| {
    let _ = parse_auth_request(body);
});
