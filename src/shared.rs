//! Process-wide state every task shares: the live configuration and tenants (swapped
//! whole on reload, so a session keeps the tenant it logged in with), the registry of
//! connected clients, the pause and drain switches, and the metrics handle; and applying a
//! reloaded configuration to all of it.
//!
//! Above the tenants and below everything that serves clients (sessions, the console, the
//! HTTP endpoint): nothing it uses may use it.

use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::lifecycle::{Drain, Pause};
use crate::server::parameters::RecentSets;
use crate::tenant::Tenants;
use crate::tls::{ClientTls, TlsError};
use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::Notify;
use tracing::info;

pub struct Shared {
    pub config: ArcSwap<Config>,
    /// TLS towards clients, rebuilt (certificate files re-read) on every reload.
    pub client_tls: ArcSwap<ClientTls>,
    pub config_path: PathBuf,
    pub tenants: ArcSwap<Tenants>,
    pub clients: Arc<CancelRegistry>,
    pub pause: Pause,
    pub drain: Drain,
    /// Wakes the main task to shut down (admin `SHUTDOWN`).
    pub shutdown: Notify,
    pub metrics: PrometheusHandle,
    pub started_at: SystemTime,
    /// Clients' session parameters, shared between equal sets.
    pub parameter_sets: RecentSets,
}

impl Shared {
    pub fn new(
        config: Config,
        config_path: PathBuf,
        metrics: PrometheusHandle,
    ) -> Result<Self, ReloadError> {
        let tenants = Tenants::build(&config, None)?;
        let client_tls = ClientTls::load(&config)?;
        Ok(Shared {
            client_tls: ArcSwap::from_pointee(client_tls),
            config: ArcSwap::from_pointee(config),
            config_path,
            tenants: ArcSwap::from_pointee(tenants),
            clients: Arc::new(CancelRegistry::default()),
            pause: Pause::default(),
            drain: Drain::default(),
            shutdown: Notify::new(),
            metrics,
            started_at: SystemTime::now(),
            parameter_sets: RecentSets::default(),
        })
    }

    /// Re-reads the configuration file. An invalid file changes nothing. Tenants and
    /// clusters whose settings are unchanged keep their pools; connected clients keep
    /// the tenant they logged in with; idle connections of removed tenants are closed.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let config = Config::load(&self.config_path)?;
        let old = self.tenants.load_full();
        let new = Tenants::build(&config, Some(&old))?;
        let client_tls = ClientTls::load(&config)?;
        for tenant in old.iter() {
            let (database, user) = (&tenant.settings.database, &tenant.settings.user);
            let found = new.lookup(database, user);
            if !found.as_ref().is_ok_and(|t| Arc::ptr_eq(t, &tenant)) {
                tenant.pool.retire();
            }
            // A dynamic tenant not carried over is made again at its next login, so its
            // clients stay while its database is still served.
            if found.is_err() && !new.dynamic.serves(database) {
                tenant.retired.start();
            }
        }
        self.tenants.store(Arc::new(new));
        self.client_tls.store(Arc::new(client_tls));
        let (clusters, tenants) = (config.clusters.len(), config.tenants.len());
        self.config.store(Arc::new(config));
        info!(clusters, tenants, "configuration reloaded");
        Ok(())
    }

    /// Ready for traffic: not draining, not paused, and some cluster reachable.
    pub fn is_ready(&self) -> bool {
        !self.drain.is_draining()
            && !self.pause.global.load(Relaxed)
            && self
                .tenants
                .load()
                .clusters
                .values()
                .any(|c| c.is_reachable())
    }
}

/// Why a configuration could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}
