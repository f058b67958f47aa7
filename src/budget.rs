//! A cluster's connection budget (`max_server_connections`) and who gets it.
//!
//! A place in the budget is a [`Slot`], taken before a server connection is opened and
//! held by the connection until it closes, so connections being opened count too.
//! When the budget is full, tenants that need a connection queue here, each tenant
//! once, and freed places go to them round-robin: one place per turn. A queued tenant
//! also makes room by closing the longest-idle connection of another tenant, and a
//! tenant holding more than its fair share (`max / tenants holding or waiting`) gives
//! its connections up as it returns them while others wait (see `Pool::give_back`).
//! New connections are paced to `max_connects_per_second`.
//!
//! Locking: every pool has a mutex and the budget has one. Code may take the budget's
//! lock while holding a pool's, never the reverse, and never holds two pools' locks.
//! A `ServerConn` (and so a `Slot`) is never dropped under either lock: its drop takes
//! both.

use crate::cluster::{Cluster, Disconnect};
use crate::pool::{OldestIdle, Pool, PoolState, YIELD_AFTER};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

/// How long a connection of a tenant at or under its fair share must have been idle
/// before a tenant over its own share may close it: short gaps between a quiet
/// tenant's queries must not cost it its connection.
const EVICTION_GRACE: Duration = Duration::from_secs(1);

pub struct Budget {
    state: Mutex<State>,
    /// Length of the queue, read without the lock when a connection is returned.
    queued: AtomicUsize,
    /// Tenants holding a place or queued for one, for the fair share.
    demand: AtomicUsize,
    /// Places taken: connections open or being opened. Changed only under the lock,
    /// read without it.
    open: AtomicUsize,
    /// `max_server_connections`; changed only under the lock, read without it.
    max: AtomicUsize,
    /// Nanoseconds between two connection openings; 0: no pacing.
    connect_interval_nanos: AtomicU64,
    /// When the next connection may be opened; on tokio's clock, which pacing sleeps on.
    next_connect: Mutex<tokio::time::Instant>,
}

struct State {
    /// Tenants waiting for a place, each at most once (`Pool::queued`).
    queue: VecDeque<Arc<Pool>>,
    /// Tenants holding at least one place, by pool id: where eviction looks.
    holders: HashMap<u64, Weak<Pool>>,
}

/// One place in a cluster's budget, held by a server connection (or one being opened).
/// Dropping it frees the place, which goes to the next queued tenant.
pub struct Slot {
    /// `None` once the place has been given back.
    cluster: Option<Arc<Cluster>>,
    /// The pool whose `open` count includes this place; dangling while uncounted.
    pool: Weak<Pool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(cluster) = self.cluster.take() else {
            return;
        };
        if let Some(pool) = self.pool.upgrade() {
            pool.place_freed();
        }
        cluster.budget.release();
        cluster.budget.hand_out(&cluster);
    }
}

impl Slot {
    fn new(cluster: &Arc<Cluster>) -> Self {
        Slot {
            cluster: Some(cluster.clone()),
            pool: Weak::new(),
        }
    }

    /// Records that `pool`'s open count now includes this place.
    pub(crate) fn counted_in(&mut self, pool: &Arc<Pool>) {
        self.pool = Arc::downgrade(pool);
    }

    /// Forgets that a pool counted this place (the caller has uncounted it).
    pub(crate) fn uncounted(&mut self) {
        self.pool = Weak::new();
    }
}

#[cfg(test)]
impl Slot {
    /// A place taken outside any pool, for tests that open one connection by hand.
    pub(crate) fn taken(cluster: &Arc<Cluster>) -> Slot {
        let _budget = cluster.budget.lock();
        cluster.budget.open.fetch_add(1, Relaxed);
        Slot::new(cluster)
    }
}

