//! Dynamic tenants: (database, user) pairs no `[[tenants]]` entry names, made at login on a
//! cluster whose `auth_databases` matches the database, checked against the password its
//! `auth_query` returns, with `[defaults]` limits.
//!
//! Routes: a client database `D` is served by the cluster whose `auth_databases` lists it
//! (else by the one with `"*"`), logging in to `D` there; `D` = `X<read_only_suffix>` with
//! `X` served by such a cluster goes to its `read_only_cluster`, logging in to `X` there,
//! with `X`'s password looked up on the primary cluster.
//!
//! Invariants: lookup is one hash probe under a short lock, never held across `.await`;
//! a tenant is replaced (not mutated) when its looked-up password changes, so its client
//! auth and server credentials always belong together; idle tenants (no clients, no server
//! connections, no login for `dynamic_tenant_idle_timeout`) are dropped by pool
//! maintenance, not by a task of their own.
//!
//! Makes and forgets tenants; the registry (`registry.rs`) decides who is asked.

use super::auth_query::{Answer, AuthQuery, LookupError};
use super::Tenant;
use crate::config::{AuthDatabases, AuthType, Config, Secret, TenantDefaults};
use crate::locks::lock;
use crate::pool::cluster::Cluster;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One cluster's `auth_*` settings, as routes for client databases.
struct Route {
    cluster: Arc<Cluster>,
    databases: AuthDatabases,
    lookup: Arc<AuthQuery>,
    read_only: Option<ReadOnly>,
    idle_timeout: Duration,
}

struct ReadOnly {
    suffix: String,
    cluster: Arc<Cluster>,
}

/// Where a client database leads: which route checks its users, which cluster serves its
/// pools, and the database name on that server.
struct Destination<'a> {
    route: &'a Route,
    cluster: &'a Arc<Cluster>,
    server_database: &'a str,
}

struct Entry {
    tenant: Arc<Tenant>,
    /// The stored password the tenant was made for.
    password: String,
    last_login: Instant,
    idle_timeout: Duration,
}

type Key = (String, String);

/// Every dynamic tenant, and the routes that make them.
pub struct DynamicTenants {
    routes: Vec<Route>,
    defaults: TenantDefaults,
    tenants: Mutex<HashMap<Key, Entry>>,
}

/// What a login to a dynamic database found.
pub enum Found {
    Tenant(Arc<Tenant>),
    /// `auth_query` knows no such role (or it has no password): refuse like a wrong
    /// password, with a decoy exchange of this type.
    UnknownRole(AuthType),
}

impl DynamicTenants {
    /// The routes of `config` over `clusters`. From `previous`, lookups (with their cache)
    /// of unchanged clusters are kept, and so are tenants whose route, cluster and
    /// settings are unchanged and that `configured` does not now claim.
    pub fn build(
        config: &Config,
        clusters: &BTreeMap<String, Arc<Cluster>>,
        previous: Option<&DynamicTenants>,
        configured: impl Fn(&str, &str) -> bool,
    ) -> Self {
        let timeout = config.defaults.server_connect_timeout;
        let mut routes = Vec::new();
        for (name, settings) in &config.clusters {
            let Some(databases) = settings.auth_databases.clone() else {
                continue;
            };
            let cluster = clusters[name].clone();
            let kept = previous
                .and_then(|p| p.routes.iter().find(|r| Arc::ptr_eq(&r.cluster, &cluster)))
                .filter(|r| r.lookup.is_same(settings, timeout))
                .map(|r| r.lookup.clone());
            let Some(lookup) =
                kept.or_else(|| AuthQuery::new(cluster.clone(), settings, timeout).map(Arc::new))
            else {
                continue;
            };
            let read_only = settings
                .read_only_suffix
                .clone()
                .zip(settings.read_only_cluster.as_ref())
                .map(|(suffix, reader)| ReadOnly {
                    suffix,
                    cluster: clusters[reader].clone(),
                });
            routes.push(Route {
                cluster,
                databases,
                lookup,
                read_only,
                idle_timeout: settings.dynamic_tenant_idle_timeout,
            });
        }
        // An explicit list wins over "*".
        routes.sort_by_key(|r| matches!(r.databases, AuthDatabases::Pattern(_)));
        let registry = DynamicTenants {
            routes,
            defaults: config.defaults.clone(),
            tenants: Mutex::default(),
        };
        if let Some(previous) = previous {
            let old = lock(&previous.tenants);
            let mut new = lock(&registry.tenants);
            for ((database, user), entry) in old.iter() {
                if !configured(database, user) && registry.still_fits(database, user, entry) {
                    new.insert(
                        (database.clone(), user.clone()),
                        Entry {
                            tenant: entry.tenant.clone(),
                            password: entry.password.clone(),
                            last_login: entry.last_login,
                            idle_timeout: entry.idle_timeout,
                        },
                    );
                }
            }
        }
        registry
    }

    /// True when `entry` would be made the same way by this registry.
    fn still_fits(&self, database: &str, user: &str, entry: &Entry) -> bool {
        let Some(destination) = self.destination(database) else {
            return false;
        };
        let settings = self.settings(database, user, &destination, &entry.password);
        Arc::ptr_eq(destination.cluster, &entry.tenant.cluster) && settings == entry.tenant.settings
    }

    /// True when logins to `database` may make dynamic tenants.
    pub fn serves(&self, database: &str) -> bool {
        self.destination(database).is_some()
    }

    /// The dynamic tenant already made for (database, user), without a lookup.
    pub fn get(&self, database: &str, user: &str) -> Option<Arc<Tenant>> {
        let tenants = lock(&self.tenants);
        tenants
            .get(&(database.to_owned(), user.to_owned()))
            .map(|e| e.tenant.clone())
    }

