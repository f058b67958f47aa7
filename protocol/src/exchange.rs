//! What a server connection owes: a model of how PostgreSQL consumes the frontend messages
//! it is sent, and of which backend messages answer them. A proxy that forwards raw bytes
//! needs it to know when a connection is done with its client (nothing owed, no open
//! extended-query batch, no open transaction), and to notice a backend message that answers
//! nothing it sent: the class of bug where a pooler hands one query's rows to another.
//!
//! [`Exchange::frontend`] records each message as it is sent; [`Exchange::backend`] moves
//! the model forward with each message the server sends, and fails with [`OutOfSync`] when a
//! message does not fit. No I/O and no message bodies: tags only, plus ReadyForQuery's
//! status byte.
//!
//! The server consumes messages in order, so the model keeps the messages sent but not yet
//! consumed in a queue (runs of one message type, so a COPY of a million CopyData messages
//! is one entry), and the phase the server is in. Messages the server consumes without an
//! answer are *silent*: Flush; CopyData, and CopyDone/CopyFail outside a COPY; Sync and
//! Flush during COPY FROM STDIN (PostgreSQL ignores them there, for libpq, which sends a
//! Sync after the Execute of a COPY before it knows it is one); and, after an error in an
//! extended-query batch, everything up to the next Sync. Which Sync a COPY makes silent is
//! only known when its CopyInResponse arrives, so the queue is revisited then.
//!
//! See <https://www.postgresql.org/docs/current/protocol-flow.html>.

use std::collections::VecDeque;
use std::fmt;

/// Most runs of queued messages before the sender should stop and wait for answers: bounds
/// the model's memory whatever a client pipelines (a run is 8 bytes).
pub const MAX_QUEUED_RUNS: usize = 4096;

/// The transaction status ReadyForQuery reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    pub fn from_byte(status: u8) -> Option<Self> {
        match status {
            b'I' => Some(TransactionStatus::Idle),
            b'T' => Some(TransactionStatus::InTransaction),
            b'E' => Some(TransactionStatus::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// Which request started a COPY: where the server goes when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyOrigin {
    /// A COPY statement in a simple Query: its other statements may follow.
    Query,
    /// An Execute of an extended-query batch: the batch goes on.
    Execute,
}

/// What the server is in the middle of answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Between messages: the next answer belongs to the next message sent.
    Ready,
    /// A Describe of a statement got its ParameterDescription; RowDescription or NoData
    /// follows.
    Describing,
    /// An Execute's rows are streaming.
    Executing,
    /// A simple query's statements are running; ReadyForQuery ends it.
    Query,
    /// A FunctionCall was answered; ReadyForQuery follows.
    FunctionAnswered,
    /// COPY FROM STDIN: the server reads CopyData until CopyDone or CopyFail.
    CopyIn(CopyOrigin),
    /// COPY TO STDOUT: the server sends CopyData, then CopyDone.
    CopyOut(CopyOrigin),
    /// The CopyDone of a COPY TO STDOUT came; CommandComplete follows.
    CopyOutDone(CopyOrigin),
    /// Replication's COPY BOTH. Never ends as far as a pooler is concerned: the connection
    /// cannot be handed to another client.
    CopyBoth,
}

/// The extended-query batch (messages up to a Sync) the server is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// None open: the last one ended with Sync, or a Query or FunctionCall ended it.
    Closed,
    /// Extended-query messages were consumed since; a Sync (or Query) will end it.
    Open,
    /// A message of the batch failed: the server skips everything up to the next Sync.
    Failed,
}

/// The messages the client sends during a COPY FROM STDIN, as far as the sender knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyZone {
    /// No COPY FROM STDIN is waiting for the client's data.
    Closed,
    /// The server reads copy data: CopyData, Sync and Flush are silent, and CopyDone or
    /// CopyFail ends the COPY.
    Open,
    /// The server left the COPY with an error while the client still sends its data: the
    /// rest of it, CopyDone or CopyFail included, is silent.
    Abandoned,
}

/// Messages of one type, sent in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    tag: u8,
    /// Consumed by the server without an answer.
    silent: bool,
    count: u32,
}

/// A backend message that answers nothing the connection owes: its state is unknown, and it
/// must be closed, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfSync {
    /// The backend message's type.
    pub tag: u8,
    /// What the server was doing as far as the model knew.
    pub phase: Phase,
}

impl fmt::Display for OutOfSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server sent message '{}' while {:?}, answering nothing that was sent",
            self.tag.escape_ascii(),
            self.phase
        )
    }
}

