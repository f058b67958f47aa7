//! [`SluiceConfig`]: builds the TOML file of the config contract (shared/PRODUCT.md,
//! "Interfaces"), plus the command-line arguments and environment the process is started
//! with. Optional keys are rendered only when set, so a test states exactly what it
//! configures and sluice's defaults apply to the rest. Raw TOML lines cover keys the typed
//! fields do not know yet.

use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use super::postgres::{Postgres, TenantDb};
use super::process::free_port;

/// Everything about one sluice process: its config file and how it is started.
#[derive(Clone, Debug)]
pub struct SluiceConfig {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// `client_login_timeout`, e.g. `"1s"`.
    pub client_login_timeout: Option<String>,
    /// `shutdown_timeout` (the SIGTERM drain), e.g. `"5s"`.
    pub shutdown_timeout: Option<String>,
    /// Raw `key = value` lines placed at the top level (before any table).
    pub top: Vec<String>,
    pub admins: Vec<Admin>,
    pub defaults: Defaults,
    pub clusters: Vec<Cluster>,
    pub tenants: Vec<Tenant>,
    /// Raw TOML appended at the end of the file (whole tables, e.g. `[tls]`).
    pub tail: Vec<String>,
    /// Extra command-line arguments after `--config <file>`.
    pub args: Vec<String>,
    /// Extra environment variables (e.g. `SLUICE_…` overrides).
    pub env: Vec<(String, String)>,
}

/// An `[[admins]]` entry.
#[derive(Clone, Debug)]
pub struct Admin {
    pub user: String,
    pub password: String,
}

/// `[defaults]`, inherited by every tenant.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub pool_mode: Option<String>,
    pub pool_size: Option<u32>,
    pub min_pool_size: Option<u32>,
    pub max_client_connections: Option<u32>,
    pub query_wait_timeout: Option<String>,
    pub server_connect_timeout: Option<String>,
    pub auth_type: Option<String>,
    /// Raw `key = value` lines.
    pub extra: Vec<String>,
}

/// A `[clusters.<name>]` table.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub max_server_connections: Option<u32>,
    /// Raw `key = value` lines.
    pub extra: Vec<String>,
}

/// A `[[tenants]]` entry. `password` is the plaintext or a SCRAM verifier.
#[derive(Clone, Debug, Default)]
pub struct Tenant {
    pub database: String,
    pub user: String,
    pub cluster: String,
    pub password: Option<String>,
    pub pool_mode: Option<String>,
    pub pool_size: Option<u32>,
    pub min_pool_size: Option<u32>,
    pub max_client_connections: Option<u32>,
    pub query_wait_timeout: Option<String>,
    pub server_connect_timeout: Option<String>,
    pub auth_type: Option<String>,
    /// Upstream database/role/password; sluice defaults them to database, user, password.
    pub server_database: Option<String>,
    pub server_user: Option<String>,
    pub server_password: Option<String>,
    /// Raw `key = value` lines.
    pub extra: Vec<String>,
}

/// Budget of the `main` cluster unless a test sets one: small, because tests run in
/// parallel against one PostgreSQL with `max_connections = 300`.
pub const DEFAULT_MAX_SERVER_CONNECTIONS: u32 = 40;

