//! The registry of logged-in clients, and cancel requests. Every client gets a
//! BackendKeyData issued by sluice (never a server's key) and an entry here, which the
//! admin console lists (`SHOW CLIENTS`) and can kill. A CancelRequest carrying a
//! client's key is forwarded, with the server's own key, to the server connection that
//! client holds at that moment, and does nothing else; a client still waiting for a
//! server connection is taken out of the queue instead. An unknown or wrong key cancels
//! nothing.
//!
//! A cancel must never hit a later query of another client: while a forwarded cancel is
//! in flight, the server connection it targets is not returned to the pool; it is
//! returned once the server has taken the cancel (it closes the cancel connection), after
//! which PostgreSQL ignores the signal if the query had already finished.
//!
//! See <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-CANCELING-REQUESTS>.
//!
//! Owns the registry and the per-client cancel state; reaches servers only through
//! `server::cancel`. Knows nothing of pools, tenants or sessions, which attach and detach.

use crate::locks::lock;
use crate::server::cancel::cancel_query;
use crate::stats::{ClientInfo, ClientState, PIN_REASONS};
use sluice_protocol::startup::CancelKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tracing::{debug, info};

/// How long forwarding one cancel to a server may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// A tenant's pinned clients.
#[derive(Default)]
pub struct Pinned {
    pub clients: u32,
    /// Per reason of [`PIN_REASONS`] (a client pinned for two reasons counts in both).
    pub by_reason: [u32; PIN_REASONS.len()],
}

/// Every logged-in client's cancel target, by the pid of its sluice-issued key.
#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<i32, Arc<CancelTarget>>>,
}

/// What a cancel for one client reaches.
pub struct CancelTarget {
    secret: i32,
    /// Who the client is and what it is doing, for the admin console and metrics.
    pub client: Arc<ClientInfo>,
    killed: AtomicBool,
    /// Wakes the client's session when the admin console kills it.
    kill: Notify,
    state: Mutex<TargetState>,
    /// Wakes the client's session while it waits for a server connection.
    cancel_wait: Notify,
    /// Wakes whoever waits for in-flight cancels to finish.
    cancels_done: Notify,
}

#[derive(Default)]
struct TargetState {
    /// The server connection the client holds now: its address and cancel key.
    server: Option<(SocketAddr, CancelKey)>,
    /// The client is queued for a server connection.
    waiting: bool,
    /// A cancel arrived while the client was queued.
    cancelled_while_waiting: bool,
    /// Cancels forwarded to `server` (or its predecessor) that the server has not yet taken.
    in_flight: u32,
}

/// A client's registration; dropping it unregisters the client.
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    pub key: CancelKey,
    pub target: Arc<CancelTarget>,
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        lock(&self.registry.clients).remove(&self.key.pid);
    }
}

impl CancelRegistry {
    /// Every registered client.
    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        let mut clients: Vec<_> = lock(&self.clients)
            .values()
            .map(|target| target.client.clone())
            .collect();
        clients.sort_by_key(|c| c.id);
        clients
    }

    /// Longest current wait for a server connection, per tenant (database, user).
    pub fn longest_waits(&self) -> HashMap<(String, String), Duration> {
        let mut waits: HashMap<(String, String), Duration> = HashMap::new();
        for target in lock(&self.clients).values() {
            let client = &target.client;
            if client.state() == ClientState::Waiting {
                let key = (client.database.clone(), client.user.clone());
                let longest = waits.entry(key).or_default();
                *longest = (*longest).max(client.in_state_for());
            }
        }
        waits
    }

    /// Pinned clients per tenant (database, user): how many, and how many per reason.
    pub fn pinned(&self) -> HashMap<(String, String), Pinned> {
        let mut pinned: HashMap<(String, String), Pinned> = HashMap::new();
        for target in lock(&self.clients).values() {
            let client = &target.client;
            let bits = client.pins();
            if bits == 0 {
                continue;
            }
            let key = (client.database.clone(), client.user.clone());
            let tenant = pinned.entry(key).or_default();
            tenant.clients += 1;
            for (i, count) in tenant.by_reason.iter_mut().enumerate() {
                *count += u32::from(bits & (1 << i) != 0);
            }
        }
        pinned
    }

    /// Disconnects every client of `database` (admin `KILL`); returns how many.
    pub fn kill_database(&self, database: &str) -> usize {
        self.kill_where(|client| client.database == database)
    }

    /// Disconnects every client (end of a shutdown); returns how many.
    pub fn kill_all(&self) -> usize {
        self.kill_where(|_| true)
    }

    fn kill_where(&self, selected: impl Fn(&ClientInfo) -> bool) -> usize {
        let clients = lock(&self.clients);
        let mut killed = 0;
        for target in clients.values().filter(|t| selected(&t.client)) {
            target.killed.store(true, Ordering::Relaxed);
            target.kill.notify_waiters();
            killed += 1;
        }
        killed
    }

    /// Issues a fresh key for a client and registers it.
    pub fn register(self: &Arc<Self>, client: Arc<ClientInfo>) -> CancelHandle {
        let mut clients = lock(&self.clients);
        let key = loop {
            let [a, b, c, d, e, f, g, h] = crate::random::bytes::<8>();
            let key = CancelKey {
                pid: i32::from_be_bytes([a & 0x7f, b, c, d]),
                secret: i32::from_be_bytes([e, f, g, h]),
            };
            if key.pid != 0 && !clients.contains_key(&key.pid) {
                break key;
            }
        };
        let target = Arc::new(CancelTarget {
            secret: key.secret,
            client,
            killed: AtomicBool::new(false),
            kill: Notify::new(),
            state: Mutex::new(TargetState::default()),
            cancel_wait: Notify::new(),
            cancels_done: Notify::new(),
        });
        clients.insert(key.pid, target.clone());
        CancelHandle {
            registry: self.clone(),
            key,
            target,
        }
    }

    /// Handles a CancelRequest received on a new client connection.
    pub async fn cancel(&self, key: CancelKey) {
        let target = lock(&self.clients).get(&key.pid).cloned();
        let Some(target) = target else {
            debug!("cancel request with an unknown key ignored");
            return;
        };
        if !bool::from(target.secret.to_be_bytes().ct_eq(&key.secret.to_be_bytes())) {
            info!("cancel request with a wrong secret ignored");
            return;
        }
        target.cancel_current().await;
    }
}

