//! The `auth_*` and read-only keys of dynamic tenants: defaults, validation, references.

use super::*;

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
