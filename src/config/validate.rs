//! Validation: the rules a parsed configuration must follow before
//! sluice serves with it. All problems are reported at once, each naming its
//! key and where the value came from.
//!
//! Pure: reads the parsed configuration, reads no file or variable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::error::Problem;
use super::{
    AuthDatabases, AuthType, ClientTlsMode, Config, Origin, PasswordKind, Secret, ServerTlsMode,
    TenantConfig,
};

/// The longest any duration setting may be: 100 years, far beyond any useful timeout and
/// far below what would overflow `Instant` arithmetic (which panics).
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Database names that reach the admin console instead of a tenant.
const RESERVED_DATABASES: [&str; 2] = ["sluice", "pgbouncer"];

impl Config {
    /// Every rule this configuration breaks that no type can express: references
    /// between sections, uniqueness, ranges, address syntax, and that passwords suit
    /// the authentication they are used with. [`Config::load`] reports them.
    pub(super) fn problems(&self) -> Vec<Problem> {
        let mut check = Checker {
            origin: &self.origin,
            problems: Vec::new(),
        };
        check.top_level(self);
        check.admins(self);
        check.defaults(self);
        check.clusters(self);
        check.auth_queries(self);
        for (i, tenant) in self.tenants.iter().enumerate() {
            check.tenant(self, i, tenant);
        }
        check.unique_tenants(self);
        check.problems
    }
}

