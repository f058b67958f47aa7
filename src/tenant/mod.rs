//! Tenants: what a client logs in as, the pair (database, user). Each tenant owns its
//! pool of server connections, opened as its own role, so a server connection of one
//! tenant is never handed to another. The registry of every tenant is `registry`; tenants
//! made at login from `auth_query` are `dynamic`, and their password lookups `auth_query`.
//!
//! A tenant whose server password sluice does not know (its password is a SCRAM verifier
//! or md5 hash, or it was looked up) logs in to the server with what its clients proved:
//! the SCRAM keys recovered from a client's proof, or the md5 hash it was checked
//! against ([`LearnedCredentials`], refreshed by every login).
//!
//! Depends on pools and servers below it; knows nothing of sessions, the console or the
//! process-wide state above it.

pub mod auth_query;
pub mod dynamic;
pub mod listener;
mod registry;

pub use registry::{ResolveError, Resolved, Tenants, Unknown};

use crate::config::{AuthType, PasswordKind, PoolMode, Secret, TenantSettings};
use crate::lifecycle::Drain;
use crate::pool::cluster::Cluster;
use crate::pool::maintenance::{Maintained, Upkeep};
use crate::pool::{self, Pool};
use crate::server::parameters::Parameters;
use crate::server::{LearnedCredentials, ServerCredentials, ServerPassword, ServerTarget};
use crate::stats::{ServerRegistry, TenantStats};
use listener::Listener;
use sluice_protocol::md5::md5_password_hash;
use sluice_protocol::scram::{ScramError, ScramSecret};
use std::fmt;
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
    /// Where and as whom its server connections log in (for the listening connection).
    target: ServerTarget,
    /// LISTEN/NOTIFY for its clients in transaction mode, made on the first LISTEN.
    listener: OnceLock<Listener>,
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
            target.clone(),
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
            target,
            listener: OnceLock::new(),
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
        self.to_string()
    }

    /// The tenant's LISTEN/NOTIFY: one listening server connection (a pool of one in the
    /// cluster's budget) for all its clients.
    pub fn listener(&self) -> &Listener {
        self.listener.get_or_init(|| {
            let pool = Pool::new(
                self.target.clone(),
                pool::Shared {
                    cluster: self.cluster.clone(),
                    stats: self.stats.clone(),
                    servers: self.servers.clone(),
                },
                pool::Limits {
                    size: 1,
                    reserve_size: 0,
                    reserve_timeout: Duration::ZERO,
                    lifetime: Duration::ZERO,
                },
            );
            Listener::new(pool, self.settings.query_wait_timeout)
        })
    }

    /// The parameters the tenant's server reported at its latest login: the defaults
    /// new clients start from (a failover or an upgrade changes them).
    pub fn parameters(&self) -> Option<Arc<Parameters>> {
        self.pool.login_parameters()
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

impl fmt::Display for Tenant {
    /// "database/user", how logs name a tenant.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.settings.database, self.settings.user)
    }
}

impl Maintained for Tenant {
    fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    fn upkeep(&self) -> Upkeep {
        Upkeep {
            idle_timeout: self.settings.server_idle_timeout,
            min_size: self.settings.min_pool_size as usize,
        }
    }
}
