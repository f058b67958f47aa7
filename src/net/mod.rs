//! Sockets as sluice uses them on both sides of the proxy: a [`Stream`] that is plain TCP or
//! TLS, and bounded reads of whole messages for the phases that must understand every message
//! (logins, resets, lookups).
//!
//! A leaf above the protocol crate: it knows nothing of clients, servers or tenants.

mod stream;
mod wire;

pub use stream::Stream;
pub use wire::{flush, read_message, ReadError};
