//! The PostgreSQL wire protocol as sluice needs it: bounded framing, the startup-phase
//! packets, the login-phase messages of both directions, and SCRAM-SHA-256 / md5
//! authentication. No I/O: callers hand in buffered bytes and get back views into them, or
//! hand in a `BytesMut` to append encoded messages to.
//!
//! Every decoder checks lengths against a limit before anything is allocated or waited for,
//! returns `Ok(None)` for incomplete input, and never panics on any input.
//! Protocol reference: <https://www.postgresql.org/docs/current/protocol.html>.

#![forbid(unsafe_code)]

pub mod backend;
mod codec;
pub mod error;
pub mod exchange;
pub mod extended;
pub mod frame;
pub mod frontend;
pub mod md5;
pub mod scram;
pub mod sql;
pub mod startup;

#[cfg(test)]
mod differential_tests;
#[cfg(test)]
mod smoke_tests;
#[cfg(test)]
mod test_support;

pub use error::ProtocolError;
