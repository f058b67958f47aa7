//! Tenants: what a client logs in as, the pair (database, user). Each tenant owns its
//! pool of server connections, opened as its own role, so a server connection of one
//! tenant is never handed to another. Lookup is two hash probes with borrowed keys.

use crate::cluster::Cluster;
use crate::config::{AuthType, Config, PasswordKind, PoolMode, Secret, TenantSettings};
use crate::params::Parameters;
use crate::pool::{self, Pool};
use crate::server::ServerTarget;
use crate::shared::Drain;
use crate::stats::{ServerRegistry, TenantStats};
use crate::tls::TlsError;
use sluice_protocol::md5::md5_password_hash;
use sluice_protocol::scram::ScramSecret;
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
        let target = ServerTarget {
            host: cluster.host.clone(),
            port: cluster.port,
            database: settings.server_database.clone(),
            user: settings.server_user.clone(),
            password: settings
                .server_password
                .as_ref()
                .map(|s| s.expose().to_owned()),
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
        let text = password.expose();
        match (password.password_kind(), auth_type) {
            (PasswordKind::ScramVerifier, _) => ClientAuth::Scram(
                ScramSecret::parse(text).expect("validated with the configuration"),
            ),
            (PasswordKind::Md5Hash, _) => ClientAuth::Md5 {
                hash: text.to_owned(),
            },
            (PasswordKind::Plaintext, AuthType::Md5) => ClientAuth::Md5 {
                hash: md5_password_hash(user, text),
            },
            (PasswordKind::Plaintext, AuthType::ScramSha256) => ClientAuth::Scram(
                ScramSecret::from_password(text, &crate::random::bytes::<16>(), SCRAM_ITERATIONS),
            ),
        }
    }
}

/// Why a (database, user) pair did not resolve to a tenant.
pub enum Unknown {
    Database,
    User,
}

/// Every configured tenant, by database and then user, and the clusters they use.
pub struct Tenants {
    by_database: HashMap<String, HashMap<String, Arc<Tenant>>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
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
        for tenant in &config.tenants {
            let settings = tenant.effective(&config.defaults);
            let cluster = clusters[&settings.cluster].clone();
            let kept = previous
                .and_then(|p| p.lookup(&settings.database, &settings.user).ok())
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
        Ok(Tenants {
            by_database,
            clusters,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.by_database.values().flat_map(|users| users.values())
    }

    pub fn lookup(&self, database: &str, user: &str) -> Result<&Arc<Tenant>, Unknown> {
        let users = self.by_database.get(database).ok_or(Unknown::Database)?;
        users.get(user).ok_or(Unknown::User)
    }
}

/// Longest pause between two rounds of pool maintenance.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// Pool maintenance for every tenant, in one task: closes idle server connections past
/// `server_idle_timeout` or `server_lifetime`, and tops pools up to `min_pool_size`.
/// Runs every 10 s, or more often when a timeout is shorter, so it expires on time
/// to within half of it.
pub async fn maintain_pools(shared: Arc<crate::shared::Shared>) {
    let shortest = shared
        .tenants
        .load()
        .iter()
        .flat_map(|t| [t.settings.server_idle_timeout, t.settings.server_lifetime])
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
    }
}