impl CancelTarget {
    /// Cancels what the client is doing now: forwards a cancel to the server connection it
    /// holds, or takes it out of the queue for one.
    pub async fn cancel_current(&self) {
        if let Some(server) = self.begin_cancel() {
            self.forward(server).await;
        }
    }

    /// The first half of a cancel, taken at once: marks a cancel in flight for the server
    /// connection the client holds now (which then is not reused until the cancel has
    /// landed) and returns where to send it; or, while the client is queued, takes it out
    /// of the queue. Whoever then sends the cancel ([`CancelTarget::forward`]) may run
    /// later, elsewhere: the mark is already in place.
    pub fn begin_cancel(&self) -> Option<(SocketAddr, CancelKey)> {
        let mut state = lock(&self.state);
        if state.server.is_some() {
            state.in_flight += 1;
        } else if state.waiting {
            state.cancelled_while_waiting = true;
            self.cancel_wait.notify_waiters();
        }
        state.server
    }

    /// Sends a cancel [`CancelTarget::begin_cancel`] marked, then clears the mark.
    pub async fn forward(&self, (addr, server_key): (SocketAddr, CancelKey)) {
        match tokio::time::timeout(FORWARD_TIMEOUT, cancel_query(addr, server_key)).await {
            Ok(Ok(())) => debug!(server = %addr, "cancel request forwarded"),
            Ok(Err(e)) => info!(server = %addr, error = %e, "forwarding a cancel request failed"),
            Err(_) => info!(server = %addr, "forwarding a cancel request timed out"),
        }
        let mut state = lock(&self.state);
        state.in_flight -= 1;
        if state.in_flight == 0 {
            self.cancels_done.notify_waiters();
        }
    }

    /// The client now holds the server connection at `addr` with cancel key `key`.
    pub fn attach(&self, addr: SocketAddr, key: CancelKey) {
        let mut state = lock(&self.state);
        state.server = Some((addr, key));
        state.waiting = false;
    }

    /// The client gave its server connection up. True when a cancel aimed at it is still
    /// in flight: then the connection must not be reused before `cancels_finished`.
    pub fn detach(&self) -> bool {
        let mut state = lock(&self.state);
        state.server = None;
        state.in_flight > 0
    }

    /// Marks the client as queued (or no longer queued) for a server connection.
    pub fn set_waiting(&self, waiting: bool) {
        let mut state = lock(&self.state);
        state.waiting = waiting;
        state.cancelled_while_waiting = false;
    }

    /// Resolves when a cancel arrives for the client while it is queued. Cancel-safe.
    pub async fn cancelled_while_waiting(&self) {
        loop {
            let cancelled = self.cancel_wait.notified();
            tokio::pin!(cancelled);
            cancelled.as_mut().enable();
            if lock(&self.state).cancelled_while_waiting {
                return;
            }
            cancelled.await;
        }
    }

    /// True once the admin console has killed this client.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// A wake-up for `is_killed` turning true; it must be registered (polled) before
    /// the flag is read, or a kill in between goes unnoticed.
    pub fn kill_notified(&self) -> Notified<'_> {
        self.kill.notified()
    }

    /// Resolves once no forwarded cancel is in flight. Cancel-safe.
    pub async fn cancels_finished(&self) {
        loop {
            let done = self.cancels_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if lock(&self.state).in_flight == 0 {
                return;
            }
            done.await;
        }
    }
}

#[cfg(test)]
mod tests;
