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
use crate::server::parameters::Parameters;
use crate::server::ServerConn;
use crate::session::effects::{self, Effect};
use crate::session::statements::{self, ClientStatements, Confirm, Plan};
use crate::stats::add_micros;
use bytes::{Buf, Bytes};
use sluice_protocol::backend;
use sluice_protocol::exchange::Answer;
use sluice_protocol::extended::{self, encode_bind, encode_target};
use sluice_protocol::frame::{frontend_header, Header, HEADER_LEN};
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
            let needs_whole = (tracked && matches!(header.tag, b'P' | b'B' | b'D' | b'C'))
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
                self.simple_query(&header);
            }
            let replaced = needs_whole && header.tag != b'Q' && tracked && {
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

    /// A simple query drops the unnamed statement; its statements' effects are expected
    /// (a query too long to read whole leaves everything they could change unknown).
    pub(super) fn simple_query(&mut self, header: &Header) {
        let server: &mut ServerConn = self.server.as_mut().expect("attached");
        server.statements.set_unnamed(None);
        if let Some(client) = &mut self.statements {
            client.forget_unnamed();
        }
        let effects = &mut self.effects;
        if header.body_len > MAX_INSPECTED_QUERY {
            effects.expect(None, Effect::Unknown);
            return;
        }
        let body = &self.to_server.untranslated()[HEADER_LEN..header.message_len()];
        let text = body.strip_suffix(b"\0").unwrap_or(body);
        effects::of_query(text, |index, effect| effects.expect(Some(index), effect));
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
                let text = parse.rest.split(|&b| b == 0).next().unwrap_or_default();
                if effects::classify(text).is_some() {
                    // Whether and when it runs is up to later Binds and Executes: what it
                    // could change becomes unknown once its batch is answered.
                    self.effects.expect(None, Effect::Unknown);
                }
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
                Answer::Ready(_) => self.request_answered(),
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
    fn request_answered(&mut self) {
        let Relay {
            server,
            statements,
            filter,
            effects,
            desired,
            startup,
            timeouts,
            requests_started,
            tenant,
            ..
        } = self;
        let server: &mut ServerConn = server.as_mut().expect("attached");
        filter.batch_done(statements.as_mut());
        effects.ready(|effect| apply(effect, server, statements.as_mut(), desired, startup));
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

/// Applies a confirmed effect to sluice's records of the server session and of what the
/// client wants.
fn apply(
    effect: Effect,
    server: &mut ServerConn,
    client: Option<&mut ClientStatements>,
    desired: &mut Parameters,
    startup: &Parameters,
) {
    match effect {
        Effect::DiscardAll | Effect::DeallocateAll => {
            server.statements.clear();
            if let Some(client) = client {
                client.clear();
            }
            if effect == Effect::DiscardAll {
                server.params.reset_to_login();
                *desired = startup.clone();
            }
        }
        // PostgreSQL resets settings to the session's startup values; the server
        // connection has other ones, so sluice restores the client's (re-applied at its
        // next lease).
        Effect::ResetAll => {
            server.params.reset_to_login();
            *desired = startup.clone();
        }
        Effect::Reset(name) => {
            server.params.current.forget(&name);
            desired.restore(&name, startup, &server.params.login);
        }
        Effect::Unknown => {
            server.statements.clear();
            server.params.forget_all();
        }
    }
}
