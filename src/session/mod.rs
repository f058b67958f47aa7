//! One client connection from accept to close: startup and authentication (`login`),
//! the greeting that makes the client ready, then the transaction relay (`relay`).
//!
//! Every failure is classified once (`error`); the client gets an ErrorResponse with a
//! proper SQLSTATE where the protocol allows one, then a clean close.

mod error;
mod login;
mod relay;
mod timeouts;

pub use error::{ErrorKind, SessionError};
pub use login::{negotiate_version, prove};

use crate::cancel::CancelHandle;
use crate::params::{self, Parameters};
use crate::pool::Lease;
use crate::shared::Shared;
use crate::stats::ClientInfo;
use crate::stream::Stream;
use crate::tenant::{ClientSlot, Tenant};
use bytes::BytesMut;
use login::{LoggedIn, Opening};
use relay::Relay;
use sluice_protocol::backend;
use sluice_protocol::startup::CancelKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info, warn, Instrument};

/// How long sluice tries to deliver a final ErrorResponse to a client.
const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one client connection to the end. Never panics on client input; logs why the
/// session ended.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, id: u64, shared: &Shared) {
    let span = tracing::info_span!("session", id, %peer, tenant = tracing::field::Empty);
    async {
        let _ = tcp.set_nodelay(true);
        let mut stream = Stream::Plain(tcp);
        // The login, the relay and the console are boxed: the task then holds only what
        // the current phase needs (the login's state is freed once it is done, and no
        // idle client carries it), and spawning copies a small future, not all of them.
        let started = Box::pin(start(&mut stream, peer, id, shared)).await;
        if let Some(outcome) = login_outcome(&started) {
            metrics::counter!("sluice_client_logins_total", "result" => outcome).increment(1);
        }
        let result = match started {
            Ok(Started::Ready(ready)) => {
                tracing::Span::current().record("tenant", ready.tenant.name());
                info!("client logged in");
                let Ready {
                    tenant,
                    slot,
                    cancel,
                    buf,
                    leased,
                    desired,
                } = *ready;
                let relay = Relay::new(
                    &mut stream,
                    buf,
                    relay::ClientContext {
                        tenant: &tenant,
                        cancel: &cancel.target,
                        pause: &shared.pause,
                        drain: &shared.drain,
                        client_id: id,
                    },
                    leased,
                    desired,
                );
                let result = Box::pin(relay.run()).await;
                drop(slot);
                result
            }
            Ok(Started::Admin(buf)) => {
                tracing::Span::current().record("tenant", "admin console");
                info!("admin logged in");
                let result = Box::pin(crate::admin::serve(&mut stream, buf, shared)).await;
                if let Err(e) = &result {
                    report_error(&mut stream, e).await;
                }
                result
            }
            Ok(Started::Cancel(key)) => {
                shared.clients.cancel(key).await;
                Ok(())
            }
            Err(e) => {
                report_error(&mut stream, &e).await;
                Err(e)
            }
        };
        if let Err(e) = &result {
            if !matches!(e, SessionError::ClientGone) {
                metrics::counter!("sluice_errors_total", "kind" => e.kind().as_str()).increment(1);
            }
        }
        match result {
            Ok(()) | Err(SessionError::ClientGone) => debug!("client disconnected"),
            Err(e) if e.kind() == ErrorKind::Client => {
                info!(kind = e.kind().as_str(), error = %e, "session ended")
            }
            Err(e) => warn!(kind = e.kind().as_str(), error = %e, "session ended"),
        }
    }
    .instrument(span)
    .await
}

