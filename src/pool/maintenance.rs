//! Pool maintenance, in one task for every pool: closes idle server connections past
//! `server_idle_timeout` or `server_lifetime`, and tops pools up to `min_pool_size`. It runs
//! every 10 s, or more often when a timeout is shorter, so each expires on time to within
//! half of it. There is no task or timer per pool.
//!
//! Which pools exist is not this module's business: the caller's registry (the tenants)
//! lists them through [`Registry`], and is asked to tidy itself after each round.

use super::Pool;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

/// Longest pause between two rounds of maintenance.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// Shortest pause between two rounds, whatever the timeouts.
const SHORTEST_INTERVAL: Duration = Duration::from_millis(100);

/// How one pool is kept.
pub struct Upkeep {
    /// Idle connections unused this long are closed; zero: never.
    pub idle_timeout: Duration,
    /// Connections kept open, from places the budget can spare.
    pub min_size: usize,
}

/// Something that owns a pool maintenance looks after; displayed in logs.
pub trait Maintained: Display + Send + Sync {
    fn pool(&self) -> &Arc<Pool>;
    fn upkeep(&self) -> Upkeep;
}

/// Where maintenance finds the pools.
pub trait Registry: Send + Sync {
    /// Every pool to look after now.
    fn members(&self) -> Vec<Arc<dyn Maintained>>;
    /// Called after each round.
    fn after_round(&self);
}

/// The pause between rounds for pools with these timeouts (zero ones are off).
pub fn interval(timeouts: impl IntoIterator<Item = Duration>) -> Duration {
    timeouts
        .into_iter()
        .filter(|d| !d.is_zero())
        .min()
        .map_or(MAINTENANCE_INTERVAL, |d| (d / 2).max(SHORTEST_INTERVAL))
        .min(MAINTENANCE_INTERVAL)
}

/// Runs maintenance rounds every `every`, on the registry `current` returns at each round.
pub async fn run<R: Registry + ?Sized>(current: impl Fn() -> Arc<R>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let registry = current();
        for member in registry.members() {
            let pool = member.pool();
            let upkeep = member.upkeep();
            let closed = pool.close_expired(upkeep.idle_timeout);
            if closed > 0 {
                tracing::debug!(tenant = %member, closed, "closed expired idle server connections");
            }
            if upkeep.min_size > 0 {
                if let Err(e) = pool.warm(upkeep.min_size).await {
                    tracing::warn!(tenant = %member, error = %e, "could not open min_pool_size connections");
                }
            }
        }
        registry.after_round();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_halves_the_shortest_timeout_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(interval([]), s(10));
        assert_eq!(interval([s(0), s(600)]), s(10));
        assert_eq!(interval([s(600), s(4)]), s(2));
        assert_eq!(interval([Duration::from_millis(50)]), SHORTEST_INTERVAL);
    }
}
