//! Matching the effects of a client's statements (see `classify`) with the server's
//! answers: an effect is recorded when its statement is sent, confirmed by the statement's
//! completion (CommandComplete for a simple query's statement or an Execute), and handed on
//! at the request's ReadyForQuery, in statement order, followed by the request's error if it
//! had one. What the confirmed effects then mean for the session (committed, rolled back,
//! pinned) is `transaction`'s business.
//!
//! Handing them on at ReadyForQuery, not at each completion, matters: PostgreSQL reports the
//! settings a request changed (ParameterStatus) just before its ReadyForQuery, and what a
//! `RESET` restores must win over what the server reports as its own default.

use super::classify::Effect;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};

/// An effect waiting for its confirmation.
struct Pending {
    /// The request (Query, FunctionCall or Sync batch) it belongs to, counted from the
    /// lease's first.
    request: u64,
    /// The statement completion within the request that confirms it; `None`: the
    /// request's ReadyForQuery does (a statement sluice cannot match with its completion).
    completion: Option<u32>,
    confirmed: bool,
    effect: Effect,
}

/// What a request's ReadyForQuery hands on, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A statement that ran: its effect.
    Confirmed(Effect),
    /// The request failed after the statements confirmed before: the rest did not run.
    Error,
}

/// Effects sent and not yet answered, matched with the server's answers in order.
#[derive(Default)]
pub struct Effects {
    pending: VecDeque<Pending>,
    /// Requests sent (answered by a ReadyForQuery) and answered so far.
    requests_sent: u64,
    requests_done: u64,
    /// Executes sent in the request being sent (their completions are counted in order).
    executes_sent: u32,
    /// Statements of the request being answered completed so far, and whether it failed.
    completions: u32,
    failed: bool,
}

impl Effects {
    /// `effect` belongs to the request about to be sent: confirmed by its `completion`-th
    /// statement completion, or (`None`) by its ReadyForQuery.
    pub fn expect(&mut self, completion: Option<u32>, effect: Effect) {
        self.pending.push_back(Pending {
            request: self.requests_sent,
            completion,
            confirmed: completion.is_none(),
            effect,
        });
    }

    /// An Execute is sent: its completion's index within the request.
    pub fn execute_sent(&mut self) -> u32 {
        self.executes_sent += 1;
        self.executes_sent - 1
    }

    /// A request (Query, FunctionCall or Sync) was sent.
    pub fn request_sent(&mut self) {
        self.requests_sent += 1;
        self.executes_sent = 0;
    }

    /// `silenced` Syncs turned out to be COPY data: no ReadyForQuery answers them.
    pub fn syncs_silenced(&mut self, silenced: u32) {
        self.requests_sent -= u64::from(silenced);
    }

    /// A statement of the request being answered completed: its effect, if it has one, is
    /// confirmed.
    pub fn completed(&mut self) {
        let completion = Some(self.completions);
        self.completions += 1;
        let request = self.requests_done;
        // A statement may have several effects (a lock and an unlock in one SELECT).
        for pending in self
            .pending
            .iter_mut()
            .filter(|p| p.request == request && p.completion == completion)
        {
            pending.confirmed = true;
        }
    }

    /// The request being answered failed (an ErrorResponse).
    pub fn failed(&mut self) {
        self.failed = true;
    }

    /// The request being answered got its ReadyForQuery: its confirmed effects, in order,
    /// then its error. Effects of statements that never completed (they failed, or were
    /// skipped) are dropped.
    pub fn ready(&mut self, mut event: impl FnMut(Event)) {
        while self
            .pending
            .front()
            .is_some_and(|p| p.request <= self.requests_done)
        {
            let pending = self.pending.pop_front().expect("checked above");
            if pending.confirmed {
                event(Event::Confirmed(pending.effect));
            }
        }
        if std::mem::take(&mut self.failed) {
            event(Event::Error);
        }
        self.requests_done += 1;
        self.completions = 0;
    }

