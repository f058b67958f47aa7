//! Prepared statements under transaction pooling. A client's named statements must keep
//! working whichever server connection it lands on, and the lib/pq pattern (an unnamed
//! Parse in one Sync batch, its Bind in the next) must survive a change of server.
//!
//! - Each client keeps its own map from statement name to [`Statement`]: the query and
//!   parameter types under a server-side name derived from their hash, so clients that
//!   prepare the same query share one server-side statement.
//! - Each server connection keeps [`ServerStatements`]: which server-side names it has
//!   prepared (a bounded LRU, `max_prepared_statements`) and whose unnamed statement it
//!   holds. A name counts as prepared only once the server confirmed it (ParseComplete),
//!   and stops counting as soon as sluice sends a Close for it, so the record can only
//!   err towards preparing again — and every Parse sluice sends for a named statement is
//!   preceded by a Close of that name, so preparing again is always safe.
//! - [`ResponseFilter`] drops the ParseComplete and CloseComplete answers to the
//!   messages sluice injected, and applies confirmations, in the order the server sends
//!   them.
//!
//! Decides what to prepare where; the server connection's own record is
//! `server::statements`. No I/O (also compiled into `benches/hot_path.rs`).

use crate::server::statements::{ServerStatements, UnnamedOwner};
use bytes::{Bytes, BytesMut};
use ring::digest;
use sluice_protocol::extended::{encode_parse, encode_target};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A statement a client prepared, as sluice prepares it on servers.
pub struct Statement {
    /// "sluice_" + hex of the first 16 bytes of SHA-256(query, parameter types).
    pub server_name: Bytes,
    /// The complete Parse message under `server_name`.
    pub parse: Bytes,
}

impl Statement {
    /// Builds the server-side form of a Parse whose body after the name is `rest`.
    pub fn new(rest: &[u8]) -> Self {
        let hash = digest::digest(&digest::SHA256, rest);
        let mut name = String::with_capacity(7 + 32);
        name.push_str("sluice_");
        for byte in &hash.as_ref()[..16] {
            name.push_str(&format!("{byte:02x}"));
        }
        let server_name = Bytes::from(name);
        let mut parse = BytesMut::new();
        encode_parse(&mut parse, &server_name, rest);
        Statement {
            server_name,
            parse: parse.freeze(),
        }
    }
}

/// One client's prepared statements.
pub struct ClientStatements {
    /// Identifies this client in [`ServerStatements::unnamed`].
    client_id: u64,
    named: HashMap<Bytes, Arc<Statement>>,
    /// The client's latest unnamed Parse message, replayed on other servers before its Bind.
    unnamed_parse: BytesMut,
    /// Counts the client's unnamed Parses; 0 means it has none.
    unnamed_seq: u64,
}

impl ClientStatements {
    pub fn new(client_id: u64) -> Self {
        ClientStatements {
            client_id,
            named: HashMap::new(),
            unnamed_parse: BytesMut::new(),
            unnamed_seq: 0,
        }
    }

    /// Records a named Parse and returns its server-side form.
    pub fn prepare(&mut self, name: &[u8], rest: &[u8]) -> Arc<Statement> {
        let statement = Arc::new(Statement::new(rest));
        self.named
            .insert(Bytes::copy_from_slice(name), statement.clone());
        statement
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.named.get(name)
    }

    pub fn close(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.named.remove(name)
    }

    /// Records the client's unnamed Parse message (complete, as sent).
    pub fn remember_unnamed(&mut self, message: &[u8]) -> UnnamedOwner {
        self.unnamed_parse.clear();
        self.unnamed_parse.extend_from_slice(message);
        self.unnamed_seq += 1;
        self.unnamed_owner()
    }

    pub fn has_unnamed(&self) -> bool {
        self.unnamed_seq != 0
    }

    pub fn forget_unnamed(&mut self) {
        self.unnamed_parse.clear();
        self.unnamed_seq = 0;
    }

