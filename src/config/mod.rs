//! sluice's configuration: the TOML schema, its defaults, and the per-tenant
//! settings derived from it.
//!
//! A configuration comes from one TOML file (`--config`) with every key
//! overridable by an environment variable `SLUICE_<KEY>`, nested keys joined
//! by `__` (see [`Config::load`] in `load.rs`). It is checked as a whole by
//! the rules in `validate.rs` before anything uses it: a `Config`
//! returned by `load` is always valid.
//!
//! Invariants: every struct rejects unknown keys; secrets are [`Secret`]s and
//! never appear in `Debug` output or error messages. A secret may be written
//! as its value or as `{ env = "VAR" }` / `{ file = "PATH" }`; `load` reads
//! those, so a loaded `Config` holds only values. `config/sluice.example.toml`
//! documents every key and is checked by the tests.
//!
//! A leaf: nothing else in the crate is used here, and nothing here runs at serve time.

mod error;
mod load;
mod secret;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use error::ConfigError;
pub use secret::{PasswordKind, Secret};

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Client-facing address, `host:port`.
    pub listen: String,
    /// HTTP address for `/metrics`, `/healthz` and `/readyz`, `host:port`.
    pub metrics_listen: String,
    /// How long a client may take from connecting to finishing authentication.
    #[serde(with = "humantime_serde")]
    pub client_login_timeout: Duration,
    /// How long SIGTERM waits for clients to finish before closing them.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// TLS towards clients.
    pub client_tls: ClientTlsMode,
    /// PEM certificate chain and private key for client TLS.
    pub client_tls_cert_file: Option<PathBuf>,
    pub client_tls_key_file: Option<PathBuf>,
    /// Users allowed into the admin console (database `sluice` or `pgbouncer`).
    pub admins: Vec<Admin>,
    /// Settings every tenant inherits unless it overrides them.
    pub defaults: TenantDefaults,
    /// PostgreSQL endpoints by name (`[clusters.NAME]`).
    pub clusters: BTreeMap<String, Cluster>,
    /// The (database, user) pairs clients may log in as.
    pub tenants: Vec<TenantConfig>,
    /// Where the values came from, for error messages; not part of the schema.
    #[serde(skip)]
    origin: Origin,
}

/// Where a loaded configuration came from: the file, and which keys the
/// environment overrode (dotted, lowercase: `tenants.0.password`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Origin {
    file: PathBuf,
    env_keys: BTreeSet<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:6432".to_owned(),
            metrics_listen: "127.0.0.1:8067".to_owned(),
            client_login_timeout: Duration::from_secs(15),
            shutdown_timeout: Duration::from_secs(30),
            client_tls: ClientTlsMode::Disable,
            client_tls_cert_file: None,
            client_tls_key_file: None,
            admins: Vec::new(),
            defaults: TenantDefaults::default(),
            clusters: BTreeMap::new(),
            tenants: Vec::new(),
            origin: Origin::default(),
        }
    }
}

/// A user of the admin console.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub user: String,
    /// Plaintext, a SCRAM-SHA-256 verifier or an md5 hash; in the file, the
    /// value or `{ env = "VAR" }` / `{ file = "PATH" }`.
    pub password: Secret,
}

/// How long a client keeps its server connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// From the start of a transaction until ReadyForQuery reports idle.
    Transaction,
    /// For the life of the client connection.
    Session,
}

/// In transaction mode, what becomes of a statement that creates session state that
/// cannot move between server connections (temporary tables, session advisory locks,
/// WITH HOLD cursors, SQL PREPARE, LOAD, SET ROLE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// The client keeps its server connection until the state is gone or it leaves.
    Pin,
    /// The statement fails with 0A000; nothing of it runs.
    Reject,
}

/// How clients authenticate to sluice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum AuthType {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
}

