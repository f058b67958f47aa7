//! Every other body decoder on arbitrary bytes: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::backend::{
    parse_backend_key_data, parse_error_fields, parse_parameter_status,
};
use sluice_protocol::frontend::{parse_password, parse_sasl_initial_response};

fuzz_target!(|body: &[u8]| {
    let _ = parse_parameter_status(body);
    let _ = parse_backend_key_data(body);
    let _ = parse_error_fields(body);
    let _ = parse_password(body);
    let _ = parse_sasl_initial_response(body);
});
