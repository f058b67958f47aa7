//! A cluster's connection budget (`max_server_connections`) and who gets it.
//!
//! A place in the budget is a [`Slot`], taken before a server connection is opened and
//! held (by the pool, next to the connection) until it closes, so connections being opened
//! count too. When the budget is full, claimants (tenants' pools) that need a place queue
//! here, each once, and freed places go to them round-robin: one place per turn. A queued
//! claimant also makes room by closing the longest-idle connection of another claimant,
//! and a claimant holding more than its fair share (`max / claimants holding or waiting`)
//! gives its connections up as it returns them while others wait (see `Pool::give_back`).
//! New connections are paced to `max_connects_per_second`.
//!
//! A leaf: the budget never sees a pool's state. It talks to claimants only through the
//! [`Claimant`] trait (accept a place, the longest-idle connection, evict it), and a `Slot`
//! knows only its budget.
//!
//! Locking: every claimant has its own lock and the budget has one. Code may take the
//! budget's lock while holding a claimant's, never the reverse, and never holds two
//! claimants' locks. The budget calls [`Claimant`] methods without its lock held, and a
//! `Slot` is never dropped under either lock: its drop takes the budget's.

use crate::locks::lock;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// How long a connection of a claimant at or under its fair share must have been idle
/// before a claimant over its own share may close it: short gaps between a quiet
/// tenant's queries must not cost it its connection.
const EVICTION_GRACE: Duration = Duration::from_secs(1);

/// How long a claimant over its fair share keeps a new connection for its own clients
/// while others wait: long enough to amortise opening it over many short transactions,
/// short enough that a waiting tenant gets its turn within a few transactions' time.
pub const YIELD_AFTER: Duration = Duration::from_millis(100);

/// What the budget asks of those who hold or wait for its places (a tenant's pool).
pub trait Claimant: Send + Sync {
    /// The budget's bookkeeping for this claimant.
    fn membership(&self) -> &Membership;
    /// A place handed out to this queued claimant. `Ok(wants_more)` when it took it, and
    /// whether it asks for another; `Err(slot)` when it has no use for it any more.
    fn accept(self: Arc<Self>, slot: Slot) -> Result<bool, Slot>;
    /// The claimant's longest-idle connection, if it has one.
    fn oldest_idle(&self) -> Option<OldestIdle>;
    /// Closes the longest-idle connection if it is still the one idle since `since`;
    /// returns whether it did.
    fn evict_idle_since(&self, since: Instant) -> bool;
}

/// A claimant's entry in its budget's books, held by the claimant.
pub struct Membership {
    id: u64,
    /// In the budget's queue; changed only under the budget's lock.
    queued: AtomicBool,
}

static NEXT_CLAIMANT_ID: AtomicU64 = AtomicU64::new(1);

impl Default for Membership {
    fn default() -> Self {
        Membership {
            id: NEXT_CLAIMANT_ID.fetch_add(1, Relaxed),
            queued: AtomicBool::new(false),
        }
    }
}

impl Membership {
    /// True while the claimant waits in the budget's queue.
    pub fn is_queued(&self) -> bool {
        self.queued.load(Relaxed)
    }
}

/// A claimant's longest-idle connection, as eviction weighs it.
pub struct OldestIdle {
    pub since: Instant,
    pub opened_at: Instant,
    /// Places the claimant holds.
    pub open: usize,
}

/// What a claim does when no place is free.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Queue for the next freed place.
    Queue,
    /// Give up (keeping `min_pool_size` warm only from spare places).
    GiveUp,
}

pub struct Budget {
    state: Mutex<State>,
    /// Length of the queue, read without the lock when a connection is returned.
    queued: AtomicUsize,
    /// Claimants holding a place or queued for one, for the fair share.
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
    /// Claimants waiting for a place, each at most once (`Membership::queued`).
    queue: VecDeque<Arc<dyn Claimant>>,
    /// Claimants holding at least one place, by id: where eviction looks.
    holders: HashMap<u64, Weak<dyn Claimant>>,
}

/// One place in a budget, held for a server connection (or one being opened). Dropping
/// it frees the place, which goes to the next queued claimant.
pub struct Slot {
    /// `None` once the place has been given back.
    budget: Option<Arc<Budget>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            budget.release();
            budget.hand_out();
        }
    }
}

