//! How sluice takes a `std::sync::Mutex`: one rule for lock poisoning, everywhere.
//!
//! sluice's critical sections only read, assign or move values; none calls out to code that
//! could panic half-way through an update. A panic while a lock is held (a bug) therefore
//! leaves the data behind it consistent, and taking the lock anyway keeps every other session
//! running, where propagating the poison would turn one panicking task into a process-wide
//! outage. Owns nothing else; depends on nothing in the crate.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering the guard of a poisoned lock (see the module docs for why).
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
