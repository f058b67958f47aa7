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

    /// For a [`PasswordKind::ScramVerifier`], whether it has the shape
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` with a
    /// positive iteration count and no empty part. The base64 inside is
    /// checked where the verifier is used.
    pub(super) fn is_well_formed_verifier(&self) -> bool {
        let Some(rest) = self.0.strip_prefix(SCRAM_PREFIX) else {
            return false;
        };
        let Some((iter_salt, keys)) = rest.split_once('$') else {
            return false;
        };
        let well_formed_pair = |s: &str| {
            s.split_once(':')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(':'))
        };
        let iterations_ok = iter_salt
            .split_once(':')
            .and_then(|(iterations, _)| iterations.parse::<u32>().ok())
            .is_some_and(|n| n > 0);
        iterations_ok && well_formed_pair(iter_salt) && well_formed_pair(keys)
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
