//! Pools of server connections: a tenant's pool (this file), the cluster it draws from and
//! the cluster's connection budget (`cluster`, `budget`), and the one task that looks after
//! every pool (`maintenance`).
//!
//! A tenant's pool holds connections all logged in as the tenant's role. Idle connections
//! are reused last-in first-out, so hot connections stay hot and cold ones age out through
//! `server_idle_timeout`. A client that finds none idle waits in a FIFO queue; a returned
//! connection goes straight to the first waiter. Below `pool_size` the pool claims a place
//! in its cluster's [`Budget`] to open one more; after `reserve_pool_timeout` a waiter may
//! claim one of `reserve_pool_size` extra places. Reuse does no I/O: it only checks that
//! the idle connection is still open and silent.
//!
//! The pool pairs every connection with its budget place (`Pooled`), so `server/` knows
//! nothing of budgets. It depends on `server/` and below, never on tenants or sessions.
//!
//! Cancel safety: `checkout` may be dropped at any await; a connection or place handed
//! to a waiter that has gone is returned to the pool or the budget.

pub mod budget;
pub mod cluster;
pub mod maintenance;

use crate::locks::lock;
use crate::server::parameters::Parameters;
use crate::server::{connect, ConnectError, ServerConn, ServerTarget};
use crate::stats::{ServerRegistry, TenantStats};
use arc_swap::ArcSwapOption;
use budget::{Budget, Claimant, Membership, OldestIdle, Slot, WhenFull, YIELD_AFTER};
use cluster::{Cluster, Disconnect};
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often the first waiter of a pool queued for the budget looks again for an idle
/// connection of another tenant to close.
const RETRY_MAKE_ROOM: Duration = Duration::from_millis(250);

/// Why no connection was leased.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("timed out waiting for a server connection")]
    Timeout,
    /// This client's opening failed, or another's while nothing could come back to the
    /// pool: the waiters learn why at once.
    #[error(transparent)]
    Connect(Arc<ConnectError>),
    #[error("{0}")]
    Internal(&'static str),
}

/// A pool's size limits and connection lifetime.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub size: usize,
    /// Extra connections a waiter may open after `reserve_timeout`.
    pub reserve_size: usize,
    pub reserve_timeout: Duration,
    /// `server_lifetime`; zero: unlimited.
    pub lifetime: Duration,
}

/// What a tenant's pool shares with the rest of the tenant.
pub struct Shared {
    pub cluster: Arc<Cluster>,
    pub stats: Arc<TenantStats>,
    pub servers: Arc<ServerRegistry>,
}

pub struct Pool {
    /// This pool in its cluster's budget.
    membership: Membership,
    /// What the server reported at the latest login: a failover or an upgrade changes it.
    login_parameters: ArcSwapOption<Parameters>,
    target: ServerTarget,
    shared: Shared,
    limits: Limits,
    state: Mutex<PoolState>,
}

/// The mutable part of a pool, behind its lock.
struct PoolState {
    /// Most recently returned last.
    idle: VecDeque<Idle>,
    /// Budget places this pool holds: connections open, being opened or leased.
    open: usize,
    /// Places asked of the budget and not granted yet.
    asked: usize,
    /// Connections being opened (counted in `open` too).
    opening: usize,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    /// Set when the tenant is removed: returned connections are closed, not kept.
    retired: bool,
}

struct Idle {
    conn: Pooled,
    since: Instant,
}

/// A server connection with the budget place it holds, as the pool keeps it: dropping it
/// closes the connection and gives the place back.
struct Pooled {
    conn: ServerConn,
    _place: Place,
}

/// A budget place counted in a pool's `open`. Dropping it uncounts it there (clients still
/// waiting may need another place), then frees it in the budget.
struct Place {
    slot: Slot,
    /// Dangling once uncounted.
    pool: Weak<Pool>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.place_freed();
        }
    }
}

impl Place {
    /// The slot, no longer counted in the pool (the caller has uncounted it).
    fn uncounted(mut self) -> Slot {
        self.pool = Weak::new();
        std::mem::replace(&mut self.slot, Slot::none())
    }
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<Grant>,
}

/// What a waiter receives: a connection another client returned, or a place in the
/// budget to open a new one. Connections move unboxed: a copy is cheaper than an
/// allocation per hand-off.
#[allow(clippy::large_enum_variant)]
enum Grant {
    Conn(Pooled),
    Place(Place),
    /// Opening a connection failed with nothing left that could come back.
    Failed(Arc<ConnectError>),
}

