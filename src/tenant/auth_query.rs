//! Password lookups with `auth_query`: what a cluster's dynamic tenants are checked against.
//!
//! [`AuthQuery`] owns, for one cluster, the lookup connections (a pool of one per database,
//! logged in as `auth_user`, taking its place in the budget like any tenant, reused between
//! lookups and closed by pool maintenance once idle for [`AUTH_CONNECTION_IDLE`]) and the [`VerifierCache`]: answers, including "no such
//! role", are trusted for `auth_cache_ttl`; at most `auth_cache_size` are kept (oldest
//! dropped first); concurrent misses for the same (database, user) run one query.
//!
//! The query runs over the extended protocol (Parse/Bind/Execute/Sync) with the user name
//! bound as text parameter `$1`, never spliced into SQL. Its first row's second column is
//! the stored password (SCRAM verifier, md5 hash or plaintext); no row or NULL means the
//! role does not exist or may not log in.
//!
//! Uses pools like any tenant, through `pool`; knows nothing of the tenants it checks.

use crate::config::{self, PasswordKind};
use crate::locks::lock;
use crate::net::{flush, read_message, ReadError};
use crate::pool::cluster::Cluster;
use crate::pool::{self, CheckoutError, Pool};
use crate::server::{ConnectError, ServerConn, ServerCredentials, ServerPassword, ServerTarget};
use crate::stats::{ServerRegistry, TenantStats};
use bytes::BytesMut;
use sluice_protocol::backend;
use sluice_protocol::extended::{encode_bind_text, encode_execute, encode_parse_query};
use sluice_protocol::frontend;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// How long a lookup connection may stay idle before maintenance closes it: lookups come
/// in bursts of logins, and each connection holds a place in the cluster's budget.
pub const AUTH_CONNECTION_IDLE: Duration = Duration::from_secs(5);

/// Largest result message a lookup accepts (a verifier is about 130 bytes).
const MAX_LOOKUP_MESSAGE_LEN: usize = 64 * 1024;

/// What the lookup said about a role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The stored password: a SCRAM verifier, an md5 hash or plaintext.
    Found(String),
    /// No row, or a NULL password: the role cannot log in.
    Unknown,
}

