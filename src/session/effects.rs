//! Statements whose effect on the server session sluice must follow, because it keeps its
//! own record of that session: `DISCARD ALL` and `DEALLOCATE ALL` drop the prepared
//! statements sluice believes a server connection holds; `DISCARD ALL`, `RESET ALL` and
//! `RESET name` put settings back to what the client started with.
//!
//! An effect is recorded when the statement is sent and counts only once the server
//! confirms it: by the statement's CommandComplete for a simple query (a failed statement
//! changes nothing), by the request's ReadyForQuery for one sluice could not read whole or
//! sent through Parse (conservatively: forgetting a prepared statement only costs preparing
//! it again). Confirmed effects are applied at the request's ReadyForQuery, in statement
//! order: PostgreSQL reports changed settings (ParameterStatus) just before it, and what a
//! RESET restores must win over what the server reports as its own default.
//!
//! Recognising is cheap on the hot path: the lexer (`sluice_protocol::sql`) runs in full
//! only on a query that starts with one of these words or holds several statements.

use sluice_protocol::sql::{self, Token};
use std::collections::VecDeque;

/// What a statement does to the session state sluice follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `DISCARD ALL`: prepared statements and settings are gone.
    DiscardAll,
    /// `DEALLOCATE [PREPARE] ALL`: prepared statements are gone.
    DeallocateAll,
    /// `RESET ALL`.
    ResetAll,
    /// `RESET name` (the name lowercased unless it was quoted).
    Reset(String),
    /// A query sluice did not read whole: any of the above may have happened.
    Unknown,
}

/// The words a statement with an effect starts with: the cheap test before lexing.
fn may_have_effect(word: &[u8]) -> bool {
    ["discard", "deallocate", "reset"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w.as_bytes()))
}

/// The effect of one statement, if it has one.
pub fn classify(statement: &[u8]) -> Option<Effect> {
    let mut tokens = sql::tokens(statement);
    let first = tokens.next()?;
    let second = tokens.next();
    let third = tokens.next();
    if first.is_word("discard") {
        return second
            .filter(|t| t.is_word("all"))
            .map(|_| Effect::DiscardAll);
    }
    if first.is_word("deallocate") {
        let all = match second {
            Some(t) if t.is_word("prepare") => third,
            other => other,
        };
        return all
            .filter(|t| t.is_word("all"))
            .map(|_| Effect::DeallocateAll);
    }
    if first.is_word("reset") {
        return match second? {
            t if t.is_word("all") => Some(Effect::ResetAll),
            // RESET ROLE and RESET SESSION AUTHORIZATION change who runs, not a setting.
            t if t.is_word("role") || t.is_word("session") => None,
            Token::Word(name) => Some(Effect::Reset(
                String::from_utf8_lossy(name).to_ascii_lowercase(),
            )),
            Token::QuotedIdent(name) => Some(Effect::Reset(
                String::from_utf8_lossy(name).replace("\"\"", "\""),
            )),
            _ => None,
        };
    }
    None
}

/// The effects of the statements of a simple query (its text, without the trailing NUL),
/// with each statement's index among the statements the server will run.
pub fn of_query(text: &[u8], mut found: impl FnMut(u32, Effect)) {
    if !sql::may_have_several_statements(text) {
        if sql::first_word(text).is_some_and(may_have_effect) {
            if let Some(effect) = classify(text) {
                found(0, effect);
            }
        }
        return;
    }
    for (index, statement) in (0u32..).zip(sql::statements(text)) {
        if let Some(effect) = classify(statement) {
            found(index, effect);
        }
    }
}

/// An effect waiting for its confirmation.
struct Pending {
    /// The request (Query or Sync batch) it belongs to, counted from the lease's first.
    request: u64,
    /// The statement completion within the request that confirms it; `None`: the
    /// request's ReadyForQuery does.
    completion: Option<u32>,
    /// Its statement completed.
    confirmed: bool,
    effect: Effect,
}

/// Effects sent and not yet confirmed, matched with the server's answers in order.
#[derive(Default)]
pub struct Effects {
    pending: VecDeque<Pending>,
    /// Requests sent (answered by a ReadyForQuery) and answered so far.
    requests_sent: u64,
    requests_done: u64,
    /// Statements of the current request completed so far.
    completions: u32,
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

    /// A request (Query, FunctionCall or Sync) was sent.
    pub fn request_sent(&mut self) {
        self.requests_sent += 1;
    }

    /// `silenced` Syncs turned out to be COPY data: no ReadyForQuery answers them.
    pub fn syncs_silenced(&mut self, silenced: u32) {
        self.requests_sent -= u64::from(silenced);
    }

    /// A statement of the current request completed: its effect, if it has one, is
    /// confirmed.
    pub fn completed(&mut self) {
        let completion = Some(self.completions);
        self.completions += 1;
        let request = self.requests_done;
        if let Some(pending) = self
            .pending
            .iter_mut()
            .find(|p| p.request == request && p.completion == completion)
        {
            pending.confirmed = true;
        }
    }

    /// The current request got its ReadyForQuery: its confirmed effects, in order.
    /// Effects of statements that never completed (they failed, or were skipped) are
    /// dropped.
    pub fn ready(&mut self, mut confirmed: impl FnMut(Effect)) {
        while self
            .pending
            .front()
            .is_some_and(|p| p.request <= self.requests_done)
        {
            let pending = self.pending.pop_front().expect("checked above");
            if pending.confirmed {
                confirmed(pending.effect);
            }
        }
        self.requests_done += 1;
        self.completions = 0;
    }

    /// The lease ended: nothing is pending (the connection was idle or is reset).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.requests_sent = 0;
        self.requests_done = 0;
        self.completions = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effects(text: &str) -> Vec<(u32, Effect)> {
        let mut found = Vec::new();
        of_query(text.as_bytes(), |i, e| found.push((i, e)));
        found
    }

    #[test]
    fn statements_with_effects_anywhere_in_a_query() {
        assert_eq!(effects("DISCARD ALL"), [(0, Effect::DiscardAll)]);
        assert_eq!(
            effects("/* a long comment */ discard\nall ;"),
            [(0, Effect::DiscardAll)]
        );
        assert_eq!(
            effects("SELECT 1; DEALLOCATE PREPARE ALL; select ';reset all'"),
            [(1, Effect::DeallocateAll)]
        );
        assert_eq!(
            effects("reset all; RESET Search_Path; reset \"MyVar\"; reset role"),
            [
                (0, Effect::ResetAll),
                (1, Effect::Reset("search_path".into())),
                (2, Effect::Reset("MyVar".into()))
            ]
        );
        assert_eq!(effects("select 'discard all'"), []);
        assert_eq!(effects("discard plans; deallocate s1"), []);
        assert_eq!(effects(";; ; discard all"), [(0, Effect::DiscardAll)]);
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
        let mut confirmed = Vec::new();
        e.ready(|effect| confirmed.push(effect));
        assert_eq!(confirmed, [Effect::DiscardAll]);
        e.ready(|_| panic!("failed statements have no effect"));
        // A batch whose Parse text was DISCARD ALL: confirmed by its ReadyForQuery.
        e.expect(None, Effect::DiscardAll);
        e.request_sent();
        e.completed();
        let mut confirmed = Vec::new();
        e.ready(|effect| confirmed.push(effect));
        assert_eq!(confirmed, [Effect::DiscardAll]);
    }
}