impl Slot {
    fn new(budget: &Arc<Budget>) -> Self {
        Slot {
            budget: Some(budget.clone()),
        }
    }

    /// A slot that holds no place (dropping it does nothing).
    pub fn none() -> Self {
        Slot { budget: None }
    }
}

#[cfg(test)]
impl Slot {
    /// A place taken outside any claimant, for tests.
    pub(crate) fn taken(budget: &Arc<Budget>) -> Slot {
        let _state = budget.lock();
        budget.open.fetch_add(1, Relaxed);
        Slot::new(budget)
    }
}

impl Budget {
    pub fn new(max: u32, max_connects_per_second: u32) -> Arc<Self> {
        Arc::new(Budget {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                holders: HashMap::new(),
            }),
            queued: AtomicUsize::new(0),
            demand: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max as usize),
            connect_interval_nanos: AtomicU64::new(interval_nanos(max_connects_per_second)),
            next_connect: Mutex::new(tokio::time::Instant::now()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Applies a reloaded `max_server_connections` and `max_connects_per_second`. A
    /// smaller budget closes idle connections over it at once, and the rest as they
    /// are returned.
    pub fn reconfigure(self: &Arc<Self>, max: u32, max_connects_per_second: u32) {
        self.connect_interval_nanos
            .store(interval_nanos(max_connects_per_second), Relaxed);
        {
            let _state = self.lock();
            self.max.store(max as usize, Relaxed);
        }
        self.shed_excess();
        self.hand_out();
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

    /// Claimants waiting for a place.
    pub fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    /// True when `open` places are more than a fair share for one claimant.
    pub fn over_fair_share(&self, open: usize) -> bool {
        open * self.demand.load(Relaxed).max(1) > self.max.load(Relaxed)
    }

    /// A place for `claimant` if one is free and no one is queued; otherwise, with
    /// [`WhenFull::Queue`], queues `claimant` (once). `holds_none`: it holds no place yet,
    /// so with this one it becomes a holder. Called under the claimant's own lock.
    pub fn claim<C: Claimant + 'static>(
        self: &Arc<Self>,
        claimant: &Arc<C>,
        holds_none: bool,
        when_full: WhenFull,
    ) -> Option<Slot> {
        let mut state = self.lock();
        let free = self.open.load(Relaxed) < self.max.load(Relaxed) && state.queue.is_empty();
        if free {
            self.open.fetch_add(1, Relaxed);
            if holds_none {
                self.insert_holder(&mut state, claimant.clone());
            }
            return Some(Slot::new(self));
        }
        if when_full == WhenFull::Queue {
            self.enqueue(&mut state, claimant.clone());
        }
        None
    }

    /// Puts `claimant` at the back of the queue unless it is queued already.
    fn enqueue(&self, state: &mut State, claimant: Arc<dyn Claimant>) {
        let membership = claimant.membership();
        if membership.queued.swap(true, Relaxed) {
            return;
        }
        if !state.holders.contains_key(&membership.id) {
            self.demand.fetch_add(1, Relaxed);
        }
        state.queue.push_back(claimant);
        self.queued.store(state.queue.len(), Relaxed);
    }

    fn insert_holder(&self, state: &mut State, claimant: Arc<dyn Claimant>) {
        let membership = claimant.membership();
        let new = state
            .holders
            .insert(membership.id, Arc::downgrade(&claimant))
            .is_none();
        if new && !membership.is_queued() {
            self.demand.fetch_add(1, Relaxed);
        }
    }

    /// `claimant` holds a place again (its count went from 0 to 1 outside `claim`).
    pub fn add_holder<C: Claimant + 'static>(&self, claimant: &Arc<C>) {
        self.insert_holder(&mut self.lock(), claimant.clone());
    }

    /// The claimant of `membership` no longer wants a place (no client of it waits any
    /// more): it leaves the queue. A claimant left there would count in every fair share
    /// and make others yield their connections to it, only to hand the place back.
    pub fn withdraw(&self, membership: &Membership) {
        let mut state = self.lock();
        if !membership.queued.swap(false, Relaxed) {
            return;
        }
        // Queued at most once (`Membership::queued`).
        let at = state
            .queue
            .iter()
            .position(|c| c.membership().id == membership.id);
        let removed = at.and_then(|at| state.queue.remove(at));
        if !state.holders.contains_key(&membership.id) {
            self.demand.fetch_sub(1, Relaxed);
        }
        self.queued.store(state.queue.len(), Relaxed);
        drop(state);
        // Dropped outside the lock: were it the claimant's last reference, its drop
        // would take the lock.
        drop(removed);
    }