    /// The unnamed Parse to replay before a Bind/Describe of the unnamed statement on
    /// `server`, when `server` neither holds this client's latest one nor has it on the
    /// way (`in_flight`: sent on this lease, not yet answered). Should that Parse fail,
    /// the server answers the Bind as PostgreSQL would without sluice.
    pub fn unnamed_to_replay(
        &self,
        server: &ServerStatements,
        in_flight: &ResponseFilter,
    ) -> Option<(&[u8], UnnamedOwner)> {
        let owner = self.unnamed_owner();
        (self.unnamed_seq != 0
            && server.unnamed() != Some(owner)
            && !in_flight.unnamed_parse_pending(owner))
        .then_some((&self.unnamed_parse[..], owner))
    }

    /// `DEALLOCATE ALL` or `DISCARD ALL`: the client has no statements any more.
    pub fn clear(&mut self) {
        self.named.clear();
        self.forget_unnamed();
    }

    fn unnamed_owner(&self) -> UnnamedOwner {
        UnnamedOwner {
            client_id: self.client_id,
            seq: self.unnamed_seq,
        }
    }
}

/// What a ParseComplete confirms.
pub enum Confirm {
    /// `server_name` is prepared on the server. For the client's own Parse, `client` is
    /// the client's name for it, which stays known only if the server accepts the Parse.
    Prepared {
        server_name: Bytes,
        client: Option<Bytes>,
    },
    Unnamed(UnnamedOwner),
}

struct Expected<T> {
    /// Number of the Sync batch the message was sent in.
    batch: u64,
    /// sluice sent the message itself: the client must not see the answer.
    swallow: bool,
    what: T,
}

/// Matches the server's ParseComplete and CloseComplete answers with the Parse and Close
/// messages sent, in order. Answers to messages skipped after an error never come; their
/// entries are dropped when the batch's ReadyForQuery arrives.
#[derive(Default)]
pub struct ResponseFilter {
    parses: VecDeque<Expected<Confirm>>,
    closes: VecDeque<Expected<()>>,
    batches_sent: u64,
    batches_done: u64,
    /// Entries with `swallow` set.
    swallows: usize,
}

impl ResponseFilter {
    pub fn parse_sent(&mut self, swallow: bool, confirm: Confirm) {
        let batch = self.batches_sent;
        self.swallows += usize::from(swallow);
        self.parses.push_back(Expected {
            batch,
            swallow,
            what: confirm,
        });
    }

    pub fn close_sent(&mut self, swallow: bool) {
        let batch = self.batches_sent;
        self.swallows += usize::from(swallow);
        self.closes.push_back(Expected {
            batch,
            swallow,
            what: (),
        });
    }

    /// Forgets everything expected, keeping the queues' memory for the next lease.
    pub fn clear(&mut self) {
        self.parses.clear();
        self.closes.clear();
        self.batches_sent = 0;
        self.batches_done = 0;
        self.swallows = 0;
    }

    /// True while `owner`'s unnamed Parse has been sent and not yet answered.
    fn unnamed_parse_pending(&self, owner: UnnamedOwner) -> bool {
        self.parses
            .iter()
            .any(|e| matches!(e.what, Confirm::Unnamed(sent) if sent == owner))
    }

    /// A Sync, Query or FunctionCall was sent: it ends a batch.
    pub fn batch_sent(&mut self) {
        self.batches_sent += 1;
    }

    /// `silenced` Syncs sent turned out to be COPY data: they end no batch.
    pub fn syncs_silenced(&mut self, silenced: u32) {
        self.batches_sent -= u64::from(silenced);
    }

    /// ReadyForQuery arrived: the oldest open batch is complete. The client's own named
    /// statements whose Parse was refused or skipped are forgotten again.
    pub fn batch_done(&mut self, client: Option<&mut ClientStatements>) {
        let done = self.batches_done;
        self.batches_done += 1;
        let mut client = client;
        while self.parses.front().is_some_and(|e| e.batch <= done) {
            let expected = self.parses.pop_front().expect("checked above");
            self.swallows -= usize::from(expected.swallow);
            if let (
                Confirm::Prepared {
                    client: Some(name), ..
                },
                Some(client),
            ) = (expected.what, client.as_deref_mut())
            {
                client.close(&name);
            }
        }
        while self.closes.front().is_some_and(|e| e.batch <= done) {
            let expected = self.closes.pop_front().expect("checked above");
            self.swallows -= usize::from(expected.swallow);
        }
    }