impl std::error::Error for OutOfSync {}

/// A frontend message this model does not know, such as a PasswordMessage after login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotAfterLogin(pub u8);

/// What a backend message meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// ReadyForQuery: a request (Sync, Query or FunctionCall) is complete.
    Ready(TransactionStatus),
    /// A statement of a simple query, or an Execute, completed (CommandComplete,
    /// EmptyQueryResponse or PortalSuspended): the `n`-th of its request, counted from 0 by
    /// the caller.
    Completed,
    /// The server now waits for the client's COPY data (CopyInResponse); `silenced` Syncs
    /// sent after the message that started the COPY turned out to be read as copy data,
    /// so no ReadyForQuery answers them.
    CopyIn { silenced: u32 },
    /// Anything else that fits.
    Other,
}

/// What one server connection owes and is doing. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    queue: VecDeque<Run>,
    phase: Phase,
    batch: Batch,
    zone: CopyZone,
    status: TransactionStatus,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            queue: VecDeque::new(),
            phase: Phase::Ready,
            batch: Batch::Closed,
            zone: CopyZone::Closed,
            status: TransactionStatus::Idle,
        }
    }
}

/// The extended-query messages, which open a batch and fail it on error.
fn is_extended(tag: u8) -> bool {
    matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C')
}

impl Exchange {
    /// A fresh connection after login: idle, nothing owed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a frontend message sent to the server (its type byte). Returns whether it is
    /// a request a ReadyForQuery will answer (a Query, a FunctionCall, a Sync outside a
    /// COPY; see [`Answer::CopyIn`] for Syncs that turn out to be silent). Terminate is not
    /// sent to servers by a pooler and is refused here, as is anything else that is not a
    /// message of the query phase.
    pub fn frontend(&mut self, tag: u8) -> Result<bool, NotAfterLogin> {
        let silent = match (tag, self.zone) {
            (b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'F', CopyZone::Closed) => false,
            (b'H' | b'd', _) => true,
            (b'c' | b'f', CopyZone::Closed | CopyZone::Abandoned) => {
                self.zone = CopyZone::Closed;
                true
            }
            (b'c' | b'f', CopyZone::Open) => {
                self.zone = CopyZone::Closed;
                false
            }
            (b'S', CopyZone::Open) => true,
            (b'S', CopyZone::Abandoned) => false,
            // Anything else during a COPY FROM STDIN makes the server abort the COPY with
            // an error; the message is consumed by that error.
            (b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'F', _) => {
                self.zone = CopyZone::Closed;
                false
            }
            _ => return Err(NotAfterLogin(tag)),
        };
        match self.queue.back_mut() {
            Some(run) if run.tag == tag && run.silent == silent && run.count < u32::MAX => {
                run.count += 1
            }
            _ => self.queue.push_back(Run {
                tag,
                silent,
                count: 1,
            }),
        }
        Ok(!silent && matches!(tag, b'Q' | b'F' | b'S'))
    }

    /// Moves the model forward with a backend message: its type byte and, for
    /// ReadyForQuery, its status byte (`status` is ignored for other types).
    pub fn backend(&mut self, tag: u8, status: u8) -> Result<Answer, OutOfSync> {
        let out_of_sync = OutOfSync {
            tag,
            phase: self.phase,
        };
        // Asynchronous messages may come at any time.
        if matches!(tag, b'N' | b'S' | b'A') || self.phase == Phase::CopyBoth {
            return Ok(Answer::Other);
        }
        let answer = match self.phase {
            Phase::Ready => self.answer_next(tag, status),
            Phase::Describing => match tag {
                b'T' | b'n' => Some(self.to(Phase::Ready)),
                b'E' => Some(self.fail_batch()),
                _ => None,
            },
            Phase::Executing => match tag {
                b'D' => Some(Answer::Other),
                b'C' | b'I' | b's' => {
                    self.phase = Phase::Ready;
                    Some(Answer::Completed)
                }
                b'E' => Some(self.fail_batch()),
                _ => None,
            },
            Phase::Query => self.answer_in_query(tag, status),
            Phase::FunctionAnswered => match tag {
                b'Z' => self.ready(status),
                _ => None,
            },
            Phase::CopyIn(origin) => match tag {
                b'C' => self.end_copy_in(origin, true),
                b'E' => self.end_copy_in(origin, false),
                _ => None,
            },
            Phase::CopyOut(origin) => match tag {
                b'd' => Some(Answer::Other),
                b'c' => Some(self.to(Phase::CopyOutDone(origin))),
                b'E' => Some(self.after_copy(origin, false)),
                _ => None,
            },
            Phase::CopyOutDone(origin) => match tag {
                b'C' => {
                    self.after_copy(origin, true);
                    Some(Answer::Completed)
                }
                b'E' => Some(self.after_copy(origin, false)),
                _ => None,
            },
            Phase::CopyBoth => unreachable!("handled above"),
        };
        answer.ok_or(out_of_sync)
    }