    /// The claimant of `membership` holds no place any more.
    pub fn remove_holder(&self, membership: &Membership) {
        let mut state = self.lock();
        if state.holders.remove(&membership.id).is_some() && !membership.is_queued() {
            self.demand.fetch_sub(1, Relaxed);
        }
    }

    fn release(&self) {
        let _state = self.lock();
        self.open.fetch_sub(1, Relaxed);
    }

    /// Gives free places to queued claimants, one per claimant per turn.
    fn hand_out(self: &Arc<Self>) {
        let mut unused: Option<Slot> = None;
        loop {
            let claimant = {
                let mut state = self.lock();
                if let Some(mut slot) = unused.take() {
                    // Given back without a drop, which would re-enter this loop.
                    slot.budget = None;
                    self.open.fetch_sub(1, Relaxed);
                }
                if self.open.load(Relaxed) >= self.max.load(Relaxed) {
                    return;
                }
                let Some(claimant) = state.queue.pop_front() else {
                    return;
                };
                let membership = claimant.membership();
                membership.queued.store(false, Relaxed);
                if !state.holders.contains_key(&membership.id) {
                    self.demand.fetch_sub(1, Relaxed);
                }
                self.queued.store(state.queue.len(), Relaxed);
                self.open.fetch_add(1, Relaxed);
                claimant
            };
            match claimant.clone().accept(Slot::new(self)) {
                Ok(true) => self.enqueue(&mut self.lock(), claimant),
                Ok(false) => {}
                Err(slot) => unused = Some(slot),
            }
        }
    }

    /// Closes the longest-idle connection of another claimant, so that its place goes
    /// to the queue; the requester (queued) has `requester_open` places. A claimant under
    /// its fair share may take any idle connection. One at or over its share may take a
    /// connection idle for [`EVICTION_GRACE`], or one of a claimant over its share that has
    /// had it for [`YIELD_AFTER`] (as long as a claimant keeps a new connection before it
    /// yields it on return). Returns whether a connection was closed.
    pub fn make_room(&self, requester: &Membership, requester_open: usize) -> bool {
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

    /// Closes the longest-idle connection among the claimants other than `except` for
    /// which `allowed`; returns whether it did.
    fn evict_longest_idle(
        &self,
        except: Option<u64>,
        allowed: impl Fn(&OldestIdle) -> bool,
    ) -> bool {
        let holders: Vec<Arc<dyn Claimant>> = {
            let state = self.lock();
            state
                .holders
                .iter()
                .filter(|(&id, _)| Some(id) != except)
                .filter_map(|(_, claimant)| claimant.upgrade())
                .collect()
        };
        let victim = holders
            .into_iter()
            .filter_map(|claimant| {
                let oldest = claimant.oldest_idle()?;
                allowed(&oldest).then_some((oldest.since, claimant))
            })
            .min_by_key(|(since, _)| *since);
        victim.is_some_and(|(since, claimant)| claimant.evict_idle_since(since))
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
            let mut next = lock(&self.next_connect);
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

    #[test]
    fn the_fair_share_divides_the_budget_among_tenants_with_demand() {
        let budget = Budget::new(12, 0);
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
        let budget = Budget::new(2, 0);
        let (first, second) = (Slot::taken(&budget), Slot::taken(&budget));
        assert_eq!(budget.used(), 2);
        assert!(!budget.over_budget());
        budget.reconfigure(1, 0);
        assert!(budget.over_budget());
        drop(first);
        assert!(!budget.over_budget());
        drop(second);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn openings_are_spaced_by_the_connect_rate() {
        let budget = Budget::new(10, 20);
        let started = tokio::time::Instant::now();
        for _ in 0..5 {
            budget.pace().await;
        }
        // The first goes at once, then one every 50 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn no_rate_means_no_pacing() {
        let budget = Budget::new(10, 0);
        let started = tokio::time::Instant::now();
        for _ in 0..100 {
            budget.pace().await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