    /// A ParseComplete arrived; true when the client must not see it.
    pub fn parse_complete(&mut self, server: &mut ServerStatements) -> bool {
        match self.parses.pop_front() {
            Some(expected) => {
                match expected.what {
                    Confirm::Prepared { server_name, .. } => server.prepared(server_name),
                    Confirm::Unnamed(owner) => server.set_unnamed(Some(owner)),
                }
                self.swallows -= usize::from(expected.swallow);
                expected.swallow
            }
            None => false,
        }
    }

    /// A CloseComplete arrived; true when the client must not see it.
    pub fn close_complete(&mut self) -> bool {
        let swallow = self.closes.pop_front().is_some_and(|e| e.swallow);
        self.swallows -= usize::from(swallow);
        swallow
    }

    /// True when an answer to be swallowed may still arrive.
    pub fn may_swallow(&self) -> bool {
        self.swallows > 0
    }
}

/// What must go to the server before a client's Parse, Bind, Describe or Close, and the
/// server-side name that message should carry instead of the client's.
#[derive(Default)]
pub struct Plan {
    /// Server-side statements to close first: an evicted one, and the one about to be
    /// prepared (in case the server still has it without sluice knowing).
    pub close: [Option<Bytes>; 2],
    /// A Parse to send, what its ParseComplete confirms, and whether to swallow that.
    pub parse: Option<(Bytes, Confirm, bool)>,
    pub rename: Option<Bytes>,
}

impl Plan {
    /// Prepares `statement` on `server`, evicting the least recently used if full.
    /// `client_name` is set when this is the client's own Parse (not swallowed).
    pub fn prepare(
        server: &mut ServerStatements,
        capacity: usize,
        statement: Arc<Statement>,
        client_name: Option<Bytes>,
    ) -> Plan {
        server.forget(&statement.server_name);
        let evicted = server.evict_for_one_more(capacity);
        let swallow = client_name.is_none();
        let confirm = Confirm::Prepared {
            server_name: statement.server_name.clone(),
            client: client_name,
        };
        Plan {
            close: [evicted, Some(statement.server_name.clone())],
            parse: Some((statement.parse.clone(), confirm, swallow)),
            rename: None,
        }
    }

    /// For a Bind or Describe of the client's statement `name` on `server`: prepares it
    /// there first when missing (for the unnamed statement, replays the client's last
    /// unnamed Parse), and renames it to its server-side name.
    pub fn for_use(
        server: &mut ServerStatements,
        client: &ClientStatements,
        in_flight: &ResponseFilter,
        capacity: usize,
        name: &[u8],
    ) -> Plan {
        if name.is_empty() {
            if !client.has_unnamed() {
                // The server may hold another client's unnamed statement: drop it, so the
                // Bind fails as PostgreSQL's would (26000) instead of running it.
                server.set_unnamed(None);
                return Plan {
                    close: [Some(Bytes::new()), None],
                    ..Plan::default()
                };
            }
            let Some((parse, owner)) = client.unnamed_to_replay(server, in_flight) else {
                return Plan::default();
            };
            server.set_unnamed(None);
            return Plan {
                parse: Some((Bytes::copy_from_slice(parse), Confirm::Unnamed(owner), true)),
                ..Plan::default()
            };
        }
        let Some(statement) = client.get(name) else {
            return Plan::default();
        };
        let server_name = statement.server_name.clone();
        let mut plan = if server.touch(&server_name) {
            Plan::default()
        } else {
            Plan::prepare(server, capacity, statement.clone(), None)
        };
        plan.rename = Some(server_name);
        plan
    }

    pub fn is_nothing(&self) -> bool {
        self.close.iter().all(Option::is_none) && self.parse.is_none() && self.rename.is_none()
    }
}

