//! Reading the message streams: every client message is recorded in the server
//! connection's exchange as it is passed on (after whatever sluice injects before it), and
//! in transaction mode statement names are rewritten; every server message is taken
//! through the same exchange before it is forwarded, effects are applied as the server
//! confirms them, and the answers to injected messages are dropped.
//!
//! Changes only the relay's own state and the leased connection's records (parameters,
//! statements); all I/O stays in `mod.rs` and `buffers.rs`.

use super::{Relay, MAX_INSPECTED_QUERY};
use crate::client::SessionError;
use crate::config::SessionState;
use crate::server::parameters::Parameters;
use crate::server::ServerConn;
use crate::session::classify::{self, Effect, Value};
use crate::session::pins::Pins;
use crate::session::statements::{self, ClientStatements, Confirm, Plan};
use crate::session::transaction::Outcome;
use crate::stats::add_micros;
use crate::tenant::listener::Listener;
use bytes::{Buf, Bytes};
use sluice_protocol::backend;
use sluice_protocol::exchange::{Answer, TransactionStatus};
use sluice_protocol::extended::{self, encode_bind, encode_parse, encode_target};
use sluice_protocol::frame::{frontend_header, Header, HEADER_LEN};
use sluice_protocol::frontend::encode_query;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl Relay<'_> {
    /// Moves client messages towards the server as far as the buffered bytes allow,
    /// counting what the server will owe and rewriting statement names.
    pub(super) fn translate(&mut self) -> Result<(), SessionError> {
        loop {
            let out = &mut self.to_server;
            if out.body_left > 0 {
                let take = out.body_left.min(out.untranslated().len());
                out.pass(take);
                out.body_left -= take;
                if out.body_left > 0 {
                    return Ok(());
                }
            }
            if self.terminated {
                return Ok(());
            }
            let Some(header) = frontend_header(out.untranslated())? else {
                return Ok(());
            };
            let whole = header.message_len();
            let tracked = self.statements.is_some();
            let pooled = !self.tenant.is_session_mode();
            let needs_whole = (tracked && matches!(header.tag, b'P' | b'B' | b'D' | b'C'))
                || (pooled && header.tag == b'P')
                || (pooled
                    && header.tag == b'E'
                    && !self.statement_effects.unnamed_portal().is_empty())
                || (header.tag == b'Q' && header.body_len <= MAX_INSPECTED_QUERY);
            if needs_whole && out.untranslated().len() < whole {
                out.need_whole = whole;
                return Ok(());
            }
            out.need_whole = 0;
            if header.tag == b'X' {
                // Terminate ends the client, not the pooled server session.
                let at = out.direct;
                out.buf.truncate(at);
                self.terminated = true;
                return Ok(());
            }
            if header.tag == b'Q' {
                self.forget_unnamed();
            }
            if pooled && self.session_effects(&header)? {
                // The message was replaced: read it again.
                continue;
            }
            let statement_message = tracked && matches!(header.tag, b'P' | b'B' | b'D' | b'C');
            let replaced = statement_message && {
                let replaced = self.statement_message(header.tag, whole)?;
                if !replaced && header.tag == b'C' {
                    self.filter.close_sent(false);
                }
                replaced
            };
            // The client's own message, after anything injected before it.
            self.sent(header.tag)?;
            if replaced {
                continue;
            }
            let out = &mut self.to_server;
            out.pass(HEADER_LEN);
            out.body_left = header.body_len;
        }
    }

    /// Records a client message passed on to the server.
    fn sent(&mut self, tag: u8) -> Result<(), SessionError> {
        let server: &mut ServerConn = self.server.as_mut().expect("attached");
        let was_busy = server.exchange.is_busy();
        let request = server.exchange.frontend(tag).map_err(|e| {
            SessionError::Protocol(format!(
                "unexpected message type '{}' after login",
                e.0.escape_ascii()
            ))
        })?;
        if !was_busy && server.exchange.is_busy() {
            self.timeouts.request_sent();
        }
        if request {
            self.requests_started.push_back(Instant::now());
            self.filter.batch_sent();
            self.effects.request_sent();
        }
        Ok(())
    }

    /// Records a message sluice itself sends before the client's (a Close or Parse of a
    /// prepared statement).
    fn injected(&mut self, tag: u8) {
        let server: &mut ServerConn = self.server.as_mut().expect("attached");
        let _request = server
            .exchange
            .frontend(tag)
            .expect("sluice injects Close and Parse only");
    }

    /// A simple query drops the unnamed statement (and portal).
    fn forget_unnamed(&mut self) {
        let server: &mut ServerConn = self.server.as_mut().expect("attached");
        server.statements.set_unnamed(None);
        if let Some(client) = &mut self.statements {
            client.forget_unnamed();
        }
        self.statement_effects.query_sent();
    }

    /// Transaction mode: records what a client message will do to the session (see
    /// `classify`), to be confirmed by the server's answers; with `session_state =
    /// "reject"`, replaces a statement that would pin the client with one that fails with
    /// 0A000 on the server (which then answers exactly as for a failed statement) and
    /// returns true.
    fn session_effects(&mut self, header: &Header) -> Result<bool, SessionError> {
        let whole = header.message_len();
        let available = self.to_server.untranslated();
        let body = &available[HEADER_LEN..whole.min(available.len())];
        let tracked = self.statements.is_some();
        match header.tag {
            b'Q' => {
                if header.body_len > MAX_INSPECTED_QUERY {
                    // Not read whole: anything may have changed.
                    self.effects.expect(None, Effect::Unknown);
                    return Ok(false);
                }
                let text = body.strip_suffix(b"\0").unwrap_or(body);
                let mut found = Vec::new();
                classify::effects_of(text, |index, effect| found.push((index, effect)));
                if let Some(rejection) = self.rejected(found.iter().map(|(_, e)| e)) {
                    let mut replacement = bytes::BytesMut::new();
                    encode_query(&mut replacement, &rejection);
                    self.to_server.replace_next(whole, &replacement);
                    return Ok(true);
                }
                for (index, effect) in found {
                    self.effects.expect(Some(index), effect);
                }
            }
            b'P' => {
                let parse = extended::parse_parse(body)?;
                let text = parse.rest.split(|&b| b == 0).next().unwrap_or_default();
                let mut found = Vec::new();
                classify::effects_of(text, |_, effect| found.push(effect));
                if let Some(rejection) = self.rejected(found.iter()) {
                    // A statement with no parameters: its Execute fails with the error.
                    let mut rest = rejection.into_bytes();
                    rest.extend_from_slice(&[0, 0, 0]);
                    let mut replacement = bytes::BytesMut::new();
                    encode_parse(&mut replacement, parse.statement, &rest);
                    self.to_server.replace_next(whole, &replacement);
                    return Ok(true);
                }
                if tracked {
                    self.statement_effects.parsed(parse.statement, found);
                } else {
                    // Statements are not followed to their Executes without tracking:
                    // conservatively, as if it ran in this batch.
                    for effect in found {
                        self.effects.expect(None, effect);
                    }
                }
            }
            b'B' if tracked => {
                let bind = extended::parse_bind(body)?;
                for effect in self.statement_effects.bound(bind.portal, bind.statement) {
                    self.effects.expect(None, effect.clone());
                }
            }
            b'E' => {
                let index = self.effects.execute_sent();
                let unnamed_portal = body.first() == Some(&0);
                if unnamed_portal {
                    for effect in self.statement_effects.unnamed_portal() {
                        self.effects.expect(Some(index), effect.clone());
                    }
                }
            }
            b'C' if tracked => {
                let target = extended::parse_target(body)?;
                if target.is_statement() {
                    self.statement_effects.closed(target.name);
                }
            }
            _ => {}
        }
        Ok(false)
    }

    /// The statement to send instead, when one of `effects` is refused: a LISTEN sluice
    /// cannot answer itself (in a transaction, a multi-statement query or the extended
    /// protocol), or, under `session_state = "reject"`, state that would pin.
    fn rejected<'e>(&self, mut effects: impl Iterator<Item = &'e Effect>) -> Option<String> {
        let reject_pins = self.tenant.settings.session_state == SessionState::Reject;
        effects.find_map(|effect| match effect {
            Effect::Listen(_) => Some(rejection(
                "in transaction pooling, LISTEN works only sent alone as a simple query \
                 outside a transaction block",
                "Send LISTEN on its own, or use session pooling (pool_mode = \"session\").",
            )),
            Effect::Pin(pin) if reject_pins => Some(rejection(
                &format!(
                    "in transaction pooling, {} cannot follow a client between server \
                     connections, and this tenant rejects them (session_state = \"reject\")",
                    pin.feature()
                ),
                "Use session pooling (pool_mode = \"session\") for them, or \
                 session_state = \"pin\".",
            )),
            _ => None,
        })
    }

    /// Handles a complete Parse, Bind, Describe or Close at the translation point.
    /// Returns true when the message was replaced by its rewrite (already in the
    /// output), false to pass it on as is (after anything injected before it).
    pub(super) fn statement_message(
        &mut self,
        tag: u8,
        whole: usize,
    ) -> Result<bool, SessionError> {
        let server = &mut self.server.as_mut().expect("attached").statements;
        let client = self.statements.as_mut().expect("tracking statements");
        let capacity = self.tenant.settings.max_prepared_statements as usize;
        let message = &self.to_server.untranslated()[..whole];
        let body = &message[HEADER_LEN..];
        let mut name_in_use = false;
        let plan = match tag {
            b'P' => {
                let parse = extended::parse_parse(body)?;
                if parse.statement.is_empty() {
                    server.set_unnamed(None);
                    let owner = client.remember_unnamed(message);
                    self.filter.parse_sent(false, Confirm::Unnamed(owner));
                    return Ok(false);
                }
                if client.get(parse.statement).is_some() {
                    // PostgreSQL refuses a name in use (42P05) and keeps the statement:
                    // make sure the server has it, then ask it to prepare it again.
                    name_in_use = true;
                    Plan::for_use(server, client, &self.filter, capacity, parse.statement)
                } else {
                    // The client's own Parse: its ParseComplete is the client's to see,
                    // and the name stays known only if the server accepts it.
                    let name = Bytes::copy_from_slice(parse.statement);
                    let statement = client.prepare(parse.statement, parse.rest);
                    Plan::prepare(server, capacity, statement, Some(name))
                }
            }
            b'B' => {
                let bind = extended::parse_bind(body)?;
                Plan::for_use(server, client, &self.filter, capacity, bind.statement)
            }
            b'D' => {
                let target = extended::parse_target(body)?;
                if !target.is_statement() {
                    return Ok(false);
                }
                Plan::for_use(server, client, &self.filter, capacity, target.name)
            }
            _ => {
                let target = extended::parse_target(body)?;
                if !target.is_statement() {
                    self.filter.close_sent(false);
                    return Ok(false);
                }
                if target.name.is_empty() {
                    server.set_unnamed(None);
                    client.forget_unnamed();
                    self.filter.close_sent(false);
                    return Ok(false);
                }
                let Some(statement) = client.close(target.name) else {
                    self.filter.close_sent(false);
                    return Ok(false);
                };
                server.forget(&statement.server_name);
                Plan {
                    rename: Some(statement.server_name.clone()),
                    ..Plan::default()
                }
            }
        };
        if matches!(tag, b'B' | b'D') && plan.rename.is_some() {
            let stats = &self.tenant.stats;
            let counter = if plan.parse.is_some() {
                &stats.prepared_misses
            } else {
                &stats.prepared_hits
            };
            counter.fetch_add(1, Relaxed);
        }
        if plan.is_nothing() {
            if tag == b'C' {
                self.filter.close_sent(false);
            }
            return Ok(false);
        }
        let assembled = self.to_server.assemble();
        let mut injected = 0;
        for name in plan.close.iter().flatten() {
            statements::encode_close_statement(assembled, name);
            self.filter.close_sent(true);
            injected += 1;
        }
        // A Parse whose answer the client sees is the client's own, rewritten (recorded
        // as its message below); one whose answer is swallowed is sluice's.
        let injected_parse = plan.parse.as_ref().is_some_and(|(_, _, swallow)| *swallow);
        if let Some((parse, confirm, swallow)) = plan.parse {
            assembled.extend_from_slice(&parse);
            self.filter.parse_sent(swallow, confirm);
        }
        for _ in 0..injected {
            self.injected(b'C');
        }
        if injected_parse {
            self.injected(b'P');
        }
        let out = &mut self.to_server;
        // A new named Parse was replaced by its server-side form above; a Bind, Describe,
        // Close, or a Parse of a name in use, is replaced when it names a statement
        // sluice renamed.
        let server_name = match (tag, plan.rename) {
            (b'P', _) if !name_in_use => Bytes::new(),
            (_, Some(server_name)) => server_name,
            (_, None) => return Ok(false),
        };
        let message = out.buf.split_to(whole);
        let body = &message[HEADER_LEN..];
        match tag {
            b'P' if name_in_use => {
                let parse = extended::parse_parse(body)?;
                extended::encode_parse(&mut out.assembled, &server_name, parse.rest);
                let confirm = Confirm::Prepared {
                    server_name,
                    client: None,
                };
                self.filter.parse_sent(false, confirm);
            }
            b'P' => {}
            b'B' => {
                let bind = extended::parse_bind(body)?;
                encode_bind(&mut out.assembled, bind.portal, &server_name, bind.rest);
            }
            b'D' => encode_target(&mut out.assembled, b'D', b'S', &server_name),
            _ => {
                statements::encode_close_statement(&mut out.assembled, &server_name);
                self.filter.close_sent(false);
            }
        }
        Ok(true)
    }

    /// Takes the server's messages through the connection's exchange as their headers
    /// arrive, applies what the server confirms, and drops the answers to messages sluice
    /// injected; everything else is marked forwardable.
    pub(super) fn scan_server(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(server) = self.server.as_mut() else {
                return Ok(());
            };
            let server: &mut ServerConn = server;
            let to_client = &mut self.to_client;
            if to_client.body_left > 0 {
                let buf = &server.read_buf;
                let take = to_client.body_left.min(buf.len() - to_client.forwardable);
                to_client.forwardable += take;
                to_client.body_left -= take;
                if to_client.body_left > 0 {
                    return Ok(());
                }
            }
            let at = to_client.forwardable;
            // Answers must be matched in order, so one to swallow waits until everything
            // before it has been written to the client.
            let next = server.read_buf.get(at).copied();
            if matches!(next, Some(b'1' | b'3')) && self.filter.may_swallow() && at > 0 {
                return Ok(());
            }
            let (header, answer) = match server.take_backend(at) {
                Ok(Some(taken)) => taken,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.backend_failed(e)),
            };
            match answer {
                Answer::Ready(status) => self.request_answered(status),
                Answer::Completed => self.effects.completed(),
                Answer::CopyIn { silenced } => {
                    for _ in 0..silenced {
                        self.requests_started.pop_back();
                    }
                    self.filter.syncs_silenced(silenced);
                    self.effects.syncs_silenced(silenced);
                }
                Answer::Other => {}
            }
            let server: &mut ServerConn = self.server.as_mut().expect("attached");
            if header.tag == b'E' && server.exchange.is_busy() {
                // An error in a request (a FATAL while nothing is owed only ends it).
                self.effects.failed();
            }
            if !matches!(answer, Answer::Ready(_)) && !server.exchange.is_busy() {
                // Everything sent is answered (a batch without a Sync may stay open).
                self.timeouts.answered();
            }
            let whole = header.message_len();
            match header.tag {
                b'S' => {
                    // The client's own SET (or its rollback): follow it to the next server.
                    let body = &server.read_buf[at + HEADER_LEN..at + whole];
                    if let Ok((name, value)) = backend::parse_parameter_status(body) {
                        self.desired.set(name, value);
                    }
                }
                b'1' | b'3' => {
                    let swallow = if header.tag == b'1' {
                        self.filter.parse_complete(&mut server.statements)
                    } else {
                        self.filter.close_complete()
                    };
                    if swallow {
                        server.read_buf.advance(HEADER_LEN);
                        continue;
                    }
                }
                _ => {}
            }
            self.to_client.forwardable += HEADER_LEN;
            self.to_client.body_left = header.body_len;
        }
    }

    /// A ReadyForQuery answered the oldest request: statement records, effects, timers
    /// and statistics follow.
    fn request_answered(&mut self, status: TransactionStatus) {
        let Relay {
            server,
            statements,
            filter,
            effects,
            transaction,
            pins,
            unknown_state,
            subscription,
            desired,
            startup,
            timeouts,
            requests_started,
            tenant,
            cancel,
            ..
        } = self;
        let server: &mut ServerConn = server.as_mut().expect("attached");
        filter.batch_done(statements.as_mut());
        let listening = subscription
            .is_some()
            .then(|| (tenant.listener(), cancel.client.id));
        let mut session = Session {
            server,
            listening,
            client: statements.as_mut(),
            desired,
            startup,
            pins,
            unknown_state,
        };
        let mut outcome = |outcome: Outcome| session.apply(outcome);
        effects.ready(|event| transaction.event(event, &mut outcome));
        transaction.ready(status, &mut outcome);
        cancel.client.set_pins(pins.reasons());
        let server: &mut ServerConn = self.server.as_mut().expect("attached");
        timeouts.ready_received(server.exchange.is_busy());
        if let Some(sent) = requests_started.pop_front() {
            let took = sent.elapsed();
            let stats = &tenant.stats;
            stats.queries.fetch_add(1, Relaxed);
            add_micros(&stats.query_micros, took);
            tenant.cluster.metrics.query.record(took.as_secs_f64());
        }
    }
}

