//! Clusters: one PostgreSQL endpoint (address and TLS), the connection budget
//! (`max_server_connections`, see `budget`) all its tenants share, and the per-cluster
//! metrics (histograms and counters through the `metrics` facade, with handles resolved once
//! so the hot path only records).
//!
//! Knows nothing of the tenants or pools that use it.

use super::budget::Budget;
use crate::config;
use crate::server::TcpOptions;
use crate::tls::{ServerTls, TlsError};
use arc_swap::{ArcSwap, ArcSwapOption};
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Why a server connection was closed, the `reason` label of disconnect counts.
#[derive(Debug, Clone, Copy)]
pub enum Disconnect {
    IdleTimeout,
    Lifetime,
    Broken,
    ResetFailed,
    Removed,
    /// Closed while idle to make room in the budget for another tenant.
    Evicted,
    /// Given up on return: other tenants were waiting for the budget, or it shrank.
    Yielded,
    /// The server sent what answered nothing sent to it.
    OutOfSync,
    /// The server did not answer in time (a query_timeout cancel, a parameter sync).
    Stalled,
}

impl Disconnect {
    const ALL: [Disconnect; 9] = [
        Disconnect::IdleTimeout,
        Disconnect::Lifetime,
        Disconnect::Broken,
        Disconnect::ResetFailed,
        Disconnect::Removed,
        Disconnect::Evicted,
        Disconnect::Yielded,
        Disconnect::OutOfSync,
        Disconnect::Stalled,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Disconnect::IdleTimeout => "idle_timeout",
            Disconnect::Lifetime => "lifetime",
            Disconnect::Broken => "broken",
            Disconnect::ResetFailed => "reset_failed",
            Disconnect::Removed => "removed",
            Disconnect::Evicted => "evicted",
            Disconnect::Yielded => "yielded",
            Disconnect::OutOfSync => "out_of_sync",
            Disconnect::Stalled => "stalled",
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
    /// Server connections closed because they went out of sync with their client.
    pub out_of_sync: Counter,
    disconnects: [Counter; 9],
    used: Gauge,
    queued: Gauge,
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
    /// Socket options of new connections; replaced on reload.
    pub tcp: ArcSwap<TcpOptions>,
    pub host: String,
    pub port: u16,
    pub budget: Arc<Budget>,
    pub metrics: ClusterMetrics,
    reachable: AtomicBool,
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
            out_of_sync: counter!(
                "sluice_server_out_of_sync_total",
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
            queued: gauge!(
                "sluice_cluster_waiting_tenants",
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
            tcp: ArcSwap::from_pointee(tcp_options(config)),
            host: config.host.clone(),
            port: config.port,
            budget: Budget::new(
                config.max_server_connections,
                config.max_connects_per_second,
            ),
            metrics,
            reachable: AtomicBool::new(true),
        }))
    }

    /// True when `config` names this same endpoint.
    pub fn is_same_endpoint(&self, config: &config::Cluster) -> bool {
        self.host == config.host && self.port == config.port
    }

    /// Applies the TLS and socket settings of a reloaded configuration to new connections.
    pub fn reload_connection_settings(&self, config: &config::Cluster) -> Result<(), TlsError> {
        self.tls.store(ServerTls::load(config)?);
        self.tcp.store(Arc::new(tcp_options(config)));
        Ok(())
    }

    /// Applies a reloaded budget: `max_server_connections` (a smaller one takes effect
    /// as connections close) and `max_connects_per_second`.
    pub fn resize(&self, config: &config::Cluster) {
        let max = config.max_server_connections;
        self.budget.reconfigure(max, config.max_connects_per_second);
        gauge!("sluice_cluster_max_server_connections", "cluster" => self.name.clone())
            .set(f64::from(max));
    }

    /// Server connections open or opening: the part of the budget in use.
    pub fn used(&self) -> u32 {
        self.budget.used() as u32
    }

    /// Refreshes the gauges that are read rather than counted (before a scrape).
    pub fn refresh_gauges(&self) {
        self.metrics.used.set(f64::from(self.used()));
        self.metrics.queued.set(self.budget.queued() as f64);
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

fn tcp_options(config: &config::Cluster) -> TcpOptions {
    TcpOptions {
        keepalive: config.server_tcp_keepalive,
        user_timeout: config.server_tcp_user_timeout,
    }
}
