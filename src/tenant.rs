//! Tenants: what a client logs in as, the pair (database, user). Each tenant owns its
//! pool of server connections, opened as its own role, so a server connection of one
//! tenant is never handed to another. Lookup is two hash probes with borrowed keys for
//! configured tenants, then one in the dynamic registry (`dynamic.rs`, tenants made at
//! login from `auth_query`); configured tenants take precedence.
//!
//! A tenant whose server password sluice does not know (its password is a SCRAM verifier
//! or md5 hash, or it was looked up) logs in to the server with what its clients proved:
//! the SCRAM keys recovered from a client's proof, or the md5 hash it was checked
//! against ([`LearnedCredentials`], refreshed by every login).

use crate::cluster::Cluster;
use crate::config::{AuthType, Config, PasswordKind, PoolMode, Secret, TenantSettings};
use crate::dynamic::{DynamicTenants, Found};
use crate::params::Parameters;
use crate::pool::{self, Pool};
use crate::server::{LearnedCredentials, ServerCredentials, ServerPassword, ServerTarget};
use crate::shared::Drain;
use crate::stats::{ServerRegistry, TenantStats};
use crate::tls::TlsError;
use sluice_protocol::md5::md5_password_hash;
use sluice_protocol::scram::{ScramError, ScramSecret};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Iterations for SCRAM verifiers sluice derives from plaintext passwords (PostgreSQL's default).
const SCRAM_ITERATIONS: u32 = 4096;

/// How a tenant's clients prove who they are.
pub enum ClientAuth {
    Scram(ScramSecret),
    /// md5 challenge against the stored "md5…" hash of password + user.
    Md5 {
        hash: String,
    },
}

pub struct Tenant {
    pub settings: TenantSettings,
    pub auth: ClientAuth,
    /// Server credentials taken from client logins, shared with the pool's connect path;
    /// `None` when sluice has the plaintext server password.
    learned: Option<Arc<LearnedCredentials>>,
    pub cluster: Arc<Cluster>,
    pub pool: Arc<Pool>,
    pub stats: Arc<TenantStats>,
    pub servers: Arc<ServerRegistry>,
    clients: AtomicU32,
    /// Set by the admin console's `PAUSE db`.
    pub paused: AtomicBool,
    /// Started when a reload removes the tenant: its clients leave after their
    /// transaction.
    pub retired: Drain,
    /// The parameters this tenant's server reports at login: the defaults clients start from.
    parameters: OnceLock<Arc<Parameters>>,
}

/// A connected client counted against its tenant's `max_client_connections`.
pub struct ClientSlot(Arc<Tenant>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tenant {
    fn new(settings: TenantSettings, cluster: Arc<Cluster>) -> Self {
        let auth = ClientAuth::for_secret(&settings.password, &settings.user, settings.auth_type);
        Self::with_auth(settings, cluster, auth)
    }

    /// A tenant for a password `auth_query` returned (in `settings.password`); `None` when
    /// it is a malformed SCRAM verifier.
    pub fn from_looked_up(settings: TenantSettings, cluster: Arc<Cluster>) -> Option<Self> {
        let auth = ClientAuth::for_stored(
            settings.password.expose(),
            &settings.user,
            settings.auth_type,
        )
        .ok()?;
        Some(Self::with_auth(settings, cluster, auth))
    }

    fn with_auth(settings: TenantSettings, cluster: Arc<Cluster>, auth: ClientAuth) -> Self {
        let (credentials, learned) = match &settings.server_password {
            Some(password) => (
                ServerCredentials::Password(ServerPassword::new(password.expose())),
                None,
            ),
            None => {
                let learned = Arc::new(LearnedCredentials::default());
                (ServerCredentials::Learned(learned.clone()), Some(learned))
            }
        };
        let target = ServerTarget {
            host: cluster.host.clone(),
            port: cluster.port,
            database: settings.server_database.clone(),
            user: settings.server_user.clone(),
            credentials,
            connect_timeout: settings.server_connect_timeout,
        };
        let stats = Arc::new(TenantStats::default());
        let servers = Arc::new(ServerRegistry::default());
        let pool = Pool::new(
            target,
            pool::Shared {
                cluster: cluster.clone(),
                stats: stats.clone(),
                servers: servers.clone(),
            },
            pool::Limits {
                size: settings.pool_size as usize,
                reserve_size: settings.reserve_pool_size as usize,
                reserve_timeout: settings.reserve_pool_timeout,
                lifetime: settings.server_lifetime,
            },
        );
        Tenant {
            settings,
            auth,
            learned,
            cluster,
            pool,
            stats,
            servers,
            clients: AtomicU32::new(0),
            paused: AtomicBool::new(false),
            retired: Drain::default(),
            parameters: OnceLock::new(),
        }
    }

    /// Remembers what a client just proved, for server logins without a known password.
    pub fn learn_server_credentials(&self, credentials: ServerCredentials) {
        if let Some(learned) = &self.learned {
            learned.learn(credentials);
        }
    }

    pub fn client_count(&self) -> u32 {
        self.clients.load(Ordering::Relaxed)
    }

    /// Counts a new client, or returns `None` when the tenant is at its limit.
    pub fn admit_client(self: &Arc<Self>) -> Option<ClientSlot> {
        let max = self.settings.max_client_connections;
        self.clients
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientSlot(self.clone()))
    }

    /// "database/user", how logs and client-facing errors name a tenant.
    pub fn name(&self) -> String {
        format!("{}/{}", self.settings.database, self.settings.user)
    }

    pub fn parameters(&self) -> Option<&Arc<Parameters>> {
        self.parameters.get()
    }

    pub fn remember_parameters(&self, parameters: &Arc<Parameters>) {
        let _ = self.parameters.set(parameters.clone());
    }

    pub fn is_session_mode(&self) -> bool {
        self.settings.pool_mode == PoolMode::Session
    }
}

impl ClientAuth {
    /// How to check a client that must know `password` (plaintext, SCRAM verifier or md5
    /// hash, validated with the configuration). A SCRAM verifier means SCRAM whatever
    /// `auth_type` says; an md5 hash means md5.
    pub fn for_secret(password: &Secret, user: &str, auth_type: AuthType) -> Self {
        Self::for_stored(password.expose(), user, auth_type)
            .expect("verifiers are validated with the configuration")
    }

    /// As [`ClientAuth::for_secret`], for a password that was not validated (looked up).
    pub fn for_stored(text: &str, user: &str, auth_type: AuthType) -> Result<Self, ScramError> {
        Ok(
            match (Secret::from_value(text).password_kind(), auth_type) {
                (PasswordKind::ScramVerifier, _) => ClientAuth::Scram(ScramSecret::parse(text)?),
                (PasswordKind::Md5Hash, _) => ClientAuth::Md5 {
                    hash: text.to_owned(),
                },
                (PasswordKind::Plaintext, AuthType::Md5) => ClientAuth::Md5 {
                    hash: md5_password_hash(user, text),
                },
                (PasswordKind::Plaintext, AuthType::ScramSha256) => {
                    ClientAuth::Scram(ScramSecret::from_password(
                        text,
                        &crate::random::bytes::<16>(),
                        SCRAM_ITERATIONS,
                    ))
                }
            },
        )
    }

    /// A secret no client can match, for refusing an unknown role exactly like a wrong
    /// password: the client cannot tell whether the role exists.
    pub fn decoy(auth_type: AuthType) -> Self {
        match auth_type {
            AuthType::ScramSha256 => ClientAuth::Scram(ScramSecret {
                iterations: SCRAM_ITERATIONS,
                salt: crate::random::bytes::<16>().to_vec(),
                stored_key: crate::random::bytes::<32>(),
                server_key: crate::random::bytes::<32>(),
            }),
            AuthType::Md5 => ClientAuth::Md5 {
                hash: crate::random::bytes::<16>()
                    .iter()
                    .fold("md5".to_owned(), |hex, b| hex + &format!("{b:02x}")),
            },
        }
    }
}

/// Why a (database, user) pair did not resolve to a tenant.
#[derive(Debug)]
pub enum Unknown {
    Database,
    User,
}

/// What a login's (database, user) resolved to.
pub enum Resolved {
    Tenant(Arc<Tenant>),
    /// A database of dynamic tenants whose `auth_query` knows no such role: refused like
    /// a wrong password, after a decoy exchange of this type.
    UnknownRole(AuthType),
}

/// Why a login's (database, user) did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown tenant")]
    Unknown(Unknown),
    #[error(transparent)]
    Lookup(#[from] crate::auth_query::LookupError),
}

/// Every configured tenant, by database and then user, the dynamic ones, and the
/// clusters they use.
pub struct Tenants {
    by_database: HashMap<String, HashMap<String, Arc<Tenant>>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub dynamic: DynamicTenants,
}

impl Tenants {
    /// Builds the registry for `config`. Clusters and tenants of `previous` whose
    /// settings did not change are kept as they are, with their pools, connections and
    /// statistics; a changed budget is applied to the kept cluster.
    pub fn build(config: &Config, previous: Option<&Tenants>) -> Result<Self, TlsError> {
        let mut clusters = BTreeMap::new();
        for (name, settings) in &config.clusters {
            let kept = previous
                .and_then(|p| p.clusters.get(name))
                .filter(|c| c.is_same_endpoint(settings));
            let cluster = match kept {
                Some(cluster) => {
                    cluster.reload_tls(settings)?;
                    cluster.resize(settings);
                    cluster.clone()
                }
                None => Cluster::new(name, settings)?,
            };
            clusters.insert(name.clone(), cluster);
        }
        let mut by_database: HashMap<String, HashMap<String, Arc<Tenant>>> = HashMap::new();
        let routes = config.tenants.iter().flat_map(|tenant| {
            let primary = tenant.effective(&config.defaults);
            std::iter::once(primary).chain(tenant.read_only_route(&config.defaults))
        });
        for settings in routes {
            let cluster = clusters[&settings.cluster].clone();
            let kept = previous
                .and_then(|p| p.configured(&settings.database, &settings.user))
                .filter(|t| t.settings == settings && Arc::ptr_eq(&t.cluster, &cluster));
            let tenant = match kept {
                Some(tenant) => tenant.clone(),
                None => Arc::new(Tenant::new(settings, cluster)),
            };
            by_database
                .entry(tenant.settings.database.clone())
                .or_default()
                .insert(tenant.settings.user.clone(), tenant);
        }
        let is_configured = |database: &str, user: &str| {
            by_database
                .get(database)
                .is_some_and(|users| users.contains_key(user))
        };
        let dynamic = DynamicTenants::build(
            config,
            &clusters,
            previous.map(|p| &p.dynamic),
            is_configured,
        );
        Ok(Tenants {
            by_database,
            clusters,
            dynamic,
        })
    }

    /// Every tenant, configured and dynamic (a snapshot of the dynamic ones).
    pub fn iter(&self) -> impl Iterator<Item = Arc<Tenant>> + '_ {
        self.by_database
            .values()
            .flat_map(|users| users.values().cloned())
            .chain(self.dynamic.snapshot())
    }

    fn configured(&self, database: &str, user: &str) -> Option<&Arc<Tenant>> {
        self.by_database.get(database)?.get(user)
    }

    /// The tenant (configured, or dynamic and already made) for (database, user),
    /// without running `auth_query`.
    pub fn lookup(&self, database: &str, user: &str) -> Result<Arc<Tenant>, Unknown> {
        if let Some(tenant) = self.configured(database, user) {
            return Ok(tenant.clone());
        }
        if let Some(tenant) = self.dynamic.get(database, user) {
            return Ok(tenant);
        }
        match self.by_database.contains_key(database) || self.dynamic.serves(database) {
            true => Err(Unknown::User),
            false => Err(Unknown::Database),
        }
    }

    /// The tenant a login as `user` to `database` reaches: a configured one, else a
    /// dynamic one checked against what `auth_query` returns (cached) now.
    pub async fn resolve(&self, database: &str, user: &str) -> Result<Resolved, ResolveError> {
        if let Some(tenant) = self.configured(database, user) {
            return Ok(Resolved::Tenant(tenant.clone()));
        }
        if !self.dynamic.serves(database) {
            return Err(ResolveError::Unknown(
                match self.by_database.contains_key(database) {
                    true => Unknown::User,
                    false => Unknown::Database,
                },
            ));
        }
        Ok(match self.dynamic.login(database, user).await? {
            Found::Tenant(tenant) => Resolved::Tenant(tenant),
            Found::UnknownRole(auth_type) => Resolved::UnknownRole(auth_type),
        })
    }
}