    /// In `Phase::Ready`: `tag` answers the next message the server consumes that has an
    /// answer.
    fn answer_next(&mut self, tag: u8, status: u8) -> Option<Answer> {
        let Some(next) = self.next_answered() else {
            // Nothing sent is waiting for an answer: only an error may come, the FATAL a
            // server sends before it closes the connection.
            return (tag == b'E').then_some(Answer::Other);
        };
        match (next, tag) {
            (b'P', b'1') | (b'B', b'2') | (b'C', b'3') | (b'D', b'T' | b'n') => {
                self.consume();
                Some(self.open_batch())
            }
            (b'D', b't') => {
                self.consume();
                self.open_batch();
                Some(self.to(Phase::Describing))
            }
            (b'E', b'C' | b'I' | b's') => {
                self.consume();
                self.open_batch();
                Some(Answer::Completed)
            }
            (b'E', b'D') => {
                self.consume();
                self.open_batch();
                Some(self.to(Phase::Executing))
            }
            (b'E', b'G' | b'H' | b'W') => {
                self.consume();
                self.open_batch();
                Some(self.start_copy(tag, CopyOrigin::Execute))
            }
            (b'P' | b'B' | b'C' | b'D' | b'E', b'E') => {
                self.consume();
                Some(self.fail_batch())
            }
            // A Sync's commit can fail; its ReadyForQuery follows.
            (b'S', b'E') => Some(Answer::Other),
            (b'S', b'Z') => {
                self.consume();
                self.ready(status)
            }
            // A query's first answer is never its ReadyForQuery (an empty one gets
            // EmptyQueryResponse first).
            (b'Q', b'T' | b'D' | b'C' | b'I' | b'E' | b'G' | b'H' | b'W') => {
                self.consume();
                self.phase = Phase::Query;
                self.answer_in_query(tag, status)
            }
            (b'F', b'V' | b'E') => {
                self.consume();
                Some(self.to(Phase::FunctionAnswered))
            }
            _ => None,
        }
    }

    /// In `Phase::Query`.
    fn answer_in_query(&mut self, tag: u8, status: u8) -> Option<Answer> {
        match tag {
            b'C' | b'I' => Some(Answer::Completed),
            b'T' | b'D' | b'E' => Some(Answer::Other),
            b'G' | b'H' | b'W' => Some(self.start_copy(tag, CopyOrigin::Query)),
            b'Z' => self.ready(status),
            _ => None,
        }
    }

    fn to(&mut self, phase: Phase) -> Answer {
        self.phase = phase;
        Answer::Other
    }

    fn open_batch(&mut self) -> Answer {
        if self.batch == Batch::Closed {
            self.batch = Batch::Open;
        }
        Answer::Other
    }

    fn fail_batch(&mut self) -> Answer {
        self.batch = Batch::Failed;
        self.to(Phase::Ready)
    }

    /// ReadyForQuery ended a request: no batch is open any more.
    fn ready(&mut self, status: u8) -> Option<Answer> {
        let status = TransactionStatus::from_byte(status)?;
        self.status = status;
        self.batch = Batch::Closed;
        self.phase = Phase::Ready;
        Some(Answer::Ready(status))
    }

    fn start_copy(&mut self, tag: u8, origin: CopyOrigin) -> Answer {
        match tag {
            b'G' => {
                self.phase = Phase::CopyIn(origin);
                let silenced = self.open_copy_zone();
                Answer::CopyIn { silenced }
            }
            b'H' => self.to(Phase::CopyOut(origin)),
            _ => self.to(Phase::CopyBoth),
        }
    }

    /// The server entered COPY FROM STDIN: the messages queued behind the one that started
    /// it are read as copy data. Sync and Flush among them are silent, and the first
    /// CopyDone or CopyFail ends the COPY; if the client has not sent one yet, the zone
    /// stays open for what it sends next. Returns how many Syncs it silenced.
    fn open_copy_zone(&mut self) -> u32 {
        let mut silenced = 0;
        for run in self.queue.iter_mut() {
            match run.tag {
                b'd' | b'H' => {}
                b'S' => {
                    if !run.silent {
                        silenced += run.count;
                    }
                    run.silent = true;
                }
                b'c' | b'f' => {
                    // Only the first of them ends the COPY; more in a row stay silent.
                    if run.count > 1 {
                        self.split_copy_end();
                    } else {
                        run.silent = false;
                    }
                    return silenced;
                }
                // Any other message aborts the COPY with an error when the server reads it.
                _ => return silenced,
            }
        }
        self.zone = CopyZone::Open;
        silenced
    }

