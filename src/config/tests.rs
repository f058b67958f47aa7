//! Tests of loading, environment overrides and validation. Every test that
//! loads runs inside `figment::Jail`, which serializes them and restores the
//! environment, so `SLUICE_*` variables set by one never leak into another.

use std::path::{Path, PathBuf};
use std::time::Duration;

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

#[test]
fn defaults_match_the_documented_values() {
    let config = load_ok("", &[]);
    assert_eq!(config.listen, "127.0.0.1:6432");
    assert_eq!(config.metrics_listen, "127.0.0.1:8067");
    assert_eq!(config.client_login_timeout, Duration::from_secs(15));
    assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
    assert!(config.admins.is_empty() && config.clusters.is_empty() && config.tenants.is_empty());
    let d = &config.defaults;
    assert_eq!(d.pool_mode, PoolMode::Transaction);
    assert_eq!(d.pool_size, 5);
    assert_eq!(d.min_pool_size, 0);
    assert_eq!(d.max_client_connections, 1000);
    assert_eq!(d.query_wait_timeout, Duration::from_secs(30));
    assert_eq!(d.server_connect_timeout, Duration::from_secs(5));
    assert_eq!(d.auth_type, AuthType::ScramSha256);
    assert_eq!(config.defaults, TenantDefaults::default());
    assert!(Config::default().problems().is_empty());
}

#[test]
fn minimal_config_fills_in_cluster_and_tenant_defaults() {
    let config = load_ok(MINIMAL, &[]);
    let main = &config.clusters["main"];
    assert_eq!(
        (main.host.as_str(), main.port, main.max_server_connections),
        ("db.internal", 5432, 80)
    );
    let t = config.tenants[0].effective(&config.defaults);
    assert_eq!(t.database, "acme");
    assert_eq!(t.server_database, "acme");
    assert_eq!(t.server_user, "acme");
    assert_eq!(
        t.server_password.as_ref().map(Secret::expose),
        Some("hunter2")
    );
    assert_eq!(t.pool_size, 5);
    assert_eq!(t.pool_mode, PoolMode::Transaction);
}

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

#[test]
fn every_example_config_loads_and_validates() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(config_dir())
        .expect("config/ exists")
        .map(|entry| entry.expect("readable config/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected sluice.example.toml and minimal.toml, found {files:?}"
    );
    for file in &files {
        if let Err(e) = jailed(|_| Config::load(file)) {
            // Deployment examples point at secrets that exist only where they are
            // deployed; every other problem is a broken example.
            let message = e.to_string();
            let only_missing_secrets = message
                .lines()
                .all(|line| line.contains(": cannot read file ") || line.contains(" is not set ("));
            assert!(
                only_missing_secrets,
                "{} does not load:\n{message}",
                file.display()
            );
        }
    }
}

#[test]
fn full_example_sets_every_key() {
    let config = jailed(|_| Config::load(&config_dir().join("sluice.example.toml")))
        .expect("example is valid");
    assert_eq!(config.admins[0].user, "sluice_admin");
    assert_eq!(config.clusters["replica"].port, 5433);

    let acme = config.tenants[0].effective(&config.defaults);
    assert_eq!(acme.server_database, "acme_prod");
    assert_eq!(acme.pool_size, 10);
    assert_eq!(acme.min_pool_size, 2);
    assert_eq!(acme.max_client_connections, 300);
    assert_eq!(acme.query_wait_timeout, Duration::from_secs(10));
    assert_eq!(acme.server_connect_timeout, Duration::from_secs(3));

    let acme_ro = config.tenants[0]
        .read_only_route(&config.defaults)
        .expect("acme has a read-only route");
    assert_eq!(
        (acme_ro.database.as_str(), acme_ro.cluster.as_str()),
        ("acme-ro", "replica")
    );
    let cloud = &config.clusters["cloud"];
    assert_eq!(cloud.auth_user.as_deref(), Some("pgbouncer"));
    assert_eq!(
        cloud.auth_password.as_ref().map(Secret::expose),
        Some("auth-user-secret")
    );
    assert!(cloud.auth_query.contains("pgbouncer.get_auth($1)"));
    assert_eq!(
        cloud.auth_databases,
        Some(AuthDatabases::Pattern("*".into()))
    );
    assert_eq!(cloud.auth_cache_ttl, Duration::from_secs(30));
    assert_eq!(cloud.auth_cache_size, 10_000);
    assert_eq!(cloud.dynamic_tenant_idle_timeout, Duration::from_secs(3600));
    assert_eq!(
        (
            cloud.read_only_suffix.as_deref(),
            cloud.read_only_cluster.as_deref()
        ),
        (Some("-ro"), Some("cloud_reader"))
    );

    let globex = config.tenants[1].effective(&config.defaults);
    assert_eq!(globex.password.password_kind(), PasswordKind::ScramVerifier);
    assert_eq!(
        globex.server_password.as_ref().map(Secret::expose),
        Some("example-password")
    );
    assert_eq!(globex.pool_size, 5, "inherited from [defaults]");

    let replica = config.tenants[2].effective(&config.defaults);
    assert_eq!(replica.password.password_kind(), PasswordKind::Md5Hash);
    assert_eq!(
        (replica.auth_type, replica.pool_mode),
        (AuthType::Md5, PoolMode::Session)
    );
    assert_eq!(
        (
            replica.server_database.as_str(),
            replica.server_user.as_str()
        ),
        ("globex", "globex")
    );
}

#[test]
fn effective_settings_without_a_plaintext_password_have_no_server_password() {
    let toml = MINIMAL.replace(
        "password = \"hunter2\"",
        "password = \"md5a3556571e93b0d20722ba62be61e8c2d\"\nauth_type = \"md5\"\nserver_user = \"acme_rw\"",
    );
    let config = load_ok(&toml, &[]);
    let t = config.tenants[0].effective(&config.defaults);
    assert_eq!(t.server_password, None);
    assert_eq!(t.server_user, "acme_rw");
    assert_eq!(t.auth_type, AuthType::Md5);
}

