//! What every client connection goes through, whatever it turns out to be (a tenant's
//! client, an admin, a cancel request): its first packets and TLS (`startup`), proving who
//! it is (`auth`), and the errors it can end with, classified once with the SQLSTATE and
//! text it sees (`error`).
//!
//! Shared by the tenant sessions and the admin console, which know nothing of each other.

mod auth;
mod error;
mod startup;

pub use auth::{negotiate_version, prove};
pub use error::{report_error, ErrorKind, SessionError};
pub use startup::{read_opening, Opening};