/// Collects problems while walking the configuration.
struct Checker<'a> {
    origin: &'a Origin,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn fail(&mut self, path: &[&str], message: String) {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        let source = self.origin.source_of(&path);
        self.problems.push(Problem::new(&path, message, &source));
    }

    /// A problem with a secret's value: when it was read from a variable or
    /// file, the message names that too.
    fn fail_secret(&mut self, path: &[&str], secret: &Secret, message: String) {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        let source = self.origin.secret_source_of(&path);
        let problem = match secret.reference() {
            Some(reference) => Problem::with_reference(&path, message, &reference, &source),
            None => Problem::new(&path, message, &source),
        };
        self.problems.push(problem);
    }

    /// A secret written as its value must not be empty. One read from a
    /// variable or file is never empty: reading it checked that, and one that
    /// could not be read has been reported already.
    fn secret_non_empty(&mut self, path: &[&str], secret: &Secret) {
        if secret.is_literal() && secret.expose().is_empty() {
            self.fail_secret(path, secret, "must not be empty".to_owned());
        }
    }

    fn non_empty(&mut self, path: &[&str], value: &str) {
        if value.is_empty() {
            self.fail(path, "must not be empty".to_owned());
        }
    }

    fn at_least_one(&mut self, path: &[&str], value: u32) {
        if value == 0 {
            self.fail(path, "must be at least 1".to_owned());
        }
    }

    /// Durations must stay far from what would overflow the clock's arithmetic.
    fn bounded(&mut self, path: &[&str], value: Duration) {
        if value > MAX_DURATION {
            self.fail(path, "must be at most 100 years".to_owned());
        }
    }

    fn positive(&mut self, path: &[&str], value: Duration) {
        if value.is_zero() {
            self.fail(path, "must be greater than 0".to_owned());
        }
    }

    fn address(&mut self, path: &[&str], value: &str) {
        if let Err(message) = check_address(value) {
            self.fail(path, message);
        }
    }

    /// A SCRAM verifier must at least have PostgreSQL's shape.
    fn verifier_shape(&mut self, path: &[&str], secret: &Secret) {
        if secret.password_kind() == PasswordKind::ScramVerifier
            && !secret.is_well_formed_verifier()
        {
            self.fail_secret(
                path,
                secret,
                "starts like a SCRAM-SHA-256 verifier but is not \
                 SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
                    .to_owned(),
            );
        }
    }

    fn top_level(&mut self, config: &Config) {
        self.address(&["listen"], &config.listen);
        self.address(&["metrics_listen"], &config.metrics_listen);
        self.positive(&["client_login_timeout"], config.client_login_timeout);
        self.positive(&["shutdown_timeout"], config.shutdown_timeout);
        self.bounded(&["client_login_timeout"], config.client_login_timeout);
        self.bounded(&["shutdown_timeout"], config.shutdown_timeout);
        if config.client_tls != ClientTlsMode::Disable {
            for (key, file) in [
                ("client_tls_cert_file", &config.client_tls_cert_file),
                ("client_tls_key_file", &config.client_tls_key_file),
            ] {
                if file.is_none() {
                    self.fail(
                        &[key],
                        "is required when client_tls is not \"disable\"".to_owned(),
                    );
                }
            }
        }
    }

    fn admins(&mut self, config: &Config) {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (index, admin) in config.admins.iter().enumerate() {
            let i = index.to_string();
            self.non_empty(&["admins", &i, "user"], &admin.user);
            self.secret_non_empty(&["admins", &i, "password"], &admin.password);
            self.verifier_shape(&["admins", &i, "password"], &admin.password);
            if let Some(&first) = seen.get(admin.user.as_str()) {
                let message = format!(
                    "admin \"{}\" is already defined by admins[{first}]",
                    admin.user
                );
                self.fail(&["admins", &i, "user"], message);
            } else {
                seen.insert(&admin.user, index);
            }
        }
    }

    fn defaults(&mut self, config: &Config) {
        let d = &config.defaults;
        self.at_least_one(&["defaults", "pool_size"], d.pool_size);
        if d.min_pool_size > d.pool_size {
            let message = format!(
                "{} is larger than pool_size {}",
                d.min_pool_size, d.pool_size
            );
            self.fail(&["defaults", "min_pool_size"], message);
        }
        self.at_least_one(
            &["defaults", "max_client_connections"],
            d.max_client_connections,
        );
        self.positive(&["defaults", "query_wait_timeout"], d.query_wait_timeout);
        self.positive(
            &["defaults", "server_connect_timeout"],
            d.server_connect_timeout,
        );
        for (name, value) in [
            ("reserve_pool_timeout", d.reserve_pool_timeout),
            ("query_wait_timeout", d.query_wait_timeout),
            ("server_connect_timeout", d.server_connect_timeout),
            ("query_timeout", d.query_timeout),
            ("query_cancel_grace", d.query_cancel_grace),
            ("pinned_idle_timeout", d.pinned_idle_timeout),
            ("idle_transaction_timeout", d.idle_transaction_timeout),
            ("client_idle_timeout", d.client_idle_timeout),
            ("server_idle_timeout", d.server_idle_timeout),
            ("server_lifetime", d.server_lifetime),
        ] {
            self.bounded(&["defaults", name], value);
        }
    }

    fn clusters(&mut self, config: &Config) {
        for (name, cluster) in &config.clusters {
            if name.is_empty() {
                self.fail(&["clusters"], "a cluster name must not be empty".to_owned());
            }
            self.non_empty(&["clusters", name, "host"], &cluster.host);
            if cluster.port == 0 {
                self.fail(&["clusters", name, "port"], "must not be 0".to_owned());
            }
            self.at_least_one(
                &["clusters", name, "max_server_connections"],
                cluster.max_server_connections,
            );
            for (key, value) in [
                ("server_tcp_keepalive", cluster.server_tcp_keepalive),
                ("server_tcp_user_timeout", cluster.server_tcp_user_timeout),
                ("auth_cache_ttl", cluster.auth_cache_ttl),
                (
                    "dynamic_tenant_idle_timeout",
                    cluster.dynamic_tenant_idle_timeout,
                ),
            ] {
                self.bounded(&["clusters", name, key], value);
            }
            let verifies = matches!(
                cluster.tls,
                ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull
            );
            if verifies && cluster.tls_ca_file.is_none() {
                self.fail(
                    &["clusters", name, "tls_ca_file"],
                    "is required with tls = \"verify-ca\" or \"verify-full\"".to_owned(),
                );
            }
        }
    }

    fn tenant(&mut self, config: &Config, i: usize, tenant: &TenantConfig) {
        let i = i.to_string();
        let key = |field: &'static str| ["tenants", i.as_str(), field];

        self.non_empty(&key("database"), &tenant.database);
        if RESERVED_DATABASES.contains(&tenant.database.as_str()) {
            let message = format!("\"{}\" is reserved for the admin console", tenant.database);
            self.fail(&key("database"), message);
        }
        self.non_empty(&key("user"), &tenant.user);
        self.secret_non_empty(&key("password"), &tenant.password);
        self.verifier_shape(&key("password"), &tenant.password);
        if !config.clusters.contains_key(&tenant.cluster) {
            let defined: Vec<&str> = config.clusters.keys().map(String::as_str).collect();
            let defined = if defined.is_empty() {
                "no clusters are defined".to_owned()
            } else {
                format!("defined: {}", defined.join(", "))
            };
            let message = format!("cluster \"{}\" is not defined ({defined})", tenant.cluster);
            self.fail(&key("cluster"), message);
        }

        match (&tenant.read_only_database, &tenant.read_only_cluster) {
            (Some(database), Some(cluster)) => {
                self.non_empty(&key("read_only_database"), database);
                if RESERVED_DATABASES.contains(&database.as_str()) {
                    let message = format!("\"{database}\" is reserved for the admin console");
                    self.fail(&key("read_only_database"), message);
                }
                if !config.clusters.contains_key(cluster) {
                    let message = format!("cluster \"{cluster}\" is not defined");
                    self.fail(&key("read_only_cluster"), message);
                }
            }
            (Some(_), None) => self.fail(
                &key("read_only_cluster"),
                "is required with read_only_database".to_owned(),
            ),
            (None, Some(_)) => self.fail(
                &key("read_only_database"),
                "is required with read_only_cluster".to_owned(),
            ),
            (None, None) => {}
        }
        if let Some(server_database) = &tenant.server_database {
            self.non_empty(&key("server_database"), server_database);
        }
        if let Some(server_user) = &tenant.server_user {
            self.non_empty(&key("server_user"), server_user);
        }
        if let Some(server_password) = &tenant.server_password {
            self.secret_non_empty(&key("server_password"), server_password);
            if server_password.password_kind() == PasswordKind::ScramVerifier {
                let message = "must be the plaintext password: a SCRAM verifier cannot log in";
                self.fail_secret(&key("server_password"), server_password, message.to_owned());
            }
        }

        if let Some(pool_size) = tenant.pool_size {
            self.at_least_one(&key("pool_size"), pool_size);
        }
        if let Some(max) = tenant.max_client_connections {
            self.at_least_one(&key("max_client_connections"), max);
        }
        if let Some(timeout) = tenant.query_wait_timeout {
            self.positive(&key("query_wait_timeout"), timeout);
        }
        if let Some(timeout) = tenant.server_connect_timeout {
            self.positive(&key("server_connect_timeout"), timeout);
        }
        for (name, value) in [
            ("reserve_pool_timeout", tenant.reserve_pool_timeout),
            ("query_wait_timeout", tenant.query_wait_timeout),
            ("server_connect_timeout", tenant.server_connect_timeout),
            ("query_timeout", tenant.query_timeout),
            ("query_cancel_grace", tenant.query_cancel_grace),
            ("pinned_idle_timeout", tenant.pinned_idle_timeout),
            ("idle_transaction_timeout", tenant.idle_transaction_timeout),
            ("client_idle_timeout", tenant.client_idle_timeout),
            ("server_idle_timeout", tenant.server_idle_timeout),
            ("server_lifetime", tenant.server_lifetime),
        ] {
            if let Some(value) = value {
                self.bounded(&key(name), value);
            }
        }

        let settings = tenant.effective(&config.defaults);
        if settings.min_pool_size > settings.pool_size {
            // Name the key this tenant set; with neither overridden,
            // `defaults` has already been reported.
            let field = match (tenant.min_pool_size, tenant.pool_size) {
                (Some(_), _) => Some("min_pool_size"),
                (None, Some(_)) => Some("pool_size"),
                (None, None) => None,
            };
            if let Some(field) = field {
                let message = format!(
                    "min_pool_size {} is larger than pool_size {}",
                    settings.min_pool_size, settings.pool_size
                );
                self.fail(&key(field), message);
            }
        }

        let mismatch = match (settings.auth_type, settings.password.password_kind()) {
            (AuthType::ScramSha256, PasswordKind::Md5Hash) => {
                Some("an md5 hash cannot check a SCRAM-SHA-256 login")
            }
            (AuthType::Md5, PasswordKind::ScramVerifier) => {
                Some("a SCRAM-SHA-256 verifier cannot check an md5 login")
            }
            _ => None,
        };
        if let Some(mismatch) = mismatch {
            let auth_type = match settings.auth_type {
                AuthType::ScramSha256 => "scram-sha-256",
                AuthType::Md5 => "md5",
            };
            let message = format!(
                "{mismatch} (auth_type is \"{auth_type}\"); give the plaintext password or change auth_type"
            );
            self.fail_secret(&key("password"), &tenant.password, message);
        }
    }

    /// Every (database, user) pair, read-only routes included, is defined once.
    fn unique_tenants(&mut self, config: &Config) {
        let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (i, tenant) in config.tenants.iter().enumerate() {
            let read_only = tenant.read_only_database.as_deref();
            for database in std::iter::once(tenant.database.as_str()).chain(read_only) {
                let pair = (database, tenant.user.as_str());
                if let Some(&first) = seen.get(&pair) {
                    let message = format!(
                        "database \"{database}\" with user \"{}\" is already defined by tenants[{first}]",
                        tenant.user
                    );
                    self.fail(&["tenants", &i.to_string()], message);
                } else {
                    seen.insert(pair, i);
                }
            }
        }
    }

    /// The `auth_*` keys of each cluster: all of auth_user, auth_password and
    /// auth_databases or none; a database claimed by one cluster only; read-only
    /// patterns pointing at a defined cluster.
    fn auth_queries(&mut self, config: &Config) {
        let mut claimed: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, cluster) in &config.clusters {
            let key = |field: &'static str| ["clusters", name.as_str(), field];
            let given = [
                ("auth_user", cluster.auth_user.is_some()),
                ("auth_password", cluster.auth_password.is_some()),
                ("auth_databases", cluster.auth_databases.is_some()),
            ];
            if given.iter().any(|(_, set)| *set) {
                for (field, set) in given {
                    if !set {
                        let message =
                            "is required with auth_user, auth_password and auth_databases (dynamic tenants)";
                        self.fail(&key(field), message.to_owned());
                    }
                }
            }
            if let Some(user) = &cluster.auth_user {
                self.non_empty(&key("auth_user"), user);
            }
            if let Some(password) = &cluster.auth_password {
                self.secret_non_empty(&key("auth_password"), password);
                if password.password_kind() == PasswordKind::ScramVerifier {
                    let message = "must be the plaintext password (or an md5 hash): a SCRAM verifier cannot log in";
                    self.fail_secret(&key("auth_password"), password, message.to_owned());
                }
            }
            if !cluster.auth_query.contains("$1") {
                self.fail(
                    &key("auth_query"),
                    "must take the user name as parameter $1".to_owned(),
                );
            }
            self.at_least_one(&key("auth_cache_size"), cluster.auth_cache_size);
            self.positive(
                &key("dynamic_tenant_idle_timeout"),
                cluster.dynamic_tenant_idle_timeout,
            );
            match &cluster.auth_databases {
                Some(AuthDatabases::Pattern(pattern)) if pattern != AuthDatabases::ALL => {
                    let message =
                        format!("\"{pattern}\" is neither \"*\" nor a list of database names");
                    self.fail(&key("auth_databases"), message);
                }
                Some(AuthDatabases::List(names)) if names.is_empty() => {
                    self.fail(&key("auth_databases"), "must not be empty".to_owned());
                }
                _ => {}
            }
            let databases: Vec<&str> = match &cluster.auth_databases {
                Some(AuthDatabases::Pattern(pattern)) => vec![pattern.as_str()],
                Some(AuthDatabases::List(names)) => names.iter().map(String::as_str).collect(),
                None => Vec::new(),
            };
            for database in databases {
                if RESERVED_DATABASES.contains(&database) {
                    let message = format!("\"{database}\" is reserved for the admin console");
                    self.fail(&key("auth_databases"), message);
                } else if let Some(other) = claimed.insert(database, name) {
                    let message = format!(
                        "database \"{database}\" is already claimed by cluster \"{other}\""
                    );
                    self.fail(&key("auth_databases"), message);
                }
            }
            match (&cluster.read_only_suffix, &cluster.read_only_cluster) {
                (Some(suffix), Some(reader)) => {
                    self.non_empty(&key("read_only_suffix"), suffix);
                    if !cluster.has_auth_query() {
                        self.fail(
                            &key("read_only_suffix"),
                            "needs auth_databases: it names read-only routes of dynamic tenants"
                                .to_owned(),
                        );
                    }
                    if !config.clusters.contains_key(reader) {
                        let message = format!("cluster \"{reader}\" is not defined");
                        self.fail(&key("read_only_cluster"), message);
                    }
                }
                (Some(_), None) => self.fail(
                    &key("read_only_cluster"),
                    "is required with read_only_suffix".to_owned(),
                ),
                (None, Some(_)) => self.fail(
                    &key("read_only_suffix"),
                    "is required with read_only_cluster".to_owned(),
                ),
                (None, None) => {}
            }
        }
    }
}

/// `host:port` with a numeric port; an IPv6 host needs brackets.
fn check_address(value: &str) -> Result<(), String> {
    if value.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let invalid = || format!("\"{value}\" is not host:port (IPv6 hosts in brackets: [::1]:6432)");
    let (host, port) = value.rsplit_once(':').ok_or_else(invalid)?;
    let host_ok =
        !host.is_empty() && !host.contains([':', '[', ']']) && !host.contains(char::is_whitespace);
    if host_ok && port.parse::<u16>().is_ok() {
        Ok(())
    } else {
        Err(invalid())
    }
}