#[test]
fn password_kinds_are_recognized_like_postgresql_does() {
    let kind = |s: &str| Secret::literal(s).password_kind();
    assert_eq!(kind("hunter2"), PasswordKind::Plaintext);
    assert_eq!(
        kind("md5a3556571e93b0d20722ba62be61e8c2d"),
        PasswordKind::Md5Hash
    );
    assert_eq!(
        kind("md5a3556571e93b0d20722ba62be61e8c2"),
        PasswordKind::Plaintext,
        "31 hex digits"
    );
    assert_eq!(
        kind("md5a3556571e93b0d20722ba62be61e8c2g"),
        PasswordKind::Plaintext,
        "not hex"
    );
    assert_eq!(
        kind("SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"),
        PasswordKind::ScramVerifier
    );
    let real_verifier =
        sluice_protocol::scram::ScramSecret::from_password("pencil", b"salt", 4096).to_string();
    assert!(Secret::literal(real_verifier).is_well_formed_verifier());
    assert!(
        !Secret::literal("SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy").is_well_formed_verifier(),
        "keys must be 32-byte SHA-256 values"
    );
    for bad in [
        "SCRAM-SHA-256$",
        "SCRAM-SHA-256$0:salt$a:b",
        "SCRAM-SHA-256$4096:salt$ab",
        "SCRAM-SHA-256$x:s$a:b",
    ] {
        assert!(!Secret::literal(bad).is_well_formed_verifier(), "{bad}");
    }
}

#[test]
fn secrets_are_never_printed() {
    let toml = format!("{MINIMAL}server_password = \"upstream-pw\"\n[[admins]]\nuser = \"root\"\npassword = \"admin-pw\"\n");
    let config = load_ok(&toml, &[]);
    for text in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{:?}", config.tenants[0].effective(&config.defaults)),
    ] {
        for secret in ["hunter2", "upstream-pw", "admin-pw"] {
            assert!(!text.contains(secret), "{secret} printed in:\n{text}");
        }
        assert!(text.contains("<redacted>"));
    }
    assert_eq!(config.tenants[0].password.to_string(), "<redacted>");
    assert_eq!(config.tenants[0].password.expose(), "hunter2");
}

#[test]
fn missing_file_is_an_error_naming_the_path() {
    jailed(|jail| {
        let path = jail.directory().join("nope.toml");
        let err = Config::load(&path).expect_err("missing file");
        assert!(matches!(err, ConfigError::Read { .. }));
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("cannot read config file {}: ", path.display())),
            "{message}"
        );
    });
}

#[test]
fn unknown_keys_are_errors_naming_key_and_file() {
    assert_file_error(
        &format!("lisen = \"0.0.0.0:6432\"\n{MINIMAL}"),
        "lisen: unknown key, expected one of `listen`, `metrics_listen`, `client_login_timeout`, \
         `shutdown_timeout`, `client_tls`, `client_tls_cert_file`, `client_tls_key_file`, \
         `admins`, `defaults`, `clusters`, `tenants`",
    );
    let (message, _) = load_err("[defaults]\npool_sise = 3\n", &[]);
    assert!(
        message.starts_with("defaults.pool_sise: unknown key, expected one of `pool_mode`"),
        "{message}"
    );
    let (message, path) = load_err(&format!("{MINIMAL}pasword = \"x\"\n"), &[]);
    assert!(
        message.starts_with("tenants[0].pasword: unknown key"),
        "{message}"
    );
    assert!(
        message.ends_with(&format!("(in {})", path.display())),
        "{message}"
    );
    let (message, _) = load_err("[clusters.main]\nhost = \"db\"\nhots = \"db\"\n", &[]);
    assert!(
        message.starts_with("clusters.main.hots: unknown key"),
        "{message}"
    );
}

#[test]
fn wrong_types_are_errors_naming_key_and_file() {
    assert_file_error(
        "[defaults]\npool_size = \"ten\"\n",
        "defaults.pool_size: invalid type: found string \"ten\", expected u32",
    );
    assert_file_error(
        "[defaults]\npool_mode = \"sometimes\"\n",
        "defaults.pool_mode: unknown value `sometimes`, expected `transaction` or `session`",
    );
    let (message, _) = load_err("client_login_timeout = \"soon\"\n", &[]);
    assert!(message.starts_with("client_login_timeout: "), "{message}");
    assert_file_error(
        &MINIMAL.replace("host = \"db.internal\"", "host = \"db\"\nport = 70000"),
        "clusters.main.port: invalid value signed int `70000`, expected u16",
    );
    assert_file_error(
        "tenants = 5\n",
        "tenants: invalid type: found signed int `5`, expected a sequence",
    );
}

#[test]
fn missing_required_keys_are_named() {
    assert_file_error(
        &MINIMAL.replace("cluster = \"main\"\n", ""),
        "tenants[0].cluster: required key is missing",
    );
    assert_file_error(
        "[clusters.main]\nport = 5432\n",
        "clusters.main.host: required key is missing",
    );
}

#[test]
fn bad_secret_values_are_not_echoed() {
    let (message, _) = load_err(&MINIMAL.replace("\"hunter2\"", "1.5"), &[]);
    assert!(
        message.starts_with(
            "tenants[0].password: invalid value, expected a string, an integer, \
             { env = \"VARIABLE\" } or { file = \"PATH\" }"
        ),
        "{message}"
    );
    assert!(!message.contains("1.5"), "{message}");

    // A TOML syntax error on a password line: no excerpt of the line.
    let (message, path) = load_err(&MINIMAL.replace("\"hunter2\"", "\"hunter2"), &[]);
    assert!(!message.contains("hunter2"), "{message}");
    assert!(
        message.starts_with("TOML parse error at line 9"),
        "{message}"
    );
    assert!(
        message.ends_with(&format!("(in {})", path.display())),
        "{message}"
    );
}

#[test]
fn integer_passwords_in_toml_are_strings() {
    let config = load_ok(&MINIMAL.replace("\"hunter2\"", "12345"), &[]);
    assert_eq!(config.tenants[0].password.expose(), "12345");
}

