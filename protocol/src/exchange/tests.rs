//! Tests of the exchange model with no I/O: scripted client and server message sequences
//! (each asserting what is owed and when the connection is free), then property tests that
//! generate random request scripts with a reference server's answers and feed them to the
//! model in random interleavings.

use super::*;

/// Sends `fronts`, then feeds `backs` (tag, and status for ReadyForQuery).
fn run(exchange: &mut Exchange, fronts: &[u8], backs: &[u8]) {
    for &tag in fronts {
        exchange.frontend(tag).expect("a query-phase message");
    }
    feed(exchange, backs);
}

/// Feeds backend tags; a `Z` takes the status from the next byte.
fn feed(exchange: &mut Exchange, backs: &[u8]) {
    let mut tags = backs.iter().copied();
    while let Some(tag) = tags.next() {
        let status = if tag == b'Z' {
            tags.next().expect("a status after Z")
        } else {
            0
        };
        if let Err(e) = exchange.backend(tag, status) {
            panic!("{e} (fed {:?})", String::from_utf8_lossy(backs));
        }
    }
}

#[test]
fn a_simple_query_is_owed_until_its_ready_for_query() {
    let mut x = Exchange::new();
    assert!(x.is_idle());
    x.frontend(b'Q').unwrap();
    assert!(!x.is_idle() && x.is_busy());
    feed(&mut x, b"TDDC");
    assert!(x.is_busy());
    feed(&mut x, b"ZI");
    assert!(x.is_idle() && !x.is_busy());
}

#[test]
fn requests_and_completions_are_reported() {
    let mut x = Exchange::new();
    assert_eq!(x.frontend(b'Q'), Ok(true));
    assert_eq!(x.backend(b'T', 0), Ok(Answer::Other));
    assert_eq!(x.backend(b'C', 0), Ok(Answer::Completed));
    assert_eq!(x.backend(b'I', 0), Ok(Answer::Completed));
    assert_eq!(
        x.backend(b'Z', b'I'),
        Ok(Answer::Ready(TransactionStatus::Idle))
    );
    for (tag, request) in [(b'B', false), (b'E', false), (b'H', false), (b'S', true)] {
        assert_eq!(x.frontend(tag), Ok(request));
    }
    feed(&mut x, b"2D");
    assert_eq!(x.backend(b's', 0), Ok(Answer::Completed));
    // A Sync sent during a COPY FROM STDIN is no request.
    run(&mut x, b"", b"ZI");
    run(&mut x, b"Q", b"G");
    assert_eq!(x.frontend(b'S'), Ok(false));
}

#[test]
fn a_transaction_keeps_the_connection_until_it_ends() {
    let mut x = Exchange::new();
    run(&mut x, b"Q", b"CZT");
    assert_eq!(x.status(), TransactionStatus::InTransaction);
    assert!(!x.is_idle() && !x.is_busy());
    run(&mut x, b"Q", b"EZE");
    assert_eq!(x.status(), TransactionStatus::Failed);
    assert!(!x.is_idle());
    run(&mut x, b"Q", b"CZI");
    assert!(x.is_idle());
}

#[test]
fn pipelined_extended_batches_are_answered_in_order() {
    let mut x = Exchange::new();
    for _ in 0..3 {
        x.frontend(b'P').unwrap();
        x.frontend(b'B').unwrap();
        x.frontend(b'D').unwrap();
        x.frontend(b'E').unwrap();
        x.frontend(b'S').unwrap();
    }
    feed(&mut x, b"12TDCZI12TDCZI");
    assert!(x.is_busy() && !x.is_idle());
    feed(&mut x, b"12TDCZI");
    assert!(x.is_idle());
}

#[test]
fn an_error_mid_batch_skips_to_the_sync() {
    let mut x = Exchange::new();
    // Parse fails: Bind, Describe and Execute are skipped without an answer.
    run(&mut x, b"PBDES", b"E");
    assert!(x.is_busy());
    assert_eq!(x.batch(), Batch::Failed);
    feed(&mut x, b"ZI");
    assert!(x.is_idle());
    // An Execute fails after some rows.
    run(&mut x, b"BES", b"2DDEZI");
    assert!(x.is_idle());
}