    /// The lease ended: nothing is pending (the connection was idle or is reset).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.requests_sent = 0;
        self.requests_done = 0;
        self.executes_sent = 0;
        self.completions = 0;
        self.failed = false;
    }
}

/// The effects of the client's prepared statements and of the unnamed portal, so that an
/// Execute expects what its statement does (transaction mode with statement tracking).
#[derive(Default)]
pub struct StatementEffects {
    /// Named statements that have effects.
    named: HashMap<Bytes, Vec<Effect>>,
    unnamed: Vec<Effect>,
    unnamed_portal: Vec<Effect>,
}

impl StatementEffects {
    /// A Parse of statement `name` (empty: the unnamed one) with these effects.
    pub fn parsed(&mut self, name: &[u8], effects: Vec<Effect>) {
        if name.is_empty() {
            self.unnamed = effects;
        } else if effects.is_empty() {
            self.named.remove(name);
        } else {
            self.named.insert(Bytes::copy_from_slice(name), effects);
        }
    }

    /// A Bind of `statement` into `portal`. Returns the effects to expect now for a named
    /// portal (which sluice does not follow to its Execute: conservatively, as if run).
    pub fn bound(&mut self, portal: &[u8], statement: &[u8]) -> &[Effect] {
        let effects = if statement.is_empty() {
            &self.unnamed
        } else {
            self.named.get(statement).map_or(&[][..], Vec::as_slice)
        };
        if portal.is_empty() {
            self.unnamed_portal.clear();
            self.unnamed_portal.extend_from_slice(effects);
            &[]
        } else {
            effects
        }
    }

    /// What an Execute of the unnamed portal does.
    pub fn unnamed_portal(&self) -> &[Effect] {
        &self.unnamed_portal
    }

    /// A Close of statement `name` (empty: the unnamed one).
    pub fn closed(&mut self, name: &[u8]) {
        if name.is_empty() {
            self.unnamed.clear();
        } else {
            self.named.remove(name);
        }
    }

    /// A simple query drops the unnamed statement and portal.
    pub fn query_sent(&mut self) {
        self.unnamed.clear();
        self.unnamed_portal.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(e: &mut Effects) -> Vec<Event> {
        let mut out = Vec::new();
        e.ready(|event| out.push(event));
        out
    }

    #[test]
    fn an_effect_counts_only_when_its_statement_completes() {
        let mut e = Effects::default();
        // Query 0: "SELECT 1; DISCARD ALL" — both complete.
        e.expect(Some(1), Effect::DiscardAll);
        e.request_sent();
        // Query 1: "RESET x; RESET ALL" — the first fails, the second never runs.
        e.expect(Some(0), Effect::Reset("x".into()));
        e.expect(Some(1), Effect::ResetAll);
        e.request_sent();
        e.completed();
        e.completed();
        assert_eq!(events(&mut e), [Event::Confirmed(Effect::DiscardAll)]);
        e.failed();
        assert_eq!(events(&mut e), [Event::Error]);
        // A batch whose Parse text was DISCARD ALL: confirmed by its ReadyForQuery.
        e.expect(None, Effect::DiscardAll);
        e.request_sent();
        assert_eq!(events(&mut e), [Event::Confirmed(Effect::DiscardAll)]);
    }

    #[test]
    fn one_completion_confirms_every_effect_of_its_statement() {
        let mut e = Effects::default();
        e.expect(Some(0), Effect::Begin);
        e.expect(Some(0), Effect::Commit);
        e.request_sent();
        e.completed();
        assert_eq!(
            events(&mut e),
            [
                Event::Confirmed(Effect::Begin),
                Event::Confirmed(Effect::Commit)
            ]
        );
    }

    #[test]
    fn executes_are_counted_per_request() {
        let mut e = Effects::default();
        assert_eq!(e.execute_sent(), 0);
        let second = e.execute_sent();
        e.expect(Some(second), Effect::Begin);
        e.request_sent();
        assert_eq!(e.execute_sent(), 0, "counted again in the next request");
        e.completed();
        e.completed();
        assert_eq!(events(&mut e), [Event::Confirmed(Effect::Begin)]);
    }
}
