//! The session state a client holds on its server connection that cannot move to another
//! one: while it holds any, the client keeps that connection between transactions (it is
//! pinned). Filled and emptied by the effects of its statements once they hold
//! (`transaction`); advisory locks are counted per key, like PostgreSQL counts them.
//!
//! Errs towards staying pinned: an unlock sluice cannot match with a lock (a key that is not
//! a constant) leaves the pin in place until `pg_advisory_unlock_all()`, `DISCARD ALL` or
//! the client leaves.

use super::classify::{Pin, Unpin};
use crate::stats::PIN_REASONS;

/// A client's pins.
#[derive(Default)]
pub struct Pins {
    /// Each pin with how many times it is held (advisory locks nest).
    held: Vec<(Pin, u32)>,
}

impl Pins {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The state can never be taken off the connection (a library was loaded): it must be
    /// closed, not reset, when the client leaves.
    pub fn must_close(&self) -> bool {
        self.held.iter().any(|(pin, _)| *pin == Pin::Load)
    }

    /// The pin reasons held, one bit each in the order of [`PIN_REASONS`].
    pub fn reasons(&self) -> u8 {
        self.held.iter().fold(0, |bits, (pin, _)| {
            let bit = PIN_REASONS
                .iter()
                .position(|r| *r == pin.reason())
                .expect("every reason is listed");
            bits | 1 << bit
        })
    }

    pub fn hold(&mut self, pin: Pin) {
        match self.held.iter_mut().find(|(held, _)| *held == pin) {
            Some((Pin::AdvisoryLock { .. }, count)) => *count += 1,
            Some(_) => {}
            None => self.held.push((pin, 1)),
        }
    }

    pub fn release(&mut self, unpin: &Unpin) {
        match unpin {
            Unpin::AdvisoryUnlock {
                key: Some(key),
                shared,
            } => {
                let lock = Pin::AdvisoryLock {
                    key: Some(key.clone()),
                    shared: *shared,
                };
                if let Some(at) = self.held.iter().position(|(held, _)| *held == lock) {
                    self.held[at].1 -= 1;
                    if self.held[at].1 == 0 {
                        self.held.remove(at);
                    }
                }
            }
            // Which lock it releases is unknown: the pin stays.
            Unpin::AdvisoryUnlock { key: None, .. } => {}
            Unpin::AdvisoryUnlockAll => self.remove(|pin| matches!(pin, Pin::AdvisoryLock { .. })),
            Unpin::CloseCursor(name) => self.remove(|pin| *pin == Pin::HoldCursor(name.clone())),
            Unpin::CloseAllCursors => self.remove(|pin| matches!(pin, Pin::HoldCursor(_))),
            Unpin::Deallocate(name) => {
                self.remove(|pin| *pin == Pin::PreparedStatement(name.clone()))
            }
            Unpin::DiscardTemp => self.remove(|pin| *pin == Pin::TempTable),
            Unpin::ResetRole => self.remove(|pin| *pin == Pin::Role),
        }
    }

    /// `DEALLOCATE ALL`.
    pub fn deallocate_all(&mut self) {
        self.remove(|pin| matches!(pin, Pin::PreparedStatement(_)));
    }

    /// `DISCARD ALL`: everything but a loaded library is gone.
    pub fn discard_all(&mut self) {
        self.remove(|pin| *pin != Pin::Load);
    }

    fn remove(&mut self, gone: impl Fn(&Pin) -> bool) {
        self.held.retain(|(pin, _)| !gone(pin));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(key: &str) -> Pin {
        Pin::AdvisoryLock {
            key: Some(key.into()),
            shared: false,
        }
    }

    fn unlock(key: &str) -> Unpin {
        Unpin::AdvisoryUnlock {
            key: Some(key.into()),
            shared: false,
        }
    }

    #[test]
    fn advisory_locks_nest_per_key() {
        let mut pins = Pins::default();
        pins.hold(lock("1"));
        pins.hold(lock("1"));
        pins.hold(lock("2"));
        pins.release(&unlock("1"));
        pins.release(&unlock("2"));
        assert!(!pins.is_empty(), "key 1 is still held once");
        pins.release(&unlock("1"));
        assert!(pins.is_empty());
        pins.hold(Pin::AdvisoryLock {
            key: None,
            shared: false,
        });
        pins.release(&unlock("9"));
        assert!(!pins.is_empty(), "an unknown key stays pinned");
        pins.release(&Unpin::AdvisoryUnlockAll);
        assert!(pins.is_empty());
    }

    #[test]
    fn each_kind_of_state_has_its_release() {
        let mut pins = Pins::default();
        for pin in [
            Pin::TempTable,
            Pin::HoldCursor("c".into()),
            Pin::PreparedStatement("p".into()),
            Pin::Role,
        ] {
            pins.hold(pin);
        }
        assert_eq!(pins.reasons(), 0b10_1101);
        pins.release(&Unpin::CloseAllCursors);
        pins.release(&Unpin::Deallocate("p".into()));
        pins.release(&Unpin::ResetRole);
        pins.release(&Unpin::DiscardTemp);
        assert!(pins.is_empty());
        pins.hold(Pin::Load);
        pins.hold(Pin::TempTable);
        pins.discard_all();
        assert!(pins.must_close() && pins.reasons() == 0b1_0000);
    }
}
