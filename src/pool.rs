//! A tenant's pool of server connections, built on deadpool's managed pool.
//!
//! Checkout order is LIFO so hot connections are reused and cold ones age out; waiters
//! queue FIFO on deadpool's fair semaphore. Every new connection first takes a permit
//! from its cluster's budget (`max_server_connections`), held by the connection itself.
//! Recycling does no I/O: it only checks that the idle socket is still open and silent.

use crate::cluster::{Cluster, Disconnect};
use crate::server::{connect, ConnectError, ServerConn, ServerTarget};
use crate::stats::{ServerRegistry, TenantStats};
use deadpool::managed::{self, Metrics, QueueMode, RecycleError, RecycleResult, Timeouts};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

pub type ServerPool = managed::Pool<ServerManager>;
/// A leased server connection; dropping it returns the connection to its pool.
pub type PooledServer = managed::Object<ServerManager>;
pub type CheckoutError = managed::PoolError<ConnectError>;

/// What a tenant's pool shares with the rest of the tenant.
pub struct Shared {
    pub cluster: Arc<Cluster>,
    pub stats: Arc<TenantStats>,
    pub servers: Arc<ServerRegistry>,
}

/// Creates and vets server connections for one tenant.
pub struct ServerManager {
    target: ServerTarget,
    shared: Shared,
    /// `server_lifetime`; zero means unlimited.
    lifetime: Duration,
}

impl managed::Manager for ServerManager {
    type Type = ServerConn;
    type Error = ConnectError;

    async fn create(&self) -> Result<ServerConn, ConnectError> {
        let Shared {
            cluster,
            stats,
            servers,
        } = &self.shared;
        stats.servers_connecting.fetch_add(1, Relaxed);
        let opened = async {
            let permit = cluster.acquire().await?;
            connect(&self.target, cluster.tls.load_full(), permit, servers).await
        }
        .await;
        stats.servers_connecting.fetch_sub(1, Relaxed);
        match &opened {
            Ok(_) => cluster.connect_succeeded(),
            Err(_) => cluster.connect_failed(),
        }
        opened
    }

    async fn recycle(
        &self,
        conn: &mut ServerConn,
        metrics: &Metrics,
    ) -> RecycleResult<ConnectError> {
        let metrics_of_cluster = &self.shared.cluster.metrics;
        if !self.lifetime.is_zero() && metrics.age() >= self.lifetime {
            metrics_of_cluster.disconnected(Disconnect::Lifetime);
            return Err(RecycleError::message(
                "server connection reached server_lifetime",
            ));
        }
        if conn.is_reusable() {
            Ok(())
        } else {
            metrics_of_cluster.disconnected(Disconnect::Broken);
            Err(RecycleError::message(
                "server connection closed or sent unexpected data",
            ))
        }
    }
}

/// Builds a tenant's pool of at most `size` connections, each reused for at most
/// `lifetime` (zero: no limit).
pub fn build(target: ServerTarget, shared: Shared, size: usize, lifetime: Duration) -> ServerPool {
    let create_timeout = target.connect_timeout;
    ServerPool::builder(ServerManager {
        target,
        shared,
        lifetime,
    })
    .max_size(size)
    .queue_mode(QueueMode::Lifo)
    .create_timeout(Some(create_timeout))
    .runtime(deadpool::Runtime::Tokio1)
    .build()
    .expect("a runtime is set, so building the pool cannot fail")
}

/// Leases a server connection, waiting at most `wait` for a free slot.
pub async fn checkout(pool: &ServerPool, wait: Duration) -> Result<PooledServer, CheckoutError> {
    let timeouts = Timeouts {
        wait: Some(wait),
        ..pool.timeouts()
    };
    pool.timeout_get(&timeouts).await
}

/// Closes idle connections unused for `idle_timeout` or older than `lifetime` (zero
/// durations: no limit). Returns how many were closed.
pub fn close_expired(pool: &ServerPool, idle_timeout: Duration, lifetime: Duration) -> usize {
    if idle_timeout.is_zero() && lifetime.is_zero() {
        return 0;
    }
    let cluster = &pool.manager().shared.cluster;
    let result = pool.retain(|_, metrics| {
        let too_old = !lifetime.is_zero() && metrics.age() >= lifetime;
        let idle_too_long = !idle_timeout.is_zero() && metrics.last_used() >= idle_timeout;
        if too_old {
            cluster.metrics.disconnected(Disconnect::Lifetime);
        } else if idle_too_long {
            cluster.metrics.disconnected(Disconnect::IdleTimeout);
        }
        !too_old && !idle_too_long
    });
    result.removed.len()
}

/// Closes every idle connection of a tenant that is no longer configured.
pub fn close_idle(pool: &ServerPool) {
    let cluster = &pool.manager().shared.cluster;
    let result = pool.retain(|_, _| false);
    for _ in &result.removed {
        cluster.metrics.disconnected(Disconnect::Removed);
    }
}

/// Opens connections until the pool holds at least `min` (or a connect fails), by
/// leasing them all at once and returning them idle.
pub async fn warm(pool: &ServerPool, min: usize) -> Result<(), CheckoutError> {
    let mut held = Vec::with_capacity(min);
    while pool.status().size < min && held.len() < min {
        held.push(pool.get().await?);
    }
    Ok(())
}
