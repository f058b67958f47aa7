//! Per-session timers: `query_timeout` (a query running too long is cancelled; if the
//! server does not answer the cancel within `query_cancel_grace`, it is given up),
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
    cancel_grace: Duration,
    idle_in_transaction: Duration,
    client_idle: Duration,
    pinned_idle: Duration,
    last_client_activity: Instant,
    /// Where the oldest unanswered request stands, while `query` is on.
    query_state: Query,
}

/// The oldest unanswered request, as `query_timeout` sees it.
#[derive(Clone, Copy)]
enum Query {
    /// None, or the timer is off.
    Answered,
    /// Sent at this time.
    Running(Instant),
    /// Cancelled at this time for running too long.
    Cancelled(Instant),
}

/// What a passed query deadline calls for.
pub enum QueryDeadline {
    /// Send the server a cancel.
    Cancel,
    /// The cancel went unanswered for the grace: give the server connection up.
    GiveUp,
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
            cancel_grace: settings.query_cancel_grace,
            idle_in_transaction: settings.idle_transaction_timeout,
            client_idle: settings.client_idle_timeout,
            pinned_idle: settings.pinned_idle_timeout,
            last_client_activity: Instant::now(),
            query_state: Query::Answered,
        }
    }

    /// The client sent something.
    pub fn client_active(&mut self) {
        if !self.idle_in_transaction.is_zero()
            || !self.client_idle.is_zero()
            || !self.pinned_idle.is_zero()
        {
            self.last_client_activity = Instant::now();
        }
    }

    /// The server owes answers again after owing none: a request starts running.
    pub fn request_sent(&mut self) {
        if !self.query.is_zero() {
            self.query_state = Query::Running(Instant::now());
        }
    }

    /// Everything sent is answered, without a ReadyForQuery (a batch left open).
    pub fn answered(&mut self) {
        self.query_state = Query::Answered;
    }

    /// A ReadyForQuery arrived; `still_busy` when requests are still unanswered (the next
    /// one's time starts now).
    pub fn ready_received(&mut self, still_busy: bool) {
        if self.query.is_zero() {
            return;
        }
        self.query_state = if still_busy {
            Query::Running(Instant::now())
        } else {
            Query::Answered
        };
    }

    /// When the running request must be cancelled, or its cancel given up on.
    pub fn query_deadline(&self) -> Option<Instant> {
        match self.query_state {
            Query::Answered => None,
            Query::Running(started) => Some(started + self.query),
            Query::Cancelled(at) => Some(at + self.cancel_grace),
        }
    }

    /// The query deadline passed: what to do about it.
    pub fn query_deadline_passed(&mut self) -> QueryDeadline {
        match self.query_state {
            Query::Cancelled(_) => QueryDeadline::GiveUp,
            _ => {
                self.query_state = Query::Cancelled(Instant::now());
                QueryDeadline::Cancel
            }
        }
    }

    /// The error for a client whose cancelled query the server never answered.
    pub fn gave_up(&self) -> SessionError {
        SessionError::QueryTimeout {
            timeout: self.query,
            grace: self.cancel_grace,
        }
    }

    /// When a silent client pinned to its server connection is disconnected.
    pub fn pinned_idle_deadline(&self) -> Option<Instant> {
        (!self.pinned_idle.is_zero()).then(|| self.last_client_activity + self.pinned_idle)
    }

    /// The error for a pinned client whose idle deadline passed.
    pub fn pinned_expired(&self) -> SessionError {
        SessionError::PinnedIdleTimeout(self.pinned_idle)
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