#[test]
fn describe_of_a_statement_and_of_a_portal() {
    let mut x = Exchange::new();
    run(&mut x, b"PDS", b"1tTZI");
    assert!(x.is_idle());
    run(&mut x, b"PDS", b"1tnZI");
    run(&mut x, b"BDES", b"2nCZI");
    run(&mut x, b"BDES", b"2TsZI");
    assert!(x.is_idle());
}

#[test]
fn flush_without_sync_keeps_the_batch_open_until_a_query_ends_it() {
    // asyncpg's prepare(): Parse, Describe, Flush; then a simple query.
    let mut x = Exchange::new();
    run(&mut x, b"PDH", b"1tT");
    assert!(!x.is_busy(), "everything sent is answered");
    assert!(!x.is_idle(), "but the batch is open");
    assert!(x.needs_sync());
    run(&mut x, b"Q", b"TDCZI");
    assert!(x.is_idle());
}

#[test]
fn extended_copy_in_ignores_the_sync_sent_with_the_execute() {
    // libpq's PQexecParams: Parse, Bind, Describe, Execute, Sync; then the data, CopyDone
    // and another Sync. PostgreSQL ignores the first Sync: one ReadyForQuery in all.
    let mut x = Exchange::new();
    run(&mut x, b"PBDES", b"12n");
    assert_eq!(x.backend(b'G', 0), Ok(Answer::CopyIn { silenced: 1 }));
    assert!(x.awaits_copy_data());
    for _ in 0..1000 {
        x.frontend(b'd').unwrap();
    }
    x.frontend(b'c').unwrap();
    x.frontend(b'S').unwrap();
    assert!(!x.awaits_copy_data());
    feed(&mut x, b"C");
    assert!(x.is_busy());
    feed(&mut x, b"ZI");
    assert!(x.is_idle(), "{x:?}");
}

#[test]
fn extended_copy_in_that_fails_on_bad_data_waits_for_the_next_sync() {
    let mut x = Exchange::new();
    run(&mut x, b"BES", b"2G");
    x.frontend(b'd').unwrap();
    feed(&mut x, b"E");
    // The client has not seen the error yet: the rest of its data and its CopyDone are
    // dropped by the server, the Sync after them answered.
    for tag in *b"ddcS" {
        x.frontend(tag).unwrap();
    }
    assert!(x.is_busy());
    feed(&mut x, b"ZI");
    assert!(x.is_idle(), "{x:?}");
}

#[test]
fn copy_fail_ends_a_copy_in_with_an_error() {
    let mut x = Exchange::new();
    run(&mut x, b"Q", b"G");
    run(&mut x, b"ddf", b"EZI");
    assert!(x.is_idle());
}

#[test]
fn simple_copy_in_with_a_statement_after_it() {
    let mut x = Exchange::new();
    run(&mut x, b"Q", b"G");
    run(&mut x, b"dc", b"CTDCZI");
    assert!(x.is_idle());
}

#[test]
fn copy_out_in_both_protocols() {
    let mut x = Exchange::new();
    run(&mut x, b"Q", b"HdddcCZI");
    assert!(x.is_idle());
    run(&mut x, b"BES", b"2HddcCZI");
    assert!(x.is_idle());
}

#[test]
fn copy_both_never_frees_the_connection() {
    let mut x = Exchange::new();
    run(&mut x, b"Q", b"Wdddc");
    feed(&mut x, b"CZI");
    assert_eq!(x.phase(), Phase::CopyBoth);
    assert!(!x.is_idle());
}

#[test]
fn function_calls_and_empty_queries() {
    let mut x = Exchange::new();
    run(&mut x, b"F", b"VZI");
    run(&mut x, b"F", b"EZI");
    run(&mut x, b"Q", b"IZI");
    assert!(x.is_idle());
}

#[test]
fn a_failed_commit_at_sync_still_gets_its_ready_for_query() {
    let mut x = Exchange::new();
    run(&mut x, b"BES", b"2CEZI");
    assert!(x.is_idle());
}

#[test]
fn notices_parameter_status_and_notifications_come_any_time() {
    let mut x = Exchange::new();
    feed(&mut x, b"NSA");
    run(&mut x, b"Q", b"NTSDACZI");
    assert!(x.is_idle());
}

