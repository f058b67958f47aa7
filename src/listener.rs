//! The client-facing listener: accepts connections and runs one task per connection, which
//! reads its first packets and dispatches it — a cancel request to the cancel registry, a
//! login to the admin database to the console, any other login to a tenant session. On
//! shutdown it stops accepting and waits (bounded) for the sessions to finish.
//!
//! The only module that knows both the console and the sessions.

use crate::client::{read_opening, report_error, ErrorKind, Opening, SessionError};
use crate::lifecycle::Shutdown;
use crate::net::Stream;
use crate::shared::Shared;
use crate::{admin, session};
use bytes::BytesMut;
use sluice_protocol::startup::CancelKey;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn, Instrument};

/// How long killed sessions get to send their last ErrorResponse.
const FINAL_GOODBYE: Duration = Duration::from_secs(1);

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts clients until `shutdown` resolves, then waits up to `drain_timeout` for the
/// sessions already running.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = Shutdown>,
    drain_timeout: Duration,
) {
    // Each session holds a sender; when all are dropped, `recv` returns None.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let next_id = AtomicU64::new(1);
    tokio::pin!(shutdown);
    let kind = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    let alive = alive.clone();
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        connection(stream, peer, id, &shared).await;
                        drop(alive);
                    });
                }
                Err(e) => {
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            kind = &mut shutdown => break kind,
        }
    };
    shared.drain.start();
    drop(listener);
    drop(alive);
    let drain_timeout = match kind {
        Shutdown::Graceful => {
            info!("stopped accepting clients; waiting for open transactions to finish");
            drain_timeout
        }
        Shutdown::Fast => {
            info!("stopped accepting clients; disconnecting every client now");
            Duration::ZERO
        }
    };
    if tokio::time::timeout(drain_timeout, all_done.recv())
        .await
        .is_err()
    {
        let killed = shared.clients.kill_all();
        warn!(
            ?drain_timeout,
            clients = killed,
            "transactions still open at the end of shutdown_timeout; disconnecting their clients"
        );
        let _ = tokio::time::timeout(FINAL_GOODBYE, all_done.recv()).await;
    }
}

/// What a new connection turned out to be.
enum Started {
    /// A tenant's client, logged in and told it is ready for queries.
    Tenant(Box<session::Ready>),
    /// An admin logged in to the console; the bytes it sent after its login messages.
    Admin(BytesMut),
    Cancel(CancelKey),
}

/// Serves one client connection to the end. Never panics on client input; logs why it
/// ended.
pub(crate) async fn connection(tcp: TcpStream, peer: SocketAddr, id: u64, shared: &Shared) {
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
            Ok(Started::Tenant(ready)) => {
                tracing::Span::current().record("tenant", ready.tenant.name());
                info!("client logged in");
                Box::pin(session::run(&mut stream, *ready, id, shared)).await
            }
            Ok(Started::Admin(buf)) => {
                tracing::Span::current().record("tenant", "admin console");
                info!("admin logged in");
                let result = Box::pin(admin::serve(&mut stream, buf, shared)).await;
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
        Ok(Started::Tenant(_) | Started::Admin(_)) => "ok",
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

/// What the first packets and the login (bounded by `client_login_timeout`) led to.
enum Opened {
    Cancel(CancelKey),
    Admin,
    Tenant(sluice_protocol::startup::StartupMessage, session::LoggedIn),
}

/// The first packets and the login, bounded by `client_login_timeout`, then (for a tenant's
/// client) the greeting.
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
        Ok::<_, SessionError>(match read_opening(stream, &mut buf, &client_tls).await? {
            Opening::Cancel(key) => Opened::Cancel(key),
            Opening::Startup(startup) if admin::DATABASES.contains(&startup.database()) => {
                admin::login(stream, &mut buf, &startup, shared).await?;
                Opened::Admin
            }
            Opening::Startup(startup) => {
                let logged_in = session::authenticate(stream, &mut buf, &startup, &tenants).await?;
                Opened::Tenant(startup, logged_in)
            }
        })
    };
    let timeout = shared.config.load().client_login_timeout;
    let opened = match tokio::time::timeout(timeout, login).await {
        Ok(result) => result?,
        Err(_) => return Err(SessionError::LoginTimeout(timeout)),
    };
    Ok(match opened {
        Opened::Cancel(key) => Started::Cancel(key),
        Opened::Admin => Started::Admin(buf),
        Opened::Tenant(startup, logged_in) => {
            let ready = session::greet(stream, buf, &startup, logged_in, (peer, id), shared);
            Started::Tenant(Box::new(ready.await?))
        }
    })
}
