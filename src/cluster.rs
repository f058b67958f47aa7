//! Clusters: one PostgreSQL endpoint, the connection budget (`max_server_connections`)
//! all its tenants share, and the per-cluster metrics (histograms and counters through
//! the `metrics` facade, with handles resolved once so the hot path only records).

use crate::config;
use crate::tls::{ServerTls, TlsError};
use arc_swap::ArcSwapOption;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a server connection was closed, the `reason` label of disconnect counts.
#[derive(Debug, Clone, Copy)]
pub enum Disconnect {
    IdleTimeout,
    Lifetime,
    Broken,
    ResetFailed,
    Removed,
}

impl Disconnect {
    const ALL: [Disconnect; 5] = [
        Disconnect::IdleTimeout,
        Disconnect::Lifetime,
        Disconnect::Broken,
        Disconnect::ResetFailed,
        Disconnect::Removed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Disconnect::IdleTimeout => "idle_timeout",
            Disconnect::Lifetime => "lifetime",
            Disconnect::Broken => "broken",
            Disconnect::ResetFailed => "reset_failed",
            Disconnect::Removed => "removed",
        }
    }
}

/// Metric handles of one cluster.
pub struct ClusterMetrics {
    pub pool_wait: Histogram,
    pub query: Histogram,
    pub transaction: Histogram,
    pub connects: Counter,
    pub connect_failures: Counter,
    disconnects: [Counter; 5],
    used: Gauge,
    up: Gauge,
}

impl ClusterMetrics {
    pub fn disconnected(&self, reason: Disconnect) {
        self.disconnects[reason as usize].increment(1);
    }
}

pub struct Cluster {
    pub name: String,
    /// How new connections to this server are secured; `None` for plain TCP. Rebuilt
    /// on every reload, so a rotated CA file is read again.
    pub tls: ArcSwapOption<ServerTls>,
    pub host: String,
    pub port: u16,
    pub max_server_connections: AtomicU32,
    /// One permit per server connection, held by the connection itself.
    pub budget: Arc<Semaphore>,
    pub metrics: ClusterMetrics,
    reachable: AtomicBool,
    /// Permits still to take back after the budget shrank below what was in use.
    debt: AtomicUsize,
}

/// A server connection's place in its cluster's budget. When the budget has shrunk
/// below what is in use, a returned place is retired instead of freed.
pub struct BudgetPermit {
    permit: Option<OwnedSemaphorePermit>,
    cluster: Arc<Cluster>,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            if self.cluster.take_debt() {
                permit.forget();
            }
        }
    }
}

impl Cluster {
    pub fn new(name: &str, config: &config::Cluster) -> Result<Arc<Self>, TlsError> {
        let tls = ServerTls::load(config)?;
        let label = ("cluster", name.to_owned());
        let metrics = ClusterMetrics {
            pool_wait: histogram!("sluice_pool_wait_seconds", std::slice::from_ref(&label)),
            query: histogram!(
                "sluice_query_duration_seconds",
                std::slice::from_ref(&label)
            ),
            transaction: histogram!(
                "sluice_transaction_duration_seconds",
                std::slice::from_ref(&label)
            ),
            connects: counter!("sluice_server_connects_total", std::slice::from_ref(&label)),
            connect_failures: counter!(
                "sluice_server_connect_failures_total",
                std::slice::from_ref(&label)
            ),
            disconnects: Disconnect::ALL.map(|reason| {
                counter!(
                    "sluice_server_disconnects_total",
                    &[label.clone(), ("reason", reason.as_str().to_owned())]
                )
            }),
            used: gauge!(
                "sluice_cluster_server_connections",
                std::slice::from_ref(&label)
            ),
            up: gauge!("sluice_cluster_up", std::slice::from_ref(&label)),
        };
        gauge!(
            "sluice_cluster_max_server_connections",
            std::slice::from_ref(&label)
        )
        .set(f64::from(config.max_server_connections));
        metrics.up.set(1.0);
        Ok(Arc::new(Cluster {
            name: name.to_owned(),
            tls: ArcSwapOption::new(tls),
            host: config.host.clone(),
            port: config.port,
            max_server_connections: AtomicU32::new(config.max_server_connections),
            budget: Arc::new(Semaphore::new(config.max_server_connections as usize)),
            metrics,
            reachable: AtomicBool::new(true),
            debt: AtomicUsize::new(0),
        }))
    }

    /// True when `config` names this same endpoint.
    pub fn is_same_endpoint(&self, config: &config::Cluster) -> bool {
        self.host == config.host && self.port == config.port
    }

    /// Applies the TLS settings of a reloaded configuration to new connections.
    pub fn reload_tls(&self, config: &config::Cluster) -> Result<(), TlsError> {
        self.tls.store(ServerTls::load(config)?);
        Ok(())
    }

    /// Applies a new `max_server_connections`. Shrinking takes back only permits that are
    /// free now; the rest of the reduction happens as connections close.
    pub fn resize(&self, max: u32) {
        let old = self.max_server_connections.swap(max, Ordering::Relaxed);
        if max > old {
            let repaid = self.repay((max - old) as usize);
            self.budget.add_permits((max - old) as usize - repaid);
        } else {
            let shrink = (old - max) as usize;
            let taken = self.budget.forget_permits(shrink);
            self.debt.fetch_add(shrink - taken, Ordering::Relaxed);
        }
        gauge!("sluice_cluster_max_server_connections", "cluster" => self.name.clone())
            .set(f64::from(max));
    }

    /// Waits for a free place in the budget; the permit travels with the connection.
    pub async fn acquire(self: &Arc<Self>) -> Result<BudgetPermit, crate::server::ConnectError> {
        let permit = self
            .budget
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| crate::server::ConnectError::BudgetClosed)?;
        Ok(BudgetPermit {
            permit: Some(permit),
            cluster: self.clone(),
        })
    }

    /// Server connections open or opening: the part of the budget in use.
    pub fn used(&self) -> u32 {
        let max = self.max_server_connections.load(Ordering::Relaxed) as usize;
        let owed = self.debt.load(Ordering::Relaxed);
        (max + owed).saturating_sub(self.budget.available_permits()) as u32
    }

    /// Cancels up to `n` permits still owed after a shrink; returns how many.
    fn repay(&self, n: usize) -> usize {
        let mut repaid = 0;
        while repaid < n && self.take_debt() {
            repaid += 1;
        }
        repaid
    }

    fn take_debt(&self) -> bool {
        self.debt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1))
            .is_ok()
    }

    /// Refreshes the gauges that are read rather than counted (before a scrape).
    pub fn refresh_gauges(&self) {
        self.metrics.used.set(f64::from(self.used()));
    }

    pub fn connect_succeeded(&self) {
        self.metrics.connects.increment(1);
        self.reachable.store(true, Ordering::Relaxed);
        self.metrics.up.set(1.0);
    }

    pub fn connect_failed(&self) {
        self.metrics.connect_failures.increment(1);
        self.reachable.store(false, Ordering::Relaxed);
        self.metrics.up.set(0.0);
    }

    /// False after a failed connect, until a connect succeeds again.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }
}
