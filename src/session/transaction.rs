//! What a client's confirmed statements mean for its session: settings, temporary tables,
//! `WITH HOLD` cursors and roles last only if their transaction commits (explicit, or the
//! implicit one of a multi-statement query or an extended-query batch); savepoints undo
//! what came after them; advisory locks, SQL `PREPARE` and `LOAD` take hold at once.
//!
//! Fed the events of each request in order (`effects::Event`) and the transaction status
//! of its ReadyForQuery, it hands on each effect as [`Outcome::Holds`] once it is certain
//! to hold, or as [`Outcome::Uncertain`] when the statements seen cannot tell (the model's
//! idea of the transaction disagrees with the server's status): the caller then assumes the
//! worst for other clients (what the server may have is reset before anyone else gets the
//! connection, and state that may exist keeps the client pinned).

use super::classify::Effect;
use super::effects::Event;
use sluice_protocol::exchange::TransactionStatus;

/// What became of an effect.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It holds: the statement ran and its transaction (if it needs one) committed.
    Holds(Effect),
    /// It may or may not hold.
    Uncertain(Effect),
}

enum Provisional {
    Effect(Effect),
    Savepoint(String),
}

/// The transaction a client is in, as its statements describe it.
#[derive(Default)]
pub struct Transaction {
    /// Inside BEGIN … COMMIT.
    explicit: bool,
    /// That transaction failed: only ROLLBACK (or ROLLBACK TO) ends the failure.
    failed: bool,
    /// Transactional effects and savepoints since the transaction began.
    provisional: Vec<Provisional>,
}

impl Transaction {
    /// One event of a request, in order.
    pub fn event(&mut self, event: Event, outcome: &mut dyn FnMut(Outcome)) {
        let effect = match event {
            Event::Error => {
                if self.explicit {
                    self.failed = true;
                } else {
                    // The implicit transaction of the request rolled back.
                    self.provisional.clear();
                }
                return;
            }
            Event::Confirmed(effect) => effect,
        };
        match effect {
            Effect::Begin => self.explicit = true,
            Effect::Commit => {
                if self.failed {
                    self.provisional.clear();
                } else {
                    self.commit(outcome);
                }
                self.explicit = false;
                self.failed = false;
            }
            Effect::Rollback => {
                self.provisional.clear();
                self.explicit = false;
                self.failed = false;
            }
            Effect::Savepoint(name) => self.provisional.push(Provisional::Savepoint(name)),
            Effect::ReleaseSavepoint(name) => {
                if let Some(at) = self.savepoint(&name) {
                    self.provisional.remove(at);
                }
            }
            Effect::RollbackToSavepoint(name) => {
                if let Some(at) = self.savepoint(&name) {
                    self.provisional.truncate(at + 1);
                }
                self.failed = false;
            }
            effect if effect.is_transactional() => {
                self.provisional.push(Provisional::Effect(effect));
            }
            effect => outcome(Outcome::Holds(effect)),
        }
    }

    /// The request ended with ReadyForQuery `status`.
    pub fn ready(&mut self, status: TransactionStatus, outcome: &mut dyn FnMut(Outcome)) {
        match (status, self.explicit) {
            // An implicit transaction committed.
            (TransactionStatus::Idle, false) => self.commit(outcome),
            // A failed transaction can only have ended by rolling back.
            (TransactionStatus::Idle, true) if self.failed => {
                self.provisional.clear();
                self.explicit = false;
                self.failed = false;
            }
            (TransactionStatus::InTransaction, true) => {}
            (TransactionStatus::Failed, true) => self.failed = true,
            // The statements did not tell how the transaction began or ended.
            (status, _) => {
                for entry in self.provisional.drain(..) {
                    if let Provisional::Effect(effect) = entry {
                        outcome(Outcome::Uncertain(effect));
                    }
                }
                self.explicit = status != TransactionStatus::Idle;
                self.failed = status == TransactionStatus::Failed;
            }
        }
    }

    fn commit(&mut self, outcome: &mut dyn FnMut(Outcome)) {
        for entry in self.provisional.drain(..) {
            if let Provisional::Effect(effect) = entry {
                outcome(Outcome::Holds(effect));
            }
        }
    }

    fn savepoint(&self, name: &str) -> Option<usize> {
        self.provisional
            .iter()
            .rposition(|p| matches!(p, Provisional::Savepoint(n) if n == name))
    }

