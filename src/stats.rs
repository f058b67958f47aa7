//! Live statistics: per-tenant counters and gauges as plain atomics in the tenant
//! (rendered into `/metrics` and `SHOW STATS` from the live tenants, so a removed tenant's
//! series disappear with it), and the registries of client and server connections that
//! `SHOW CLIENTS` / `SHOW SERVERS` and the longest-wait gauge read.
//!
//! Updates on the hot path are relaxed atomic adds on the session's own tenant.
//!
//! Plain data, a leaf: the modules that count write here, the console and `/metrics` read.

use crate::locks::lock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

/// Counters and gauges of one tenant.
#[derive(Default)]
pub struct TenantStats {
    pub clients_active: AtomicU64,
    pub clients_waiting: AtomicU64,
    pub servers_connecting: AtomicU64,
    pub wait_micros: AtomicU64,
    pub waits: AtomicU64,
    pub queries: AtomicU64,
    pub query_micros: AtomicU64,
    pub transactions: AtomicU64,
    pub transaction_micros: AtomicU64,
    pub received_bytes: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub prepared_hits: AtomicU64,
    pub prepared_misses: AtomicU64,
    /// Wait counts per bucket of `WAIT_BUCKETS` (the last one is "longer"), for the
    /// status page's per-tenant p99.
    wait_buckets: [AtomicU64; WAIT_BUCKETS.len() + 1],
}

/// Upper bounds of the per-tenant wait buckets.
const WAIT_BUCKETS: [Duration; 12] = [
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
];

impl TenantStats {
    /// Records one wait for a server connection.
    pub fn record_wait(&self, waited: Duration) {
        add_micros(&self.wait_micros, waited);
        self.waits.fetch_add(1, Relaxed);
        let bucket = WAIT_BUCKETS
            .iter()
            .position(|bound| waited <= *bound)
            .unwrap_or(WAIT_BUCKETS.len());
        self.wait_buckets[bucket].fetch_add(1, Relaxed);
    }

    /// The bucket bound below which 99% of the waits so far fell; `None` before any
    /// wait, `Duration::MAX` when over the largest bucket.
    pub fn wait_p99(&self) -> Option<Duration> {
        let counts: Vec<u64> = self.wait_buckets.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let needed = total - total / 100;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= needed {
                return Some(WAIT_BUCKETS.get(i).copied().unwrap_or(Duration::MAX));
            }
        }
        Some(Duration::MAX)
    }
}

/// Adds a duration in microseconds to a counter.
pub fn add_micros(counter: &AtomicU64, elapsed: Duration) {
    counter.fetch_add(elapsed.as_micros() as u64, Relaxed);
}

/// Why a client can be pinned to its server connection, one bit each in
/// [`ClientInfo::pins`], in this order (the `reason` label of `sluice_pinned_clients`).
pub const PIN_REASONS: [&str; 6] = [
    "temp_table",
    "advisory_lock",
    "hold_cursor",
    "prepared_statement",
    "load",
    "role",
];

/// The pin reasons set in `bits`, comma-separated ("" for none).
pub fn pin_reasons(bits: u8) -> String {
    PIN_REASONS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, reason)| *reason)
        .collect::<Vec<_>>()
        .join(",")
}

/// What a client connection is doing, for `SHOW CLIENTS` and the client gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Idle = 0,
    Waiting = 1,
    Active = 2,
}

/// One logged-in client, as the admin console shows it.
pub struct ClientInfo {
    pub id: u64,
    pub peer: SocketAddr,
    pub database: String,
    pub user: String,
    pub application_name: String,
    pub connected_at: SystemTime,
    state: AtomicU8,
    /// When the client connected, the base of `since`.
    base: Instant,
    /// When the current state began, in microseconds after `base`.
    since: AtomicU64,
    /// Backend pid of the server connection held, 0 for none.
    pub server_pid: AtomicI32,
    /// What pins the client to its server connection: one bit per [`PIN_REASONS`].
    pins: AtomicU8,
}

impl ClientInfo {
    pub fn new(
        id: u64,
        peer: SocketAddr,
        database: &str,
        user: &str,
        application_name: &str,
    ) -> Self {
        ClientInfo {
            id,
            peer,
            database: database.to_owned(),
            user: user.to_owned(),
            application_name: application_name.to_owned(),
            connected_at: SystemTime::now(),
            state: AtomicU8::new(ClientState::Idle as u8),
            base: Instant::now(),
            since: AtomicU64::new(0),
            server_pid: AtomicI32::new(0),
            pins: AtomicU8::new(0),
        }
    }

    pub fn set_state(&self, state: ClientState, at: Instant) {
        self.state.store(state as u8, Relaxed);
        let micros = at.saturating_duration_since(self.base).as_micros() as u64;
        self.since.store(micros, Relaxed);
    }

    pub fn state(&self) -> ClientState {
        match self.state.load(Relaxed) {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    pub fn set_pins(&self, reasons: u8) {
        self.pins.store(reasons, Relaxed);
    }

    /// The reasons the client is pinned, as bits (see `set_pins`).
    pub fn pins(&self) -> u8 {
        self.pins.load(Relaxed)
    }

    /// How long the client has been in its current state.
    pub fn in_state_for(&self) -> Duration {
        let since = Duration::from_micros(self.since.load(Relaxed));
        self.base.elapsed().saturating_sub(since)
    }
}

/// One server connection, as the admin console shows it.
pub struct ServerInfo {
    pub id: u64,
    pub addr: SocketAddr,
    /// The server's backend pid.
    pub pid: i32,
    pub connected_at: SystemTime,
    pub active: AtomicBool,
    /// Id of the client holding it, 0 for none.
    pub client_id: AtomicU64,
}

/// The live server connections of one tenant. Each connection holds a [`ServerEntry`]
/// that removes it when the connection is dropped.
#[derive(Default)]
pub struct ServerRegistry {
    servers: Mutex<HashMap<u64, Arc<ServerInfo>>>,
    next_id: AtomicU64,
}

/// A server connection's place in its tenant's registry.
pub struct ServerEntry {
    registry: Weak<ServerRegistry>,
    pub info: Arc<ServerInfo>,
}

impl Drop for ServerEntry {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.lock().remove(&self.info.id);
        }
    }
}

impl ServerRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<ServerInfo>>> {
        lock(&self.servers)
    }

    pub fn register(self: &Arc<Self>, addr: SocketAddr, pid: i32) -> ServerEntry {
        let id = self.next_id.fetch_add(1, Relaxed) + 1;
        let info = Arc::new(ServerInfo {
            id,
            addr,
            pid,
            connected_at: SystemTime::now(),
            active: AtomicBool::new(false),
            client_id: AtomicU64::new(0),
        });
        self.lock().insert(id, info.clone());
        ServerEntry {
            registry: Arc::downgrade(self),
            info,
        }
    }

    pub fn snapshot(&self) -> Vec<Arc<ServerInfo>> {
        let mut servers: Vec<_> = self.lock().values().cloned().collect();
        servers.sort_by_key(|s| s.id);
        servers
    }
}