/// `[defaults]`: the limits every tenant inherits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantDefaults {
    pub pool_mode: PoolMode,
    /// Most server connections the tenant's pool may hold.
    pub pool_size: u32,
    /// Server connections kept open even when idle, when the budget allows.
    pub min_pool_size: u32,
    /// Extra server connections a tenant may open beyond `pool_size` once a client
    /// has waited `reserve_pool_timeout`; 0 = no reserve.
    pub reserve_pool_size: u32,
    #[serde(with = "humantime_serde")]
    pub reserve_pool_timeout: Duration,
    /// Most client connections the tenant may have at once.
    pub max_client_connections: u32,
    /// How long a client waits for a server connection before an error.
    #[serde(with = "humantime_serde")]
    pub query_wait_timeout: Duration,
    /// How long opening one server connection (TCP, TLS, auth) may take.
    #[serde(with = "humantime_serde")]
    pub server_connect_timeout: Duration,
    pub auth_type: AuthType,
    /// Server-side prepared statements kept per server connection in
    /// transaction mode; 0 turns prepared-statement tracking off.
    pub max_prepared_statements: u32,
    /// Longest a single query may run before it is cancelled (57014); 0 = no limit.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// How long the server has to answer a `query_timeout` cancel before its connection
    /// is closed and the client gets 57014 anyway (a stalled or unreachable server).
    #[serde(with = "humantime_serde")]
    pub query_cancel_grace: Duration,
    /// Transaction mode: pin or reject session state that cannot move.
    pub session_state: SessionState,
    /// Longest a pinned client may stay idle outside a transaction; 0 = no limit.
    #[serde(with = "humantime_serde")]
    pub pinned_idle_timeout: Duration,
    /// Longest a client may stay idle inside a transaction; 0 = no limit.
    #[serde(with = "humantime_serde")]
    pub idle_transaction_timeout: Duration,
    /// Longest a client may stay idle outside a transaction; 0 = no limit.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// Idle server connections older than this in the pool are closed; 0 = never.
    #[serde(with = "humantime_serde")]
    pub server_idle_timeout: Duration,
    /// Server connections older than this are closed when next idle; 0 = never.
    #[serde(with = "humantime_serde")]
    pub server_lifetime: Duration,
}

impl Default for TenantDefaults {
    fn default() -> Self {
        TenantDefaults {
            pool_mode: PoolMode::Transaction,
            pool_size: 5,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Duration::from_secs(5),
            max_client_connections: 1000,
            query_wait_timeout: Duration::from_secs(30),
            server_connect_timeout: Duration::from_secs(5),
            auth_type: AuthType::ScramSha256,
            max_prepared_statements: 200,
            query_timeout: Duration::ZERO,
            query_cancel_grace: Duration::from_secs(1),
            session_state: SessionState::Pin,
            pinned_idle_timeout: Duration::from_secs(300),
            idle_transaction_timeout: Duration::ZERO,
            client_idle_timeout: Duration::ZERO,
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
        }
    }
}

/// `[clusters.NAME]`: one PostgreSQL endpoint and the connection budget all
/// its tenants share.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Most server connections to this endpoint, over all its tenants.
    #[serde(default = "default_max_server_connections")]
    pub max_server_connections: u32,
    /// Most new server connections opened per second, over all its tenants; 0 = no
    /// limit. Opening connections is what costs the server CPU.
    #[serde(default)]
    pub max_connects_per_second: u32,
    /// TCP keepalive on server connections: idle time before the first probe (probes
    /// then every 10 s, 6 at most); 0 = off.
    #[serde(default = "default_server_tcp_keepalive", with = "humantime_serde")]
    pub server_tcp_keepalive: Duration,
    /// `TCP_USER_TIMEOUT` on server connections: data unacknowledged this long ends the
    /// connection, so a peer that vanished is noticed; 0 = the kernel's default.
    #[serde(default = "default_server_tcp_user_timeout", with = "humantime_serde")]
    pub server_tcp_user_timeout: Duration,
    /// TLS towards this server.
    #[serde(default)]
    pub tls: ServerTlsMode,
    /// PEM root certificates that verify-ca and verify-full trust (e.g. the RDS bundle).
    pub tls_ca_file: Option<PathBuf>,
    /// Role sluice logs in as to run `auth_query`; with `auth_password` and
    /// `auth_databases` it turns on dynamic tenants for this cluster.
    pub auth_user: Option<String>,
    /// Password of `auth_user`: plaintext or an md5 hash, given like tenant passwords.
    pub auth_password: Option<Secret>,
    /// Returns (user name, stored password) for the user name bound to `$1`.
    #[serde(default = "default_auth_query")]
    pub auth_query: String,
    /// Which client databases become dynamic tenants on this cluster.
    pub auth_databases: Option<AuthDatabases>,
    /// How long a looked-up password (or a "no such role") is trusted.
    #[serde(default = "default_auth_cache_ttl", with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    /// Most looked-up answers kept; the oldest are dropped first.
    #[serde(default = "default_auth_cache_size")]
    pub auth_cache_size: u32,
    /// A dynamic tenant with no clients and no server connections is dropped after
    /// this long without a login.
    #[serde(
        default = "default_dynamic_tenant_idle_timeout",
        with = "humantime_serde"
    )]
    pub dynamic_tenant_idle_timeout: Duration,
    /// Client databases named `<database><read_only_suffix>` become dynamic tenants on
    /// `read_only_cluster`, logging in to `<database>` there.
    pub read_only_suffix: Option<String>,
    pub read_only_cluster: Option<String>,
}

