//! `Secret`: a password or password hash from the configuration that never
//! reaches a log line.
//!
//! `Debug` and `Display` print `<redacted>`; the only way to the value is
//! [`Secret::expose`], so every use of the plaintext is greppable. A secret
//! deserializes from a string or an integer (`password = 12345` in TOML), or
//! from a table naming where the value is kept:
//!
//! - `{ env = "ACME_PASSWORD" }`: the value of an environment variable;
//! - `{ file = "/run/secrets/acme" }`: the content of a file (a Kubernetes or
//!   Docker secret mount) without one trailing newline (`\n` or `\r\n`).
//!
//! A reference is read by [`Secret::resolve`], which `Config::load` calls for
//! every secret, so each load (and each SIGHUP reload) reads the variable or
//! file again. [`Secret::password_kind`] tells a plaintext password from the
//! stored forms PostgreSQL itself accepts in `pg_authid.rolpassword`, whatever
//! form the value was given in.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
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

/// Longest secret file read, in bytes. Verifiers are about 130 bytes; the
/// bound keeps a mistaken path (`/dev/zero`, a log file) from eating memory.
pub(super) const MAX_SECRET_FILE_LEN: u64 = 64 * 1024;

/// A configuration value that must never be printed.
///
/// Equality compares the values only, not where they came from (for telling
/// configurations apart on reload: a rotated file makes its tenant differ). It
/// is plain string comparison, not constant-time, so never use it to check
/// what a client sent.
#[derive(Clone)]
pub struct Secret {
    /// The value; empty until a reference is resolved.
    value: String,
    source: SecretSource,
}

/// Where a secret's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SecretSource {
    /// Written in the configuration itself (the file or a `SLUICE_` variable).
    Literal,
    /// `{ env = "NAME" }`.
    Env(String),
    /// `{ file = "PATH" }`; after resolving, the path that was read (relative
    /// paths joined to the configuration file's directory).
    File(PathBuf),
}

impl Secret {
    /// A secret given as its value.
    pub(super) fn literal(value: impl Into<String>) -> Secret {
        Secret {
            value: value.into(),
            source: SecretSource::Literal,
        }
    }

    /// A secret obtained at run time rather than from the configuration (a password
    /// looked up with `auth_query`).
    pub fn from_value(value: impl Into<String>) -> Secret {
        Secret::literal(value)
    }

    /// The secret value itself. Do not log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Whether this is a plaintext password, a SCRAM verifier or an md5 hash.
    /// Anything that is not exactly one of the two stored forms is plaintext,
    /// as in PostgreSQL.
    pub fn password_kind(&self) -> PasswordKind {
        let s = self.value.as_str();
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
        sluice_protocol::scram::ScramSecret::parse(&self.value).is_ok()
    }

    /// True for a secret written as its value rather than a reference.
    pub(super) fn is_literal(&self) -> bool {
        self.source == SecretSource::Literal
    }

    /// Where the value was read from, for messages: `environment variable
    /// ACME_PASSWORD` or `file /run/secrets/acme`; `None` for a literal.
    pub(super) fn reference(&self) -> Option<String> {
        match &self.source {
            SecretSource::Literal => None,
            SecretSource::Env(name) => Some(format!("environment variable {name}")),
            SecretSource::File(path) => Some(format!("file {}", path.display())),
        }
    }

    /// Reads the value a reference names; a literal is left as it is.
    /// Relative file paths are taken from `base`, the configuration file's
    /// directory. A variable that is not set, a file that cannot be read, and
    /// an empty value are errors. The message names the variable or file and
    /// never contains the value.
    pub(super) fn resolve(&mut self, base: &Path) -> Result<(), String> {
        match &mut self.source {
            SecretSource::Literal => Ok(()),
            SecretSource::Env(name) => {
                self.value = read_env(name)?;
                Ok(())
            }
            SecretSource::File(path) => {
                if path.as_os_str().is_empty() {
                    return Err("`file` must not be empty".to_owned());
                }
                if path.is_relative() {
                    *path = base.join(&*path);
                }
                self.value = read_file(path)?;
                Ok(())
            }
        }
    }
}

/// The value of environment variable `name`, which must be set, UTF-8 and
/// not empty.
fn read_env(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("`env` must not be empty".to_owned());
    }
    if name.contains(['=', '\0']) {
        return Err(format!(
            "\"{name}\" is not a valid environment variable name"
        ));
    }
    let value =
        std::env::var_os(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
    let value = value
        .into_string()
        .map_err(|_| format!("environment variable {name} is not valid UTF-8"))?;
    if value.is_empty() {
        return Err(format!("environment variable {name} is empty"));
    }
    Ok(value)
}

/// The content of the file at `path` without one trailing `\n` or `\r\n`;
/// it must be UTF-8, not empty, and at most [`MAX_SECRET_FILE_LEN`] bytes.
fn read_file(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let read = |path: &Path| -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        File::open(path)?
            .take(MAX_SECRET_FILE_LEN + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = read(path).map_err(|e| format!("cannot read file {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_LEN {
        return Err(format!(
            "file {shown} is larger than {MAX_SECRET_FILE_LEN} bytes"
        ));
    }
    let mut text =
        String::from_utf8(bytes).map_err(|_| format!("file {shown} is not valid UTF-8"))?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    if text.is_empty() {
        return Err(format!("file {shown} is empty"));
    }
    Ok(text)
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for Secret {}

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

/// The table form of a secret: exactly one of the two keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reference {
    env: Option<String>,
    file: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer, { env = \"VARIABLE\" } or { file = \"PATH\" }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::literal(v))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret::literal(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret::literal(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret::literal(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Secret, A::Error> {
                let reference = Reference::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let source = match (reference.env, reference.file) {
                    (Some(name), None) => SecretSource::Env(name),
                    (None, Some(path)) => SecretSource::File(path),
                    (Some(_), Some(_)) => {
                        return Err(de::Error::custom("give either `env` or `file`, not both"))
                    }
                    (None, None) => {
                        return Err(de::Error::custom(
                            "a table must name where the password is: \
                             { env = \"VARIABLE\" } or { file = \"PATH\" }",
                        ))
                    }
                };
                Ok(Secret {
                    value: String::new(),
                    source,
                })
            }
        }

        deserializer.deserialize_any(SecretVisitor)
    }
}
