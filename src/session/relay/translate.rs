//! Reading the message streams: client messages are classified (what the server will
//! owe) and, in transaction mode, statement names rewritten; server messages are
//! classified (ReadyForQuery, COPY, ParameterStatus) and the answers to injected
//! messages dropped.
//!
//! Changes only the relay's own state and the leased connection's records (parameters,
//! statements); all I/O stays in `mod.rs` and `buffers.rs`.

use super::{Relay, MAX_INSPECTED_QUERY, READY_FOR_QUERY_LEN};
use crate::client::SessionError;
use crate::server::ServerConn;
use crate::session::statements::{self, Confirm, Plan};
use crate::stats::add_micros;
use bytes::{Buf, Bytes};
use sluice_protocol::backend;
use sluice_protocol::extended::{self, encode_bind, encode_target};
use sluice_protocol::frame::{backend_header, frontend_header, Header, HEADER_LEN};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// Settings a client is resetting.
pub(super) enum Resetting {
    All,
    Names(Vec<String>),
}

impl Resetting {
    pub(super) fn covers(&self, name: &str) -> bool {
        match self {
            Resetting::All => true,
            Resetting::Names(names) => names.iter().any(|n| n.eq_ignore_ascii_case(name)),
        }
    }
}

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
            match header.tag {
                b'X' => {
                    // Terminate ends the client, not the pooled server session.
                    let at = out.direct;
                    out.buf.truncate(at);
                    self.terminated = true;
                    return Ok(());
                }
                b'Q' | b'F' | b'S' => {
                    self.exchange.pending_ready += 1;
                    self.requests_started.push_back(Instant::now());
                    self.timeouts.request_sent(self.exchange.pending_ready);
                    self.filter.batch_sent();
                    if header.tag == b'S' {
                        self.exchange.unsynced = false;
                    }
                    if header.tag == b'Q' {
                        self.simple_query(&header);
                    }
                }
                b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => self.exchange.unsynced = true,
                _ => {}
            }
            if needs_whole && header.tag != b'Q' && tracked {
                if self.statement_message(header.tag, whole)? {
                    continue;
                }
                if header.tag == b'C' {
                    self.filter.close_sent(false);
                }
            }
            let out = &mut self.to_server;
            out.pass(HEADER_LEN);
            out.body_left = header.body_len;
        }
    }

    /// A short simple query: `DISCARD ALL` and `DEALLOCATE ALL` drop every prepared
    /// statement, and any simple query drops the unnamed one.
    pub(super) fn simple_query(&mut self, header: &Header) {
        let server: &mut ServerConn = self.server.as_mut().expect("attached");
        server.statements.set_unnamed(None);
        if let Some(client) = &mut self.statements {
            client.forget_unnamed();
        }
        if header.body_len > MAX_INSPECTED_QUERY {
            return;
        }
        let body = &self.to_server.untranslated()[HEADER_LEN..header.message_len()];
        // Only DISCARD, DEALLOCATE and RESET matter here; skip everything else cheaply.
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if !matches!(first, Some(b'd' | b'D' | b'r' | b'R')) {
            return;
        }
        let sql = String::from_utf8_lossy(body).to_ascii_lowercase();
        for statement in sql.trim_end_matches('\0').split(';') {
            let words: Vec<&str> = statement.split_whitespace().collect();
            match words[..] {
                ["discard", "all"] | ["deallocate", "all"] => {
                    server.statements.clear();
                    if let Some(client) = &mut self.statements {
                        client.clear();
                    }
                }
                _ => {}
            }
            // PostgreSQL resets settings to the session's startup values; the server
            // connection has other ones, so sluice restores the client's (re-applied
            // at its next lease) and keeps the server's reports from overriding them.
            match words[..] {
                ["discard", "all"] | ["reset", "all"] => {
                    server.params.reset_to_login();
                    self.desired = self.startup.clone();
                    self.resetting = Resetting::All;
                }
                ["reset", name] => {
                    server.params.current.forget(name);
                    self.desired
                        .restore(name, &self.startup, &server.params.login);
                    if let Resetting::Names(names) = &mut self.resetting {
                        names.push(name.to_owned());
                    }
                }
                _ => {}
            }
        }
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
        let out = &mut self.to_server;
        let assembled = out.assemble();
        for name in plan.close.iter().flatten() {
            statements::encode_close_statement(assembled, name);
            self.filter.close_sent(true);
        }
        if let Some((parse, confirm, swallow)) = plan.parse {
            assembled.extend_from_slice(&parse);
            self.filter.parse_sent(swallow, confirm);
        }
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

    /// Classifies the server's complete headers: counts ReadyForQuery, notes COPY IN, and
    /// drops the answers to messages sluice injected.
    pub(super) fn scan_server(&mut self) -> Result<(), SessionError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let server: &mut ServerConn = server;
        let to_client = &mut self.to_client;
        loop {
            let buf = &server.read_buf;
            if to_client.body_left > 0 {
                let take = to_client.body_left.min(buf.len() - to_client.forwardable);
                to_client.forwardable += take;
                to_client.body_left -= take;
                if to_client.body_left > 0 {
                    return Ok(());
                }
            }
            let rest = &buf[to_client.forwardable..];
            let header = match backend_header(rest) {
                Ok(Some(header)) => header,
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(SessionError::ServerLost(format!(
                        "malformed server message: {e}"
                    )))
                }
            };
            match header.tag {
                b'Z' => {
                    if rest.len() < READY_FOR_QUERY_LEN {
                        return Ok(());
                    }
                    self.exchange.status = rest[HEADER_LEN];
                    self.exchange.pending_ready = self.exchange.pending_ready.saturating_sub(1);
                    self.exchange.copy_in = false;
                    self.filter.batch_done(self.statements.as_mut());
                    if self.exchange.pending_ready == 0 {
                        self.resetting = Resetting::Names(Vec::new());
                    }
                    self.timeouts.ready_received(self.exchange.pending_ready);
                    if let Some(sent) = self.requests_started.pop_front() {
                        let took = sent.elapsed();
                        let stats = &self.tenant.stats;
                        stats.queries.fetch_add(1, Relaxed);
                        add_micros(&stats.query_micros, took);
                        self.tenant.cluster.metrics.query.record(took.as_secs_f64());
                    }
                }
                b'G' => self.exchange.copy_in = true,
                b'S' => {
                    // The client's own SET (or its rollback): follow it to the next server.
                    let whole = header.message_len();
                    if rest.len() < whole {
                        return Ok(());
                    }
                    let parsed = backend::parse_parameter_status(&rest[HEADER_LEN..whole]);
                    let (name, value) = parsed.map_err(|e| {
                        SessionError::ServerLost(format!("malformed server message: {e}"))
                    })?;
                    server.params.current.set(name, value);
                    if !self.resetting.covers(name) {
                        self.desired.set(name, value);
                    }
                }
                b'1' | b'3' => {
                    // Answers must be matched in order, so one to swallow waits until
                    // everything before it has been written to the client.
                    if self.filter.may_swallow() && to_client.forwardable > 0 {
                        return Ok(());
                    }
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
            to_client.forwardable += HEADER_LEN;
            to_client.body_left = header.body_len;
        }
    }
}