/// `auth_databases`: `"*"` (every database no tenant is configured for) or a list.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AuthDatabases {
    /// Must be `"*"` (validated).
    Pattern(String),
    List(Vec<String>),
}

impl AuthDatabases {
    pub const ALL: &'static str = "*";

    pub fn matches(&self, database: &str) -> bool {
        match self {
            AuthDatabases::Pattern(pattern) => pattern == Self::ALL,
            AuthDatabases::List(names) => names.iter().any(|name| name == database),
        }
    }
}

impl Cluster {
    /// True when this cluster looks tenants up with `auth_query`.
    pub fn has_auth_query(&self) -> bool {
        self.auth_databases.is_some()
    }
}

/// PgBouncer's default, so existing setups keep working.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1";

fn default_auth_query() -> String {
    DEFAULT_AUTH_QUERY.to_owned()
}

fn default_auth_cache_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_auth_cache_size() -> u32 {
    10_000
}

fn default_dynamic_tenant_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

/// `client_tls`: whether clients may, or must, use TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    #[default]
    Disable,
    Allow,
    Require,
}

/// `[clusters.NAME] tls`, with libpq's `sslmode` meanings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    Disable,
    /// TLS when the server offers it, unverified.
    #[default]
    Prefer,
    /// TLS always, unverified.
    Require,
    /// TLS with the chain verified against `tls_ca_file`.
    VerifyCa,
    /// As verify-ca, and the certificate must name the host.
    VerifyFull,
}

fn default_port() -> u16 {
    5432
}

fn default_max_server_connections() -> u32 {
    80
}

fn default_server_tcp_keepalive() -> Duration {
    Duration::from_secs(60)
}

fn default_server_tcp_user_timeout() -> Duration {
    Duration::from_secs(60)
}

/// `[[tenants]]`: one (database, user) pair clients log in as. Every
/// `Option` limit left out is taken from `[defaults]`; see
/// [`TenantConfig::effective`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The database name clients connect to.
    pub database: String,
    /// The role clients log in as.
    pub user: String,
    /// Name of a `[clusters.NAME]` entry.
    pub cluster: String,
    /// What clients must prove: plaintext, a SCRAM-SHA-256 verifier or an
    /// md5 hash; in the file, the value or `{ env = "VAR" }` /
    /// `{ file = "PATH" }`.
    pub password: Secret,
    /// Upstream database; defaults to `database`.
    pub server_database: Option<String>,
    /// Upstream role; defaults to `user`.
    pub server_user: Option<String>,
    /// Upstream password; defaults to `password` when that is plaintext.
    /// Given like `password`.
    pub server_password: Option<Secret>,
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<u32>,
    pub min_pool_size: Option<u32>,
    pub reserve_pool_size: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub reserve_pool_timeout: Option<Duration>,
    pub max_client_connections: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub query_wait_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub server_connect_timeout: Option<Duration>,
    pub auth_type: Option<AuthType>,
    pub max_prepared_statements: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub query_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub query_cancel_grace: Option<Duration>,
    pub session_state: Option<SessionState>,
    #[serde(default, with = "humantime_serde")]
    pub pinned_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_transaction_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub client_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub server_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub server_lifetime: Option<Duration>,
    /// A second database name clients may connect to, served by `read_only_cluster`
    /// with the same credentials and upstream database (a reader endpoint).
    pub read_only_database: Option<String>,
    pub read_only_cluster: Option<String>,
}

/// A tenant with every default applied: what the pool and the session code
/// work from. Built by [`TenantConfig::effective`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantSettings {
    pub database: String,
    pub user: String,
    pub cluster: String,
    /// What clients must prove (see [`Secret::password_kind`]).
    pub password: Secret,
    /// Upstream database (`server_database`, else `database`).
    pub server_database: String,
    /// Upstream role (`server_user`, else `user`).
    pub server_user: String,
    /// Upstream password: `server_password`, else `password` if it is
    /// plaintext, else `None` (no password known for the server).
    pub server_password: Option<Secret>,
    pub pool_mode: PoolMode,
    pub pool_size: u32,
    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    pub reserve_pool_timeout: Duration,
    pub max_client_connections: u32,
    pub query_wait_timeout: Duration,
    pub server_connect_timeout: Duration,
    pub auth_type: AuthType,
    pub max_prepared_statements: u32,
    /// `Duration::ZERO` means no limit, for this and the other timeouts below.
    pub query_timeout: Duration,
    pub query_cancel_grace: Duration,
    pub session_state: SessionState,
    pub pinned_idle_timeout: Duration,
    pub idle_transaction_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub server_idle_timeout: Duration,
    pub server_lifetime: Duration,
}

