//! A `ScramClient` fed two arbitrary server messages (split at the first NUL): never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::scram::ScramClient;

fuzz_target!(|data: &[u8]| {
    let mut client = ScramClient::new("pencil", b"fixed nonce");
    let (first, last) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    // A huge iteration count would only make the run slow, not find a bug.
    let huge_iteration_count = String::from_utf8_lossy(first).split(',').any(|attribute| {
        attribute
            .strip_prefix("i=")
            .and_then(|count| count.parse::<u64>().ok())
            .is_some_and(|count| count > 10_000)
    });
    if huge_iteration_count {
        return;
    }
    if client.server_first(first).is_ok() {
        let _ = client.server_final(last);
    }
});
