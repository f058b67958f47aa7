//! Opening a server connection: TCP, startup packet, authentication as the tenant's role
//! (SCRAM-SHA-256, md5 or cleartext, whichever the server asks for), then the server's
//! ParameterStatus set and BackendKeyData up to the first ReadyForQuery.
//!
//! What sluice proves itself with is a [`ServerCredentials`]: a plaintext password, an md5
//! hash (answers md5 challenges), SCRAM keys recovered from a client's login (SCRAM
//! pass-through), or credentials learned from clients at login and replaced by later
//! logins ([`LearnedCredentials`]).
//!
//! Opens and logs in; takes no budget place (the pool does) and decides nothing about reuse.

use super::parameters::{Parameters, ServerParameters};
use super::statements::ServerStatements;
use super::{ServerConn, SERVER_READ_CHUNK};
use crate::config::ServerTlsMode;
use crate::locks::lock;
use crate::net::{flush, read_message, ReadError, Stream};
use crate::stats::ServerRegistry;
use crate::tls::ServerTls;
use arc_swap::ArcSwapOption;
use bytes::BytesMut;
use sluice_protocol::backend::{self, AuthRequest};
use sluice_protocol::exchange::Exchange;
use sluice_protocol::frame::MAX_LOGIN_MESSAGE_LEN;
use sluice_protocol::frontend;
use sluice_protocol::md5::md5_client_response;
use sluice_protocol::md5::md5_salted;
use sluice_protocol::scram::{server_first_salt, ScramClient, ScramKeys};
use sluice_protocol::startup::encode_ssl_request;
use sluice_protocol::startup::{encode_startup, CancelKey};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Socket options of server connections, so that a peer that vanished is noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// Idle time before the first keepalive probe; zero: no keepalive.
    pub keepalive: Duration,
    /// `TCP_USER_TIMEOUT`; zero: the kernel's default.
    pub user_timeout: Duration,
}

/// Between keepalive probes, and how many go unanswered before the connection is dropped.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 6;

impl TcpOptions {
    fn apply(&self, tcp: &TcpStream) -> std::io::Result<()> {
        let socket = socket2::SockRef::from(tcp);
        if !self.keepalive.is_zero() {
            socket.set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(self.keepalive)
                    .with_interval(KEEPALIVE_INTERVAL)
                    .with_retries(KEEPALIVE_RETRIES),
            )?;
        }
        socket.set_tcp_user_timeout(Some(self.user_timeout))
    }
}

/// Where and as whom a tenant's server connections log in.
#[derive(Clone)]
pub struct ServerTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub credentials: ServerCredentials,
    pub connect_timeout: Duration,
}

/// What sluice proves the role's identity to the server with.
#[derive(Clone)]
pub enum ServerCredentials {
    /// Nothing: works only with `trust`.
    None,
    /// The plaintext password: answers every method.
    Password(Arc<ServerPassword>),
    /// A stored md5 hash (`md5…`): answers an md5 challenge, nothing else.
    Md5Hash(String),
    /// ClientKey and ServerKey of the role's SCRAM verifier: answer SCRAM only, and only
    /// while the server keeps that verifier.
    ScramKeys(ScramKeys),
    /// Whatever the latest client login left (SCRAM keys from its proof, or the md5 hash
    /// it was checked against); nothing until a client has logged in.
    Learned(Arc<LearnedCredentials>),
}

/// A plaintext server password, with the SCRAM keys last derived from it: PBKDF2 runs once
/// per salt and iteration count, not once per server connection.
pub struct ServerPassword {
    text: String,
    derived: Mutex<Option<DerivedKeys>>,
}

struct DerivedKeys {
    salt: Vec<u8>,
    iterations: u32,
    keys: ScramKeys,
}

impl ServerPassword {
    pub fn new(text: impl Into<String>) -> Arc<Self> {
        Arc::new(ServerPassword {
            text: text.into(),
            derived: Mutex::new(None),
        })
    }

    /// The password itself. Do not log it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The SCRAM keys of this password under `salt` and `iterations`, derived only when
    /// they differ from the last ones.
    fn scram_keys(&self, salt: &[u8], iterations: u32) -> ScramKeys {
        let cached = lock(&self.derived);
        if let Some(derived) = cached
            .as_ref()
            .filter(|d| d.salt == salt && d.iterations == iterations)
        {
            return derived.keys.clone();
        }
        drop(cached);
        // Derived outside the lock: PBKDF2 takes milliseconds.
        let keys = ScramKeys::from_password(&self.text, salt, iterations);
        *lock(&self.derived) = Some(DerivedKeys {
            salt: salt.to_vec(),
            iterations,
            keys: keys.clone(),
        });
        keys
    }
}

/// Credentials learned from clients at login, shared between a tenant's login path and
/// its pool, so new server connections use what the latest login proved.
#[derive(Default)]
pub struct LearnedCredentials(ArcSwapOption<ServerCredentials>);

