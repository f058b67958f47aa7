//! A `ScramServer` fed two arbitrary client messages (split at the first NUL): never panics,
//! and never reports a ClientKey without a valid proof.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::scram::{ScramSecret, ScramServer};

/// "pencil" with one PBKDF2 iteration, so runs stay fast.
const SECRET: &str = "SCRAM-SHA-256$1:c2FsdA==$Otk5kdnAo/6UDUcm0KaO+uESed84FVLF7Qg4N9v1MRA=:Uc4DDcQRN5WJ44eNiyKPEO+MJvVo84Ucr4WI9nixz60=";

fuzz_target!(|data: &[u8]| {
    let secret = ScramSecret::parse(SECRET).expect("valid secret");
    let mut server = ScramServer::new(secret, b"fixed nonce");
    let (first, last) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    if server.client_first(first).is_ok() {
        let verified = server.client_final(last).is_ok();
        assert_eq!(verified, server.client_key().is_some());
    }
});