#[test]
fn validation_errors_name_key_and_file() {
    let tenant = |extra: &str| format!("{MINIMAL}{extra}\n");
    let cases: Vec<(String, &str)> = vec![
        (
            MINIMAL.replace("cluster = \"main\"", "cluster = \"replica\""),
            "tenants[0].cluster: cluster \"replica\" is not defined (defined: main)",
        ),
        (
            format!("{MINIMAL}\n[[tenants]]\ndatabase = \"acme\"\nuser = \"acme\"\ncluster = \"main\"\npassword = \"x\"\n"),
            "tenants[1]: database \"acme\" with user \"acme\" is already defined by tenants[0]",
        ),
        (
            MINIMAL.replace("database = \"acme\"", "database = \"sluice\""),
            "tenants[0].database: \"sluice\" is reserved for the admin console",
        ),
        (
            MINIMAL.replace("database = \"acme\"", "database = \"pgbouncer\""),
            "tenants[0].database: \"pgbouncer\" is reserved for the admin console",
        ),
        (MINIMAL.replace("database = \"acme\"", "database = \"\""), "tenants[0].database: must not be empty"),
        (MINIMAL.replace("user = \"acme\"", "user = \"\""), "tenants[0].user: must not be empty"),
        (MINIMAL.replace("\"hunter2\"", "\"\""), "tenants[0].password: must not be empty"),
        (tenant("server_database = \"\""), "tenants[0].server_database: must not be empty"),
        (tenant("server_user = \"\""), "tenants[0].server_user: must not be empty"),
        (tenant("server_password = \"\""), "tenants[0].server_password: must not be empty"),
        (
            tenant("server_password = \"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\""),
            "tenants[0].server_password: must be the plaintext password: a SCRAM verifier cannot log in",
        ),
        (format!("[defaults]\npool_size = 0\n{MINIMAL}"), "defaults.pool_size: must be at least 1"),
        (tenant("pool_size = 0"), "tenants[0].pool_size: must be at least 1"),
        (
            format!("[defaults]\nmin_pool_size = 6\n{MINIMAL}"),
            "defaults.min_pool_size: 6 is larger than pool_size 5",
        ),
        (tenant("min_pool_size = 6"), "tenants[0].min_pool_size: min_pool_size 6 is larger than pool_size 5"),
        (
            format!("[defaults]\nmin_pool_size = 3\n{}", tenant("pool_size = 2")),
            "tenants[0].pool_size: min_pool_size 3 is larger than pool_size 2",
        ),
        (
            format!("[defaults]\nmax_client_connections = 0\n{MINIMAL}"),
            "defaults.max_client_connections: must be at least 1",
        ),
        (tenant("max_client_connections = 0"), "tenants[0].max_client_connections: must be at least 1"),
        (
            MINIMAL.replace("host = \"db.internal\"", "host = \"db\"\nmax_server_connections = 0"),
            "clusters.main.max_server_connections: must be at least 1",
        ),
        (MINIMAL.replace("host = \"db.internal\"", "host = \"\""), "clusters.main.host: must not be empty"),
        (MINIMAL.replace("host = \"db.internal\"", "host = \"db\"\nport = 0"), "clusters.main.port: must not be 0"),
        (format!("client_login_timeout = \"0s\"\n{MINIMAL}"), "client_login_timeout: must be greater than 0"),
        (format!("shutdown_timeout = \"0ms\"\n{MINIMAL}"), "shutdown_timeout: must be greater than 0"),
        (
            format!("[defaults]\nquery_wait_timeout = \"0s\"\n{MINIMAL}"),
            "defaults.query_wait_timeout: must be greater than 0",
        ),
        (
            format!("[defaults]\nserver_connect_timeout = \"0s\"\n{MINIMAL}"),
            "defaults.server_connect_timeout: must be greater than 0",
        ),
        (tenant("query_wait_timeout = \"0s\""), "tenants[0].query_wait_timeout: must be greater than 0"),
        (tenant("server_connect_timeout = \"0s\""), "tenants[0].server_connect_timeout: must be greater than 0"),
        (
            format!("listen = \"localhost\"\n{MINIMAL}"),
            "listen: \"localhost\" is not host:port (IPv6 hosts in brackets: [::1]:6432)",
        ),
        (
            format!("metrics_listen = \"::1:8067\"\n{MINIMAL}"),
            "metrics_listen: \"::1:8067\" is not host:port (IPv6 hosts in brackets: [::1]:6432)",
        ),
        (
            format!("listen = \"0.0.0.0:http\"\n{MINIMAL}"),
            "listen: \"0.0.0.0:http\" is not host:port (IPv6 hosts in brackets: [::1]:6432)",
        ),
        (
            format!("{MINIMAL}[[admins]]\nuser = \"\"\npassword = \"x\"\n"),
            "admins[0].user: must not be empty",
        ),
        (
            format!("{MINIMAL}[[admins]]\nuser = \"root\"\npassword = \"\"\n"),
            "admins[0].password: must not be empty",
        ),
        (
            format!("{MINIMAL}[[admins]]\nuser = \"root\"\npassword = \"a\"\n[[admins]]\nuser = \"root\"\npassword = \"b\"\n"),
            "admins[1].user: admin \"root\" is already defined by admins[0]",
        ),
        (
            format!("{MINIMAL}[[admins]]\nuser = \"root\"\npassword = \"SCRAM-SHA-256$4096:c2FsdA==\"\n"),
            "admins[0].password: starts like a SCRAM-SHA-256 verifier but is not \
             SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>",
        ),
        (
            MINIMAL.replace("\"hunter2\"", "\"md5a3556571e93b0d20722ba62be61e8c2d\""),
            "tenants[0].password: an md5 hash cannot check a SCRAM-SHA-256 login (auth_type is \
             \"scram-sha-256\"); give the plaintext password or change auth_type",
        ),
        (
            format!(
                "[defaults]\nauth_type = \"md5\"\n{}",
                MINIMAL.replace("\"hunter2\"", "\"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\"")
            ),
            "tenants[0].password: a SCRAM-SHA-256 verifier cannot check an md5 login (auth_type is \
             \"md5\"); give the plaintext password or change auth_type",
        ),
    ];
    for (toml, line) in cases {
        assert_file_error(&toml, line);
    }
}

#[test]
fn valid_addresses_pass() {
    for addr in [
        "0.0.0.0:6432",
        "[::1]:6432",
        "localhost:0",
        "db-1.internal:5432",
    ] {
        let config = load_ok(&format!("listen = \"{addr}\"\n"), &[]);
        assert_eq!(config.listen, addr);
    }
}

#[test]
fn all_validation_problems_are_reported_together() {
    let toml = format!(
        "[defaults]\npool_size = 0\n{}",
        MINIMAL.replace("cluster = \"main\"", "cluster = \"x\"")
    );
    let (message, _) = load_err(&toml, &[]);
    assert_eq!(message.lines().count(), 2, "{message}");
    assert!(
        message.contains("defaults.pool_size: must be at least 1"),
        "{message}"
    );
    assert!(
        message.contains("tenants[0].cluster: cluster \"x\" is not defined"),
        "{message}"
    );
}

#[test]
fn env_overrides_top_level_nested_and_cluster_keys() {
    let config = load_ok(
        MINIMAL,
        &[
            ("SLUICE_LISTEN", "0.0.0.0:6432"),
            ("SLUICE_SHUTDOWN_TIMEOUT", "500ms"),
            ("SLUICE_DEFAULTS__POOL_SIZE", "10"),
            ("SLUICE_DEFAULTS__POOL_MODE", "session"),
            ("SLUICE_CLUSTERS__MAIN__PORT", "5433"),
        ],
    );
    assert_eq!(config.listen, "0.0.0.0:6432");
    assert_eq!(config.shutdown_timeout, Duration::from_millis(500));
    assert_eq!(config.defaults.pool_size, 10);
    assert_eq!(config.defaults.pool_mode, PoolMode::Session);
    assert_eq!(
        config.defaults.max_client_connections, 1000,
        "siblings keep their values"
    );
    let main = &config.clusters["main"];
    assert_eq!(
        (main.host.as_str(), main.port),
        ("db.internal", 5433),
        "host from the file"
    );
}

