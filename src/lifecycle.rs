//! The process's switches that every session watches: shutdown ([`Drain`], and how to stop,
//! [`Shutdown`]) and `PAUSE`/`RESUME` ([`Pause`]). Each is a flag plus a broadcast; the flags
//! never go back except a pause, which `RESUME` lifts.
//!
//! A leaf: it knows nothing of tenants, pools or sessions (a tenant's own pause flag is
//! handed in).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// How to stop.
#[derive(Debug, Clone, Copy)]
pub enum Shutdown {
    /// SIGTERM, admin SHUTDOWN: open transactions finish, up to shutdown_timeout.
    Graceful,
    /// SIGINT: every client is disconnected at once.
    Fast,
}

/// `PAUSE`/`RESUME`: while paused (everything, or one tenant), clients keep their
/// connections but new transactions wait for a server connection until resumed.
#[derive(Default)]
pub struct Pause {
    pub global: AtomicBool,
    resumed: Notify,
}

impl Pause {
    /// True while everything, or the tenant whose flag is `tenant_paused`, is paused.
    pub fn is_paused(&self, tenant_paused: &AtomicBool) -> bool {
        self.global.load(Relaxed) || tenant_paused.load(Relaxed)
    }

    /// Waits until neither everything nor the tenant is paused. Cancel-safe.
    pub async fn wait_resumed(&self, tenant_paused: &AtomicBool) {
        // Every checkout passes here: not paused, it takes no lock on the shared `Notify`.
        if !self.is_paused(tenant_paused) {
            return;
        }
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.is_paused(tenant_paused) {
                return;
            }
            resumed.await;
        }
    }

    pub fn resume_waiters(&self) {
        self.resumed.notify_waiters();
    }
}

/// Shutdown, or the removal of one tenant: once draining, sessions end (with 57P01) as
/// soon as they hold no transaction; those still inside one finish it first.
#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    started: Notify,
}

impl Drain {
    pub fn start(&self) {
        self.draining.store(true, Relaxed);
        self.started.notify_waiters();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// A wake-up for `is_draining` turning true; it must be registered (polled) before
    /// the flag is read, or a start in between goes unnoticed.
    pub fn notified(&self) -> Notified<'_> {
        self.started.notified()
    }

    /// Resolves once draining has started. Cancel-safe.
    pub async fn started(&self) {
        loop {
            let started = self.started.notified();
            tokio::pin!(started);
            started.as_mut().enable();
            if self.is_draining() {
                return;
            }
            started.await;
        }
    }
}