/// Longest pause between two rounds of pool maintenance.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// Pool maintenance for every tenant, in one task: closes idle server connections past
/// `server_idle_timeout` or `server_lifetime`, and tops pools up to `min_pool_size`.
/// Runs every 10 s, or more often when a timeout is shorter, so it expires on time
/// to within half of it.
pub async fn maintain_pools(shared: Arc<crate::shared::Shared>) {
    let defaults = shared.config.load().defaults.clone();
    let tenants = shared.tenants.load_full();
    let shortest = tenants
        .iter()
        .flat_map(|t| [t.settings.server_idle_timeout, t.settings.server_lifetime])
        .chain(
            tenants
                .dynamic
                .shortest_idle_timeout()
                .map(|idle| {
                    [
                        defaults.server_idle_timeout,
                        idle,
                        crate::auth_query::AUTH_CONNECTION_IDLE,
                    ]
                })
                .into_iter()
                .flatten(),
        )
        .filter(|d| !d.is_zero())
        .min()
        .map_or(MAINTENANCE_INTERVAL, |d| {
            (d / 2).max(Duration::from_millis(100))
        });
    let mut ticks = tokio::time::interval(shortest.min(MAINTENANCE_INTERVAL));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let tenants = shared.tenants.load_full();
        for tenant in tenants.iter() {
            let settings = &tenant.settings;
            let closed = tenant.pool.close_expired(settings.server_idle_timeout);
            if closed > 0 {
                tracing::debug!(tenant = %tenant.name(), closed, "closed expired idle server connections");
            }
            let min = settings.min_pool_size as usize;
            if min > 0 {
                if let Err(e) = tenant.pool.warm(min).await {
                    tracing::warn!(tenant = %tenant.name(), error = %e, "could not open min_pool_size connections");
                }
            }
        }
        let dropped = tenants.dynamic.drop_idle();
        if dropped > 0 {
            tracing::debug!(dropped, "dropped idle dynamic tenants");
        }
    }
}