#[test]
fn answers_to_nothing_sent_are_out_of_sync() {
    for (fronts, backs, bad) in [
        (&b""[..], &b""[..], b'D'), // rows nobody asked for
        (b"", b"", b'Z'),           // a ReadyForQuery nobody asked for
        (b"Q", b"CZI", b'T'),       // after the query was answered
        (b"P", b"", b'2'),          // BindComplete for a Parse
        (b"Q", b"", b'1'),          // ParseComplete inside a simple query
        (b"BE", b"2", b'V'),        // a function result for an Execute
        (b"Q", b"T", b'R'),         // authentication after login
        (b"Q", b"", b'd'),          // CopyData outside a COPY
        (b"PBES", b"12", b'K'),     // BackendKeyData after login
        (b"BES", b"2G", b'C'),      // CommandComplete before the client's CopyDone
    ] {
        let mut x = Exchange::new();
        run(&mut x, fronts, backs);
        assert!(
            x.backend(bad, 0).is_err(),
            "'{}' after {:?}/{:?} must be out of sync",
            char::from(bad),
            String::from_utf8_lossy(fronts),
            String::from_utf8_lossy(backs)
        );
    }
}

#[test]
fn a_fatal_error_may_come_while_idle() {
    let mut x = Exchange::new();
    assert_eq!(x.backend(b'E', 0), Ok(Answer::Other));
}

#[test]
fn a_bad_status_byte_is_out_of_sync() {
    let mut x = Exchange::new();
    run(&mut x, b"S", b"");
    assert!(x.backend(b'Z', b'X').is_err());
}

#[test]
fn messages_of_other_phases_are_refused_when_sent() {
    let mut x = Exchange::new();
    for tag in [b'X', b'p', 0, b'Z'] {
        assert_eq!(x.frontend(tag), Err(NotAfterLogin(tag)));
    }
}

#[test]
fn the_queue_is_bounded_by_runs_not_messages() {
    let mut x = Exchange::new();
    for _ in 0..100_000 {
        x.frontend(b'H').unwrap();
    }
    assert!(!x.is_full());
    for _ in 0..MAX_QUEUED_RUNS {
        x.frontend(b'B').unwrap();
        x.frontend(b'E').unwrap();
    }
    assert!(x.is_full());
}

#[test]
fn needs_sync_after_extended_messages_without_one() {
    let mut x = Exchange::new();
    assert!(!x.needs_sync());
    x.frontend(b'B').unwrap();
    assert!(x.needs_sync());
    x.frontend(b'S').unwrap();
    assert!(!x.needs_sync());
    feed(&mut x, b"E");
    assert!(!x.needs_sync(), "the Sync is queued");
    feed(&mut x, b"ZI");
    assert!(x.is_idle());
}

// ---------------------------------------------------------------------------------------
// Property tests: random scripts answered by a reference server, in random interleavings.

/// A small deterministic PRNG (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A frontend message of the script, sent only once `after_back` backend messages arrived.
struct Front {
    tag: u8,
    after_back: usize,
}

/// A backend message of the script, sent only once `after_front` frontend messages went.
struct Back {
    tag: u8,
    status: u8,
    after_front: usize,
}

/// A request script and the reference server's answers, with the points where the
/// connection is free (every answer in, no batch open, no transaction).
#[derive(Default)]
struct Script {
    fronts: Vec<Front>,
    backs: Vec<Back>,
    /// (frontend messages, backend messages) at each free point.
    free_at: Vec<(usize, usize)>,
    in_transaction: bool,
    failed: bool,
}

impl Script {
    fn front(&mut self, tag: u8) -> usize {
        self.front_after(tag, 0)
    }

    /// A frontend message the client sends only after seeing `back` answers.
    fn front_after(&mut self, tag: u8, backs_seen: usize) -> usize {
        self.fronts.push(Front {
            tag,
            after_back: backs_seen,
        });
        self.fronts.len()
    }

    fn back(&mut self, tag: u8) {
        self.back_after(tag, self.fronts.len());
    }

    fn back_after(&mut self, tag: u8, after_front: usize) {
        self.backs.push(Back {
            tag,
            status: 0,
            after_front,
        });
    }