    /// The client left or the connection was reset: the server rolled back.
    pub fn abandon(&mut self) {
        *self = Transaction::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::classify::{Pin, Value};

    fn set(name: &str) -> Effect {
        Effect::Set {
            name: name.into(),
            value: Value::Known("1".into()),
        }
    }

    /// Feeds one request's events and its ReadyForQuery status; returns the outcomes.
    fn request(t: &mut Transaction, events: Vec<Event>, status: TransactionStatus) -> Vec<Outcome> {
        let mut out = Vec::new();
        for event in events {
            t.event(event, &mut |o| out.push(o));
        }
        t.ready(status, &mut |o| out.push(o));
        out
    }

    use Event::{Confirmed, Error};
    use TransactionStatus::{Failed, Idle, InTransaction};

    #[test]
    fn a_set_outside_a_block_holds_when_its_request_succeeds() {
        let mut t = Transaction::default();
        assert_eq!(
            request(&mut t, vec![Confirmed(set("a"))], Idle),
            [Outcome::Holds(set("a"))]
        );
        // "SET a = 1; SELECT 1/0": the implicit transaction rolls back.
        assert_eq!(request(&mut t, vec![Confirmed(set("a")), Error], Idle), []);
    }

    #[test]
    fn sets_in_a_block_hold_at_commit_not_at_rollback() {
        let mut t = Transaction::default();
        assert_eq!(
            request(&mut t, vec![Confirmed(Effect::Begin)], InTransaction),
            []
        );
        assert_eq!(
            request(&mut t, vec![Confirmed(set("a"))], InTransaction),
            []
        );
        assert_eq!(
            request(&mut t, vec![Confirmed(Effect::Commit)], Idle),
            [Outcome::Holds(set("a"))]
        );
        request(
            &mut t,
            vec![Confirmed(Effect::Begin), Confirmed(set("b"))],
            InTransaction,
        );
        assert_eq!(request(&mut t, vec![Confirmed(Effect::Rollback)], Idle), []);
        // A failed block: its COMMIT rolls back.
        request(
            &mut t,
            vec![Confirmed(Effect::Begin), Confirmed(set("c"))],
            InTransaction,
        );
        assert_eq!(request(&mut t, vec![Error], Failed), []);
        assert_eq!(request(&mut t, vec![Confirmed(Effect::Commit)], Idle), []);
    }

    #[test]
    fn rollback_to_a_savepoint_undoes_what_came_after_it() {
        let mut t = Transaction::default();
        let out = request(
            &mut t,
            vec![
                Confirmed(Effect::Begin),
                Confirmed(set("a")),
                Confirmed(Effect::Savepoint("s".into())),
                Confirmed(set("b")),
                Confirmed(Effect::RollbackToSavepoint("s".into())),
                Confirmed(set("c")),
                Confirmed(Effect::Commit),
            ],
            Idle,
        );
        assert_eq!(out, [Outcome::Holds(set("a")), Outcome::Holds(set("c"))]);
    }

    #[test]
    fn immediate_effects_hold_even_in_a_block_that_rolls_back() {
        let mut t = Transaction::default();
        let lock = Effect::Pin(Pin::AdvisoryLock {
            key: Some("1".into()),
            shared: false,
        });
        let out = request(
            &mut t,
            vec![
                Confirmed(Effect::Begin),
                Confirmed(lock.clone()),
                Confirmed(Effect::Pin(Pin::TempTable)),
            ],
            InTransaction,
        );
        assert_eq!(out, [Outcome::Holds(lock)]);
        assert_eq!(request(&mut t, vec![Confirmed(Effect::Rollback)], Idle), []);
    }

    #[test]
    fn a_status_the_statements_do_not_explain_makes_effects_uncertain() {
        let mut t = Transaction::default();
        // BEGIN was not seen (say, sent in a form sluice does not read), yet status is T.
        assert_eq!(
            request(&mut t, vec![Confirmed(set("a"))], InTransaction),
            [Outcome::Uncertain(set("a"))]
        );
        // Then a COMMIT sluice does not see either: the status goes to I.
        request(&mut t, vec![Confirmed(set("b"))], InTransaction);
        assert_eq!(
            request(&mut t, vec![], Idle),
            [Outcome::Uncertain(set("b"))]
        );
    }
}
