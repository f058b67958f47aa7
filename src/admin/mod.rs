//! The admin console: a client that logs in to database `sluice` (or `pgbouncer`, so
//! existing tools work) as one of the `[[admins]]` gets a PgBouncer-compatible console
//! speaking the simple query protocol: `SHOW …`, `PAUSE`, `RESUME`, `RELOAD`, `KILL`,
//! `SHUTDOWN`. Column names follow PgBouncer's where they mean the same, so
//! pgbouncer_exporter and existing dashboards work against sluice.
//!
//! Reads and changes the process-wide state (`shared`); shares only `client` (logins and
//! errors) with the tenant sessions, which it never touches.

mod command;
mod show;

use crate::client::{negotiate_version, prove, SessionError};
use crate::net::{flush, read_message, Stream};
use crate::shared::Shared;
use crate::tenant::ClientAuth;
use bytes::BytesMut;
use command::{Command, CommandError};
use sluice_protocol::backend;
use sluice_protocol::startup::StartupMessage;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tracing::info;

/// The database names that reach the console.
pub const DATABASES: [&str; 2] = ["sluice", "pgbouncer"];

/// Longest query the console reads.
const MAX_COMMAND_LEN: usize = 64 * 1024;

/// How often `PAUSE` checks whether the paused tenants' transactions have finished.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// Authenticates an admin; `buf` holds what the client sent after its startup packet.
pub async fn login(
    stream: &mut Stream,
    buf: &mut BytesMut,
    startup: &StartupMessage,
    shared: &Shared,
) -> Result<(), SessionError> {
    let mut out = BytesMut::with_capacity(256);
    negotiate_version(startup, &mut out);
    let user = startup.user();
    let config = shared.config.load();
    let Some(admin) = config.admins.iter().find(|a| a.user == user) else {
        return Err(SessionError::NotAnAdmin(user.to_owned()));
    };
    let auth = ClientAuth::for_secret(&admin.password, user, config.defaults.auth_type);
    prove(stream, buf, &mut out, &auth, user).await.map(drop)
}

/// Runs the console for a logged-in admin until it leaves.
pub async fn serve(
    stream: &mut Stream,
    mut buf: BytesMut,
    shared: &Shared,
) -> Result<(), SessionError> {
    let mut out = BytesMut::with_capacity(1024);
    backend::encode_auth_ok(&mut out);
    for (name, value) in [
        (
            "server_version",
            concat!(env!("CARGO_PKG_VERSION"), "/sluice"),
        ),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        backend::encode_parameter_status(&mut out, name, value);
    }
    backend::encode_backend_key_data(
        &mut out,
        sluice_protocol::startup::CancelKey { pid: 0, secret: 0 },
    );
    backend::encode_ready_for_query(&mut out, b'I');
    flush(stream, &mut out)
        .await
        .map_err(SessionError::ClientIo)?;
    loop {
        let (tag, body) = tokio::select! {
            message = read_message(stream, &mut buf, MAX_COMMAND_LEN) => {
                message.map_err(SessionError::client_read)?
            }
            () = shared.drain.started() => return Err(SessionError::ShuttingDown),
        };
        match tag {
            b'Q' => {
                let sql = String::from_utf8_lossy(&body);
                let sql = sql.trim_end_matches('\0');
                run(sql, shared, &mut out).await;
                backend::encode_ready_for_query(&mut out, b'I');
                flush(stream, &mut out)
                    .await
                    .map_err(SessionError::ClientIo)?;
            }
            b'X' => return Ok(()),
            other => {
                return Err(SessionError::Protocol(format!(
                "the admin console speaks the simple query protocol only (got message type '{}')",
                other.escape_ascii()
            )))
            }
        }
    }
}

/// Runs one command, appending its result (or error) to `out`.
async fn run(sql: &str, shared: &Shared, out: &mut BytesMut) {
    let command = match command::parse(sql) {
        Ok(command) => command,
        Err(CommandError::Empty) => {
            backend::encode_empty_query_response(out);
            return;
        }
        Err(e) => {
            backend::encode_error(out, "ERROR", "42601", &e.to_string());
            return;
        }
    };
    info!(command = sql.trim(), "admin command");
    let outcome = match &command {
        Command::Show(what) => show::render(*what, shared, out),
        Command::Pause(database) => pause(shared, database.as_deref()).await,
        Command::Resume(database) => resume(shared, database.as_deref()),
        Command::Reload => shared.reload().map_err(|e| e.to_string()),
        Command::Kill(database) => kill(shared, database),
        Command::Shutdown => {
            shared.shutdown.notify_one();
            Ok(())
        }
    };
    match outcome {
        Ok(()) => backend::encode_command_complete(out, command.tag()),
        Err(message) => backend::encode_error(out, "ERROR", "55000", &message),
    }
}

/// Stops new transactions (of one database's tenants, or everywhere) and waits until
/// the running ones have given their server connections back.
async fn pause(shared: &Shared, database: Option<&str>) -> Result<(), String> {
    let tenants = shared.tenants.load_full();
    let affected: Vec<_> = tenants
        .iter()
        .filter(|t| database.is_none_or(|db| t.settings.database == db))
        .collect();
    match database {
        None => shared.pause.global.store(true, Relaxed),
        Some(db) if affected.is_empty() => return Err(format!("no such database: {db}")),
        Some(_) => affected.iter().for_each(|t| t.paused.store(true, Relaxed)),
    }
    while affected
        .iter()
        .any(|t| t.stats.clients_active.load(Relaxed) > 0)
    {
        tokio::time::sleep(PAUSE_POLL).await;
    }
    Ok(())
}

fn resume(shared: &Shared, database: Option<&str>) -> Result<(), String> {
    let tenants = shared.tenants.load();
    match database {
        None => {
            shared.pause.global.store(false, Relaxed);
            tenants.iter().for_each(|t| t.paused.store(false, Relaxed));
        }
        Some(db) => {
            let mut found = false;
            for tenant in tenants.iter().filter(|t| t.settings.database == db) {
                tenant.paused.store(false, Relaxed);
                found = true;
            }
            if !found {
                return Err(format!("no such database: {db}"));
            }
        }
    }
    shared.pause.resume_waiters();
    Ok(())
}

/// Disconnects every client of `database` and closes its idle server connections.
fn kill(shared: &Shared, database: &str) -> Result<(), String> {
    let tenants = shared.tenants.load();
    let mut found = false;
    for tenant in tenants.iter().filter(|t| t.settings.database == database) {
        tenant.pool.close_idle();
        found = true;
    }
    if !found {
        return Err(format!("no such database: {database}"));
    }
    let killed = shared.clients.kill_database(database);
    info!(
        database,
        clients = killed,
        "clients killed from the admin console"
    );
    Ok(())
}
