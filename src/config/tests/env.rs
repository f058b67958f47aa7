//! `SLUICE_*` environment variables: overrides, new entries, and errors naming the variable.

use super::*;

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
         `max_prepared_statements`, `query_timeout`, `query_cancel_grace`, `session_state`, `pinned_idle_timeout`, `idle_transaction_timeout`, \
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
