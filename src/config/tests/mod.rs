//! Tests of loading, environment overrides and validation, by topic. Every test that
//! loads runs inside `figment::Jail`, which serializes them and restores the
//! environment, so `SLUICE_*` variables set by one never leak into another. This module
//! holds the helpers they share.

mod auth_query;
mod env;
mod file;
mod secrets;

use std::path::{Path, PathBuf};

use figment::Jail;

use super::*;

/// One cluster and one tenant: the smallest valid file.
const MINIMAL: &str = r#"
[clusters.main]
host = "db.internal"

[[tenants]]
database = "acme"
user = "acme"
cluster = "main"
password = "hunter2"
"#;

/// Runs `f` inside a `figment::Jail`: a fresh current directory, and
/// environment changes undone afterwards, one jail at a time.
// The closure's error type is `figment::Error`, fixed by `Jail`.
#[allow(clippy::result_large_err)]
fn jailed<T>(f: impl FnOnce(&mut Jail) -> T) -> T {
    let mut out = None;
    Jail::expect_with(|jail| {
        out = Some(f(jail));
        Ok(())
    });
    out.expect("Jail::expect_with ran the closure")
}

/// Writes `toml` to a file in a fresh jail, sets `env` and loads the file.
/// Returns the result and the file's path.
fn load(toml: &str, env: &[(&str, &str)]) -> (Result<Config, ConfigError>, PathBuf) {
    load_with_files(toml, env, &[])
}

/// Like [`load`], after writing `files` (name, content) next to the config
/// file; `{dir}` in `toml` stands for their directory.
fn load_with_files(
    toml: &str,
    env: &[(&str, &str)],
    files: &[(&str, &[u8])],
) -> (Result<Config, ConfigError>, PathBuf) {
    jailed(|jail| {
        let dir = jail.directory().to_owned();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).expect("jail directory is writable");
        }
        let path = dir.join("sluice.toml");
        let toml = toml.replace("{dir}", &dir.display().to_string());
        std::fs::write(&path, toml).expect("jail directory is writable");
        for (key, value) in env {
            jail.set_env(key, value);
        }
        (Config::load(&path), path)
    })
}

fn load_ok(toml: &str, env: &[(&str, &str)]) -> Config {
    match load(toml, env).0 {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// The error message, and the path of the file it should name.
fn load_err(toml: &str, env: &[(&str, &str)]) -> (String, PathBuf) {
    match load(toml, env) {
        (Ok(config), _) => panic!("expected an error, got {config:#?}"),
        (Err(e), path) => (e.to_string(), path),
    }
}

/// Asserts that loading fails with a line `<line> (in <file>)`.
fn assert_file_error(toml: &str, line: &str) {
    let (message, path) = load_err(toml, &[]);
    let expected = format!("{line} (in {})", path.display());
    assert!(
        message.lines().any(|l| l == expected),
        "expected a line\n  {expected}\ngot\n  {message}"
    );
}

/// Asserts that loading with `env` fails with `<line> (<origin>)`.
fn assert_env_error(toml: &str, env: &[(&str, &str)], line: &str, origin: &str) {
    let (message, _) = load_err(toml, env);
    let expected = format!("{line} ({origin})");
    assert!(
        message.lines().any(|l| l == expected),
        "expected a line\n  {expected}\ngot\n  {message}"
    );
}

/// A real SCRAM-SHA-256 verifier (of "example-password").
const VERIFIER: &str = "SCRAM-SHA-256$4096:c2x1aWNlLWV4YW1wbGUtcw==$gzLfRG//1nSZUGpXe9+BcZ87GBufbLZNypLXvGe0fxk=:4TfK7Z2qD2zlW5RiNOznUOozSCSfHEZ/BIsbU1TszJI=";