#[test]
fn env_prefix_is_case_insensitive() {
    let config = load_ok(MINIMAL, &[("sluice_defaults__pool_size", "7")]);
    assert_eq!(config.defaults.pool_size, 7);
}

#[test]
fn sluice_log_is_not_a_config_key() {
    let config = load_ok(MINIMAL, &[("SLUICE_LOG", "debug")]);
    assert_eq!(config.listen, "127.0.0.1:6432");
}

#[test]
fn env_defines_a_new_cluster() {
    let config = load_ok(
        MINIMAL,
        &[
            ("SLUICE_CLUSTERS__REPLICA__HOST", "ro.internal"),
            ("SLUICE_TENANTS__0__CLUSTER", "replica"),
        ],
    );
    assert_eq!(config.clusters["replica"].host, "ro.internal");
    assert_eq!(config.clusters["replica"].port, 5432);
    assert_eq!(config.tenants[0].cluster, "replica");
}

#[test]
fn env_overrides_tenant_and_admin_entries_by_index() {
    let toml = format!("{MINIMAL}[[admins]]\nuser = \"root\"\npassword = \"from-file\"\n");
    let config = load_ok(
        &toml,
        &[
            ("SLUICE_TENANTS__0__PASSWORD", "from-env"),
            ("SLUICE_TENANTS__0__POOL_SIZE", "3"),
            ("SLUICE_ADMINS__0__PASSWORD", "admin-from-env"),
        ],
    );
    let t = &config.tenants[0];
    assert_eq!(
        (t.database.as_str(), t.password.expose(), t.pool_size),
        ("acme", "from-env", Some(3))
    );
    assert_eq!(config.admins[0].user, "root");
    assert_eq!(config.admins[0].password.expose(), "admin-from-env");
}

#[test]
fn numeric_secrets_from_env_keep_their_exact_text() {
    for value in ["12345", "007", "1.50", "true", "[x]", " padded "] {
        let config = load_ok(MINIMAL, &[("SLUICE_TENANTS__0__PASSWORD", value)]);
        assert_eq!(config.tenants[0].password.expose(), value);
    }
}

#[test]
fn env_defines_whole_entries() {
    let config = load_ok(
        MINIMAL,
        &[
            ("SLUICE_TENANTS__1__DATABASE", "beta"),
            ("SLUICE_TENANTS__1__USER", "123"),
            ("SLUICE_TENANTS__1__CLUSTER", "main"),
            ("SLUICE_TENANTS__1__PASSWORD", "pw"),
            ("SLUICE_ADMINS__0__USER", "ops"),
            ("SLUICE_ADMINS__0__PASSWORD", "ops-pw"),
        ],
    );
    assert_eq!(config.tenants.len(), 2);
    assert_eq!(
        (
            config.tenants[1].database.as_str(),
            config.tenants[1].user.as_str()
        ),
        ("beta", "123")
    );
    assert_eq!(config.admins[0].user, "ops");
}

#[test]
fn env_errors_name_the_variable() {
    assert_env_error(
        MINIMAL,
        &[("SLUICE_DEFAULTS__POOL_SIZE", "ten")],
        "defaults.pool_size: invalid type: found string \"ten\", expected u32",
        "from environment variable SLUICE_DEFAULTS__POOL_SIZE",
    );
    assert_env_error(
        MINIMAL,
        &[("SLUICE_DEFAULTS__POOLSIZE", "10")],
        "defaults.poolsize: unknown key, expected one of `pool_mode`, `pool_size`, `min_pool_size`, \
         `reserve_pool_size`, `reserve_pool_timeout`, `max_client_connections`, `query_wait_timeout`, `server_connect_timeout`, `auth_type`, \
         `max_prepared_statements`, `query_timeout`, `idle_transaction_timeout`, \
         `client_idle_timeout`, `server_idle_timeout`, `server_lifetime`",
        "from environment variable SLUICE_DEFAULTS__POOLSIZE",
    );
    assert_env_error(
        MINIMAL,
        &[("SLUICE_DEFAULTS__POOL_SIZE", "0")],
        "defaults.pool_size: must be at least 1",
        "from environment variable SLUICE_DEFAULTS__POOL_SIZE",
    );
    assert_env_error(
        MINIMAL,
        &[("SLUICE_TENANTS__0__PASSWORD", "")],
        "tenants[0].password: must not be empty",
        "from environment variable SLUICE_TENANTS__0__PASSWORD",
    );
    assert_env_error(
        MINIMAL,
        &[("SLUICE_TENANTS__FIRST__PASSWORD", "x")],
        "tenants.first.password: `first` is not an array index",
        "from environment variable SLUICE_TENANTS__FIRST__PASSWORD",
    );
    assert_env_error(
        MINIMAL,
        &[("SLUICE_CLUSTERS__REPLICA__PORT", "5433")],
        "clusters.replica.host: required key is missing",
        "in an entry made by environment variables",
    );
    // The file's own errors still name the file when env touches the array.
    let (message, path) = load_err(
        &MINIMAL.replace(
            "password = \"hunter2\"",
            "password = \"hunter2\"\npool_size = \"x\"",
        ),
        &[("SLUICE_TENANTS__0__USER", "other")],
    );
    assert!(
        message.ends_with(&format!("(in {})", path.display())),
        "{message}"
    );
}

// Secrets given as `{ env = "VAR" }` or `{ file = "PATH" }`.

/// A real SCRAM-SHA-256 verifier (of "example-password").
const VERIFIER: &str = "SCRAM-SHA-256$4096:c2x1aWNlLWV4YW1wbGUtcw==$gzLfRG//1nSZUGpXe9+BcZ87GBufbLZNypLXvGe0fxk=:4TfK7Z2qD2zlW5RiNOznUOozSCSfHEZ/BIsbU1TszJI=";

/// Environment variables a case sets: (name, value).
type EnvVars<'a> = Vec<(&'a str, &'a str)>;

/// Files a case writes next to the config file: (name, content).
type Files<'a> = Vec<(&'a str, &'a [u8])>;

/// [`MINIMAL`] with the tenant's password written as `form`.
fn with_password(form: &str) -> String {
    MINIMAL.replace("\"hunter2\"", form)
}