    fn split_copy_end(&mut self) {
        let at = self
            .queue
            .iter()
            .position(|run| matches!(run.tag, b'c' | b'f'))
            .expect("called on a queued CopyDone or CopyFail");
        let run = self.queue[at];
        self.queue[at] = Run {
            silent: false,
            count: 1,
            ..run
        };
        self.queue.insert(
            at + 1,
            Run {
                silent: true,
                count: run.count - 1,
                ..run
            },
        );
    }

    /// COPY FROM STDIN ended: with CommandComplete (`completed`, the client's CopyDone was
    /// consumed) or with an error (a CopyFail, bad data, or anything else the client sent).
    fn end_copy_in(&mut self, origin: CopyOrigin, completed: bool) -> Option<Answer> {
        let answer = if completed {
            Answer::Completed
        } else {
            Answer::Other
        };
        match self.next_answered() {
            Some(b'c') => {}
            Some(b'f') if !completed => {}
            Some(_) if !completed => {}
            Some(_) => return None,
            // The server failed the COPY before the client ended its data: the rest of the
            // data is dropped by the server, its end included.
            None if !completed => {
                self.zone = CopyZone::Abandoned;
                self.after_copy(origin, false);
                return Some(answer);
            }
            None => return None,
        }
        self.consume();
        self.after_copy(origin, completed);
        Some(answer)
    }

    fn after_copy(&mut self, origin: CopyOrigin, completed: bool) -> Answer {
        match origin {
            CopyOrigin::Query => self.to(Phase::Query),
            CopyOrigin::Execute if completed => self.to(Phase::Ready),
            CopyOrigin::Execute => self.fail_batch(),
        }
    }

    /// The type of the next queued message the server will answer, after dropping the
    /// silent ones before it (the server consumed them, since it answers in order).
    fn next_answered(&mut self) -> Option<u8> {
        loop {
            let run = self.queue.front()?;
            let skipped = run.silent || (self.batch == Batch::Failed && run.tag != b'S');
            if !skipped {
                return Some(run.tag);
            }
            self.queue.pop_front();
        }
    }

    /// The server answered the message at the front of the queue.
    fn consume(&mut self) {
        let run = self.queue.front_mut().expect("a message to consume");
        run.count -= 1;
        if run.count == 0 {
            self.queue.pop_front();
        }
    }

    /// True when the server owes nothing and holds no state for this client: nothing sent
    /// is unanswered, no batch is open, no transaction either. The connection may go to
    /// another client.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Ready
            && self.batch == Batch::Closed
            && self.zone == CopyZone::Closed
            && self.status == TransactionStatus::Idle
            && self.queue.iter().all(|run| run.silent)
    }

    /// True while the server has answers still to send (a request is running or queued).
    pub fn is_busy(&self) -> bool {
        self.phase != Phase::Ready || self.queue.iter().any(|run| !run.silent)
    }

    /// True while the server waits for (or will wait for) COPY data the client has not
    /// finished sending: only a CopyDone or CopyFail ends that.
    pub fn awaits_copy_data(&self) -> bool {
        self.zone == CopyZone::Open
    }

    /// True when a Sync must still be sent for the server to end an extended-query batch
    /// (one is open or failed, or extended messages are queued with no Sync after them).
    pub fn needs_sync(&self) -> bool {
        let queued_sync_last = self
            .queue
            .iter()
            .rev()
            .find(|run| !run.silent && (run.tag == b'S' || is_extended(run.tag)))
            .map(|run| run.tag == b'S');
        match queued_sync_last {
            Some(sync_last) => !sync_last,
            None => self.batch != Batch::Closed,
        }
    }

    /// True when the queue holds as many runs as a sender should let pile up: stop reading
    /// the client until the server answers.
    pub fn is_full(&self) -> bool {
        self.queue.len() >= MAX_QUEUED_RUNS
    }

    /// The transaction status of the last ReadyForQuery.
    pub fn status(&self) -> TransactionStatus {
        self.status
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn batch(&self) -> Batch {
        self.batch
    }
}

#[cfg(test)]
mod tests;
