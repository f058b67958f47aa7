//! Loading: one TOML file, then `SLUICE_*` environment overrides, through
//! figment; figment's errors reworded as `key: message (source)`. Then the
//! secrets given as `{ env = .. }` or `{ file = .. }` are read (see
//! `secret.rs`), and the result is validated.
//!
//! Environment variables are read by [`EnvOverrides`] rather than figment's
//! own `Env` provider, which differs in two ways that matter here:
//! - values stay the exact strings given (figment's `Env` parses them, so
//!   `SLUICE_..._PASSWORD=007` would become the integer 7 and `1.50` the float
//!   1.5). Numbers, booleans and enums are read from those strings by
//!   figment's lossy extraction;
//! - a numeric segment indexes into the `admins` and `tenants` arrays
//!   (`SLUICE_TENANTS__0__PASSWORD`), where figment's `Env` would replace the
//!   whole array with a map and fail.
//!
//! Key names come from figment's `Env::prefixed("SLUICE_").split("__")`: the
//! prefix is matched case-insensitively, the rest is lowercased and `__`
//! separates nesting levels (single `_` belongs to key names like `pool_size`).
//! `SLUICE_LOG` (the log filter) is not a configuration key and is skipped.

use std::fs;
use std::path::Path;

use figment::error::{Kind, OneOf};
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::error::{Problem, Problems, ValueSource, ARRAY_KEYS, ENV_PREFIX};
use super::{Config, ConfigError, Origin, Secret};

/// The metadata name of [`EnvOverrides`], used to tell which errors came
/// from the environment.
const ENV_SOURCE_NAME: &str = "environment variables";

/// `SLUICE_*` variables that are not configuration keys (after the prefix,
/// lowercased): `SLUICE_LOG` is the log filter `main` reads.
const NOT_CONFIG_KEYS: [&str; 1] = ["log"];

/// Highest array index an environment variable may use; bounds the entries
/// a stray variable can make us allocate.
const MAX_ENV_INDEX: usize = 100_000;

impl Config {
    /// Reads the TOML file at `path`, applies `SLUICE_*` environment
    /// overrides (`SLUICE_LISTEN`, `SLUICE_DEFAULTS__POOL_SIZE`,
    /// `SLUICE_CLUSTERS__MAIN__PORT`, `SLUICE_TENANTS__0__PASSWORD`), and
    /// validates the result.
    ///
    /// Every secret given as `{ env = "VAR" }` or `{ file = "PATH" }` is read
    /// now (relative paths from the directory of `path`), so each load sees
    /// rotated values.
    ///
    /// A missing file is an error. Unknown keys, wrong types and missing
    /// required keys are errors naming the key and the file or variable, and
    /// so is a secret that cannot be read (naming its variable or file too).
    /// Secrets that cannot be read and rules the values break are all reported
    /// together.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file = Figment::from(Toml::string(&text));
        let base = file
            .data()
            .map_err(|e| parse_error(e, path))?
            .remove(&Profile::Default)
            .unwrap_or_default();
        let env = EnvOverrides::from_process_env(&base);
        let env_keys = env.vars.iter().map(|(key, _)| key.clone()).collect();
        let mut config: Config = file
            .merge(env)
            .extract_lossy()
            .map_err(|e| parse_error(e, path))?;
        config.origin = Origin {
            file: path.to_owned(),
            env_keys,
        };
        let mut problems = config.resolve_secrets(path.parent().unwrap_or(Path::new("")));
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(Problems(problems)))
        }
    }

    /// Reads the value of every secret given as `{ env = .. }` or
    /// `{ file = .. }`, relative paths from `base`; one problem per secret
    /// that cannot be read. A secret that failed keeps an empty value, which
    /// validation leaves alone.
    fn resolve_secrets(&mut self, base: &Path) -> Vec<Problem> {
        let key = |array: &str, i: usize, field: &str| {
            vec![array.to_owned(), i.to_string(), field.to_owned()]
        };
        let mut secrets: Vec<(Vec<String>, &mut Secret)> = Vec::new();
        for (i, admin) in self.admins.iter_mut().enumerate() {
            secrets.push((key("admins", i, "password"), &mut admin.password));
        }
        for (i, tenant) in self.tenants.iter_mut().enumerate() {
            secrets.push((key("tenants", i, "password"), &mut tenant.password));
            if let Some(server_password) = &mut tenant.server_password {
                secrets.push((key("tenants", i, "server_password"), server_password));
            }
        }
        for (name, cluster) in &mut self.clusters {
            if let Some(auth_password) = &mut cluster.auth_password {
                let path = vec![
                    "clusters".to_owned(),
                    name.clone(),
                    "auth_password".to_owned(),
                ];
                secrets.push((path, auth_password));
            }
        }
        let origin = &self.origin;
        secrets
            .into_iter()
            .filter_map(|(path, secret)| {
                let message = secret.resolve(base).err()?;
                Some(Problem::new(
                    &path,
                    message,
                    &origin.secret_source_of(&path),
                ))
            })
            .collect()
    }
}