    /// The tenant for a login as `user` to `database` (a database this registry serves),
    /// checked against the password `auth_query` returns now (cached): made on first use,
    /// replaced when the password changed.
    pub async fn login(&self, database: &str, user: &str) -> Result<Found, LookupError> {
        let Some(destination) = self.destination(database) else {
            return Ok(Found::UnknownRole(self.defaults.auth_type));
        };
        let password = match destination
            .route
            .lookup
            .lookup(destination.server_database, user)
            .await?
        {
            Answer::Found(password) => password,
            Answer::Unknown => return Ok(Found::UnknownRole(self.defaults.auth_type)),
        };
        let key = (database.to_owned(), user.to_owned());
        let mut tenants = lock(&self.tenants);
        if let Some(entry) = tenants.get_mut(&key).filter(|e| e.password == password) {
            entry.last_login = Instant::now();
            return Ok(Found::Tenant(entry.tenant.clone()));
        }
        let settings = self.settings(database, user, &destination, &password);
        let Some(tenant) = Tenant::from_looked_up(settings, destination.cluster.clone()) else {
            tracing::warn!(
                database,
                user,
                "auth_query returned a malformed SCRAM verifier; login refused"
            );
            return Ok(Found::UnknownRole(self.defaults.auth_type));
        };
        let tenant = Arc::new(tenant);
        let replaced = tenants.insert(
            key,
            Entry {
                tenant: tenant.clone(),
                password,
                last_login: Instant::now(),
                idle_timeout: destination.route.idle_timeout,
            },
        );
        drop(tenants);
        if let Some(old) = replaced {
            // Its clients finish on it; its connections close as they come back, so the
            // budget goes to the new one.
            old.tenant.pool.retire();
        }
        Ok(Found::Tenant(tenant))
    }

    /// Every dynamic tenant now.
    pub fn snapshot(&self) -> Vec<Arc<Tenant>> {
        let tenants = lock(&self.tenants);
        tenants.values().map(|e| e.tenant.clone()).collect()
    }

    /// Drops tenants without clients or server connections whose last login is older
    /// than their `dynamic_tenant_idle_timeout`, and closes idle lookup connections.
    /// Returns how many tenants were dropped.
    pub fn drop_idle(&self) -> usize {
        for route in &self.routes {
            route.lookup.close_idle();
        }
        let mut tenants = lock(&self.tenants);
        let before = tenants.len();
        tenants.retain(|_, entry| {
            let tenant = &entry.tenant;
            tenant.client_count() > 0
                || tenant.pool.status().size > 0
                || entry.last_login.elapsed() < entry.idle_timeout
        });
        before - tenants.len()
    }

    /// The shortest `dynamic_tenant_idle_timeout`, if any cluster has dynamic tenants.
    pub fn shortest_idle_timeout(&self) -> Option<Duration> {
        self.routes.iter().map(|r| r.idle_timeout).min()
    }

    fn destination<'a>(&'a self, database: &'a str) -> Option<Destination<'a>> {
        for route in &self.routes {
            let Some(read_only) = &route.read_only else {
                continue;
            };
            let base = database.strip_suffix(read_only.suffix.as_str());
            let base = base.filter(|b| {
                !b.is_empty() && self.primary(b).is_some_and(|r| std::ptr::eq(r, route))
            });
            if let Some(base) = base {
                return Some(Destination {
                    route,
                    cluster: &read_only.cluster,
                    server_database: base,
                });
            }
        }
        self.primary(database).map(|route| Destination {
            route,
            cluster: &route.cluster,
            server_database: database,
        })
    }

    /// The route whose `auth_databases` claims `database`.
    fn primary(&self, database: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.databases.matches(database))
    }

    fn settings(
        &self,
        database: &str,
        user: &str,
        destination: &Destination<'_>,
        password: &str,
    ) -> crate::config::TenantSettings {
        self.defaults.dynamic_tenant(
            database,
            user,
            &destination.cluster.name,
            destination.server_database,
            Secret::from_value(password),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    const ROUTES: &str = r#"
[clusters.writer]
host = "127.0.0.1"
auth_user = "pgbouncer"
auth_password = "secret"
auth_databases = "*"
read_only_suffix = "-ro"
read_only_cluster = "reader"

[clusters.reader]
host = "127.0.0.2"

[clusters.billing]
host = "127.0.0.3"
auth_user = "pgbouncer"
auth_password = "secret"
auth_databases = ["billing"]
"#;

    #[tokio::test]
    async fn databases_route_to_their_cluster_and_read_only_names_to_the_reader() {
        let config = config(ROUTES);
        let clusters: BTreeMap<String, Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|(name, c)| (name.clone(), Cluster::new(name, c).unwrap()))
            .collect();
        let dynamic = DynamicTenants::build(&config, &clusters, None, |_, _| false);
        let route = |database: &str| {
            dynamic
                .destination(database)
                .map(|d| (d.cluster.name.clone(), d.server_database.to_owned()))
        };
        assert_eq!(route("cloud_1"), Some(("writer".into(), "cloud_1".into())));
        assert_eq!(
            route("cloud_1-ro"),
            Some(("reader".into(), "cloud_1".into()))
        );
        assert_eq!(route("billing"), Some(("billing".into(), "billing".into())));
        // billing has no read-only route: "billing-ro" is just another database.
        assert_eq!(
            route("billing-ro"),
            Some(("writer".into(), "billing-ro".into()))
        );
        assert_eq!(route("-ro"), Some(("writer".into(), "-ro".into())));
        assert!(dynamic.serves("anything"));
        assert!(dynamic.get("cloud_1", "alice").is_none());
        assert_eq!(
            dynamic.shortest_idle_timeout(),
            Some(Duration::from_secs(3600))
        );
    }
}