fn load_files_ok(toml: &str, env: &[(&str, &str)], files: &[(&str, &[u8])]) -> Config {
    match load_with_files(toml, env, files).0 {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// The error message, and the path of the config file (the files are in its
/// directory).
fn load_files_err(toml: &str, env: &[(&str, &str)], files: &[(&str, &[u8])]) -> (String, PathBuf) {
    match load_with_files(toml, env, files) {
        (Ok(config), _) => panic!("expected an error, got {config:#?}"),
        (Err(e), path) => (e.to_string(), path),
    }
}

/// Asserts that loading fails with a line `<line> (<origin>)`; in both,
/// `{dir}` stands for the directory of the files and `{path}` for the config
/// file.
fn assert_secret_error(
    toml: &str,
    env: &[(&str, &str)],
    files: &[(&str, &[u8])],
    line: &str,
    origin: &str,
) {
    let (message, path) = load_files_err(toml, env, files);
    let dir = path.parent().expect("in the jail").display().to_string();
    let path = path.display().to_string();
    let fill = |s: &str| s.replace("{dir}", &dir).replace("{path}", &path);
    let expected = format!("{} ({})", fill(line), fill(origin));
    assert!(
        message.lines().any(|l| l == expected),
        "expected a line\n  {expected}\ngot\n  {message}"
    );
}

#[test]
fn passwords_may_be_literal_or_read_from_env_or_file() {
    let forms: Vec<(&str, EnvVars, Files)> = vec![
        ("\"hunter2\"", vec![], vec![]),
        (
            "{ env = \"ACME_PASSWORD\" }",
            vec![("ACME_PASSWORD", "hunter2")],
            vec![],
        ),
        (
            "{ file = \"acme.secret\" }",
            vec![],
            vec![("acme.secret", b"hunter2\n")],
        ),
        (
            "{ file = \"{dir}/acme.secret\" }",
            vec![],
            vec![("acme.secret", b"hunter2")],
        ),
    ];
    for (form, env, files) in forms {
        let config = load_files_ok(&with_password(form), &env, &files);
        let tenant = config.tenants[0].effective(&config.defaults);
        assert_eq!(tenant.password.expose(), "hunter2", "{form}");
        assert_eq!(tenant.password.password_kind(), PasswordKind::Plaintext);
        assert_eq!(
            tenant.server_password.as_ref().map(Secret::expose),
            Some("hunter2"),
            "a plaintext password read from {form} also logs in to the server"
        );
    }
}

#[test]
fn file_secrets_lose_exactly_one_trailing_newline() {
    let cases: [(&[u8], &str); 9] = [
        (b"hunter2", "hunter2"),
        (b"hunter2\n", "hunter2"),
        (b"hunter2\r\n", "hunter2"),
        (b"hunter2\n\n", "hunter2\n"),
        (b"hunter2\r\n\r\n", "hunter2\r\n"),
        (b"hunter2\r", "hunter2\r"),
        (b" hunter2 \n", " hunter2 "),
        (b"two\nlines\n", "two\nlines"),
        ("pässwörd\n".as_bytes(), "pässwörd"),
    ];
    for (content, expected) in cases {
        let config = load_files_ok(
            &with_password("{ file = \"acme.secret\" }"),
            &[],
            &[("acme.secret", content)],
        );
        assert_eq!(config.tenants[0].password.expose(), expected, "{content:?}");
    }
}

#[test]
fn env_secrets_are_taken_exactly() {
    for value in ["hunter2\n", " padded ", "007"] {
        let config = load_ok(
            &with_password("{ env = \"ACME_PASSWORD\" }"),
            &[("ACME_PASSWORD", value)],
        );
        assert_eq!(config.tenants[0].password.expose(), value);
    }
}

#[test]
fn every_password_key_takes_a_reference() {
    let toml = format!(
        "{}server_password = {{ env = \"ACME_SERVER_PASSWORD\" }}\n\
         [[admins]]\nuser = \"root\"\npassword = {{ env = \"ADMIN_PASSWORD\" }}\n\
         [[admins]]\nuser = \"ops\"\npassword = {{ file = \"ops.secret\" }}\n",
        with_password("{ file = \"client.secret\" }")
    );
    let config = load_files_ok(
        &toml,
        &[
            ("ACME_SERVER_PASSWORD", "upstream"),
            ("ADMIN_PASSWORD", "root-pw"),
        ],
        &[("client.secret", b"client\n"), ("ops.secret", b"ops-pw\n")],
    );
    let tenant = config.tenants[0].effective(&config.defaults);
    assert_eq!(tenant.password.expose(), "client");
    assert_eq!(
        tenant.server_password.as_ref().map(Secret::expose),
        Some("upstream")
    );
    assert_eq!(config.admins[0].password.expose(), "root-pw");
    assert_eq!(config.admins[1].password.expose(), "ops-pw");
}

#[test]
fn verifiers_and_md5_hashes_from_env_and_file_are_classified() {
    let verifier_file = format!("{VERIFIER}\n");
    let config = load_files_ok(
        &with_password("{ file = \"acme.verifier\" }"),
        &[],
        &[("acme.verifier", verifier_file.as_bytes())],
    );
    let tenant = config.tenants[0].effective(&config.defaults);
    assert_eq!(tenant.password.expose(), VERIFIER);
    assert_eq!(tenant.password.password_kind(), PasswordKind::ScramVerifier);
    assert!(tenant.password.is_well_formed_verifier());
    assert_eq!(
        tenant.server_password, None,
        "a verifier cannot log in to the server"
    );

    let toml = format!(
        "[defaults]\nauth_type = \"md5\"\n{}",
        with_password("{ env = \"ACME_MD5\" }")
    );
    let config = load_ok(
        &toml,
        &[("ACME_MD5", "md5a3556571e93b0d20722ba62be61e8c2d")],
    );
    assert_eq!(
        config.tenants[0].password.password_kind(),
        PasswordKind::Md5Hash
    );
}

#[test]
fn sluice_variables_override_and_give_references() {
    // A literal from SLUICE_ replaces the file's reference, which is not read.
    let config = load_ok(
        &with_password("{ file = \"missing.secret\" }"),
        &[("SLUICE_TENANTS__0__PASSWORD", "from-env")],
    );
    assert_eq!(config.tenants[0].password.expose(), "from-env");

    // A reference from SLUICE_ replaces the file's literal.
    let config = load_ok(
        MINIMAL,
        &[
            ("SLUICE_TENANTS__0__PASSWORD__ENV", "ACME_PASSWORD"),
            ("ACME_PASSWORD", "rotated"),
        ],
    );
    assert_eq!(config.tenants[0].password.expose(), "rotated");
    let config = load_files_ok(
        MINIMAL,
        &[
            ("SLUICE_ADMINS__0__USER", "root"),
            ("SLUICE_ADMINS__0__PASSWORD__FILE", "root.secret"),
        ],
        &[("root.secret", b"root-pw\n")],
    );
    assert_eq!(config.admins[0].password.expose(), "root-pw");
}

#[test]
fn each_load_reads_the_secret_file_again() {
    jailed(|jail| {
        let dir = jail.directory().to_owned();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, with_password("{ file = \"acme.secret\" }")).expect("writable");
        std::fs::write(dir.join("acme.secret"), "first\n").expect("writable");
        let before = Config::load(&path).expect("valid");
        std::fs::write(dir.join("acme.secret"), "second\n").expect("writable");
        let after = Config::load(&path).expect("valid");
        assert_eq!(before.tenants[0].password.expose(), "first");
        assert_eq!(after.tenants[0].password.expose(), "second");
        assert_ne!(
            before.tenants[0].effective(&before.defaults),
            after.tenants[0].effective(&after.defaults),
            "a rotated password changes the tenant, so a reload rebuilds it"
        );

        std::fs::remove_file(dir.join("acme.secret")).expect("removable");
        let err = Config::load(&path).expect_err("the file is gone");
        assert!(err.to_string().contains("cannot read file"), "{err}");
    });
}

#[test]
fn same_value_from_another_source_is_an_equal_secret() {
    let literal = load_ok(MINIMAL, &[]);
    let from_env = load_ok(
        &with_password("{ env = \"ACME_PASSWORD\" }"),
        &[("ACME_PASSWORD", "hunter2")],
    );
    assert_eq!(literal.tenants[0].password, from_env.tenants[0].password);
    assert_eq!(
        literal.tenants[0].effective(&literal.defaults),
        from_env.tenants[0].effective(&from_env.defaults)
    );
}

#[test]
fn unreadable_secrets_are_errors_naming_key_and_source() {
    let in_file = "in {path}";
    let env = "{ env = \"ACME_PASSWORD\" }";
    let file = "{ file = \"acme.secret\" }";
    let too_large = vec![b'a'; 64 * 1024 + 1];
    let cases: Vec<(String, EnvVars, Files, &str)> = vec![
        (
            with_password(env),
            vec![],
            vec![],
            "tenants[0].password: environment variable ACME_PASSWORD is not set",
        ),
        (
            with_password(env),
            vec![("ACME_PASSWORD", "")],
            vec![],
            "tenants[0].password: environment variable ACME_PASSWORD is empty",
        ),
        (
            with_password("{ env = \"\" }"),
            vec![],
            vec![],
            "tenants[0].password: `env` must not be empty",
        ),
        (
            with_password("{ env = \"A=B\" }"),
            vec![],
            vec![],
            "tenants[0].password: \"A=B\" is not a valid environment variable name",
        ),
        (
            with_password(file),
            vec![],
            vec![],
            "tenants[0].password: cannot read file {dir}/acme.secret: \
             No such file or directory (os error 2)",
        ),
        (
            with_password("{ file = \"{dir}/missing\" }"),
            vec![],
            vec![],
            "tenants[0].password: cannot read file {dir}/missing: \
             No such file or directory (os error 2)",
        ),
        (
            with_password("{ file = \"{dir}\" }"),
            vec![],
            vec![],
            "tenants[0].password: cannot read file {dir}: Is a directory (os error 21)",
        ),
        (
            with_password(file),
            vec![],
            vec![("acme.secret", b"")],
            "tenants[0].password: file {dir}/acme.secret is empty",
        ),
        (
            with_password(file),
            vec![],
            vec![("acme.secret", b"\r\n")],
            "tenants[0].password: file {dir}/acme.secret is empty",
        ),
        (
            with_password(file),
            vec![],
            vec![("acme.secret", b"hunter\xff2")],
            "tenants[0].password: file {dir}/acme.secret is not valid UTF-8",
        ),
        (
            with_password(file),
            vec![],
            vec![("acme.secret", &too_large)],
            "tenants[0].password: file {dir}/acme.secret is larger than 65536 bytes",
        ),
        (
            with_password("{ file = \"\" }"),
            vec![],
            vec![],
            "tenants[0].password: `file` must not be empty",
        ),
        (
            with_password("{ envv = \"ACME_PASSWORD\" }"),
            vec![],
            vec![],
            "tenants[0].password.envv: unknown key, expected `env` or `file`",
        ),
        (
            with_password("{ env = \"ACME_PASSWORD\", value = \"hunter2\" }"),
            vec![("ACME_PASSWORD", "x")],
            vec![],
            "tenants[0].password.value: unknown key, expected `env` or `file`",
        ),
        (
            with_password("{ env = \"ACME_PASSWORD\", file = \"acme.secret\" }"),
            vec![],
            vec![],
            "tenants[0].password: give either `env` or `file`, not both",
        ),
        (
            with_password("{}"),
            vec![],
            vec![],
            "tenants[0].password: a table must name where the password is: \
             { env = \"VARIABLE\" } or { file = \"PATH\" }",
        ),
        (
            format!("{MINIMAL}server_password = {{ env = \"UPSTREAM\" }}\n"),
            vec![],
            vec![],
            "tenants[0].server_password: environment variable UPSTREAM is not set",
        ),
        (
            format!(
                "{MINIMAL}[[admins]]\nuser = \"root\"\npassword = {{ file = \"root.secret\" }}\n"
            ),
            vec![],
            vec![],
            "admins[0].password: cannot read file {dir}/root.secret: \
             No such file or directory (os error 2)",
        ),
        (
            format!(
                "{MINIMAL}\n[[tenants]]\ndatabase = \"b\"\nuser = \"b\"\ncluster = \"main\"\n\
                 password = {{ env = \"ACME_PASSWORD\" }}\n"
            ),
            vec![],
            vec![],
            "tenants[1].password: environment variable ACME_PASSWORD is not set",
        ),
    ];
    for (toml, env, files, line) in cases {
        assert_secret_error(&toml, &env, &files, line, in_file);
    }

    // The largest file accepted.
    let largest = vec![b'a'; 64 * 1024];
    let config = load_files_ok(&with_password(file), &[], &[("acme.secret", &largest)]);
    assert_eq!(config.tenants[0].password.expose().len(), 64 * 1024);
}

#[test]
fn references_given_by_sluice_variables_name_that_variable() {
    assert_secret_error(
        MINIMAL,
        &[("SLUICE_TENANTS__0__PASSWORD__ENV", "ACME_PASSWORD")],
        &[],
        "tenants[0].password: environment variable ACME_PASSWORD is not set",
        "from environment variable SLUICE_TENANTS__0__PASSWORD__ENV",
    );
    assert_secret_error(
        MINIMAL,
        &[(
            "SLUICE_TENANTS__0__SERVER_PASSWORD__FILE",
            "upstream.secret",
        )],
        &[("upstream.secret", b"\n")],
        "tenants[0].server_password: file {dir}/upstream.secret is empty",
        "from environment variable SLUICE_TENANTS__0__SERVER_PASSWORD__FILE",
    );
    assert_secret_error(
        MINIMAL,
        &[("SLUICE_TENANTS__0__PASSWORD__ENVV", "ACME_PASSWORD")],
        &[],
        "tenants[0].password.envv: unknown key, expected `env` or `file`",
        "from environment variable SLUICE_TENANTS__0__PASSWORD__ENVV",
    );
}

#[test]
fn rules_broken_by_values_read_from_references_name_the_reference() {
    assert_secret_error(
        &format!("{MINIMAL}server_password = {{ env = \"UPSTREAM\" }}\n"),
        &[("UPSTREAM", VERIFIER)],
        &[],
        "tenants[0].server_password: must be the plaintext password: a SCRAM verifier cannot log in",
        "value from environment variable UPSTREAM, in {path}",
    );
    assert_secret_error(
        &with_password("{ file = \"acme.secret\" }"),
        &[],
        &[("acme.secret", b"md5a3556571e93b0d20722ba62be61e8c2d\n")],
        "tenants[0].password: an md5 hash cannot check a SCRAM-SHA-256 login (auth_type is \
         \"scram-sha-256\"); give the plaintext password or change auth_type",
        "value from file {dir}/acme.secret, in {path}",
    );
    assert_secret_error(
        &format!("{MINIMAL}[[admins]]\nuser = \"root\"\npassword = {{ file = \"root.secret\" }}\n"),
        &[],
        &[("root.secret", b"SCRAM-SHA-256$4096:c2FsdA==\n")],
        "admins[0].password: starts like a SCRAM-SHA-256 verifier but is not \
         SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>",
        "value from file {dir}/root.secret, in {path}",
    );
    assert_secret_error(
        MINIMAL,
        &[
            ("SLUICE_TENANTS__0__SERVER_PASSWORD__ENV", "UPSTREAM"),
            ("UPSTREAM", VERIFIER),
        ],
        &[],
        "tenants[0].server_password: must be the plaintext password: a SCRAM verifier cannot log in",
        "value from environment variable UPSTREAM, \
         from environment variable SLUICE_TENANTS__0__SERVER_PASSWORD__ENV",
    );
}

#[test]
fn unreadable_secrets_and_broken_rules_are_reported_together() {
    let toml = format!(
        "[defaults]\npool_size = 0\n{}server_password = {{ file = \"upstream.secret\" }}\n\
         [[admins]]\nuser = \"root\"\npassword = {{ env = \"ADMIN_PASSWORD\" }}\n",
        with_password("{ env = \"ACME_PASSWORD\" }")
    );
    let (message, _) = load_files_err(&toml, &[], &[]);
    assert_eq!(message.lines().count(), 4, "{message}");
    for start in [
        "admins[0].password: environment variable ADMIN_PASSWORD is not set",
        "tenants[0].password: environment variable ACME_PASSWORD is not set",
        "tenants[0].server_password: cannot read file ",
        "defaults.pool_size: must be at least 1",
    ] {
        assert!(
            message.lines().any(|line| line.starts_with(start)),
            "{start}\nnot in\n{message}"
        );
    }
}

#[test]
fn secrets_from_env_and_file_are_never_printed() {
    let toml = format!(
        "{}server_password = {{ file = \"upstream.secret\" }}\n\
         [[admins]]\nuser = \"root\"\npassword = {{ env = \"ADMIN_PASSWORD\" }}\n",
        with_password("{ env = \"ACME_PASSWORD\" }")
    );
    let config = load_files_ok(
        &toml,
        &[
            ("ACME_PASSWORD", "client-pw"),
            ("ADMIN_PASSWORD", "admin-pw"),
        ],
        &[("upstream.secret", b"upstream-pw\n")],
    );
    let tenant = config.tenants[0].effective(&config.defaults);
    for text in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{tenant:?}"),
        config.tenants[0].password.to_string(),
        config.admins[0].password.to_string(),
        format!("{}", tenant.server_password.as_ref().expect("set")),
    ] {
        for secret in ["client-pw", "upstream-pw", "admin-pw"] {
            assert!(!text.contains(secret), "{secret} printed in:\n{text}");
        }
        assert!(text.contains("<redacted>"), "{text}");
    }
    assert_eq!(format!("{:?}", config.admins[0].password), "<redacted>");
}