/// The `result` label of a login, or `None` for connections that were no login.
fn login_outcome(started: &Result<Started, SessionError>) -> Option<&'static str> {
    Some(match started {
        Ok(Started::Ready(_) | Started::Admin(_)) => "ok",
        Ok(Started::Cancel(_)) | Err(SessionError::ClientGone | SessionError::ClientIo(_)) => {
            return None
        }
        Err(SessionError::BadPassword(_)) => "bad_password",
        Err(
            SessionError::UnknownDatabase(_)
            | SessionError::UnknownUser { .. }
            | SessionError::NotAnAdmin(_),
        ) => "unknown_tenant",
        Err(SessionError::TooManyClients { .. }) => "limit",
        Err(SessionError::LoginTimeout(_)) => "timeout",
        Err(SessionError::Protocol(_)) => "protocol_error",
        Err(SessionError::TlsRequired) => "tls_required",
        Err(_) => "server_error",
    })
}

/// What a new connection turned out to be.
enum Started {
    /// A logged-in client that has been told it is ready for queries.
    Ready(Box<Ready>),
    /// An admin logged in to the console; the bytes it sent after its login messages.
    Admin(BytesMut),
    Cancel(CancelKey),
}

struct Ready {
    tenant: Arc<Tenant>,
    slot: ClientSlot,
    cancel: CancelHandle,
    /// Bytes the client sent after its login messages.
    buf: BytesMut,
    /// The server connection leased at login, kept in session mode.
    leased: Option<Lease>,
    /// The session parameters the client asked for.
    desired: Parameters,
}

/// Login and greeting, bounded by `client_login_timeout`.
async fn start(
    stream: &mut Stream,
    peer: SocketAddr,
    id: u64,
    shared: &Shared,
) -> Result<Started, SessionError> {
    let tenants = shared.tenants.load_full();
    let client_tls = shared.client_tls.load_full();
    let mut buf = BytesMut::with_capacity(1024);
    let login = async {
        match login::read_opening(stream, &mut buf, &client_tls).await? {
            Opening::Cancel(key) => Ok::<_, SessionError>(Err(Some(key))),
            Opening::Startup(startup) if crate::admin::DATABASES.contains(&startup.database()) => {
                crate::admin::login(stream, &mut buf, &startup, shared).await?;
                Ok(Err(None))
            }
            Opening::Startup(startup) => {
                let logged_in = login::authenticate(stream, &mut buf, &startup, &tenants).await?;
                Ok(Ok((startup, logged_in)))
            }
        }
    };
    let timeout = shared.config.load().client_login_timeout;
    let logged_in = match tokio::time::timeout(timeout, login).await {
        Ok(result) => result?,
        Err(_) => return Err(SessionError::LoginTimeout(timeout)),
    };
    let (startup, LoggedIn { tenant, slot }) = match logged_in {
        Ok(logged_in) => logged_in,
        Err(Some(key)) => return Ok(Started::Cancel(key)),
        Err(None) => return Ok(Started::Admin(buf)),
    };
    let wait = tenant.settings.query_wait_timeout;

    // The greeting needs the server's ParameterStatus set: remembered from an earlier
    // server connection, or taken from one leased now (and kept, in session mode).
    let mut leased = None;
    let reported = match tenant.parameters() {
        Some(reported) if !tenant.is_session_mode() => reported.clone(),
        _ => {
            let server = tenant
                .pool
                .checkout(wait)
                .await
                .map_err(|e| SessionError::from_checkout(&tenant.name(), wait, e))?;
            let reported = server.params.login.clone();
            tenant.remember_parameters(&reported);
            if tenant.is_session_mode() {
                leased = Some(server);
            }
            reported
        }
    };
    let mut desired =
        params::desired(&reported, &startup).map_err(|e| SessionError::Protocol(e.to_string()))?;
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
    Ok(Started::Ready(Box::new(Ready {
        tenant,
        slot,
        cancel,
        buf,
        leased,
        desired,
    })))
}

/// Sends a FATAL ErrorResponse for `error`, if it has one, without waiting long.
async fn report_error(stream: &mut Stream, error: &SessionError) {
    let Some((code, message)) = error.client_error() else {
        return;
    };
    let mut out = BytesMut::new();
    backend::encode_error(&mut out, "FATAL", code, &message);
    let _ = tokio::time::timeout(ERROR_WRITE_TIMEOUT, stream.write_all(&out)).await;
}
