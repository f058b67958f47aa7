//! Loading a file: defaults, the example configurations, errors naming the key and the
//! file, and the validation rules.

use std::time::Duration;

use super::*;

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
        // Durations long enough to overflow the clock's arithmetic.
        (
            format!("[defaults]\nquery_timeout = \"600000000years\"\n{MINIMAL}"),
            "defaults.query_timeout: must be at most 100 years",
        ),
        (tenant("idle_transaction_timeout = \"18446744073709551615s\""), "tenants[0].idle_transaction_timeout: must be at most 100 years"),
        (format!("shutdown_timeout = \"200years\"\n{MINIMAL}"), "shutdown_timeout: must be at most 100 years"),
        (
            MINIMAL.replace("host = \"db.internal\"", "host = \"db\"\nserver_tcp_keepalive = \"1000years\""),
            "clusters.main.server_tcp_keepalive: must be at most 100 years",
        ),
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
