//! A tenant's pool of server connections, all logged in as the tenant's role.
//!
//! Idle connections are reused last-in first-out, so hot connections stay hot and cold
//! ones age out through `server_idle_timeout`. A client that finds none idle waits in a
//! FIFO queue; a returned connection goes straight to the first waiter. Below
//! `pool_size` the pool asks its cluster's [`Budget`](crate::budget::Budget) for a place
//! to open one more; after `reserve_pool_timeout` a waiter may ask for one of
//! `reserve_pool_size` extra places. Reuse does no I/O: it only checks that the idle
//! socket is still open and silent.
//!
//! Cancel safety: `checkout` may be dropped at any await; a connection or place handed
//! to a waiter that has gone is returned to the pool or the budget.

use crate::budget::Slot;
use crate::cluster::{Cluster, Disconnect};
use crate::server::{connect, ConnectError, ServerConn, ServerTarget};
use crate::stats::{ServerRegistry, TenantStats};
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a tenant over its fair share keeps a new connection for its own clients
/// while other tenants wait: long enough to amortise opening it over many short
/// transactions, short enough that a waiting tenant gets its turn within a few
/// transactions' time.
pub const YIELD_AFTER: Duration = Duration::from_millis(100);

/// How often the first waiter of a pool queued for the budget looks again for an idle
/// connection of another tenant to close.
const RETRY_MAKE_ROOM: Duration = Duration::from_millis(250);

/// Why no connection was leased.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("timed out waiting for a server connection")]
    Timeout,
    #[error(transparent)]
    Connect(#[from] ConnectError),
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
    pub(crate) id: u64,
    /// In its cluster's budget queue; changed only under the budget's lock.
    pub(crate) queued: AtomicBool,
    target: ServerTarget,
    shared: Shared,
    limits: Limits,
    state: Mutex<PoolState>,
}

/// The mutable part of a pool, behind its lock.
pub(crate) struct PoolState {
    /// Most recently returned last.
    idle: VecDeque<Idle>,
    /// Budget places this pool holds: connections open, being opened or leased.
    pub(crate) open: usize,
    /// Places asked of the budget and not granted yet.
    pub(crate) asked: usize,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    /// Set when the tenant is removed: returned connections are closed, not kept.
    retired: bool,
}

struct Idle {
    conn: ServerConn,
    since: Instant,
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
    Conn(ServerConn),
    Place(Slot),
}

/// The outcome of a checkout that does not wait.
#[allow(clippy::large_enum_variant)]
enum Ready {
    Idle(ServerConn),
    Place(Slot),
    Wait(u64, oneshot::Receiver<Grant>),
}

/// A pool's longest-idle connection, as eviction weighs it.
pub(crate) struct OldestIdle {
    pub since: Instant,
    pub opened_at: Instant,
    /// Places the pool holds.
    pub open: usize,
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
    conn: Option<ServerConn>,
    pool: Arc<Pool>,
}

impl Deref for Lease {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("present until dropped")
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
        }
        self.grant.close();
        match self.grant.try_recv() {
            Ok(Grant::Conn(conn)) => self.pool.give_back(conn),
            Ok(Grant::Place(slot)) => drop(slot),
            Err(_) => {}
        }
    }
}

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