    /// The ReadyForQuery that ends a request, sent once `after_front` frontend messages
    /// arrived (the server answers a simple query's error at once, without waiting for the
    /// rest of the client's COPY data).
    fn ready(&mut self, rng: &mut Rng, after_front: usize) {
        let status = match (self.in_transaction, self.failed) {
            (false, _) => b'I',
            (true, false) => b'T',
            (true, true) => b'E',
        };
        self.backs.push(Back {
            tag: b'Z',
            status,
            after_front,
        });
        // Now and then a notice or notification sits between requests.
        if rng.chance(10) {
            self.back(b'A');
        }
        if status == b'I' {
            self.free_at.push((self.fronts.len(), self.backs.len()));
        }
    }

    fn error(&mut self) {
        self.back(b'E');
        if self.in_transaction {
            self.failed = true;
        }
    }

    /// Some rows, maybe with a notice among them.
    fn rows(&mut self, rng: &mut Rng) {
        for _ in 0..rng.below(4) {
            self.back(b'D');
            if rng.chance(5) {
                self.back(b'N');
            }
        }
    }

    /// COPY FROM STDIN once the CopyInResponse is in: data, then CopyDone or CopyFail, or
    /// bad data the server refuses. Returns whether the COPY completed.
    fn copy_in(&mut self, rng: &mut Rng) -> bool {
        self.back(b'G');
        let seen = self.backs.len();
        let rows = rng.below(5);
        let bad_at = rng.chance(15).then(|| rng.below(rows + 1));
        let mut refused = false;
        for row in 0..rows {
            self.front_after(b'd', seen);
            if rng.chance(10) {
                self.front_after(b'H', seen);
            }
            if bad_at == Some(row) {
                self.error();
                refused = true;
            }
        }
        if rng.chance(15) && !refused {
            self.front_after(b'f', seen);
            self.error();
            return false;
        }
        self.front_after(b'c', seen);
        if refused {
            return false;
        }
        self.back(b'C');
        true
    }

    fn simple_query(&mut self, rng: &mut Rng) {
        let query = self.front(b'Q');
        for _ in 0..1 + rng.below(3) {
            match rng.below(10) {
                0 => self.back(b'I'),
                1 => {
                    self.error();
                    break;
                }
                2 => {
                    self.back(b'H');
                    for _ in 0..rng.below(4) {
                        self.back(b'd');
                    }
                    self.back(b'c');
                    self.back(b'C');
                }
                3 => {
                    if !self.copy_in(rng) {
                        break;
                    }
                }
                4 if !self.in_transaction => {
                    self.in_transaction = true;
                    self.back(b'C');
                }
                5 if self.in_transaction => {
                    self.in_transaction = false;
                    self.failed = false;
                    self.back(b'C');
                }
                _ if self.failed => {
                    self.error();
                    break;
                }
                _ => {
                    self.back(b'T');
                    self.rows(rng);
                    self.back(b'C');
                }
            }
        }
        let after = self.backs.last().map_or(query, |b| b.after_front);
        self.ready(rng, after.max(query));
    }

    /// An extended-query batch ending with Sync; a COPY FROM STDIN only as its last
    /// Execute, with the Sync sent before the data (libpq) or after it.
    fn extended_batch(&mut self, rng: &mut Rng) {
        let mut failed = false;
        let mut copy = false;
        for _ in 0..1 + rng.below(5) {
            let tag = [b'P', b'B', b'D', b'E', b'C', b'H'][rng.below(6) as usize];
            self.front(tag);
            if failed || tag == b'H' {
                continue;
            }
            // In an aborted transaction the server refuses the batch's first message.
            if self.failed || rng.chance(8) {
                self.error();
                failed = true;
                continue;
            }
            match tag {
                b'P' => self.back(b'1'),
                b'B' => self.back(b'2'),
                b'C' => self.back(b'3'),
                b'D' => match rng.below(4) {
                    0 => {
                        self.back(b't');
                        self.back(b'T');
                    }
                    1 => {
                        self.back(b't');
                        self.back(b'n');
                    }
                    2 => self.back(b'T'),
                    _ => self.back(b'n'),
                },
                _ => match rng.below(6) {
                    0 => self.back(b'I'),
                    1 => {
                        self.rows(rng);
                        self.back(b's');
                    }
                    2 => {
                        self.back(b'H');
                        self.back(b'd');
                        self.back(b'c');
                        self.back(b'C');
                    }
                    3 => {
                        copy = true;
                        break;
                    }
                    _ => {
                        self.rows(rng);
                        self.back(b'C');
                    }
                },
            }
        }
        let sync = if copy {
            if rng.chance(50) {
                // Sent with the Execute, before the client knows it is a COPY: silent.
                self.front(b'S');
            }
            let started = self.backs.len() + 1;
            if !self.copy_in(rng) {
                failed = true;
            }
            // With its CopyDone, without waiting for the answer.
            self.front_after(b'S', started)
        } else {
            self.front(b'S')
        };
        if failed && self.in_transaction {
            self.failed = true;
        }
        self.ready(rng, sync);
    }