#[test]
fn failing_loads_never_print_secret_values() {
    // Every secret below contains "leak"; every load fails. Some fail on the
    // secret itself, others elsewhere with secrets already read.
    let md5 = "md5a3556571e93b0d20722ba62be61e8c2d";
    let big = "leak".repeat(20_000);
    let cases: Vec<(String, EnvVars, Files)> = vec![
        (
            with_password("{ file = \"acme.secret\" }"),
            vec![],
            vec![("acme.secret", b"SCRAM-SHA-256$4096:leak\n")],
        ),
        (
            with_password("{ env = \"ACME_PASSWORD\" }"),
            vec![("ACME_PASSWORD", "SCRAM-SHA-256$leak")],
            vec![],
        ),
        (
            with_password("{ env = \"ACME_PASSWORD\" }"),
            vec![("ACME_PASSWORD", md5)],
            vec![],
        ),
        (
            format!("{MINIMAL}server_password = {{ file = \"upstream.secret\" }}\n"),
            vec![],
            vec![("upstream.secret", VERIFIER.as_bytes())],
        ),
        (
            with_password("{ file = \"acme.secret\" }"),
            vec![],
            vec![("acme.secret", big.as_bytes())],
        ),
        (
            with_password("{ file = \"acme.secret\" }"),
            vec![],
            vec![("acme.secret", b"leak\xff\n")],
        ),
        (
            with_password("{ env = \"ACME_PASSWORD\", file = \"acme.secret\" }"),
            vec![("ACME_PASSWORD", "leak-env")],
            vec![("acme.secret", b"leak-file")],
        ),
        (
            format!(
                "[defaults]\npool_size = 0\n{}server_password = {{ env = \"UPSTREAM\" }}\n\
                 [[admins]]\nuser = \"root\"\npassword = {{ file = \"root.secret\" }}\n",
                with_password("{ file = \"acme.secret\" }")
            ),
            vec![("UPSTREAM", "leak-upstream")],
            vec![
                ("acme.secret", b"leak-client\n"),
                ("root.secret", b"leak-admin\n"),
            ],
        ),
        (
            MINIMAL.replace("cluster = \"main\"", "cluster = \"x\""),
            vec![
                ("SLUICE_TENANTS__0__PASSWORD__ENV", "ACME_PASSWORD"),
                ("ACME_PASSWORD", "leak-via-sluice"),
            ],
            vec![],
        ),
        (
            MINIMAL.to_owned(),
            vec![("SLUICE_TENANTS__0__SERVER_PASSWORD", "SCRAM-SHA-256$leak")],
            vec![],
        ),
    ];
    for (toml, env, files) in cases {
        let (result, _) = load_with_files(&toml, &env, &files);
        let err = result.expect_err("every case fails");
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains("leak"), "a secret in:\n{text}");
            assert!(!text.contains(md5), "a secret in:\n{text}");
            assert!(!text.contains("gzLfRG"), "a secret in:\n{text}");
        }
    }
}

