//! What ends a relaying session from outside: an admin kill, shutdown (drain) and the
//! removal of the client's tenant. Each is a flag that never goes back plus a `Notify`
//! broadcast that wakes the sessions waiting for it.
//!
//! Polling a waiting `Notified` takes its `Notify`'s lock, and the drain's lock is shared
//! by every session, so polling all three on every wait of every session contended across
//! worker threads. A session registers its wake-ups once, with its task's waker, and
//! afterwards only reads the flags; it registers again only if its waker changes.
//!
//! Reads flags owned elsewhere (`cancel`, `lifecycle`); never sets them.

use super::SessionError;
use crate::cancel::CancelTarget;
use crate::lifecycle::Drain;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::sync::futures::Notified;

/// The session's registrations for the three broadcasts.
pub(super) struct Interrupts<'n, 'a> {
    cancel: &'a CancelTarget,
    drain: &'a Drain,
    retired: &'a Drain,
    /// Wake-ups for `cancel`'s kill, `drain` and `retired`, in that order.
    wakeups: [Pin<&'n mut Notified<'a>>; 3],
    /// The waker the wake-ups were registered with.
    registered: Option<Waker>,
}

impl<'n, 'a> Interrupts<'n, 'a> {
    pub(super) fn new(
        cancel: &'a CancelTarget,
        drain: &'a Drain,
        retired: &'a Drain,
        wakeups: [Pin<&'n mut Notified<'a>>; 3],
    ) -> Self {
        Interrupts {
            cancel,
            drain,
            retired,
            wakeups,
            registered: None,
        }
    }

    /// Ready with the error that ends the session. Shutdown and tenant removal count only
    /// when `releasable`: a session inside a transaction finishes it first. Cancel-safe:
    /// it consumes nothing, and a flag, once set, stays set.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>, releasable: bool) -> Poll<SessionError> {
        if !self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            for wakeup in &mut self.wakeups {
                // Registers the waker; `Ready` only says a broadcast came, which the flags
                // below tell apart. Registering before reading the flags means a broadcast
                // after the read still wakes this task.
                let _ = wakeup.as_mut().poll(cx);
            }
            self.registered = Some(cx.waker().clone());
        }
        if self.cancel.is_killed() {
            return Poll::Ready(SessionError::Killed);
        }
        if releasable && self.drain.is_draining() {
            return Poll::Ready(SessionError::ShuttingDown);
        }
        if releasable && self.retired.is_draining() {
            return Poll::Ready(SessionError::TenantRemoved);
        }
        Poll::Pending
    }
}
