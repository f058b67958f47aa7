//! `parse_initial_packet` on arbitrary bytes: never panics, never consumes more than it has.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::frame::MAX_LOGIN_MESSAGE_LEN;
use sluice_protocol::startup::{parse_initial_packet, InitialPacket};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((packet, consumed))) = parse_initial_packet(data) {
        assert!(consumed <= data.len());
        assert!(consumed <= MAX_LOGIN_MESSAGE_LEN + 4);
        if let InitialPacket::Startup(startup) = packet {
            assert!(!startup.user().is_empty());
        }
    }
});