/// A cluster with dynamic tenants and a reader, and a configured tenant.
const AUTH_QUERY: &str = r#"
[clusters.main]
host = "db.internal"
auth_user = "pgbouncer"
auth_password = "auth-secret"
auth_databases = "*"
read_only_suffix = "-ro"
read_only_cluster = "reader"

[clusters.reader]
host = "reader.internal"
"#;

#[test]
fn auth_query_keys_have_documented_defaults() {
    let config = load_ok(AUTH_QUERY, &[]);
    let main = &config.clusters["main"];
    assert_eq!(main.auth_query, DEFAULT_AUTH_QUERY);
    assert_eq!(main.auth_cache_ttl, Duration::from_secs(30));
    assert_eq!(main.auth_cache_size, 10_000);
    assert_eq!(main.dynamic_tenant_idle_timeout, Duration::from_secs(3600));
    assert!(main.auth_databases.as_ref().unwrap().matches("anything"));
    assert!(!config.clusters["reader"].has_auth_query());
    let list = load_ok(
        &AUTH_QUERY.replace("auth_databases = \"*\"", "auth_databases = [\"a\", \"b\"]"),
        &[],
    );
    let databases = list.clusters["main"].auth_databases.clone().unwrap();
    assert!(databases.matches("b") && !databases.matches("c"));
}