impl TenantDefaults {
    /// The settings of a tenant made at login from `auth_query`: every limit from
    /// `[defaults]`, the upstream role the same as the client's.
    pub fn dynamic_tenant(
        &self,
        database: &str,
        user: &str,
        cluster: &str,
        server_database: &str,
        password: Secret,
    ) -> TenantSettings {
        TenantConfig {
            database: database.to_owned(),
            user: user.to_owned(),
            cluster: cluster.to_owned(),
            password,
            server_database: Some(server_database.to_owned()),
            server_user: None,
            server_password: None,
            pool_mode: None,
            pool_size: None,
            min_pool_size: None,
            reserve_pool_size: None,
            reserve_pool_timeout: None,
            max_client_connections: None,
            query_wait_timeout: None,
            server_connect_timeout: None,
            auth_type: None,
            max_prepared_statements: None,
            query_timeout: None,
            query_cancel_grace: None,
            session_state: None,
            pinned_idle_timeout: None,
            idle_transaction_timeout: None,
            client_idle_timeout: None,
            server_idle_timeout: None,
            server_lifetime: None,
            read_only_database: None,
            read_only_cluster: None,
        }
        .effective(self)
    }
}

impl TenantConfig {
    /// The settings of this tenant's read-only route, if it has one: the same tenant
    /// under `read_only_database` on `read_only_cluster`, with the same upstream database.
    pub fn read_only_route(&self, defaults: &TenantDefaults) -> Option<TenantSettings> {
        let (database, cluster) = (
            self.read_only_database.as_ref()?,
            self.read_only_cluster.as_ref()?,
        );
        let mut settings = self.effective(defaults);
        settings.database = database.clone();
        settings.cluster = cluster.clone();
        Some(settings)
    }

    /// This tenant's settings with `defaults` filled in for every limit it
    /// does not set, and the upstream database, user and password resolved.
    pub fn effective(&self, defaults: &TenantDefaults) -> TenantSettings {
        let server_password = self.server_password.clone().or_else(|| {
            (self.password.password_kind() == PasswordKind::Plaintext)
                .then(|| self.password.clone())
        });
        TenantSettings {
            database: self.database.clone(),
            user: self.user.clone(),
            cluster: self.cluster.clone(),
            password: self.password.clone(),
            server_database: self
                .server_database
                .clone()
                .unwrap_or_else(|| self.database.clone()),
            server_user: self
                .server_user
                .clone()
                .unwrap_or_else(|| self.user.clone()),
            server_password,
            pool_mode: self.pool_mode.unwrap_or(defaults.pool_mode),
            pool_size: self.pool_size.unwrap_or(defaults.pool_size),
            min_pool_size: self.min_pool_size.unwrap_or(defaults.min_pool_size),
            reserve_pool_size: self.reserve_pool_size.unwrap_or(defaults.reserve_pool_size),
            reserve_pool_timeout: self
                .reserve_pool_timeout
                .unwrap_or(defaults.reserve_pool_timeout),
            max_client_connections: self
                .max_client_connections
                .unwrap_or(defaults.max_client_connections),
            query_wait_timeout: self
                .query_wait_timeout
                .unwrap_or(defaults.query_wait_timeout),
            server_connect_timeout: self
                .server_connect_timeout
                .unwrap_or(defaults.server_connect_timeout),
            auth_type: self.auth_type.unwrap_or(defaults.auth_type),
            max_prepared_statements: self
                .max_prepared_statements
                .unwrap_or(defaults.max_prepared_statements),
            query_timeout: self.query_timeout.unwrap_or(defaults.query_timeout),
            query_cancel_grace: self
                .query_cancel_grace
                .unwrap_or(defaults.query_cancel_grace),
            session_state: self.session_state.unwrap_or(defaults.session_state),
            pinned_idle_timeout: self
                .pinned_idle_timeout
                .unwrap_or(defaults.pinned_idle_timeout),
            idle_transaction_timeout: self
                .idle_transaction_timeout
                .unwrap_or(defaults.idle_transaction_timeout),
            client_idle_timeout: self
                .client_idle_timeout
                .unwrap_or(defaults.client_idle_timeout),
            server_idle_timeout: self
                .server_idle_timeout
                .unwrap_or(defaults.server_idle_timeout),
            server_lifetime: self.server_lifetime.unwrap_or(defaults.server_lifetime),
        }
    }
}