/// A snapshot of the `SLUICE_*` variables as (dotted lowercase key, raw
/// value), plus the file's data so that array entries can be overridden.
struct EnvOverrides<'a> {
    vars: Vec<(String, String)>,
    base: &'a Dict,
}

impl<'a> EnvOverrides<'a> {
    fn from_process_env(base: &'a Dict) -> Self {
        let vars = Env::prefixed(ENV_PREFIX)
            .split("__")
            .ignore(&NOT_CONFIG_KEYS)
            .iter()
            .map(|(key, value)| (key.into_string(), value))
            .collect();
        EnvOverrides { vars, base }
    }
}

impl Provider for EnvOverrides<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE_NAME)
    }

    /// The overrides as one nested dictionary. An array that a variable
    /// indexes is copied from the file (values keep their file tags, so
    /// errors in them still name the file) and the variable is set inside it.
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (key, raw) in &self.vars {
            let path: Vec<&str> = key.split('.').collect();
            let Some((top, rest)) = path.split_first() else {
                continue;
            };
            let child = root.entry((*top).to_owned()).or_insert_with(|| {
                if ARRAY_KEYS.contains(top) {
                    let from_file = self.base.get(*top).cloned();
                    from_file.unwrap_or_else(|| Value::from(Vec::<Value>::new()))
                } else {
                    Value::from(Dict::new())
                }
            });
            set_path(child, rest, Value::from(raw.as_str()))
                .map_err(|message| figment::Error::from(message).with_path(key))?;
        }
        Ok(Profile::Default.collect(root))
    }
}

/// Sets `value` at `path` below `node`, creating dictionaries on the way,
/// indexing arrays with numeric segments (growing them as needed), and
/// replacing any scalar in the way (extraction then reports the type error).
fn set_path(node: &mut Value, path: &[&str], value: Value) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        *node = value;
        return Ok(());
    };
    match node {
        Value::Array(_, items) => {
            let index: usize = first
                .parse()
                .map_err(|_| format!("`{first}` is not an array index"))?;
            if index > MAX_ENV_INDEX {
                return Err(format!(
                    "array index {index} is larger than {MAX_ENV_INDEX}"
                ));
            }
            if index >= items.len() {
                items.resize(index + 1, Value::from(Dict::new()));
            }
            set_path(&mut items[index], rest, value)
        }
        Value::Dict(_, dict) => {
            let child = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            set_path(child, rest, value)
        }
        _ => {
            *node = Value::from(Dict::new());
            set_path(node, path, value)
        }
    }
}

/// Rewords figment's errors: the key in TOML notation, the source, no
/// secret values, and no source-line excerpts (they may hold a password).
fn parse_error(error: figment::Error, file: &Path) -> ConfigError {
    ConfigError::Parse(Problems(
        error.into_iter().map(|e| problem(e, file)).collect(),
    ))
}

fn problem(error: figment::Error, file: &Path) -> Problem {
    let from_env = error
        .metadata
        .as_ref()
        .is_some_and(|md| md.name == ENV_SOURCE_NAME);
    let mut path = error.path;
    let mut source = if from_env {
        ValueSource::Env
    } else {
        ValueSource::File(file)
    };
    // A password, or a key inside a password's `{ env, file }` table.
    let is_secret = path.iter().any(|key| key.ends_with("password"));
    let message = match error.kind {
        Kind::MissingField(name) => {
            path.push(name.into_owned());
            if from_env {
                source = ValueSource::EnvEntry;
            }
            "required key is missing".to_owned()
        }
        Kind::UnknownField(_, expected) => format!("unknown key, expected {}", OneOf(expected)),
        Kind::UnknownVariant(found, expected) => {
            format!("unknown value `{found}`, expected {}", OneOf(expected))
        }
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) if is_secret => {
            format!("invalid value, expected {expected}")
        }
        Kind::Message(message) if path.is_empty() => toml_syntax_summary(&message),
        kind => kind.to_string(),
    };
    Problem::new(&path, message, &source)
}

/// `TOML parse error at line 3, column 12: invalid basic string`, without
/// the excerpt of the offending line that the TOML parser adds.
fn toml_syntax_summary(message: &str) -> String {
    let is_excerpt = |line: &str| {
        let line = line.trim_start();
        let after_number = line.trim_start_matches(|c: char| c.is_ascii_digit());
        line.is_empty() || after_number.starts_with('|') || after_number.starts_with(" |")
    };
    message
        .lines()
        .filter(|line| !is_excerpt(line))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(": ")
}