#[test]
fn auth_query_keys_come_together() {
    let toml = AUTH_QUERY.replace("auth_password = \"auth-secret\"\n", "");
    assert_file_error(
        &toml,
        "clusters.main.auth_password: is required with auth_user, auth_password and auth_databases (dynamic tenants)",
    );
    let toml = AUTH_QUERY.replace("auth_databases = \"*\"\n", "");
    assert_file_error(
        &toml,
        "clusters.main.auth_databases: is required with auth_user, auth_password and auth_databases (dynamic tenants)",
    );
    let toml = AUTH_QUERY.replace("read_only_cluster = \"reader\"\n", "");
    assert_file_error(
        &toml,
        "clusters.main.read_only_cluster: is required with read_only_suffix",
    );
    let toml = AUTH_QUERY.replace("\"reader\"\n", "\"nowhere\"\n");
    assert_file_error(
        &toml,
        "clusters.main.read_only_cluster: cluster \"nowhere\" is not defined",
    );
}

#[test]
fn auth_query_values_are_checked() {
    let toml = AUTH_QUERY.replace("auth_databases = \"*\"", "auth_databases = \"cloud_*\"");
    assert_file_error(
        &toml,
        "clusters.main.auth_databases: \"cloud_*\" is neither \"*\" nor a list of database names",
    );
    let toml = AUTH_QUERY.replace(
        "auth_databases = \"*\"",
        "auth_databases = \"*\"\nauth_query = \"SELECT usename, passwd FROM pg_shadow\"\nauth_cache_size = 0",
    );
    assert_file_error(
        &toml,
        "clusters.main.auth_query: must take the user name as parameter $1",
    );
    assert_file_error(&toml, "clusters.main.auth_cache_size: must be at least 1");
    let verifier = format!("auth_password = \"{VERIFIER}\"");
    let toml = AUTH_QUERY.replace("auth_password = \"auth-secret\"", &verifier);
    assert_file_error(
        &toml,
        "clusters.main.auth_password: must be the plaintext password (or an md5 hash): a SCRAM verifier cannot log in",
    );
    let toml = AUTH_QUERY.replace("auth_databases = \"*\"", "auth_databases = [\"sluice\"]");
    assert_file_error(
        &toml,
        "clusters.main.auth_databases: \"sluice\" is reserved for the admin console",
    );
}

#[test]
fn a_database_is_claimed_by_one_cluster_only() {
    let second = r#"
[clusters.other]
host = "other.internal"
auth_user = "pgbouncer"
auth_password = "auth-secret"
auth_databases = "*"
"#;
    assert_file_error(
        &format!("{AUTH_QUERY}{second}"),
        "clusters.other.auth_databases: database \"*\" is already claimed by cluster \"main\"",
    );
    let lists = format!("{AUTH_QUERY}{second}")
        .replace("auth_databases = \"*\"", "auth_databases = [\"x\", \"y\"]");
    assert_file_error(
        &lists,
        "clusters.other.auth_databases: database \"x\" is already claimed by cluster \"main\"",
    );
}

#[test]
fn auth_password_takes_a_reference() {
    let toml = AUTH_QUERY.replace(
        "auth_password = \"auth-secret\"",
        "auth_password = { env = \"AUTH_USER_PASSWORD\" }",
    );
    let config = load_ok(&toml, &[("AUTH_USER_PASSWORD", "from-env")]);
    let password = config.clusters["main"].auth_password.as_ref().unwrap();
    assert_eq!(password.expose(), "from-env");
    let (message, _) = load_err(&toml, &[]);
    assert!(
        message.contains(
            "clusters.main.auth_password: environment variable AUTH_USER_PASSWORD is not set"
        ),
        "{message}"
    );
}

#[test]
fn read_only_routes_of_configured_tenants() {
    let toml = format!(
        "{MINIMAL}read_only_database = \"acme-ro\"\nread_only_cluster = \"reader\"\n\n[clusters.reader]\nhost = \"reader.internal\"\n"
    );
    let config = load_ok(&toml, &[]);
    let route = config.tenants[0]
        .read_only_route(&config.defaults)
        .expect("a read-only route");
    assert_eq!(
        (
            route.database.as_str(),
            route.cluster.as_str(),
            route.server_database.as_str()
        ),
        ("acme-ro", "reader", "acme")
    );
    assert_eq!(route.password, config.tenants[0].password);
    assert_file_error(
        &format!("{MINIMAL}read_only_database = \"acme-ro\"\n"),
        "tenants[0].read_only_cluster: is required with read_only_database",
    );
    let clash = format!("{MINIMAL}read_only_database = \"acme\"\nread_only_cluster = \"main\"\n");
    assert_file_error(
        &clash,
        "tenants[0]: database \"acme\" with user \"acme\" is already defined by tenants[0]",
    );
}