impl SluiceConfig {
    /// Free ports for `listen` and `metrics_listen`, and cluster `main` pointing at `pg`.
    pub fn new(pg: &Postgres) -> SluiceConfig {
        let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        SluiceConfig {
            listen: local(free_port()),
            metrics_listen: local(free_port()),
            client_login_timeout: None,
            shutdown_timeout: None,
            top: Vec::new(),
            admins: Vec::new(),
            defaults: Defaults::default(),
            clusters: vec![Cluster {
                name: "main".into(),
                host: "127.0.0.1".into(),
                port: pg.port(),
                max_server_connections: Some(DEFAULT_MAX_SERVER_CONNECTIONS),
                extra: Vec::new(),
            }],
            tenants: Vec::new(),
            tail: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn tenant(mut self, tenant: Tenant) -> Self {
        self.tenants.push(tenant);
        self
    }

    pub fn admin(mut self, user: &str, password: &str) -> Self {
        self.admins.push(Admin {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Adds a `[clusters.NAME]` table.
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.clusters.push(cluster);
        self
    }

    /// `client_tls = mode` (`"disable"`, `"allow"`, `"require"`) with the certificate
    /// chain and key files.
    pub fn client_tls(self, mode: &str, cert_file: &Path, key_file: &Path) -> Self {
        let path = |p: &Path| quote(&p.to_string_lossy());
        self.top_line(&format!("client_tls = {}", quote(mode)))
            .top_line(&format!("client_tls_cert_file = {}", path(cert_file)))
            .top_line(&format!("client_tls_key_file = {}", path(key_file)))
    }

    /// Sets `max_server_connections` of cluster `main`.
    pub fn max_server_connections(mut self, n: u32) -> Self {
        self.cluster_mut("main").max_server_connections = Some(n);
        self
    }

    /// A raw top-level line, for keys without a field here.
    pub fn top_line(mut self, line: &str) -> Self {
        self.top.push(line.into());
        self
    }

    /// Raw TOML appended at the end of the file.
    pub fn tail(mut self, toml: &str) -> Self {
        self.tail.push(toml.into());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The cluster called `name`; panics if there is none.
    pub fn cluster_mut(&mut self, name: &str) -> &mut Cluster {
        self.clusters
            .iter_mut()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name} in the config"))
    }

    /// The config file's text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        line(&mut s, "listen", &quote(&self.listen.to_string()));
        let metrics = quote(&self.metrics_listen.to_string());
        line(&mut s, "metrics_listen", &metrics);
        let login = self.client_login_timeout.as_deref().map(quote);
        opt(&mut s, "client_login_timeout", login);
        opt(
            &mut s,
            "shutdown_timeout",
            self.shutdown_timeout.as_deref().map(quote),
        );
        raw(&mut s, &self.top);
        for admin in &self.admins {
            s.push_str("\n[[admins]]\n");
            line(&mut s, "user", &quote(&admin.user));
            line(&mut s, "password", &quote(&admin.password));
        }
        s.push_str("\n[defaults]\n");
        let d = &self.defaults;
        opt(&mut s, "pool_mode", d.pool_mode.as_deref().map(quote));
        opt(&mut s, "pool_size", d.pool_size);
        opt(&mut s, "min_pool_size", d.min_pool_size);
        opt(&mut s, "max_client_connections", d.max_client_connections);
        let wait = d.query_wait_timeout.as_deref().map(quote);
        opt(&mut s, "query_wait_timeout", wait);
        let connect = d.server_connect_timeout.as_deref().map(quote);
        opt(&mut s, "server_connect_timeout", connect);
        opt(&mut s, "auth_type", d.auth_type.as_deref().map(quote));
        raw(&mut s, &d.extra);
        for c in &self.clusters {
            let _ = writeln!(s, "\n[clusters.{}]", key(&c.name));
            line(&mut s, "host", &quote(&c.host));
            line(&mut s, "port", &c.port);
            opt(&mut s, "max_server_connections", c.max_server_connections);
            raw(&mut s, &c.extra);
        }
        for t in &self.tenants {
            t.render(&mut s);
        }
        for chunk in &self.tail {
            s.push('\n');
            s.push_str(chunk);
            s.push('\n');
        }
        s
    }
}

impl Cluster {
    /// Cluster `name` at `host:port` with a small connection budget (tests share the
    /// servers).
    pub fn new(name: &str, host: &str, port: u16) -> Cluster {
        Cluster {
            name: name.into(),
            host: host.into(),
            port,
            max_server_connections: Some(10),
            extra: Vec::new(),
        }
    }

    /// `tls = mode` (`"disable"`, `"prefer"`, `"require"`, `"verify-ca"`, `"verify-full"`).
    pub fn tls(self, mode: &str) -> Self {
        self.line(&format!("tls = {}", quote(mode)))
    }

    /// `tls_ca_file = path`.
    pub fn tls_ca_file(self, path: &Path) -> Self {
        self.line(&format!("tls_ca_file = {}", quote(&path.to_string_lossy())))
    }

    /// A raw `key = value` line in this cluster's table.
    pub fn line(mut self, line: &str) -> Self {
        self.extra.push(line.into());
        self
    }
}

impl Tenant {
    /// Tenant `db` on cluster `main`, configured with its plaintext password.
    pub fn new(db: &TenantDb) -> Tenant {
        Tenant {
            database: db.database.clone(),
            user: db.user.clone(),
            cluster: "main".into(),
            password: Some(db.password.clone()),
            ..Tenant::default()
        }
    }

    /// Plaintext or SCRAM verifier (`Postgres::scram_verifier`).
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.into());
        self
    }

    /// `"transaction"` or `"session"`.
    pub fn pool_mode(mut self, mode: &str) -> Self {
        self.pool_mode = Some(mode.into());
        self
    }

    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = Some(n);
        self
    }

