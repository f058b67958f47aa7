//! Unpredictable bytes from the operating system, for SCRAM nonces and salts, md5 salts
//! and the cancel keys sluice hands to clients.
//!
//! A leaf.

use ring::rand::{SecureRandom, SystemRandom};

/// Fills an array from the system's CSPRNG.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .expect("the operating system's random source failed");
    out
}