/// The outcome of a checkout that does not wait.
#[allow(clippy::large_enum_variant)]
enum Ready {
    Idle(Pooled),
    Place(Place),
    Wait(u64, oneshot::Receiver<Grant>),
}

/// Counts of a pool's connections, for the console and metrics.
pub struct Status {
    /// Connections open or being opened.
    pub size: usize,
    /// Idle connections.
    pub available: usize,
    /// Leased connections: neither idle nor being opened.
    pub active: usize,
}

/// A leased server connection; dropping it returns the connection to its pool.
pub struct Lease {
    conn: Option<Pooled>,
    pool: Arc<Pool>,
}

impl Deref for Lease {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        &self.conn.as_ref().expect("present until dropped").conn
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut ServerConn {
        &mut self.conn.as_mut().expect("present until dropped").conn
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}

impl Lease {
    /// Closes the connection instead of returning it (its state is unknown); the
    /// caller has recorded why.
    pub fn close(mut self) {
        drop(self.conn.take());
    }
}

/// Removes a waiter that stops waiting, and passes on anything granted to it meanwhile.
/// The last waiter to go takes the pool out of the budget's queue.
struct Waiting<'a> {
    pool: &'a Arc<Pool>,
    id: u64,
    grant: oneshot::Receiver<Grant>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        {
            let mut state = self.pool.lock();
            state.waiters.retain(|w| w.id != self.id);
            state.asked = state.asked.min(state.waiters.len());
            if state.waiters.is_empty() {
                self.pool.budget().withdraw(&self.pool.membership);
            }
        }
        self.grant.close();
        match self.grant.try_recv() {
            Ok(Grant::Conn(conn)) => self.pool.give_back(conn),
            Ok(Grant::Place(place)) => drop(place),
            Ok(Grant::Failed(_)) | Err(_) => {}
        }
    }
}

