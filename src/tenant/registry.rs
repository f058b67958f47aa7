//! The registry of every tenant: the configured ones by database and then user, the
//! dynamic ones (`dynamic`), and the clusters they use. Lookup is two hash probes with
//! borrowed keys for configured tenants, then one in the dynamic registry; configured
//! tenants take precedence. A reload builds a new registry that keeps what did not change.

use super::dynamic::{DynamicTenants, Found};
use super::Tenant;
use crate::config::{AuthType, Config};
use crate::pool::cluster::Cluster;
use crate::pool::maintenance::{self, Maintained, Registry};
use crate::tls::TlsError;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

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
    Lookup(#[from] super::auth_query::LookupError),
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
                    cluster.reload_connection_settings(settings)?;
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

impl Tenants {
    /// How often pool maintenance runs for these tenants: see [`maintenance::interval`].
    pub fn maintenance_interval(&self, config: &Config) -> Duration {
        let configured = self
            .iter()
            .flat_map(|t| [t.settings.server_idle_timeout, t.settings.server_lifetime]);
        let dynamic = self.dynamic.shortest_idle_timeout().map(|idle| {
            [
                config.defaults.server_idle_timeout,
                idle,
                super::auth_query::AUTH_CONNECTION_IDLE,
            ]
        });
        maintenance::interval(configured.chain(dynamic.into_iter().flatten()))
    }
}

impl Registry for Tenants {
    fn members(&self) -> Vec<Arc<dyn Maintained>> {
        self.iter()
            .map(|tenant| tenant as Arc<dyn Maintained>)
            .collect()
    }

    /// Drops idle dynamic tenants and closes idle lookup connections.
    fn after_round(&self) {
        let dropped = self.dynamic.drop_idle();
        if dropped > 0 {
            tracing::debug!(dropped, "dropped idle dynamic tenants");
        }
    }
}
