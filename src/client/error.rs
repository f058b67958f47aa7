//! Why a client connection ended, classified once: the SQLSTATE and text the client sees,
//! and the kind that goes into logs and the `kind` label of `sluice_errors_total`. Text
//! sent to clients never carries internal details such as server addresses or i/o errors.
//!
//! Names the errors of the layers below (pools, servers, lookups) to classify them; never
//! runs anything of theirs.

use crate::net::{ReadError, Stream};
use crate::pool::CheckoutError;
use crate::server::ConnectError;
use crate::tenant::auth_query::LookupError;
use crate::tenant::listener::Ended;
use bytes::BytesMut;
use sluice_protocol::{backend, ProtocolError};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long sluice tries to deliver a final ErrorResponse to a client.
const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Broad class of a failure, for logs and the `kind` label of error metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client misbehaved or was refused.
    Client,
    /// The server or the network to it failed.
    Server,
    /// A configured timeout expired.
    Timeout,
    /// sluice itself failed: a broken invariant, not anyone's input.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Client => "client",
            ErrorKind::Server => "server",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client closed the connection")]
    ClientGone,
    #[error("client connection failed: {0}")]
    ClientIo(std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    #[error("role \"{user}\" is not a tenant of database \"{database}\"")]
    UnknownUser { database: String, user: String },
    #[error("password authentication failed for user \"{0}\"")]
    BadPassword(String),
    #[error("could not look up the password of user \"{user}\": {source}")]
    AuthQuery { user: String, source: LookupError },
    #[error("too many client connections for tenant {tenant} (max_client_connections is {max})")]
    TooManyClients { tenant: String, max: u32 },
    #[error("login did not complete within client_login_timeout ({0:?})")]
    LoginTimeout(Duration),
    #[error("no server connection for tenant {tenant} became free within query_wait_timeout ({timeout:?})")]
    WaitTimeout { tenant: String, timeout: Duration },
    #[error("could not open a server connection for tenant {tenant}: {source}")]
    ServerUnavailable {
        tenant: String,
        source: Arc<ConnectError>,
    },
    #[error("server connection lost: {0}")]
    ServerLost(String),
    #[error("canceling statement due to user request (while waiting for a server connection)")]
    CancelledWhileWaiting,
    #[error("terminating connection due to idle-in-transaction timeout (idle_transaction_timeout is {0:?})")]
    IdleInTransactionTimeout(Duration),
    #[error("terminating connection due to idle timeout (client_idle_timeout is {0:?})")]
    ClientIdleTimeout(Duration),
    #[error("terminating connection: idle while holding session state on its server connection (pinned_idle_timeout is {0:?})")]
    PinnedIdleTimeout(Duration),
    #[error("TLS is required: connect with sslmode=require or stronger")]
    TlsRequired,
    #[error("role \"{0}\" is not an admin of the sluice console")]
    NotAnAdmin(String),
    #[error("terminating connection due to administrator command")]
    Killed,
    #[error("terminating connection: sluice is shutting down")]
    ShuttingDown,
    #[error("terminating connection: the tenant was removed from the configuration")]
    TenantRemoved,
    #[error("server refused the client's session parameters: {message} (SQLSTATE {code})")]
    ParameterRejected { code: String, message: String },
    #[error("canceling statement due to query_timeout ({timeout:?}); the server did not answer the cancel within query_cancel_grace ({grace:?}), so its connection was closed")]
    QueryTimeout { timeout: Duration, grace: Duration },
    #[error("the server connection went out of sync ({0}) and was closed")]
    ServerOutOfSync(String),
    #[error("terminating connection: {}", match .0 {
        Ended::Overflow => "it left too many notifications unread",
        Ended::Lost => "the listening server connection was lost; notifications may have been missed",
    })]
    NotificationsEnded(Ended),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl SessionError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::LoginTimeout(_)
            | SessionError::WaitTimeout { .. }
            | SessionError::IdleInTransactionTimeout(_)
            | SessionError::ClientIdleTimeout(_)
            | SessionError::PinnedIdleTimeout(_)
            | SessionError::QueryTimeout { .. } => ErrorKind::Timeout,
            SessionError::ServerUnavailable { .. }
            | SessionError::ServerLost(_)
            | SessionError::ServerOutOfSync(_)
            | SessionError::NotificationsEnded(Ended::Lost)
            | SessionError::AuthQuery { .. } => ErrorKind::Server,
            SessionError::Internal(_) => ErrorKind::Internal,
            _ => ErrorKind::Client,
        }
    }

    /// The SQLSTATE and message for the client's ErrorResponse; `None` when the client
    /// is gone and nothing can be sent.
    pub fn client_error(&self) -> Option<(&str, String)> {
        let code = match self {
            SessionError::ClientGone | SessionError::ClientIo(_) => return None,
            SessionError::Protocol(_) => "08P01",
            SessionError::UnknownDatabase(_) => "3D000",
            SessionError::UnknownUser { .. }
            | SessionError::NotAnAdmin(_)
            | SessionError::TlsRequired => "28000",
            SessionError::BadPassword(_) => "28P01",
            SessionError::TooManyClients { .. } | SessionError::WaitTimeout { .. } => "53300",
            SessionError::LoginTimeout(_) => "08006",
            SessionError::CancelledWhileWaiting | SessionError::QueryTimeout { .. } => "57014",
            SessionError::Killed | SessionError::ShuttingDown | SessionError::TenantRemoved => {
                "57P01"
            }
            SessionError::IdleInTransactionTimeout(_) => "25P03",
            SessionError::NotificationsEnded(Ended::Overflow) => "53400",
            SessionError::NotificationsEnded(Ended::Lost) => "08006",
            SessionError::ClientIdleTimeout(_) | SessionError::PinnedIdleTimeout(_) => "57P05",
            SessionError::ServerUnavailable { source, tenant }
                if matches!(**source, ConnectError::Rejected { .. }) =>
            {
                let ConnectError::Rejected { code, .. } = &**source else {
                    unreachable!("matched above")
                };
                // The server's own text may describe its pg_hba rules or roles: it stays
                // in sluice's log.
                return Some((
                    code,
                    format!(
                        "the server refused sluice's login for tenant {tenant} (its reason is in \
                         sluice's log)"
                    ),
                ));
            }
            SessionError::ServerUnavailable { tenant, .. } => {
                return Some((
                    "08006",
                    format!("could not open a server connection for tenant {tenant}"),
                ))
            }
            SessionError::ParameterRejected { code, message } => {
                return Some((code, message.clone()))
            }
            SessionError::ServerLost(_) => {
                return Some(("08006", "server connection lost".to_owned()))
            }
            // What the server sent stays in sluice's log.
            SessionError::ServerOutOfSync(_) => {
                return Some((
                    "08006",
                    "the server connection went out of sync and was closed".to_owned(),
                ))
            }
            SessionError::Internal(_) => {
                return Some(("XX000", "internal error in sluice".to_owned()))
            }
            // The query's error stays in sluice's log: it may name server internals.
            SessionError::AuthQuery { user, .. } => {
                return Some((
                    "08006",
                    format!(
                        "could not look up the password of user \"{user}\" (auth_query failed)"
                    ),
                ))
            }
        };
        Some((code, self.to_string()))
    }

    pub fn from_checkout(tenant: &str, wait: Duration, e: CheckoutError) -> Self {
        match e {
            CheckoutError::Timeout => SessionError::WaitTimeout {
                tenant: tenant.to_owned(),
                timeout: wait,
            },
            CheckoutError::Connect(source) => SessionError::ServerUnavailable {
                tenant: tenant.to_owned(),
                source,
            },
            CheckoutError::Internal(why) => SessionError::Internal(why),
        }
    }

    /// A failed read from the client: the one place a read error is the client's doing.
    pub fn client_read(e: ReadError) -> Self {
        match e {
            ReadError::Closed => SessionError::ClientGone,
            ReadError::Io(e) => SessionError::ClientIo(e),
            ReadError::Protocol(e) => e.into(),
        }
    }
}

impl From<ProtocolError> for SessionError {
    fn from(e: ProtocolError) -> Self {
        SessionError::Protocol(e.to_string())
    }
}

/// Sends a FATAL ErrorResponse for `error`, if it has one, without waiting long.
pub async fn report_error(stream: &mut Stream, error: &SessionError) {
    let Some((code, message)) = error.client_error() else {
        return;
    };
    let mut out = BytesMut::new();
    backend::encode_error(&mut out, "FATAL", code, &message);
    let _ = tokio::time::timeout(ERROR_WRITE_TIMEOUT, stream.write_all(&out)).await;
}