impl LearnedCredentials {
    /// Replaces what was learned before; `learned` must not itself be `Learned`.
    pub fn learn(&self, learned: ServerCredentials) {
        debug_assert!(!matches!(learned, ServerCredentials::Learned(_)));
        let unchanged = self
            .0
            .load()
            .as_deref()
            .is_some_and(|c| c.same_as(&learned));
        if !unchanged {
            self.0.store(Some(Arc::new(learned)));
        }
    }

    fn current(&self) -> ServerCredentials {
        self.0
            .load_full()
            .map_or(ServerCredentials::None, |c| (*c).clone())
    }
}

impl ServerCredentials {
    /// The credentials to log in with now: a `Learned` resolved to what it holds.
    fn resolve(&self) -> ServerCredentials {
        match self {
            ServerCredentials::Learned(learned) => learned.current(),
            other => other.clone(),
        }
    }

    fn same_as(&self, other: &ServerCredentials) -> bool {
        match (self, other) {
            (ServerCredentials::Md5Hash(a), ServerCredentials::Md5Hash(b)) => a == b,
            (ServerCredentials::ScramKeys(a), ServerCredentials::ScramKeys(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Debug for ServerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

/// Why a server connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `target` is the server as "user@host:port/database".
    #[error("could not connect to {target}: {source}")]
    Io {
        target: String,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    Timeout(String),
    #[error("server refused login: {message} (SQLSTATE {code})")]
    Rejected { code: String, message: String },
    #[error("server asks for a password but none is configured for this tenant")]
    NoPassword,
    #[error("server asks for {method} but sluice knows only {known} for this role")]
    CredentialsUnsuitable {
        method: &'static str,
        known: &'static str,
    },
    #[error("server asks for an unsupported authentication method ({0})")]
    UnsupportedAuth(String),
    #[error("server login failed: {0}")]
    Protocol(String),
    #[error("server login failed: {0}")]
    Read(#[from] ReadError),
    #[error("TLS to the server failed: {0}")]
    Tls(String),
}

impl From<std::io::Error> for ConnectError {
    fn from(e: std::io::Error) -> Self {
        ConnectError::Read(e.into())
    }
}

/// Opens and authenticates one server connection, within `target.connect_timeout`.
pub async fn connect(
    target: &ServerTarget,
    tls: Option<Arc<ServerTls>>,
    tcp: TcpOptions,
    registry: &Arc<ServerRegistry>,
) -> Result<ServerConn, ConnectError> {
    let opened = login(target, tls, tcp, registry);
    match tokio::time::timeout(target.connect_timeout, opened).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout(format!("{target:?}"))),
    }
}

async fn login(
    target: &ServerTarget,
    tls: Option<Arc<ServerTls>>,
    tcp_options: TcpOptions,
    registry: &Arc<ServerRegistry>,
) -> Result<ServerConn, ConnectError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| ConnectError::Io {
            target: format!("{target:?}"),
            source,
        })?;
    tcp.set_nodelay(true)?;
    tcp_options.apply(&tcp)?;
    let addr = tcp.peer_addr()?;
    let mut stream = match tls {
        Some(tls) => negotiate_tls(tcp, &tls).await?,
        None => Stream::Plain(tcp),
    };

    let mut out = BytesMut::with_capacity(256);
    encode_startup(
        &mut out,
        &[("user", &target.user), ("database", &target.database)],
    );
    flush(&mut stream, &mut out).await?;

    let mut buf = BytesMut::with_capacity(SERVER_READ_CHUNK);
    authenticate(&mut stream, &mut buf, &mut out, target).await?;

    let mut parameters = Parameters::default();
    let mut cancel_key = None;
    loop {
        let (tag, body) = read_message(&mut stream, &mut buf, MAX_LOGIN_MESSAGE_LEN).await?;
        match tag {
            b'S' => {
                let (name, value) = backend::parse_parameter_status(&body).map_err(protocol)?;
                parameters.set(name, value);
            }
            b'K' => cancel_key = Some(backend::parse_backend_key_data(&body).map_err(protocol)?),
            b'Z' => break,
            b'E' => return Err(rejected(&body)),
            b'N' => {}
            other => {
                return Err(ConnectError::Protocol(format!(
                    "unexpected message '{}' during login",
                    other.escape_ascii()
                )))
            }
        }
    }
    let cancel_key: CancelKey =
        cancel_key.ok_or_else(|| ConnectError::Protocol("server sent no BackendKeyData".into()))?;
    let entry = registry.register(addr, cancel_key.pid);
    Ok(ServerConn {
        entry,
        stream,
        read_buf: buf,
        cancel_key,
        addr,
        params: ServerParameters::new(parameters),
        statements: ServerStatements::new(),
        exchange: Exchange::new(),
        opened_at: Instant::now(),
    })
}

/// Asks the server for TLS (SSLRequest) and reads exactly its one-byte answer, so no
/// plaintext can be slipped in ahead of the handshake (CVE-2021-23222); then performs
/// the handshake, or stays plain under `prefer` when the server declines.
async fn negotiate_tls(mut tcp: TcpStream, tls: &ServerTls) -> Result<Stream, ConnectError> {
    let mut out = BytesMut::with_capacity(8);
    encode_ssl_request(&mut out);
    tcp.write_all(&out).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match (answer[0], tls.mode) {
        (b'S', _) => {
            let connected = tls.connector.connect(tls.name.clone(), tcp).await;
            let stream = connected.map_err(|e| ConnectError::Tls(e.to_string()))?;
            Ok(Stream::ServerTls(Box::new(stream)))
        }
        (b'N', ServerTlsMode::Prefer) => Ok(Stream::Plain(tcp)),
        (b'N', _) => Err(ConnectError::Tls(
            "the server does not accept TLS, which this cluster's tls setting requires".into(),
        )),
        (other, _) => Err(ConnectError::Protocol(format!(
            "unexpected answer '{}' to SSLRequest",
            other.escape_ascii()
        ))),
    }
}

async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    target: &ServerTarget,
) -> Result<(), ConnectError> {
    let credentials = target.credentials.resolve();
    let mut scram: Option<ScramClient> = None;
    let nonce = crate::random::bytes::<18>();
    loop {
        let (tag, body) = read_message(stream, buf, MAX_LOGIN_MESSAGE_LEN).await?;
        match tag {
            b'R' => {}
            b'E' => return Err(rejected(&body)),
            other => {
                return Err(ConnectError::Protocol(format!(
                    "expected an authentication request, got '{}'",
                    other.escape_ascii()
                )))
            }
        }
        match backend::parse_auth_request(&body).map_err(protocol)? {
            AuthRequest::Ok => return Ok(()),
            AuthRequest::Cleartext => {
                let ServerCredentials::Password(password) = &credentials else {
                    return Err(unsuitable("a cleartext password", &credentials));
                };
                frontend::encode_password(out, password.expose().as_bytes());
            }
            AuthRequest::Md5 { salt } => {
                let response = match &credentials {
                    ServerCredentials::Password(password) => {
                        md5_client_response(&target.user, password.expose(), salt)
                    }
                    ServerCredentials::Md5Hash(hash) => md5_salted(hash, salt),
                    other => return Err(unsuitable("md5", other)),
                };
                frontend::encode_password(out, response.as_bytes());
            }
            AuthRequest::Sasl { mechanisms } => {
                if !mechanisms.contains(&"SCRAM-SHA-256") {
                    return Err(ConnectError::UnsupportedAuth(format!(
                        "SASL mechanisms {mechanisms:?}"
                    )));
                }
                let client = match &credentials {
                    ServerCredentials::Password(password) => {
                        ScramClient::new(password.expose(), &nonce)
                    }
                    ServerCredentials::ScramKeys(keys) => {
                        ScramClient::with_keys(keys.clone(), &nonce)
                    }
                    other => return Err(unsuitable("SCRAM-SHA-256", other)),
                };
                frontend::encode_sasl_initial_response(
                    out,
                    "SCRAM-SHA-256",
                    &client.client_first(),
                );
                scram = Some(client);
            }
            AuthRequest::SaslContinue(data) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| ConnectError::Protocol("SASLContinue before SASL".into()))?;
                if let ServerCredentials::Password(password) = &credentials {
                    // The same nonce makes the same client-first-message, so the exchange
                    // continues with the keys instead of deriving them again.
                    let (salt, iterations) = server_first_salt(data).map_err(protocol)?;
                    let keys = password.scram_keys(&salt, iterations);
                    *client = ScramClient::with_keys(keys, &nonce);
                }
                let reply = client.server_first(data).map_err(protocol)?;
                frontend::encode_sasl_response(out, &reply);
            }
            AuthRequest::SaslFinal(data) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| ConnectError::Protocol("SASLFinal before SASL".into()))?;
                client.server_final(data).map_err(protocol)?;
                continue;
            }
            AuthRequest::Unsupported(code) => {
                return Err(ConnectError::UnsupportedAuth(format!(
                    "authentication request code {code}"
                )))
            }
        }
        flush(stream, out).await?;
    }
}

/// The server asked for `method`, which `credentials` cannot answer.
fn unsuitable(method: &'static str, credentials: &ServerCredentials) -> ConnectError {
    let known = match credentials {
        ServerCredentials::None | ServerCredentials::Learned(_) => return ConnectError::NoPassword,
        ServerCredentials::Password(_) => "a password",
        ServerCredentials::Md5Hash(_) => "an md5 hash",
        ServerCredentials::ScramKeys(_) => "SCRAM keys",
    };
    ConnectError::CredentialsUnsuitable { method, known }
}

fn rejected(body: &[u8]) -> ConnectError {
    match backend::parse_error_fields(body) {
        Ok(fields) => ConnectError::Rejected {
            code: fields.code.into_owned(),
            message: fields.message.into_owned(),
        },
        Err(e) => protocol(e),
    }
}

fn protocol(e: impl std::fmt::Display) -> ConnectError {
    ConnectError::Protocol(e.to_string())
}

#[cfg(test)]
mod tests;