/// The records an outcome of the client's statements changes.
struct Session<'r> {
    server: &'r mut ServerConn,
    /// The tenant's listener and the client, while the client listens.
    listening: Option<(&'r Listener, u64)>,
    client: Option<&'r mut ClientStatements>,
    desired: &'r mut Parameters,
    startup: &'r Parameters,
    pins: &'r mut Pins,
    unknown_state: &'r mut bool,
}

impl Session<'_> {
    /// Applies what one of the client's statements did to sluice's records of the server
    /// session and of what the client wants. A setting the server reports is left to its
    /// ParameterStatus, which says exactly what it holds.
    fn apply(&mut self, outcome: Outcome) {
        let reported = |server: &ServerConn, name: &str| server.params.login.get(name).is_some();
        match outcome {
            Outcome::Holds(effect) => match effect {
                Effect::DiscardAll | Effect::DeallocateAll => {
                    self.server.statements.clear();
                    if let Some(client) = self.client.as_deref_mut() {
                        client.clear();
                    }
                    if effect == Effect::DiscardAll {
                        self.server.params.reset_to_login();
                        *self.desired = self.startup.clone();
                        self.pins.discard_all();
                        if let Some((listener, client)) = self.listening {
                            listener.unlisten_all(client);
                        }
                    } else {
                        self.pins.deallocate_all();
                    }
                }
                // PostgreSQL resets settings to the session's startup values; the server
                // connection has other ones, so sluice restores the client's (re-applied at
                // its next lease).
                Effect::ResetAll => {
                    self.server.params.reset_to_login();
                    *self.desired = self.startup.clone();
                }
                Effect::Reset(name) => {
                    if !reported(self.server, &name) {
                        self.server.params.current.forget(&name);
                    }
                    self.desired
                        .restore(&name, self.startup, &self.server.params.login);
                }
                Effect::Set { name, value } if !reported(self.server, &name) => match value {
                    Value::Known(value) => {
                        self.server.params.current.set(&name, &value);
                        self.desired.set(&name, &value);
                    }
                    _ => self.server.params.dirty(&name),
                },
                Effect::Pin(pin) => self.pins.hold(pin),
                Effect::Unpin(unpin) => self.pins.release(&unpin),
                // UNLISTEN passed to a pooled connection (in a multi-statement query, as
                // asyncpg's reset sends it) changes nothing there: it is sluice's to do.
                Effect::Unlisten(channel) => {
                    if let Some((listener, client)) = self.listening {
                        listener.unlisten(client, &channel);
                    }
                }
                Effect::UnlistenAll => {
                    if let Some((listener, client)) = self.listening {
                        listener.unlisten_all(client);
                    }
                }
                Effect::Unknown => {
                    self.server.statements.clear();
                    self.server.params.dirty_all();
                    *self.unknown_state = true;
                }
                _ => {}
            },
            // Assume the worst for the next client: reset what may be set, keep the pin.
            Outcome::Uncertain(effect) => match effect {
                Effect::Set { name, .. } | Effect::Reset(name) if !reported(self.server, &name) => {
                    self.server.params.dirty(&name);
                }
                Effect::ResetAll => self.server.params.dirty_all(),
                Effect::Pin(pin) => self.pins.hold(pin),
                _ => {}
            },
        }
    }
}

/// A statement that fails on the server with 0A000 and this message and hint: the server
/// then answers exactly as for any failed statement (a transaction is aborted).
fn rejection(message: &str, hint: &str) -> String {
    let quote = |text: &str| text.replace('\'', "''");
    format!(
        "DO $sluice$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = '{}', \
         HINT = '{}'; END$sluice$",
        quote(message),
        quote(hint)
    )
}
