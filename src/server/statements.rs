//! What one server connection has prepared, as far as sluice knows: which server-side
//! statement names (a bounded LRU, `max_prepared_statements`) and whose unnamed statement.
//! A name counts as prepared only once the server confirmed it, and stops counting as soon
//! as a Close for it is sent, so the record can only err towards preparing again.
//!
//! Plain data: what to prepare where is decided by the session (`session::statements`).
//! Self-contained (also compiled into `benches/hot_path.rs`).

use bytes::Bytes;
use std::collections::HashMap;

/// Which client's which unnamed Parse a server connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnnamedOwner {
    pub client_id: u64,
    /// Which of the client's unnamed Parses, counted from 1.
    pub seq: u64,
}

/// What one server connection has prepared.
pub struct ServerStatements {
    /// Server-side name → last use, for least-recently-used eviction.
    prepared: HashMap<Bytes, u64>,
    clock: u64,
    unnamed: Option<UnnamedOwner>,
}

impl Default for ServerStatements {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerStatements {
    pub fn new() -> Self {
        ServerStatements {
            prepared: HashMap::new(),
            clock: 0,
            unnamed: None,
        }
    }

    /// True (and marks it used) when `name` is prepared on this server.
    pub fn touch(&mut self, name: &Bytes) -> bool {
        self.clock += 1;
        match self.prepared.get_mut(name) {
            Some(used) => {
                *used = self.clock;
                true
            }
            None => false,
        }
    }

    /// Stops counting `name` as prepared: a Close for it is about to be sent.
    pub fn forget(&mut self, name: &Bytes) {
        self.prepared.remove(name);
    }

    /// Picks the least recently used statement to close when `capacity` is reached.
    pub fn evict_for_one_more(&mut self, capacity: usize) -> Option<Bytes> {
        if self.prepared.len() < capacity.max(1) {
            return None;
        }
        let oldest = self
            .prepared
            .iter()
            .min_by_key(|(_, used)| **used)
            .map(|(name, _)| name.clone())?;
        self.prepared.remove(&oldest);
        Some(oldest)
    }

    pub fn set_unnamed(&mut self, owner: Option<UnnamedOwner>) {
        self.unnamed = owner;
    }

    /// The server dropped every statement (`DEALLOCATE ALL`, `DISCARD ALL`).
    pub fn clear(&mut self) {
        self.prepared.clear();
        self.unnamed = None;
    }

    /// The server confirmed it prepared `name` (ParseComplete).
    pub fn prepared(&mut self, name: Bytes) {
        self.clock += 1;
        self.prepared.insert(name, self.clock);
    }

    /// Whose unnamed statement this server holds, if sluice knows.
    pub fn unnamed(&self) -> Option<UnnamedOwner> {
        self.unnamed
    }
}
