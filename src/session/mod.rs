//! A tenant client's session once its startup packet has named a tenant: the login
//! (`login`), the greeting that makes the client ready, then the transaction relay
//! (`relay`) with what follows the client between server connections (`parameters`,
//! `statements`) and its timers (`timeouts`).
//!
//! The listener dispatches here; the session never sees admin logins or cancel requests,
//! and the console never sees a session.

mod classify;
mod effects;
mod login;
mod parameters;
mod pins;
mod relay;
mod statements;
mod timeouts;
mod transaction;

pub use login::{authenticate, LoggedIn};

use crate::cancel::CancelHandle;
use crate::client::SessionError;
use crate::net::Stream;
use crate::pool::Lease;
use crate::server::parameters::Parameters;
use crate::shared::Shared;
use crate::stats::ClientInfo;
use crate::tenant::{ClientSlot, Tenant};
use bytes::BytesMut;
use relay::Relay;
use sluice_protocol::backend;
use sluice_protocol::startup::StartupMessage;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// A logged-in client that has been told it is ready for queries.
pub struct Ready {
    pub tenant: Arc<Tenant>,
    slot: ClientSlot,
    cancel: CancelHandle,
    /// Bytes the client sent after its login messages.
    buf: BytesMut,
    /// The server connection leased at login, kept in session mode.
    leased: Option<Lease>,
    /// The session parameters the client asked for.
    desired: Parameters,
}

/// Sends a logged-in client its greeting: AuthenticationOk, the server's parameters with
/// the client's own values, its cancel key (issued by sluice) and ReadyForQuery. `buf`
/// holds what the client sent after its login messages.
pub async fn greet(
    stream: &mut Stream,
    buf: BytesMut,
    startup: &StartupMessage,
    logged_in: LoggedIn,
    (peer, id): (SocketAddr, u64),
    shared: &Shared,
) -> Result<Ready, SessionError> {
    let LoggedIn { tenant, slot } = logged_in;
    let wait = tenant.settings.query_wait_timeout;
    // The greeting needs the server's ParameterStatus set: remembered from an earlier
    // server connection, or taken from one leased now (and kept, in session mode).
    let mut leased = None;
    let reported = match tenant.parameters() {
        Some(reported) if !tenant.is_session_mode() => reported,
        _ => {
            let server = tenant
                .pool
                .checkout(wait)
                .await
                .map_err(|e| SessionError::from_checkout(&tenant.name(), wait, e))?;
            let reported = server.params.login.clone();
            if tenant.is_session_mode() {
                leased = Some(server);
            }
            reported
        }
    };
    let mut desired = parameters::desired(&reported, startup)
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    shared.parameter_sets.share(&mut desired);
    let mut greeting = BytesMut::with_capacity(1024);
    backend::encode_auth_ok(&mut greeting);
    desired.encode_status(&reported, &mut greeting);
    let client = ClientInfo::new(
        id,
        peer,
        &tenant.settings.database,
        &tenant.settings.user,
        desired.get("application_name").unwrap_or(""),
    );
    let cancel = shared.clients.register(Arc::new(client));
    backend::encode_backend_key_data(&mut greeting, cancel.key);
    backend::encode_ready_for_query(&mut greeting, b'I');
    stream
        .write_all(&greeting)
        .await
        .map_err(SessionError::ClientIo)?;
    Ok(Ready {
        tenant,
        slot,
        cancel,
        buf,
        leased,
        desired,
    })
}

/// Relays the ready client's transactions until it leaves or something fails.
pub async fn run(
    stream: &mut Stream,
    ready: Ready,
    client_id: u64,
    shared: &Shared,
) -> Result<(), SessionError> {
    let Ready {
        tenant,
        slot,
        cancel,
        buf,
        leased,
        desired,
    } = ready;
    let relay = Relay::new(
        stream,
        buf,
        relay::ClientContext {
            tenant: &tenant,
            cancel: &cancel.target,
            pause: &shared.pause,
            drain: &shared.drain,
            client_id,
        },
        leased,
        desired,
    );
    let result = Box::pin(relay.run()).await;
    drop(slot);
    result
}
