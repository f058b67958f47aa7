//! The exchange model driven by arbitrary client and server messages: each input byte pair
//! is a direction bit with a message type (and, for ReadyForQuery, a status byte). Never
//! panics; refuses what it must; its answers stay consistent: idle implies nothing owed,
//! and a model that went out of sync or refused a message is left as it was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::exchange::{Exchange, Phase};

const FRONTEND: &[u8] = b"QPBDECSHFdcfXp";
const BACKEND: &[u8] = b"123tTnDCIsGHWdcVEZNSAKRv";
const STATUS: &[u8] = b"ITEX";

fuzz_target!(|data: &[u8]| {
    let mut exchange = Exchange::new();
    for pair in data.chunks(2) {
        let choice = pair[0];
        let extra = pair.get(1).copied().unwrap_or(0);
        if choice & 1 == 0 {
            let tag = FRONTEND[usize::from(choice >> 1) % FRONTEND.len()];
            if matches!(tag, b'X' | b'p') {
                let before = exchange.clone();
                assert!(exchange.frontend(tag).is_err(), "accepted '{}'", char::from(tag));
                assert_eq!(before, exchange, "a refused message changed it");
            } else {
                assert!(exchange.frontend(tag).is_ok(), "refused '{}'", char::from(tag));
            }
        } else {
            let tag = BACKEND[usize::from(choice >> 1) % BACKEND.len()];
            let status = STATUS[usize::from(extra) % STATUS.len()];
            let _ = exchange.backend(tag, status);
        }
        if exchange.is_idle() {
            assert!(!exchange.is_busy(), "idle yet owed: {exchange:?}");
            assert!(!exchange.awaits_copy_data());
        }
        if exchange.phase() == Phase::CopyBoth {
            assert!(!exchange.is_idle());
        }
        let _ = exchange.needs_sync();
        let _ = exchange.is_full();
    }
});
