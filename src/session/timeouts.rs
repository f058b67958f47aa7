//! Per-session timers: `query_timeout` (a query running too long is cancelled),
//! `idle_transaction_timeout` and `client_idle_timeout` (a client silent too long inside
//! or outside a transaction is disconnected). A zero setting turns a timer off, and then
//! it costs nothing: no clock reads, no timer registrations.
//!
//! Only keeps time; the relay acts on the deadlines.

use super::SessionError;
use crate::config::TenantSettings;
use std::time::Duration;
use tokio::time::Instant;

pub struct Timeouts {
    query: Duration,
    idle_in_transaction: Duration,
    client_idle: Duration,
    last_client_activity: Instant,
    /// When the oldest unanswered request was sent, while `query` is on.
    query_started: Option<Instant>,
    /// A cancel was already sent for the current request.
    query_cancelled: bool,
}

/// A point in time a session waits for, or none.
pub struct Deadline;

impl Deadline {
    /// Sleeps until `at`, or forever when there is no deadline. Cancel-safe.
    pub async fn sleep(at: Option<Instant>) {
        match at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

impl Timeouts {
    pub fn new(settings: &TenantSettings) -> Self {
        Timeouts {
            query: settings.query_timeout,
            idle_in_transaction: settings.idle_transaction_timeout,
            client_idle: settings.client_idle_timeout,
            last_client_activity: Instant::now(),
            query_started: None,
            query_cancelled: false,
        }
    }

    /// The client sent something.
    pub fn client_active(&mut self) {
        if !self.idle_in_transaction.is_zero() || !self.client_idle.is_zero() {
            self.last_client_activity = Instant::now();
        }
    }

    /// A request that the server answers with ReadyForQuery was sent; `pending` counts
    /// them, this one included.
    pub fn request_sent(&mut self, pending: u32) {
        if pending == 1 && !self.query.is_zero() {
            self.query_started = Some(Instant::now());
            self.query_cancelled = false;
        }
    }

    /// A ReadyForQuery arrived; `pending` requests are still unanswered.
    pub fn ready_received(&mut self, pending: u32) {
        if self.query.is_zero() {
            return;
        }
        self.query_started = (pending > 0).then(Instant::now);
        self.query_cancelled = false;
    }

    /// When the running request must be cancelled.
    pub fn query_deadline(&self) -> Option<Instant> {
        if self.query_cancelled {
            return None;
        }
        self.query_started.map(|started| started + self.query)
    }

    pub fn query_cancelled(&mut self) {
        self.query_cancelled = true;
    }

    /// When a silent client is disconnected, inside or outside a transaction.
    pub fn idle_deadline(&self, in_transaction: bool) -> Option<Instant> {
        let limit = self.idle_limit(in_transaction);
        (!limit.is_zero()).then(|| self.last_client_activity + limit)
    }

    /// The error for a client whose idle deadline passed.
    pub fn expired(&self, in_transaction: bool) -> SessionError {
        let limit = self.idle_limit(in_transaction);
        if in_transaction {
            SessionError::IdleInTransactionTimeout(limit)
        } else {
            SessionError::ClientIdleTimeout(limit)
        }
    }

    fn idle_limit(&self, in_transaction: bool) -> Duration {
        if in_transaction {
            self.idle_in_transaction
        } else {
            self.client_idle
        }
    }
}
