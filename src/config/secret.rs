//! `Secret`: a password or password hash from the configuration that never
//! reaches a log line.
//!
//! `Debug` and `Display` print `<redacted>`; the only way to the value is
//! [`Secret::expose`], so every use of the plaintext is greppable. A secret
//! deserializes from a string or an integer (`password = 12345` in TOML), and
//! [`Secret::password_kind`] tells a plaintext password from the stored forms
//! PostgreSQL itself accepts in `pg_authid.rolpassword`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// What a password string holds, recognized the way PostgreSQL does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordKind {
    /// The password itself.
    Plaintext,
    /// A SCRAM-SHA-256 verifier:
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    ScramVerifier,
    /// An md5 hash: `md5` followed by 32 hex digits of md5(password || user).
    Md5Hash,
}

/// The prefix of a SCRAM-SHA-256 verifier as PostgreSQL stores it.
const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// A configuration value that must never be printed.
///
/// Equality is plain string comparison (for telling configurations apart on
/// reload); it is not constant-time, so never use it to check what a client
/// sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    /// The secret value itself. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether this is a plaintext password, a SCRAM verifier or an md5 hash.
    /// Anything that is not exactly one of the two stored forms is plaintext,
    /// as in PostgreSQL.
    pub fn password_kind(&self) -> PasswordKind {
        let s = self.0.as_str();
        if s.starts_with(SCRAM_PREFIX) {
            PasswordKind::ScramVerifier
        } else if s.len() == 35
            && s.starts_with("md5")
            && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
        {
            PasswordKind::Md5Hash
        } else {
            PasswordKind::Plaintext
        }
    }

    /// True when the secret parses as a SCRAM-SHA-256 verifier, with the same parser
    /// that later checks logins against it.
    pub(super) fn is_well_formed_verifier(&self) -> bool {
        sluice_protocol::scram::ScramSecret::parse(&self.0).is_ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        impl Visitor<'_> for SecretVisitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }

        deserializer.deserialize_any(SecretVisitor)
    }
}