impl Pool {
    pub fn new(target: ServerTarget, shared: Shared, limits: Limits) -> Arc<Self> {
        Arc::new(Pool {
            membership: Membership::default(),
            login_parameters: ArcSwapOption::empty(),
            target,
            shared,
            limits,
            state: Mutex::new(PoolState {
                idle: VecDeque::new(),
                open: 0,
                asked: 0,
                opening: 0,
                waiters: VecDeque::new(),
                next_waiter: 0,
                retired: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        lock(&self.state)
    }

    fn budget(&self) -> &Arc<Budget> {
        &self.shared.cluster.budget
    }

    /// Claims a place in the budget for this pool and counts it (or, queued, counts it as
    /// asked). Called with the pool's lock held (`state`).
    fn claim(self: &Arc<Self>, state: &mut PoolState, when_full: WhenFull) -> Option<Place> {
        match self.budget().claim(self, state.open == 0, when_full) {
            Some(slot) => {
                state.open += 1;
                Some(self.place(slot))
            }
            None => {
                if when_full == WhenFull::Queue {
                    state.asked += 1;
                }
                None
            }
        }
    }

    /// `slot`, counted in this pool's `open`.
    fn place(self: &Arc<Self>, slot: Slot) -> Place {
        Place {
            slot,
            pool: Arc::downgrade(self),
        }
    }

    /// The parameters the server reported at this pool's latest login, once it has had one.
    pub fn login_parameters(&self) -> Option<Arc<Parameters>> {
        self.login_parameters.load_full()
    }

    pub fn status(&self) -> Status {
        let state = self.lock();
        Status {
            size: state.open,
            available: state.idle.len(),
            active: state.open.saturating_sub(state.idle.len() + state.opening),
        }
    }

    /// Leases a connection: an idle one, a new one if the pool and the budget allow,
    /// or the first one free within `wait`.
    pub async fn checkout(self: &Arc<Self>, wait: Duration) -> Result<Lease, CheckoutError> {
        let deadline = Instant::now() + wait;
        let (id, grant) = match self.take_or_wait() {
            Ready::Idle(conn) => return Ok(self.lease(conn)),
            Ready::Place(place) => return self.open(place, deadline).await,
            Ready::Wait(id, grant) => (id, grant),
        };
        let mut waiting = Waiting {
            pool: self,
            id,
            grant,
        };
        let reserve = self.limits.reserve_size > 0;
        let mut reserve_at = reserve.then(|| Instant::now() + self.limits.reserve_timeout);
        loop {
            // Biased: a grant first, so a connection handed over is never lost to a timer.
            tokio::select! {
                biased;
                granted = &mut waiting.grant => {
                    return match granted {
                        Ok(Grant::Conn(conn)) => Ok(self.lease(conn)),
                        Ok(Grant::Place(place)) => {
                            drop(waiting);
                            self.open(place, deadline).await
                        }
                        Ok(Grant::Failed(e)) => Err(CheckoutError::Connect(e)),
                        // Senders are only dropped after sending; should that ever break,
                        // the client gets an error, not a hang.
                        Err(_) => Err(CheckoutError::Internal("the pool dropped a waiter")),
                    };
                }
                () = sleep_until_some(reserve_at) => {
                    reserve_at = None;
                    if let Some(place) = self.take_reserve_place(waiting.id) {
                        drop(waiting);
                        return self.open(place, deadline).await;
                    }
                }
                () = tokio::time::sleep(RETRY_MAKE_ROOM), if self.membership.is_queued() => {
                    self.retry_make_room(waiting.id);
                }
                () = tokio::time::sleep_until(deadline.into()) => return Err(CheckoutError::Timeout),
            }
        }
    }

    /// An idle connection, a place to open a new one, or a place in the queue.
    fn take_or_wait(self: &Arc<Self>) -> Ready {
        loop {
            let mut state = self.lock();
            if let Some(mut idle) = state.idle.pop_back() {
                drop(state);
                match self.unusable(&mut idle.conn.conn) {
                    None => return Ready::Idle(idle.conn),
                    Some(reason) => {
                        self.shared.cluster.metrics.disconnected(reason);
                        drop(idle);
                        continue;
                    }
                }
            }
            let mut queued = false;
            if state.open + state.asked < self.limits.size {
                match self.claim(&mut state, WhenFull::Queue) {
                    Some(place) => return Ready::Place(place),
                    None => queued = true,
                }
            }
            let (sender, receiver) = oneshot::channel();
            let id = state.next_waiter;
            state.next_waiter += 1;
            state.waiters.push_back(Waiter { id, grant: sender });
            let open = state.open;
            drop(state);
            if queued {
                self.budget().make_room(&self.membership, open);
            }
            return Ready::Wait(id, receiver);
        }
    }

    /// Tries again to make room in the budget, on behalf of the first waiter of a
    /// queued pool: connections kept idle by tenants within their share become
    /// evictable with time.
    fn retry_make_room(self: &Arc<Self>, id: u64) {
        let open = {
            let state = self.lock();
            let first = state.waiters.front().is_some_and(|w| w.id == id);
            if !first || !self.membership.is_queued() {
                return;
            }
            state.open
        };
        self.budget().make_room(&self.membership, open);
    }

    /// A place beyond `pool_size` (up to the reserve) for the waiter `id`, taken now
    /// if the budget has one free; otherwise the pool asks and the waiter stays queued.
    fn take_reserve_place(self: &Arc<Self>, id: u64) -> Option<Place> {
        let mut state = self.lock();
        if !state.waiters.iter().any(|w| w.id == id)
            || state.open + state.asked >= self.limits.size + self.limits.reserve_size
        {
            return None;
        }
        let place = self.claim(&mut state, WhenFull::Queue);
        let open = state.open;
        drop(state);
        if place.is_none() {
            self.budget().make_room(&self.membership, open);
        }
        place
    }

    fn lease(self: &Arc<Self>, conn: Pooled) -> Lease {
        Lease {
            conn: Some(conn),
            pool: self.clone(),
        }
    }

    /// Opens a new connection in `place`: see [`Pool::open_now`]. Boxed, because opening is
    /// rare and its login state would otherwise make every session's future larger.
    async fn open(
        self: &Arc<Self>,
        place: Place,
        deadline: Instant,
    ) -> Result<Lease, CheckoutError> {
        Box::pin(self.open_now(place, deadline)).await
    }

    /// Opens a new connection in `place`, paced to the cluster's connect rate, within
    /// the client's `deadline` for the pacing and `server_connect_timeout` for the login.
    async fn open_now(
        self: &Arc<Self>,
        place: Place,
        deadline: Instant,
    ) -> Result<Lease, CheckoutError> {
        let cluster = &self.shared.cluster;
        let opening = Opening::start(self);
        if tokio::time::timeout_at(deadline.into(), cluster.budget.pace())
            .await
            .is_err()
        {
            return Err(CheckoutError::Timeout);
        }
        let tls = cluster.tls.load_full();
        let tcp = **cluster.tcp.load();
        match connect(&self.target, tls, tcp, &self.shared.servers).await {
            Ok(conn) => {
                drop(opening);
                cluster.connect_succeeded();
                self.login_parameters.store(Some(conn.params.login.clone()));
                Ok(self.lease(Pooled {
                    conn,
                    _place: place,
                }))
            }
            Err(e) => {
                cluster.connect_failed();
                let e = Arc::new(e);
                self.fail_waiters(&e);
                // Only now: a freed place would go to a waiter, to try again.
                drop(opening);
                drop(place);
                Err(CheckoutError::Connect(e))
            }
        }
    }

    /// An opening failed: if no connection of this pool is open (none could come back),
    /// every client waiting gets that error now instead of trying again in turn.
    fn fail_waiters(&self, error: &Arc<ConnectError>) {
        let waiters = {
            let mut state = self.lock();
            if state.open > state.opening {
                return;
            }
            state.asked = 0;
            self.budget().withdraw(&self.membership);
            std::mem::take(&mut state.waiters)
        };
        for waiter in waiters {
            let _gone = waiter.grant.send(Grant::Failed(error.clone()));
        }
    }

    /// Why an idle or returned connection must not be reused, if it must not.
    fn unusable(&self, conn: &mut ServerConn) -> Option<Disconnect> {
        let lifetime = self.limits.lifetime;
        if !lifetime.is_zero() && conn.opened_at.elapsed() >= lifetime {
            Some(Disconnect::Lifetime)
        } else if !conn.is_reusable() {
            Some(Disconnect::Broken)
        } else {
            None
        }
    }

    /// Takes back a leased connection: to the first waiter, else idle; or closes it
    /// when it must not be reused, the tenant is retired, the budget shrank below what
    /// is open, or another tenant is waiting
    /// for a place and this one holds more than its fair share and has had this
    /// connection for [`YIELD_AFTER`]. Until then the connection stays with the tenant,
    /// idle if no client of it waits, where a queued tenant may evict it (see
    /// `Budget::make_room`).
    fn give_back(self: &Arc<Self>, mut conn: Pooled) {
        let metrics = &self.shared.cluster.metrics;
        if let Some(reason) = self.unusable(&mut conn.conn) {
            metrics.disconnected(reason);
            return;
        }
        let budget = self.budget();
        let mut state = self.lock();
        if state.retired && state.waiters.is_empty() {
            drop(state);
            metrics.disconnected(Disconnect::Removed);
            return;
        }
        if budget.over_budget() {
            drop(state);
            metrics.disconnected(Disconnect::Yielded);
            return;
        }
        let others_queued = budget.queued() > usize::from(self.membership.is_queued());
        if others_queued
            && budget.over_fair_share(state.open)
            && conn.conn.opened_at.elapsed() >= YIELD_AFTER
        {
            drop(state);
            metrics.disconnected(Disconnect::Yielded);
            return;
        }
        let mut conn = conn;
        while let Some(waiter) = state.waiters.pop_front() {
            state.asked = state.asked.min(state.waiters.len());
            match waiter.grant.send(Grant::Conn(conn)) {
                Ok(()) => return,
                Err(Grant::Conn(back)) => conn = back,
                Err(Grant::Place(_) | Grant::Failed(_)) => unreachable!("sent a connection"),
            }
        }
        state.idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// A place of this pool was given back (its connection closed). Clients still
    /// waiting may have counted on that connection coming back: the pool asks the
    /// budget for a place for them instead.
    fn place_freed(self: &Arc<Self>) {
        let unsent = {
            let mut state = self.lock();
            self.uncount(&mut state);
            let uncovered = state.waiters.len() > state.asked;
            if uncovered && state.open + state.asked < self.limits.size {
                self.claim(&mut state, WhenFull::Queue)
                    .and_then(|place| Self::grant_place(&mut state, place))
            } else {
                None
            }
        };
        // Dropped outside the lock: dropping a place takes it.
        drop(unsent);
    }

    /// Gives a counted place to the first waiter still there; returns it if none is.
    fn grant_place(state: &mut PoolState, mut place: Place) -> Option<Place> {
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.grant.send(Grant::Place(place)) {
                Ok(()) => {
                    state.asked = state.asked.min(state.waiters.len());
                    return None;
                }
                Err(Grant::Place(back)) => place = back,
                Err(Grant::Conn(_) | Grant::Failed(_)) => unreachable!("sent a place"),
            }
        }
        Some(place)
    }

    fn uncount(&self, state: &mut PoolState) {
        state.open -= 1;
        if state.open == 0 {
            self.budget().remove_holder(&self.membership);
        }
    }

    /// Closes idle connections unused for `idle_timeout` or older than the lifetime
    /// (zero: no limit). Returns how many were closed.
    pub fn close_expired(&self, idle_timeout: Duration) -> usize {
        let lifetime = self.limits.lifetime;
        if idle_timeout.is_zero() && lifetime.is_zero() {
            return 0;
        }
        let metrics = &self.shared.cluster.metrics;
        let expired: VecDeque<Idle> = {
            let mut state = self.lock();
            let now = Instant::now();
            let (keep, expired) = std::mem::take(&mut state.idle)
                .into_iter()
                .partition(|idle| {
                    let opened_at = idle.conn.conn.opened_at;
                    let too_old = !lifetime.is_zero() && opened_at.elapsed() >= lifetime;
                    let idle_too_long =
                        !idle_timeout.is_zero() && now.duration_since(idle.since) >= idle_timeout;
                    if too_old {
                        metrics.disconnected(Disconnect::Lifetime);
                    } else if idle_too_long {
                        metrics.disconnected(Disconnect::IdleTimeout);
                    }
                    !too_old && !idle_too_long
                });
            state.idle = keep;
            expired
        };
        expired.len()
    }

    /// The tenant was removed: closes its idle connections now and the rest as they
    /// come back.
    pub fn retire(&self) {
        self.lock().retired = true;
        self.close_idle();
    }

    /// Closes every idle connection (admin `KILL`, a removed tenant).
    pub fn close_idle(&self) {
        let idle = std::mem::take(&mut self.lock().idle);
        for _ in &idle {
            self.shared
                .cluster
                .metrics
                .disconnected(Disconnect::Removed);
        }
    }

    /// Opens connections until the pool holds `min`, while the budget has places no
    /// other tenant is waiting for.
    pub async fn warm(self: &Arc<Self>, min: usize) -> Result<(), CheckoutError> {
        loop {
            let place = {
                let mut state = self.lock();
                if state.open >= min || state.retired {
                    return Ok(());
                }
                match self.claim(&mut state, WhenFull::GiveUp) {
                    Some(place) => place,
                    None => return Ok(()),
                }
            };
            let deadline = Instant::now() + self.target.connect_timeout;
            drop(self.open(place, deadline).await?);
        }
    }
}

impl Claimant for Pool {
    fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Takes a place the budget handed out: counts it and gives it to the first
    /// waiter. Returns whether the pool still asks for more, or the place unused
    /// (uncounted) when no one waits.
    fn accept(self: Arc<Self>, slot: Slot) -> Result<bool, Slot> {
        let mut state = self.lock();
        state.asked = state.asked.saturating_sub(1);
        if state.waiters.is_empty() {
            state.asked = 0;
            return Err(slot);
        }
        state.open += 1;
        if state.open == 1 {
            self.budget().add_holder(&self);
        }
        match Self::grant_place(&mut state, self.place(slot)) {
            None => Ok(state.asked > 0),
            Some(unsent) => {
                // Every waiter had gone: the place goes back uncounted.
                let slot = unsent.uncounted();
                self.uncount(&mut state);
                state.asked = 0;
                Err(slot)
            }
        }
    }

    fn oldest_idle(&self) -> Option<OldestIdle> {
        let state = self.lock();
        state.idle.front().map(|idle| OldestIdle {
            since: idle.since,
            opened_at: idle.conn.conn.opened_at,
            open: state.open,
        })
    }

    fn evict_idle_since(&self, since: Instant) -> bool {
        let evicted = {
            let mut state = self.lock();
            match state.idle.front() {
                Some(idle) if idle.since == since => state.idle.pop_front(),
                _ => None,
            }
        };
        // Dropped outside the lock: dropping a place takes it.
        match evicted {
            Some(idle) => {
                self.shared
                    .cluster
                    .metrics
                    .disconnected(Disconnect::Evicted);
                drop(idle);
                true
            }
            None => false,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let open = self.state.get_mut().map_or(0, |state| state.open);
        if open > 0 {
            self.shared.cluster.budget.remove_holder(&self.membership);
        }
    }
}

/// Counts a connection being opened (in the pool and its statistics) for as long as the
/// opening runs, even if the client stops waiting for it.
struct Opening<'a>(&'a Pool);

impl<'a> Opening<'a> {
    fn start(pool: &'a Pool) -> Self {
        pool.lock().opening += 1;
        pool.shared.stats.servers_connecting.fetch_add(1, Relaxed);
        Opening(pool)
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.lock().opening -= 1;
        self.0.shared.stats.servers_connecting.fetch_sub(1, Relaxed);
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
