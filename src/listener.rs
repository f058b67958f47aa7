//! The client-facing listener: accepts connections, runs one session task per client,
//! and on shutdown stops accepting and waits (bounded) for sessions to finish.

use crate::session;
use crate::shared::Shared;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// How to stop.
#[derive(Debug, Clone, Copy)]
pub enum Shutdown {
    /// SIGTERM, admin SHUTDOWN: open transactions finish, up to shutdown_timeout.
    Graceful,
    /// SIGINT: every client is disconnected at once.
    Fast,
}

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
                        session::serve(stream, peer, id, &shared).await;
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