impl Pool {
    pub fn new(target: ServerTarget, shared: Shared, limits: Limits) -> Arc<Self> {
        Arc::new(Pool {
            id: NEXT_POOL_ID.fetch_add(1, Relaxed),
            queued: AtomicBool::new(false),
            target,
            shared,
            limits,
            state: Mutex::new(PoolState {
                idle: VecDeque::new(),
                open: 0,
                asked: 0,
                waiters: VecDeque::new(),
                next_waiter: 0,
                retired: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.shared.cluster
    }

    pub fn status(&self) -> Status {
        let state = self.lock();
        let connecting = self.shared.stats.servers_connecting.load(Relaxed) as usize;
        Status {
            size: state.open,
            available: state.idle.len(),
            active: state.open.saturating_sub(state.idle.len() + connecting),
        }
    }

    /// Leases a connection: an idle one, a new one if the pool and the budget allow,
    /// or the first one free within `wait`.
    pub async fn checkout(self: &Arc<Self>, wait: Duration) -> Result<Lease, CheckoutError> {
        let deadline = Instant::now() + wait;
        let (id, grant) = match self.take_or_wait() {
            Ready::Idle(conn) => return Ok(self.lease(conn)),
            Ready::Place(slot) => return self.open(slot, deadline).await,
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
                        Ok(Grant::Place(slot)) => {
                            drop(waiting);
                            self.open(slot, deadline).await
                        }
                        Err(_) => unreachable!("a waiter's sender is only dropped after sending"),
                    };
                }
                () = sleep_until_some(reserve_at) => {
                    reserve_at = None;
                    if let Some(slot) = self.take_reserve_place(waiting.id) {
                        drop(waiting);
                        return self.open(slot, deadline).await;
                    }
                }
                () = tokio::time::sleep(RETRY_MAKE_ROOM), if self.queued.load(Relaxed) => {
                    self.retry_make_room(waiting.id);
                }
                () = tokio::time::sleep_until(deadline.into()) => return Err(CheckoutError::Timeout),
            }
        }
    }

    /// An idle connection, a place to open a new one, or a place in the queue.
    fn take_or_wait(self: &Arc<Self>) -> Ready {
        let budget = &self.shared.cluster.budget;
        loop {
            let mut state = self.lock();
            if let Some(idle) = state.idle.pop_back() {
                drop(state);
                match self.unusable(&idle.conn) {
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
                match budget.take_or_queue(&self.shared.cluster, self, &mut state) {
                    Some(slot) => return Ready::Place(slot),
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
                budget.make_room(self, open);
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
            if !first || !self.queued.load(Relaxed) {
                return;
            }
            state.open
        };
        self.shared.cluster.budget.make_room(self, open);
    }

    /// A place beyond `pool_size` (up to the reserve) for the waiter `id`, taken now
    /// if the budget has one free; otherwise the pool asks and the waiter stays queued.
    fn take_reserve_place(self: &Arc<Self>, id: u64) -> Option<Slot> {
        let budget = &self.shared.cluster.budget;
        let mut state = self.lock();
        if !state.waiters.iter().any(|w| w.id == id)
            || state.open + state.asked >= self.limits.size + self.limits.reserve_size
        {
            return None;
        }
        let slot = budget.take_or_queue(&self.shared.cluster, self, &mut state);
        let open = state.open;
        drop(state);
        if slot.is_none() {
            budget.make_room(self, open);
        }
        slot
    }

    fn lease(self: &Arc<Self>, conn: ServerConn) -> Lease {
        Lease {
            conn: Some(conn),
            pool: self.clone(),
        }
    }

    /// Opens a new connection in `slot`: see [`Pool::open_now`]. Boxed, because opening is
    /// rare and its login state would otherwise make every session's future larger.
    async fn open(self: &Arc<Self>, slot: Slot, deadline: Instant) -> Result<Lease, CheckoutError> {
        Box::pin(self.open_now(slot, deadline)).await
    }

    /// Opens a new connection in `slot`, paced to the cluster's connect rate, within
    /// the client's `deadline` for the pacing and `server_connect_timeout` for the login.
    async fn open_now(
        self: &Arc<Self>,
        slot: Slot,
        deadline: Instant,
    ) -> Result<Lease, CheckoutError> {
        let Shared {
            cluster,
            stats,
            servers,
        } = &self.shared;
        let connecting = Connecting::start(&stats.servers_connecting);
        let opened = match tokio::time::timeout_at(deadline.into(), cluster.budget.pace()).await {
            Ok(()) => connect(&self.target, cluster.tls.load_full(), slot, servers)
                .await
                .map_err(CheckoutError::Connect),
            Err(_) => Err(CheckoutError::Timeout),
        };
        drop(connecting);
        match opened {
            Ok(conn) => {
                cluster.connect_succeeded();
                Ok(self.lease(conn))
            }
            Err(CheckoutError::Connect(e)) => {
                cluster.connect_failed();
                Err(CheckoutError::Connect(e))
            }
            Err(timeout) => Err(timeout),
        }
    }

    /// Why an idle or returned connection must not be reused, if it must not.
    fn unusable(&self, conn: &ServerConn) -> Option<Disconnect> {
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
    fn give_back(self: &Arc<Self>, conn: ServerConn) {
        let metrics = &self.shared.cluster.metrics;
        if let Some(reason) = self.unusable(&conn) {
            metrics.disconnected(reason);
            return;
        }
        let budget = &self.shared.cluster.budget;
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
        let others_queued = budget.queued() > usize::from(self.queued.load(Relaxed));
        if others_queued
            && budget.over_fair_share(state.open)
            && conn.opened_at.elapsed() >= YIELD_AFTER
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
                Err(Grant::Place(_)) => unreachable!("sent a connection"),
            }
        }
        state.idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Takes a place the budget handed out: counts it and gives it to the first
    /// waiter. Returns whether the pool still asks for more, or the place unused
    /// (uncounted) when no one waits.
    pub(crate) fn accept(self: &Arc<Self>, mut slot: Slot) -> Result<bool, Slot> {
        let mut state = self.lock();
        state.asked = state.asked.saturating_sub(1);
        if state.waiters.is_empty() {
            state.asked = 0;
            return Err(slot);
        }
        state.open += 1;
        if state.open == 1 {
            self.shared.cluster.budget.add_holder(self);
        }
        slot.counted_in(self);
        match Self::grant_place(&mut state, slot) {
            None => Ok(state.asked > 0),
            Some(mut unsent) => {
                // Every waiter had gone: the place goes back uncounted.
                unsent.uncounted();
                self.uncount(&mut state);
                state.asked = 0;
                Err(unsent)
            }
        }
    }

    /// A place of this pool was given back (its connection closed). Clients still
    /// waiting may have counted on that connection coming back: the pool asks the
    /// budget for a place for them instead.
    pub(crate) fn place_freed(self: &Arc<Self>) {
        let unsent = {
            let mut state = self.lock();
            self.uncount(&mut state);
            let uncovered = state.waiters.len() > state.asked;
            if uncovered && state.open + state.asked < self.limits.size {
                let budget = &self.shared.cluster.budget;
                budget
                    .take_or_queue(&self.shared.cluster, self, &mut state)
                    .and_then(|slot| Self::grant_place(&mut state, slot))
            } else {
                None
            }
        };
        // Dropped outside the lock: dropping a place takes it.
        drop(unsent);
    }

    /// Gives a counted place to the first waiter still there; returns it if none is.
    fn grant_place(state: &mut PoolState, mut slot: Slot) -> Option<Slot> {
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.grant.send(Grant::Place(slot)) {
                Ok(()) => {
                    state.asked = state.asked.min(state.waiters.len());
                    return None;
                }
                Err(Grant::Place(back)) => slot = back,
                Err(Grant::Conn(_)) => unreachable!("sent a place"),
            }
        }
        Some(slot)
    }

    fn uncount(&self, state: &mut PoolState) {
        state.open -= 1;
        if state.open == 0 {
            self.shared.cluster.budget.remove_holder(self);
        }
    }

    /// This pool's longest-idle connection: when it went idle and when it was opened;
    /// and how many places the pool holds.
    pub(crate) fn oldest_idle(&self) -> Option<OldestIdle> {
        let state = self.lock();
        state.idle.front().map(|idle| OldestIdle {
            since: idle.since,
            opened_at: idle.conn.opened_at,
            open: state.open,
        })
    }

    /// Removes the longest-idle connection if it is still the one idle since `since`.
    pub(crate) fn evict_idle_since(&self, since: Instant) -> Option<ServerConn> {
        let mut state = self.lock();
        match state.idle.front() {
            Some(idle) if idle.since == since => state.idle.pop_front().map(|idle| idle.conn),
            _ => None,
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
                    let too_old = !lifetime.is_zero() && idle.conn.opened_at.elapsed() >= lifetime;
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
            let slot = {
                let mut state = self.lock();
                if state.open >= min || state.retired {
                    return Ok(());
                }
                let budget = &self.shared.cluster.budget;
                match budget.take_spare(&self.shared.cluster, self, &mut state) {
                    Some(slot) => slot,
                    None => return Ok(()),
                }
            };
            let deadline = Instant::now() + self.target.connect_timeout;
            drop(self.open(slot, deadline).await?);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let open = self.state.get_mut().map_or(0, |state| state.open);
        if open > 0 {
            self.shared.cluster.budget.remove_holder(self);
        }
    }
}

/// Counts a connection being opened for as long as the opening runs, even if the
/// client stops waiting for it.
struct Connecting<'a>(&'a AtomicU64);

impl<'a> Connecting<'a> {
    fn start(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Relaxed);
        Connecting(counter)
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