    pub fn min_pool_size(mut self, n: u32) -> Self {
        self.min_pool_size = Some(n);
        self
    }

    pub fn max_client_connections(mut self, n: u32) -> Self {
        self.max_client_connections = Some(n);
        self
    }

    /// A duration such as `"2s"` or `"500ms"`.
    pub fn query_wait_timeout(mut self, timeout: &str) -> Self {
        self.query_wait_timeout = Some(timeout.into());
        self
    }

    /// `"scram-sha-256"` or `"md5"`.
    pub fn auth_type(mut self, auth: &str) -> Self {
        self.auth_type = Some(auth.into());
        self
    }

    pub fn server_connect_timeout(mut self, timeout: &str) -> Self {
        self.server_connect_timeout = Some(timeout.into());
        self
    }

    pub fn server_database(mut self, database: &str) -> Self {
        self.server_database = Some(database.into());
        self
    }

    pub fn server_user(mut self, user: &str) -> Self {
        self.server_user = Some(user.into());
        self
    }

    pub fn server_password(mut self, password: &str) -> Self {
        self.server_password = Some(password.into());
        self
    }

    /// A raw `key = value` line in this tenant's table.
    pub fn line(mut self, line: &str) -> Self {
        self.extra.push(line.into());
        self
    }

    fn render(&self, s: &mut String) {
        s.push_str("\n[[tenants]]\n");
        line(s, "database", &quote(&self.database));
        line(s, "user", &quote(&self.user));
        line(s, "cluster", &quote(&self.cluster));
        opt(s, "password", self.password.as_deref().map(quote));
        opt(s, "pool_mode", self.pool_mode.as_deref().map(quote));
        opt(s, "pool_size", self.pool_size);
        opt(s, "min_pool_size", self.min_pool_size);
        opt(s, "max_client_connections", self.max_client_connections);
        let wait = self.query_wait_timeout.as_deref().map(quote);
        opt(s, "query_wait_timeout", wait);
        let connect = self.server_connect_timeout.as_deref().map(quote);
        opt(s, "server_connect_timeout", connect);
        opt(s, "auth_type", self.auth_type.as_deref().map(quote));
        let server_db = self.server_database.as_deref().map(quote);
        opt(s, "server_database", server_db);
        opt(s, "server_user", self.server_user.as_deref().map(quote));
        let server_pw = self.server_password.as_deref().map(quote);
        opt(s, "server_password", server_pw);
        raw(s, &self.extra);
    }
}

/// A TOML basic string.
pub fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key: bare when it can be, else quoted.
pub fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match bare {
        true => k.to_owned(),
        false => quote(k),
    }
}

fn line(s: &mut String, key: &str, value: &dyn std::fmt::Display) {
    let _ = writeln!(s, "{key} = {value}");
}

fn opt<T: std::fmt::Display>(s: &mut String, key: &str, value: Option<T>) {
    if let Some(v) = value {
        line(s, key, &v);
    }
}

fn raw(s: &mut String, lines: &[String]) {
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
}