/// Appends a Close of a server-side statement.
pub fn encode_close_statement(buf: &mut BytesMut, server_name: &[u8]) {
    encode_target(buf, b'C', b'S', server_name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_query_gets_the_same_server_name_in_every_client() {
        let mut a = ClientStatements::new(1);
        let mut b = ClientStatements::new(2);
        let x = a.prepare(b"s1", b"SELECT 1\0\0\0");
        let y = b.prepare(b"other", b"SELECT 1\0\0\0");
        let z = b.prepare(b"s2", b"SELECT 2\0\0\0");
        assert_eq!(x.server_name, y.server_name);
        assert_ne!(x.server_name, z.server_name);
        assert!(x.server_name.starts_with(b"sluice_"));
    }

    #[test]
    fn prepared_counts_only_after_confirmation_and_errors_drop_expectations() {
        let mut server = ServerStatements::new();
        let mut filter = ResponseFilter::default();
        let statement = Statement::new(b"SELECT 1\0\0\0");
        filter.close_sent(true);
        filter.parse_sent(
            true,
            Confirm::Prepared {
                server_name: statement.server_name.clone(),
                client: None,
            },
        );
        filter.batch_sent();
        assert!(!server.touch(&statement.server_name));
        assert!(filter.close_complete());
        assert!(filter.parse_complete(&mut server));
        assert!(server.touch(&statement.server_name));
        filter.batch_done(None);

        // A client's Parse skipped after an error: no ParseComplete, and the client's
        // statement is forgotten again.
        let mut client = ClientStatements::new(1);
        let refused = client.prepare(b"s1", b"SELECT 2\0\0\0");
        filter.parse_sent(
            false,
            Confirm::Prepared {
                server_name: refused.server_name.clone(),
                client: Some(Bytes::from_static(b"s1")),
            },
        );
        filter.batch_sent();
        filter.batch_done(Some(&mut client));
        assert!(client.get(b"s1").is_none());
        filter.parse_sent(
            false,
            Confirm::Prepared {
                server_name: Bytes::from_static(b"sluice_z"),
                client: None,
            },
        );
        filter.batch_sent();
        assert!(!filter.parse_complete(&mut server));
        assert!(!server.touch(&refused.server_name));
    }

    #[test]
    fn eviction_picks_the_least_recently_used() {
        let mut server = ServerStatements::new();
        for name in ["a", "b", "c"] {
            server.prepared(Bytes::from(name));
        }
        assert!(server.touch(&Bytes::from("a")));
        assert_eq!(server.evict_for_one_more(3), Some(Bytes::from("b")));
        assert_eq!(server.evict_for_one_more(3), None);
    }

    #[test]
    fn unnamed_parse_is_replayed_only_on_servers_without_it() {
        let mut client = ClientStatements::new(7);
        let mut server = ServerStatements::new();
        let none_in_flight = ResponseFilter::default();
        assert!(
            client.unnamed_to_replay(&server, &none_in_flight).is_none(),
            "nothing to replay yet"
        );
        let owner = client.remember_unnamed(b"P...");
        assert!(client.unnamed_to_replay(&server, &none_in_flight).is_some());
        server.set_unnamed(Some(owner));
        assert!(client.unnamed_to_replay(&server, &none_in_flight).is_none());
        client.remember_unnamed(b"P2..");
        assert_eq!(
            client
                .unnamed_to_replay(&server, &none_in_flight)
                .unwrap()
                .0,
            b"P2.."
        );
    }

    #[test]
    fn an_unnamed_parse_on_its_way_to_the_server_is_not_replayed() {
        let mut client = ClientStatements::new(7);
        let mut server = ServerStatements::new();
        let mut filter = ResponseFilter::default();
        let owner = client.remember_unnamed(b"P...");
        filter.parse_sent(false, Confirm::Unnamed(owner));
        assert!(client.unnamed_to_replay(&server, &filter).is_none());
        // Answered with an error instead: gone with its batch, the server has none.
        filter.batch_sent();
        filter.batch_done(Some(&mut client));
        assert!(client.unnamed_to_replay(&server, &filter).is_some());
        filter.parse_sent(false, Confirm::Unnamed(owner));
        assert!(!filter.parse_complete(&mut server));
        assert!(client.unnamed_to_replay(&server, &filter).is_none());
    }
}