/// Why a lookup gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("could not connect as auth_user: {0}")]
    Connect(Arc<ConnectError>),
    #[error("auth_query failed: {message} (SQLSTATE {code})")]
    Query { code: String, message: String },
    #[error("auth_query returned {0} column(s); it must return (user name, password)")]
    Shape(usize),
    #[error("lookup connection failed: {0}")]
    Read(#[from] ReadError),
    #[error("{0}")]
    Internal(&'static str),
    #[error("lookup did not finish within server_connect_timeout ({0:?})")]
    Timeout(Duration),
}

impl From<std::io::Error> for LookupError {
    fn from(e: std::io::Error) -> Self {
        LookupError::Read(e.into())
    }
}

/// The lookups of one cluster with `auth_databases` set.
pub struct AuthQuery {
    cluster: Arc<Cluster>,
    user: String,
    credentials: ServerCredentials,
    query: String,
    timeout: Duration,
    cache: VerifierCache,
    /// One pool of one connection per database: lookups of a database take turns on it.
    connections: Mutex<HashMap<String, Arc<Pool>>>,
    /// Lookup connections, registered apart from every tenant's.
    servers: Arc<ServerRegistry>,
    stats: Arc<TenantStats>,
}

impl AuthQuery {
    /// `None` when the cluster has no `auth_*` settings. `timeout` bounds a whole lookup
    /// (connecting included).
    pub fn new(
        cluster: Arc<Cluster>,
        settings: &config::Cluster,
        timeout: Duration,
    ) -> Option<Self> {
        let (user, password) = (
            settings.auth_user.as_ref()?,
            settings.auth_password.as_ref()?,
        );
        let credentials = match password.password_kind() {
            PasswordKind::Md5Hash => ServerCredentials::Md5Hash(password.expose().to_owned()),
            _ => ServerCredentials::Password(ServerPassword::new(password.expose())),
        };
        Some(AuthQuery {
            cluster,
            user: user.clone(),
            credentials,
            query: settings.auth_query.clone(),
            timeout,
            cache: VerifierCache::new(settings.auth_cache_ttl, settings.auth_cache_size as usize),
            connections: Mutex::new(HashMap::new()),
            servers: Arc::new(ServerRegistry::default()),
            stats: Arc::new(TenantStats::default()),
        })
    }

    /// True when `settings` would build an identical lookup (reload keeps the cache).
    pub fn is_same(&self, settings: &config::Cluster, timeout: Duration) -> bool {
        let same_password = match (&self.credentials, &settings.auth_password) {
            (ServerCredentials::Password(p), Some(s)) => p.expose() == s.expose(),
            (ServerCredentials::Md5Hash(p), Some(s)) => p == s.expose(),
            _ => false,
        };
        settings.auth_user.as_deref() == Some(self.user.as_str())
            && same_password
            && settings.auth_query == self.query
            && self.timeout == timeout
            && self.cache.ttl == settings.auth_cache_ttl
            && self.cache.capacity == settings.auth_cache_size as usize
    }

    /// The stored password of `user` as `database` sees it: from the cache, or by running
    /// the query (once for all concurrent callers). Cancel-safe: a dropped caller leaves
    /// the lookup to the others.
    pub async fn lookup(&self, database: &str, user: &str) -> Result<Answer, LookupError> {
        let key = (database.to_owned(), user.to_owned());
        self.cache
            .get_or_fetch(key, || async {
                match tokio::time::timeout(self.timeout, self.run(database, user)).await {
                    Ok(answer) => answer,
                    Err(_) => Err(LookupError::Timeout(self.timeout)),
                }
            })
            .await
    }

    /// Closes lookup connections idle for [`AUTH_CONNECTION_IDLE`].
    pub fn close_idle(&self) {
        let connections = lock(&self.connections);
        for pool in connections.values() {
            pool.close_expired(AUTH_CONNECTION_IDLE);
        }
    }

    async fn run(&self, database: &str, user: &str) -> Result<Answer, LookupError> {
        let pool = lock(&self.connections)
            .entry(database.to_owned())
            .or_insert_with(|| self.pool(database))
            .clone();
        let mut lease = pool.checkout(self.timeout).await.map_err(|e| match e {
            CheckoutError::Timeout => LookupError::Timeout(self.timeout),
            CheckoutError::Connect(e) => LookupError::Connect(e),
            CheckoutError::Internal(why) => LookupError::Internal(why),
        })?;
        let answer = query(&mut lease, &self.query, user).await;
        if let Err(LookupError::Read(_)) = answer {
            // It failed mid-exchange, its state unknown: closed rather than reused.
            lease.close();
        }
        answer
    }

    fn pool(&self, database: &str) -> Arc<Pool> {
        let target = ServerTarget {
            host: self.cluster.host.clone(),
            port: self.cluster.port,
            database: database.to_owned(),
            user: self.user.clone(),
            credentials: self.credentials.clone(),
            connect_timeout: self.timeout,
        };
        let shared = pool::Shared {
            cluster: self.cluster.clone(),
            stats: self.stats.clone(),
            servers: self.servers.clone(),
        };
        let limits = pool::Limits {
            size: 1,
            reserve_size: 0,
            reserve_timeout: Duration::ZERO,
            lifetime: Duration::ZERO,
        };
        Pool::new(target, shared, limits)
    }
}

/// Runs `sql` with `user` as `$1` on an idle connection and reads the answer up to
/// ReadyForQuery, so the connection is idle again afterwards (also after an SQL error).
async fn query(conn: &mut ServerConn, sql: &str, user: &str) -> Result<Answer, LookupError> {
    let mut out = BytesMut::with_capacity(256);
    encode_parse_query(&mut out, b"", sql);
    encode_bind_text(&mut out, b"", b"", &[Some(user)]);
    encode_execute(&mut out, b"", 0);
    frontend::encode_sync(&mut out);
    flush(&mut conn.stream, &mut out).await?;
    let mut first_row: Option<Result<Answer, LookupError>> = None;
    let mut failed = None;
    loop {
        let (tag, body) =
            read_message(&mut conn.stream, &mut conn.read_buf, MAX_LOOKUP_MESSAGE_LEN).await?;
        match tag {
            b'D' if first_row.is_none() => {
                first_row = Some(answer_of_row(&body));
            }
            b'E' => {
                let fields = backend::parse_error_fields(&body).map_err(ReadError::from)?;
                failed = Some(LookupError::Query {
                    code: fields.code.into_owned(),
                    message: fields.message.into_owned(),
                });
            }
            b'Z' => break,
            // ParseComplete, BindComplete, further rows, CommandComplete, notices,
            // ParameterStatus: nothing to learn from them.
            _ => {}
        }
    }
    match failed {
        Some(error) => Err(error),
        None => first_row.unwrap_or(Ok(Answer::Unknown)),
    }
}

/// The answer in one DataRow of (user name, password).
fn answer_of_row(body: &[u8]) -> Result<Answer, LookupError> {
    let values = backend::parse_data_row(body).map_err(ReadError::from)?;
    if values.len() < 2 {
        return Err(LookupError::Shape(values.len()));
    }
    Ok(match values[1] {
        Some(password) if !password.is_empty() => match std::str::from_utf8(password) {
            Ok(text) => Answer::Found(text.to_owned()),
            Err(_) => Answer::Unknown,
        },
        _ => Answer::Unknown,
    })
}

type Key = (String, String);

/// Answers by (database, user), each trusted for `ttl` after it arrived, at most
/// `capacity` of them (oldest evicted first). Concurrent misses for one key share one
/// fetch; a failed fetch caches nothing.
pub struct VerifierCache {
    ttl: Duration,
    capacity: usize,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    slots: HashMap<Key, Arc<Slot>>,
    /// Slots in the order they were made; entries whose slot was replaced since are
    /// skipped when evicting.
    order: VecDeque<(Key, Arc<Slot>)>,
}

/// One lookup: empty while in flight, then the answer and when it arrived.
#[derive(Default)]
struct Slot {
    answer: OnceCell<(Answer, Instant)>,
}

impl Slot {
    fn is_expired(&self, ttl: Duration) -> bool {
        self.answer.get().is_some_and(|(_, at)| at.elapsed() >= ttl)
    }
}

impl VerifierCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        VerifierCache {
            ttl,
            capacity: capacity.max(1),
            state: Mutex::default(),
        }
    }

    /// The cached answer for `key`, or the one `fetch` gives (shared with every caller
    /// asking for `key` meanwhile).
    pub async fn get_or_fetch<F, Fut>(&self, key: Key, fetch: F) -> Result<Answer, LookupError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Answer, LookupError>>,
    {
        let slot = self.slot(key);
        let (answer, _) = slot
            .answer
            .get_or_try_init(|| async { Ok::<_, LookupError>((fetch().await?, Instant::now())) })
            .await?;
        Ok(answer.clone())
    }

    /// The live slot for `key`, made (evicting the oldest beyond capacity) if there is
    /// none or it expired.
    fn slot(&self, key: Key) -> Arc<Slot> {
        let mut state = lock(&self.state);
        if let Some(slot) = state.slots.get(&key).filter(|s| !s.is_expired(self.ttl)) {
            return slot.clone();
        }
        let slot = Arc::new(Slot::default());
        state.slots.insert(key.clone(), slot.clone());
        state.order.push_back((key, slot.clone()));
        while state.slots.len() > self.capacity {
            let Some((oldest, oldest_slot)) = state.order.pop_front() else {
                break;
            };
            if state
                .slots
                .get(&oldest)
                .is_some_and(|s| Arc::ptr_eq(s, &oldest_slot))
            {
                state.slots.remove(&oldest);
            }
        }
        // Replaced slots leave stale entries behind; drop them before they pile up.
        if state.order.len() > 2 * self.capacity {
            let CacheState { slots, order } = &mut *state;
            order.retain(|(key, slot)| slots.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)));
        }
        slot
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.state).slots.len()
    }
}

#[cfg(test)]
mod tests;
