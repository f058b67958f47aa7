//! End-to-end tests that measure time or memory: the real `sluice` binary and a throwaway
//! PostgreSQL, as in `main.rs`, but in a test binary of their own (cargo runs test binaries
//! one after another) and one test at a time, so that the load of the rest of the suite
//! does not skew what they measure.
#![forbid(unsafe_code)]

// Shared with the main test binary, which uses the rest of them.
#[allow(dead_code)]
mod common;
mod harness;
#[allow(dead_code)]
mod raw;

mod scale;
mod timing;

use tokio::sync::{Mutex, MutexGuard};

/// Held for the whole of each test: they run one at a time. An async lock, as it is held
/// across awaits, and one that a failed test does not poison.
async fn alone() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::const_new(());
    ALONE.lock().await
}
