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
    /// TLS towards this server.
    #[serde(default)]
    pub tls: ServerTlsMode,
    /// PEM root certificates that verify-ca and verify-full trust (e.g. the RDS bundle).
    pub tls_ca_file: Option<PathBuf>,
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
    pub idle_transaction_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub client_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub server_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub server_lifetime: Option<Duration>,
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
    pub idle_transaction_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub server_idle_timeout: Duration,
    pub server_lifetime: Duration,
}

impl TenantConfig {
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
