//! `ConfigError`: why a configuration was rejected, worded for the operator.
//!
//! Every problem names the key (`tenants[2].cluster`) and where its value came
//! from (`in /etc/sluice.toml`, or `from environment variable SLUICE_...`).
//! Messages never contain a secret's value.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::Origin;

/// The prefix of environment variables that override configuration keys.
pub(super) const ENV_PREFIX: &str = "SLUICE_";

/// The top-level keys holding arrays (`[[admins]]`, `[[tenants]]`).
pub(super) const ARRAY_KEYS: [&str; 2] = ["admins", "tenants"];

/// A configuration that could not be loaded or is not valid. `Display` is
/// meant to be shown to the operator as it is: one problem per line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable).
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not TOML, or a key is unknown, missing or of the wrong type.
    #[error("{0}")]
    Parse(Problems),
    /// The values parse but break a rule (see `validate.rs`).
    #[error("{0}")]
    Invalid(Problems),
}

/// One or more problems, each naming its key and source.
#[derive(Debug)]
pub struct Problems(pub(super) Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One problem: `key: message (origin)`.
#[derive(Debug)]
pub(super) struct Problem {
    key: String,
    message: String,
    origin: String,
}

impl Problem {
    /// A problem with the value at `path` (segments as in the TOML document,
    /// array indexes as numbers), whose value came from `source`.
    pub(super) fn new(path: &[String], message: String, source: &ValueSource<'_>) -> Self {
        let origin = match source {
            ValueSource::File(file) => format!("in {}", display_file(file)),
            ValueSource::Env => format!("from environment variable {}", env_var(path)),
            ValueSource::EnvVar(name) => format!("from environment variable {name}"),
            ValueSource::EnvEntry => "in an entry made by environment variables".to_owned(),
        };
        Problem {
            key: display_key(path),
            message,
            origin,
        }
    }

    /// A problem with the value of a secret read from `reference` (`file
    /// /run/secrets/acme`), which the configuration named at `path`:
    /// `key: message (value from <reference>, <origin>)`.
    pub(super) fn with_reference(
        path: &[String],
        message: String,
        reference: &str,
        source: &ValueSource<'_>,
    ) -> Self {
        let mut problem = Problem::new(path, message, source);
        problem.origin = format!("value from {reference}, {}", problem.origin);
        problem
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{} ({})", self.message, self.origin)
        } else {
            write!(f, "{}: {} ({})", self.key, self.message, self.origin)
        }
    }
}

/// Where one value came from.
pub(super) enum ValueSource<'a> {
    /// The configuration file.
    File(&'a Path),
    /// The environment variable named after the value's key.
    Env,
    /// The named environment variable (one below the value's key:
    /// `SLUICE_TENANTS__0__PASSWORD__FILE` for `tenants[0].password`).
    EnvVar(String),
    /// Missing from an array entry or cluster that only environment
    /// variables define.
    EnvEntry,
}

impl Origin {
    /// Where the value at `path` of a loaded configuration came from.
    pub(super) fn source_of(&self, path: &[String]) -> ValueSource<'_> {
        if self.env_keys.contains(&path.join(".")) {
            ValueSource::Env
        } else {
            ValueSource::File(&self.file)
        }
    }

    /// Where the secret at `path` came from: like [`Origin::source_of`], but
    /// a reference table set by a variable below the key
    /// (`SLUICE_TENANTS__0__PASSWORD__ENV`) names that variable.
    pub(super) fn secret_source_of(&self, path: &[String]) -> ValueSource<'_> {
        let key = path.join(".");
        if self.env_keys.contains(&key) {
            return ValueSource::Env;
        }
        for field in ["env", "file"] {
            if self.env_keys.contains(&format!("{key}.{field}")) {
                let mut path = path.to_vec();
                path.push(field.to_owned());
                return ValueSource::EnvVar(env_var(&path));
            }
        }
        ValueSource::File(&self.file)
    }
}

fn display_file(file: &Path) -> String {
    if file.as_os_str().is_empty() {
        "the built-in defaults".to_owned()
    } else {
        file.display().to_string()
    }
}

/// `tenants.2.cluster` -> `tenants[2].cluster`. Only `admins` and `tenants`
/// are arrays; other numeric segments (a cluster named `1`) stay keys.
pub(super) fn display_key(path: &[String]) -> String {
    let mut key = String::new();
    for (i, segment) in path.iter().enumerate() {
        let is_index = i == 1
            && ARRAY_KEYS.contains(&path[0].as_str())
            && segment.bytes().all(|b| b.is_ascii_digit());
        if is_index {
            key.push('[');
            key.push_str(segment);
            key.push(']');
        } else {
            if i > 0 {
                key.push('.');
            }
            key.push_str(segment);
        }
    }
    key
}

/// The environment variable that sets the key at `path`.
fn env_var(path: &[String]) -> String {
    format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase())
}