impl Budget {
    pub fn new(max: u32, max_connects_per_second: u32) -> Self {
        let max = max as usize;
        Budget {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                holders: HashMap::new(),
            }),
            queued: AtomicUsize::new(0),
            demand: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            connect_interval_nanos: AtomicU64::new(interval_nanos(max_connects_per_second)),
            next_connect: Mutex::new(tokio::time::Instant::now()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a reloaded `max_server_connections` and `max_connects_per_second`. A
    /// smaller budget closes idle connections over it at once, and the rest as they
    /// are returned.
    pub fn reconfigure(&self, cluster: &Arc<Cluster>, max: u32, max_connects_per_second: u32) {
        self.connect_interval_nanos
            .store(interval_nanos(max_connects_per_second), Relaxed);
        {
            let _budget = self.lock();
            self.max.store(max as usize, Relaxed);
        }
        self.shed_excess();
        self.hand_out(cluster);
    }

    /// `max_server_connections` now.
    pub fn max(&self) -> usize {
        self.max.load(Relaxed)
    }

    /// Places in use: connections open or being opened.
    pub fn used(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// True while more places are taken than the budget has (it shrank on reload).
    pub fn over_budget(&self) -> bool {
        self.open.load(Relaxed) > self.max.load(Relaxed)
    }

    /// Tenants waiting for a place.
    pub fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    /// True when `open` places are more than a fair share for one tenant.
    pub fn over_fair_share(&self, open: usize) -> bool {
        open * self.demand.load(Relaxed).max(1) > self.max.load(Relaxed)
    }

    /// A place for `pool` if one is free and no tenant is queued; otherwise queues
    /// `pool` (once) and returns `None`. Called with `pool`'s lock held (`state`); on
    /// success the place is already counted in `state.open`, else in `state.asked`.
    pub(crate) fn take_or_queue(
        &self,
        cluster: &Arc<Cluster>,
        pool: &Arc<Pool>,
        state: &mut PoolState,
    ) -> Option<Slot> {
        let mut budget = self.lock();
        if self.has_free_place(&budget) {
            self.open.fetch_add(1, Relaxed);
            Some(self.count(&mut budget, cluster, pool, state))
        } else {
            state.asked += 1;
            self.enqueue(&mut budget, pool);
            None
        }
    }

    /// True when a place is free and no tenant is queued for one.
    fn has_free_place(&self, budget: &State) -> bool {
        self.open.load(Relaxed) < self.max.load(Relaxed) && budget.queue.is_empty()
    }

    /// Puts `pool` at the back of the queue unless it is queued already.
    fn enqueue(&self, budget: &mut State, pool: &Arc<Pool>) {
        if pool.queued.swap(true, Relaxed) {
            return;
        }
        if !budget.holders.contains_key(&pool.id) {
            self.demand.fetch_add(1, Relaxed);
        }
        budget.queue.push_back(pool.clone());
        self.queued.store(budget.queue.len(), Relaxed);
    }

    /// A free place for `pool` when no tenant is queued, else `None` (used to keep
    /// `min_pool_size` warm only when the budget allows). `pool`'s lock is held.
    pub(crate) fn take_spare(
        &self,
        cluster: &Arc<Cluster>,
        pool: &Arc<Pool>,
        state: &mut PoolState,
    ) -> Option<Slot> {
        let mut budget = self.lock();
        (self.has_free_place(&budget)).then(|| {
            self.open.fetch_add(1, Relaxed);
            self.count(&mut budget, cluster, pool, state)
        })
    }

    fn count(
        &self,
        budget: &mut State,
        cluster: &Arc<Cluster>,
        pool: &Arc<Pool>,
        state: &mut PoolState,
    ) -> Slot {
        let mut slot = Slot::new(cluster);
        slot.counted_in(pool);
        state.open += 1;
        if state.open == 1 {
            self.insert_holder(budget, pool);
        }
        slot
    }

    fn insert_holder(&self, budget: &mut State, pool: &Arc<Pool>) {
        let new = budget
            .holders
            .insert(pool.id, Arc::downgrade(pool))
            .is_none();
        if new && !pool.queued.load(Relaxed) {
            self.demand.fetch_add(1, Relaxed);
        }
    }

    /// `pool` now holds a place again (its count went from 0 to 1 outside `count`).
    pub(crate) fn add_holder(&self, pool: &Arc<Pool>) {
        let mut budget = self.lock();
        self.insert_holder(&mut budget, pool);
    }

    /// `pool` holds no place any more.
    pub(crate) fn remove_holder(&self, pool: &Pool) {
        let mut budget = self.lock();
        if budget.holders.remove(&pool.id).is_some() && !pool.queued.load(Relaxed) {
            self.demand.fetch_sub(1, Relaxed);
        }
    }

    fn release(&self) {
        let _budget = self.lock();
        self.open.fetch_sub(1, Relaxed);
    }

    /// Gives free places to queued tenants, one per tenant per turn.
    fn hand_out(&self, cluster: &Arc<Cluster>) {
        let mut unused: Option<Slot> = None;
        loop {
            let pool = {
                let mut budget = self.lock();
                if let Some(mut slot) = unused.take() {
                    // Given back without a drop, which would re-enter this loop.
                    slot.cluster = None;
                    self.open.fetch_sub(1, Relaxed);
                }
                if self.open.load(Relaxed) >= self.max.load(Relaxed) {
                    return;
                }
                let Some(pool) = budget.queue.pop_front() else {
                    return;
                };
                pool.queued.store(false, Relaxed);
                if !budget.holders.contains_key(&pool.id) {
                    self.demand.fetch_sub(1, Relaxed);
                }
                self.queued.store(budget.queue.len(), Relaxed);
                self.open.fetch_add(1, Relaxed);
                pool
            };
            match pool.accept(Slot::new(cluster)) {
                Ok(wants_more) => {
                    if wants_more {
                        self.enqueue(&mut self.lock(), &pool);
                    }
                }
                Err(slot) => unused = Some(slot),
            }
        }
    }

    /// Closes the longest-idle connection of another tenant, so that its place goes to
    /// the queue; `requester` (queued) has `requester_open` places. A tenant under its
    /// fair share may take any idle connection. One at or over its share may take a
    /// connection idle for [`EVICTION_GRACE`], or one of a tenant over its share that has
    /// had it for [`YIELD_AFTER`] (as long as a tenant keeps a new connection before it
    /// yields it on return). Returns whether a connection was closed.
    pub(crate) fn make_room(&self, requester: &Arc<Pool>, requester_open: usize) -> bool {
        let requester_over = self.over_fair_share(requester_open + 1);
        let now = Instant::now();
        self.evict_longest_idle(Some(requester.id), |victim| {
            !requester_over
                || now.duration_since(victim.since) >= EVICTION_GRACE
                || (self.over_fair_share(victim.open)
                    && now.duration_since(victim.opened_at) >= YIELD_AFTER)
        })
    }

    /// Closes idle connections, longest idle first, while more places are taken than
    /// the budget has (after it shrank on reload).
    fn shed_excess(&self) {
        while self.used() > self.max.load(Relaxed) {
            if !self.evict_longest_idle(None, |_| true) {
                return;
            }
        }
    }

    /// Closes the longest-idle connection among the pools other than `except` for
    /// which `allowed`; returns whether it did.
    fn evict_longest_idle(
        &self,
        except: Option<u64>,
        allowed: impl Fn(&OldestIdle) -> bool,
    ) -> bool {
        let holders: Vec<Arc<Pool>> = {
            let budget = self.lock();
            budget
                .holders
                .iter()
                .filter(|(&id, _)| Some(id) != except)
                .filter_map(|(_, pool)| pool.upgrade())
                .collect()
        };
        let victim = holders
            .into_iter()
            .filter_map(|pool| {
                let oldest = pool.oldest_idle()?;
                allowed(&oldest).then_some((oldest.since, pool))
            })
            .min_by_key(|(since, _)| *since);
        let Some((since, pool)) = victim else {
            return false;
        };
        match pool.evict_idle_since(since) {
            Some(conn) => {
                pool.cluster().metrics.disconnected(Disconnect::Evicted);
                drop(conn);
                true
            }
            None => false,
        }
    }

    /// Waits until this cluster may open another connection under
    /// `max_connects_per_second`. Each caller reserves the next opening time, so the
    /// openings are spaced evenly whatever the concurrency.
    pub async fn pace(&self) {
        let interval = self.connect_interval_nanos.load(Relaxed);
        if interval == 0 {
            return;
        }
        let now = tokio::time::Instant::now();
        let at = {
            let mut next = self
                .next_connect
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let at = (*next).max(now);
            *next = at + Duration::from_nanos(interval);
            at
        };
        if at > now {
            tokio::time::sleep_until(at).await;
        }
    }
}

fn interval_nanos(per_second: u32) -> u64 {
    if per_second == 0 {
        0
    } else {
        1_000_000_000 / u64::from(per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Toml};

    fn cluster(max: u32, per_second: u32) -> Arc<Cluster> {
        let toml = format!(
            "host = \"127.0.0.1\"\nmax_server_connections = {max}\n\
             max_connects_per_second = {per_second}\n"
        );
        let settings: crate::config::Cluster = figment::Figment::from(Toml::string(&toml))
            .extract()
            .expect("cluster settings");
        Cluster::new("unit", &settings).expect("cluster")
    }

    #[test]
    fn the_fair_share_divides_the_budget_among_tenants_with_demand() {
        let cluster = cluster(12, 0);
        let budget = &cluster.budget;
        // No demand counted yet: one tenant may have it all.
        assert!(!budget.over_fair_share(12));
        assert!(budget.over_fair_share(13));
        budget.demand.store(11, Relaxed);
        assert!(!budget.over_fair_share(1), "12/11 is more than 1");
        assert!(budget.over_fair_share(2));
        budget.demand.store(20, Relaxed);
        assert!(budget.over_fair_share(1), "12/20 is less than 1");
        assert!(!budget.over_fair_share(0));
    }

    #[test]
    fn places_are_counted_while_held_and_over_budget_after_a_shrink() {
        let cluster = cluster(2, 0);
        let (first, second) = (Slot::taken(&cluster), Slot::taken(&cluster));
        assert_eq!(cluster.budget.used(), 2);
        assert!(!cluster.budget.over_budget());
        cluster.budget.reconfigure(&cluster, 1, 0);
        assert!(cluster.budget.over_budget());
        drop(first);
        assert!(!cluster.budget.over_budget());
        drop(second);
        assert_eq!(cluster.budget.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn openings_are_spaced_by_the_connect_rate() {
        let cluster = cluster(10, 20);
        let started = tokio::time::Instant::now();
        for _ in 0..5 {
            cluster.budget.pace().await;
        }
        // The first goes at once, then one every 50 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn no_rate_means_no_pacing() {
        let cluster = cluster(10, 0);
        let started = tokio::time::Instant::now();
        for _ in 0..100 {
            cluster.budget.pace().await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