    /// asyncpg's prepare(): Parse, Describe, Flush, no Sync; a simple query ends it.
    fn flush_then_query(&mut self, rng: &mut Rng) {
        self.front(b'P');
        self.back(b'1');
        self.front(b'D');
        self.back(b't');
        self.back(b'T');
        self.front(b'H');
        self.simple_query(rng);
    }

    fn function_call(&mut self, rng: &mut Rng) {
        self.front(b'F');
        if rng.chance(20) || self.failed {
            self.error();
        } else {
            self.back(b'V');
        }
        self.ready(rng, self.fronts.len());
    }

    fn random(rng: &mut Rng) -> Script {
        let mut script = Script::default();
        for _ in 0..1 + rng.below(8) {
            match rng.below(10) {
                0..=3 => script.simple_query(rng),
                4..=7 => script.extended_batch(rng),
                8 if !script.failed => script.flush_then_query(rng),
                _ => script.function_call(rng),
            }
        }
        script
    }
}

/// Feeds `script` to a fresh model in one random interleaving that respects causality, and
/// checks: no answer is out of sync; the connection never looks free while an answer to
/// something sent is still due; it looks free at each of the script's free points.
fn check(script: &Script, rng: &mut Rng, seed: u64) {
    let mut x = Exchange::new();
    let (mut sent, mut received) = (0, 0);
    let describe = |fronts: usize, backs: usize| {
        let f: String = script.fronts[..fronts]
            .iter()
            .map(|f| char::from(f.tag))
            .collect();
        let b: String = script.backs[..backs]
            .iter()
            .map(|b| char::from(b.tag))
            .collect();
        format!("seed {seed}: sent {f:?}, received {b:?}")
    };
    loop {
        let can_send = script
            .fronts
            .get(sent)
            .is_some_and(|f| f.after_back <= received);
        let can_receive = script
            .backs
            .get(received)
            .is_some_and(|b| b.after_front <= sent);
        if !can_send && !can_receive {
            break;
        }
        if can_send && (!can_receive || rng.chance(50)) {
            x.frontend(script.fronts[sent].tag)
                .unwrap_or_else(|e| panic!("{e:?} {}", describe(sent, received)));
            sent += 1;
        } else {
            let back = &script.backs[received];
            x.backend(back.tag, back.status)
                .unwrap_or_else(|e| panic!("{e} {}", describe(sent, received)));
            received += 1;
        }
        // Notices and notifications are not answers: nothing waits for them.
        let owed = script.backs[received..]
            .iter()
            .any(|b| b.after_front <= sent && !matches!(b.tag, b'A' | b'N'));
        if owed {
            assert!(
                !x.is_idle(),
                "free while owed: {}",
                describe(sent, received)
            );
        }
        if script.free_at.contains(&(sent, received)) {
            assert!(
                x.is_idle(),
                "not free at a free point: {}",
                describe(sent, received)
            );
        }
    }
    assert_eq!(
        (sent, received),
        (script.fronts.len(), script.backs.len()),
        "the script deadlocked: {}",
        describe(sent, received)
    );
}

#[test]
fn random_scripts_in_random_interleavings_never_go_out_of_sync() {
    for seed in 1..=20_000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let script = Script::random(&mut rng);
        for _ in 0..4 {
            check(&script, &mut rng, seed);
        }
    }
}
