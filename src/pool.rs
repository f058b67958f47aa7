//! A tenant's pool of server connections, built on deadpool's managed pool.
//!
//! Checkout order is LIFO so hot connections are reused and cold ones age out; waiters
//! queue FIFO on deadpool's fair semaphore. Every new connection first takes a permit
//! from its cluster's budget (`max_server_connections`), held by the connection itself.
//! Recycling does no I/O: it only checks that the idle socket is still open and silent.

use crate::server::{connect, ConnectError, ServerConn, ServerTarget};
use deadpool::managed::{self, Metrics, QueueMode, RecycleError, RecycleResult, Timeouts};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

pub type ServerPool = managed::Pool<ServerManager>;
/// A leased server connection; dropping it returns the connection to its pool.
pub type PooledServer = managed::Object<ServerManager>;
pub type CheckoutError = managed::PoolError<ConnectError>;

/// Creates and vets server connections for one tenant.
pub struct ServerManager {
    target: ServerTarget,
    budget: Arc<Semaphore>,
    /// `server_lifetime`; zero means unlimited.
    lifetime: Duration,
}

impl managed::Manager for ServerManager {
    type Type = ServerConn;
    type Error = ConnectError;

    async fn create(&self) -> Result<ServerConn, ConnectError> {
        let permit = self
            .budget
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ConnectError::BudgetClosed)?;
        connect(&self.target, permit).await
    }

    async fn recycle(
        &self,
        conn: &mut ServerConn,
        metrics: &Metrics,
    ) -> RecycleResult<ConnectError> {
        if !self.lifetime.is_zero() && metrics.age() >= self.lifetime {
            return Err(RecycleError::message(
                "server connection reached server_lifetime",
            ));
        }
        if conn.is_reusable() {
            Ok(())
        } else {
            Err(RecycleError::message(
                "server connection closed or sent unexpected data",
            ))
        }
    }
}

/// Builds a tenant's pool of at most `size` connections, each reused for at most
/// `lifetime` (zero: no limit).
pub fn build(
    target: ServerTarget,
    budget: Arc<Semaphore>,
    size: usize,
    lifetime: Duration,
) -> ServerPool {
    let create_timeout = target.connect_timeout;
    ServerPool::builder(ServerManager {
        target,
        budget,
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
    let result = pool.retain(|_, metrics| {
        (idle_timeout.is_zero() || metrics.last_used() < idle_timeout)
            && (lifetime.is_zero() || metrics.age() < lifetime)
    });
    result.removed.len()
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
