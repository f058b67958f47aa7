//! One throwaway PostgreSQL server per test process, started on first use and shared by all
//! tests (and a second one that accepts only TLS, [`Postgres::shared_tls`], for the tests
//! of sluice's server-side TLS). Tests run in parallel and never meet: each creates its own tenants (a role and a
//! database with a unique name).
//!
//! Cleanup cannot rely on `Drop` (statics are never dropped). Instead the server runs under
//! a small `sh` watchdog ([`WATCHDOG`]) whose stdin is a pipe whose only writer is this
//! process. When the process ends — normally, by panic or by abort — the pipe closes, the
//! watchdog's `read` returns, and it stops the server (SIGINT: fast shutdown) and removes
//! the data directory. The watchdog has its own process group, so a Ctrl-C in the terminal
//! reaches the test process (whose exit then triggers the cleanup), not the watchdog.
//!
//! PostgreSQL refuses to run as root: as root, `initdb` and the watchdog (hence `postgres`)
//! run as the `postgres` OS user via `runuser`, in a temp dir owned by that user.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use sluice_protocol::scram::ScramSecret;

use super::client::{self, conninfo, Endpoint};
use super::process::{
    free_port, is_root, output_with_timeout, pg_bindir, pg_tool, poll_until, random_token, which,
};
use super::tls;

/// SCRAM iterations of the roles [`Postgres::create_tenant_group`] makes.
pub const GROUP_SCRAM_ITERATIONS: u32 = 16;

/// Login details of a tenant made by [`Postgres::create_tenant`]: a LOGIN role whose
/// password is stored as a SCRAM-SHA-256 verifier, and a database it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantDb {
    pub database: String,
    pub user: String,
    pub password: String,
}

/// The shared throwaway server; see the module docs.
pub struct Postgres {
    port: u16,
    dir: PathBuf,
    password: String,
    /// For [`Postgres::shared_tls`]: the CA that signed the server's certificate.
    tls_ca_file: Option<PathBuf>,
    watchdog: Mutex<Option<Watchdog>>,
}

struct Watchdog {
    child: Child,
    /// Held open for the life of the process; closing it stops the server.
    stdin: ChildStdin,
}

/// `$1` is the temp dir, the rest is the `postgres` command line. Starts the server, stops
/// it when stdin reaches EOF (the harness process is gone), writes `postgres.exit` when the
/// server exits (so the harness sees an early death), and removes the directory once both
/// the server and the harness are gone.
const WATCHDOG: &str = r#"
dir=$1; shift
exec 3<&0 </dev/null
"$@" 3<&- >>"$dir/postgres.log" 2>&1 &
pg=$!
( read -r _ <&3; kill -INT "$pg" 2>/dev/null ) &
reader=$!
wait "$pg"
echo "$?" >"$dir/postgres.exit"
kill "$reader" 2>/dev/null
read -r _ <&3
rm -rf "$dir"
"#;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const SQL_TIMEOUT: Duration = Duration::from_secs(60);

static SHARED: OnceLock<Result<Postgres, String>> = OnceLock::new();
static SHARED_TLS: OnceLock<Result<Postgres, String>> = OnceLock::new();
static SHARED_STANDBY: OnceLock<Result<Postgres, String>> = OnceLock::new();

/// Which kind of server [`start`] sets up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// No TLS; password (SCRAM) over TCP.
    Plain,
    /// `ssl = on` with a certificate for `localhost` and 127.0.0.1 signed by a CA of its
    /// own, listening on 127.0.0.1 and 127.0.0.2; pg_hba accepts TCP only over TLS.
    TlsOnly,
    /// A hot standby of [`Postgres::shared`], streaming from it (`pg_basebackup -R`).
    Standby,
}

impl Postgres {
    /// The server of this process, started on the first call (which blocks until it
    /// answers queries). Panics with PostgreSQL's log if it cannot be started.
    pub fn shared() -> &'static Postgres {
        match SHARED.get_or_init(|| start(Flavor::Plain)) {
            Ok(pg) => pg,
            Err(e) => panic!("the throwaway PostgreSQL did not start: {e}"),
        }
    }

    /// A second server of this process that accepts TCP clients only over TLS
    /// (`hostssl … scram-sha-256`, `hostnossl … reject`); started on the first call and
    /// cleaned up like [`Postgres::shared`]. Its certificate is for `localhost` and
    /// 127.0.0.1 (not 127.0.0.2, where it listens too: for host-name mismatches), signed
    /// by [`Postgres::tls_ca_file`]. The harness' psql reaches it with libpq's default
    /// `sslmode=prefer`; [`Postgres::superuser_client`] (no TLS) does not.
    pub fn shared_tls() -> &'static Postgres {
        match SHARED_TLS.get_or_init(|| start(Flavor::TlsOnly)) {
            Ok(pg) => pg,
            Err(e) => panic!("the throwaway TLS-only PostgreSQL did not start: {e}"),
        }
    }

    /// A hot standby of [`Postgres::shared`] (made with `pg_basebackup -R`, streaming from
    /// it, read-only: `pg_is_in_recovery()` is true), started on the first call and cleaned
    /// up like the primary. Roles and databases created on the primary appear here after
    /// the replication delay, so poll rather than expect them at once.
    pub fn shared_standby() -> &'static Postgres {
        match SHARED_STANDBY.get_or_init(|| start(Flavor::Standby)) {
            Ok(pg) => pg,
            Err(e) => panic!("the throwaway standby PostgreSQL did not start: {e}"),
        }
    }

    /// A new hot standby of [`Postgres::shared`], made like [`Postgres::shared_standby`]
    /// (`pg_basebackup -R`, streaming from the primary) but owned by the caller, for a
    /// test that changes it (e.g. promotes it): dropping it stops the server and removes
    /// its directory. Roles and databases the primary has when it is made are there at
    /// once. Panics with PostgreSQL's log if it cannot be started.
    pub fn new_standby() -> Postgres {
        start(Flavor::Standby)
            .unwrap_or_else(|e| panic!("a new standby PostgreSQL did not start: {e}"))
    }

    /// The PEM file of the CA that signed the certificate of [`Postgres::shared_tls`];
    /// `None` for a server without TLS.
    pub fn tls_ca_file(&self) -> Option<&Path> {
        self.tls_ca_file.as_deref()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Password of the superuser `postgres` (SCRAM over TCP; trust over the Unix socket).
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// A new tenant whose names start with `name` (lowercased, non-alphanumerics replaced
    /// by `_`) and end with a per-process counter, so parallel tests never collide.
    pub fn create_tenant(&self, name: &str) -> TenantDb {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let base: String = name
            .chars()
            .take(40)
            .map(|c| match c.is_ascii_alphanumeric() {
                true => c.to_ascii_lowercase(),
                false => '_',
            })
            .collect();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.create_named_tenant(&format!("{base}_{n}"), &random_token())
    }

    /// A tenant with exactly this name (role and database) and password; panics if it
    /// exists already. For the demo; tests use [`Postgres::create_tenant`].
    pub fn create_named_tenant(&self, name: &str, password: &str) -> TenantDb {
        let role = ident(name);
        self.superuser_psql(
            "postgres",
            &[
                &format!("CREATE ROLE {role} LOGIN PASSWORD {}", literal(password)),
                &format!("CREATE DATABASE {role} OWNER {role}"),
            ],
        )
        .unwrap_or_else(|e| panic!("creating tenant {name}: {e}"));
        TenantDb {
            database: name.to_owned(),
            user: name.to_owned(),
            password: password.to_owned(),
        }
    }

    /// `count` tenants sharing one new database, as in a schema-per-tenant layout: roles
    /// `<name>_<n>_<i>` with their own passwords, made in one round trip so that thousands
    /// take seconds. The passwords are stored as SCRAM verifiers of few iterations
    /// ([`GROUP_SCRAM_ITERATIONS`]): hashing thousands at PostgreSQL's 4096 would take
    /// the server longer than the test.
    pub fn create_tenant_group(&self, name: &str, count: usize) -> Vec<TenantDb> {
        let database = self.create_tenant(name).database;
        let token = random_token();
        let tenants: Vec<TenantDb> = (0..count)
            .map(|i| TenantDb {
                database: database.clone(),
                user: format!("{database}_{i}"),
                password: format!("{token}_{i}"),
            })
            .collect();
        // In chunks: one command-line argument may hold at most 128 KiB.
        let create_roles: Vec<String> = tenants
            .chunks(200)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|t| {
                        let verifier = ScramSecret::from_password(
                            &t.password,
                            t.user.as_bytes(),
                            GROUP_SCRAM_ITERATIONS,
                        );
                        format!(
                            "CREATE ROLE {} LOGIN PASSWORD {};\n",
                            ident(&t.user),
                            literal(&verifier.to_string())
                        )
                    })
                    .collect()
            })
            .collect();
        let commands: Vec<&str> = create_roles.iter().map(String::as_str).collect();
        self.superuser_psql("postgres", &commands)
            .unwrap_or_else(|e| panic!("creating tenant group {name}: {e}"));
        tenants
    }

    /// Runs `sql` (one query string) as superuser in database `postgres`; returns psql's
    /// unaligned, tuples-only output without the final newline. Panics on error.
    pub fn query_as_superuser(&self, sql: &str) -> String {
        self.query_as_superuser_in("postgres", sql)
    }

    /// [`Postgres::query_as_superuser`] in another database.
    pub fn query_as_superuser_in(&self, database: &str, sql: &str) -> String {
        self.superuser_psql(database, &[sql])
            .unwrap_or_else(|e| panic!("superuser query {sql:?} failed: {e}"))
    }

    /// A tokio-postgres connection as superuser to database `postgres`; its connection task
    /// runs on the current tokio runtime.
    pub async fn superuser_client(&self) -> tokio_postgres::Client {
        client::try_connect(self, "postgres", &self.password, "postgres")
            .await
            .unwrap_or_else(|e| panic!("superuser connection: {}", client::error_text(&e)))
    }

    /// The SCRAM-SHA-256 verifier PostgreSQL stores for `user` (`rolpassword` of pg_authid),
    /// to configure a tenant by verifier instead of plaintext.
    pub fn scram_verifier(&self, user: &str) -> String {
        let sql = format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = {}",
            literal(user)
        );
        let verifier = self.query_as_superuser(&sql);
        assert!(
            verifier.starts_with("SCRAM-SHA-256$"),
            "no SCRAM verifier stored for {user}: {verifier:?}"
        );
        verifier
    }

    /// Stops the server and removes its directory now, instead of when the process exits
    /// (or, for an owned instance, when it is dropped). A shared server is unusable
    /// afterwards: for the demo's orderly exit, not for tests.
    pub fn shutdown(&self) {
        let taken = self.watchdog.lock().ok().and_then(|mut w| w.take());
        if let Some(Watchdog { mut child, stdin }) = taken {
            drop(stdin);
            poll_until(START_TIMEOUT, Duration::from_millis(20), || {
                child.try_wait().ok().flatten()
            });
        }
    }

    fn superuser_psql(&self, database: &str, commands: &[&str]) -> Result<String, String> {
        let mut cmd = client::pg_command("psql", &self.password);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(conninfo(self, "postgres", database));
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        let out = output_with_timeout(&mut cmd, SQL_TIMEOUT);
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout)
                .trim_end_matches('\n')
                .to_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }
}

/// Stops the server of an owned instance ([`Postgres::new_standby`]). The shared ones live
/// in statics, which are never dropped: their watchdogs clean up when the process exits.
impl Drop for Postgres {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Endpoint for Postgres {
    fn socket_addr(&self) -> SocketAddr {
        self.addr()
    }
}

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal (standard_conforming_strings is on).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn start(flavor: Flavor) -> Result<Postgres, String> {
    let bindir = pg_bindir().ok_or(
        "PostgreSQL's initdb is neither on PATH nor in /usr/lib/postgresql/*/bin: \
         run scripts/ensure-deps",
    )?;
    let dir = tempfile::Builder::new()
        .prefix("sluice-pg-")
        .tempdir()
        .map_err(|e| format!("creating a temp dir: {e}"))?
        .keep();
    let started = init_and_start(&bindir, &dir, flavor);
    if started.is_err() {
        let _ = fs::remove_dir_all(&dir);
    }
    started
}

fn init_and_start(bindir: &Path, dir: &Path, flavor: Flavor) -> Result<Postgres, String> {
    let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    let primary = (flavor == Flavor::Standby).then(Postgres::shared);
    let password = primary.map_or_else(random_token, |p| p.password.clone());
    let pwfile = dir.join("pwfile");
    fs::write(&pwfile, format!("{password}\n")).map_err(io("writing pwfile"))?;
    // Written before the chown below, so the server's user owns the key (mode 0600).
    let tls_dir = dir.join("tls");
    if flavor == Flavor::TlsOnly {
        fs::create_dir(&tls_dir).map_err(io("creating the tls dir"))?;
        let ca = tls::Ca::new("sluice test CA (TLS-only PostgreSQL)");
        let other = tls::Ca::new("unrelated test CA");
        tls::write_server_files(&tls_dir, &ca, &other);
    }
    if is_root() {
        ensure_postgres_user()?;
        run(Command::new("chown").arg("-R").arg("postgres").arg(dir))?;
    }
    let data = dir.join("data");
    if let Some(primary) = primary {
        // initdb's pg_hba lets the superuser replicate over TCP with its password.
        let mut backup = as_postgres_user(&bindir.join("pg_basebackup"));
        backup
            .arg("-D")
            .arg(&data)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-R", "-X", "stream", "--no-sync", "-w"])
            // A spread checkpoint can take minutes on a server busy with other tests.
            .args(["--checkpoint", "fast"])
            .env("PGPASSWORD", &password)
            .current_dir(dir);
        run(&mut backup)?;
    } else {
        let mut initdb = as_postgres_user(&bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--pwfile"])
            .arg(&pwfile)
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(["-E", "UTF8", "--locale=C", "--no-sync"])
            .current_dir(dir);
        run(&mut initdb)?;
    }
    let _ = fs::remove_file(&pwfile);

    let port = free_port();
    let socket_dir = dir.to_string_lossy().replace('\'', "''");
    let quoted = |p: PathBuf| p.to_string_lossy().replace('\'', "''");
    let (listen, tls_settings) = match flavor {
        Flavor::Plain | Flavor::Standby => ("127.0.0.1", String::new()),
        Flavor::TlsOnly => (
            "127.0.0.1,127.0.0.2",
            format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                quoted(tls_dir.join("server.crt")),
                quoted(tls_dir.join("server.key"))
            ),
        ),
    };
    let settings = format!(
        "\n# sluice test harness\n\
         listen_addresses = '{listen}'\nport = {port}\n\
         unix_socket_directories = '{socket_dir}'\n\
         max_connections = 300\nshared_buffers = '32MB'\n\
         password_encryption = 'scram-sha-256'\n\
         fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
         log_line_prefix = '%m [%p] %q%u@%d '\nlog_connections = on\n{tls_settings}"
    );
    OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut f| f.write_all(settings.as_bytes()))
        .map_err(io("writing postgresql.conf"))?;
    if flavor == Flavor::TlsOnly {
        let hba = "# sluice test harness: TCP only over TLS\n\
                   local all all trust\n\
                   hostssl all all 127.0.0.0/8 scram-sha-256\n\
                   hostnossl all all 0.0.0.0/0 reject\n";
        fs::write(data.join("pg_hba.conf"), hba).map_err(io("writing pg_hba.conf"))?;
    }

    let watchdog_log = File::create(dir.join("watchdog.log")).map_err(io("watchdog.log"))?;
    let mut watchdog = as_postgres_user(Path::new("/bin/sh"));
    watchdog
        .args(["-c", WATCHDOG, "sluice-pg-watchdog"])
        .arg(dir)
        .arg(bindir.join("postgres"))
        .arg("-D")
        .arg(&data)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(watchdog_log)
        .process_group(0);
    let mut child = watchdog.spawn().map_err(io("starting the watchdog"))?;
    let stdin = child.stdin.take().expect("piped stdin");
    let pg = Postgres {
        port,
        dir: dir.to_path_buf(),
        password,
        tls_ca_file: (flavor == Flavor::TlsOnly).then(|| tls_dir.join("ca.pem")),
        watchdog: Mutex::new(Some(Watchdog { child, stdin })),
    };
    // On error `pg` is dropped here, which closes the pipe: the watchdog cleans up.
    pg.wait_ready().map_err(|e| {
        let watchdog = fs::read_to_string(dir.join("watchdog.log")).unwrap_or_default();
        format!("{e}\n--- postgres.log ---\n{}\n{watchdog}", pg.log())
    })?;
    Ok(pg)
}

impl Postgres {
    /// Polls `pg_isready` until the server accepts connections, then runs a real query
    /// over TCP with the superuser's SCRAM password.
    fn wait_ready(&self) -> Result<(), String> {
        let isready = pg_tool("pg_isready");
        let port = self.port.to_string();
        let ready = poll_until(START_TIMEOUT, Duration::from_millis(25), || {
            if let Ok(code) = fs::read_to_string(self.dir.join("postgres.exit")) {
                return Some(Err(format!("postgres exited with status {}", code.trim())));
            }
            let mut guard = self.watchdog.lock().ok()?;
            if let Some(Ok(Some(status))) = guard.as_mut().map(|w| w.child.try_wait()) {
                return Some(Err(format!("the watchdog exited: {status}")));
            }
            let up = Command::new(&isready)
                .args(["-q", "-t", "2", "-h", "127.0.0.1", "-p", &port])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            up.then_some(Ok(()))
        });
        ready.unwrap_or_else(|| Err(format!("not ready within {START_TIMEOUT:?}")))?;
        self.superuser_psql("postgres", &["SELECT 1"])
            .map(drop)
            .map_err(|e| format!("first query failed: {e}"))
    }
}

/// `program` as the `postgres` OS user when we are root (PostgreSQL refuses root).
fn as_postgres_user(program: &Path) -> Command {
    if !is_root() {
        return Command::new(program);
    }
    let runuser = which("runuser").unwrap_or_else(|| PathBuf::from("/usr/sbin/runuser"));
    let mut cmd = Command::new(runuser);
    cmd.args(["-u", "postgres", "--"]).arg(program);
    cmd
}

fn ensure_postgres_user() -> Result<(), String> {
    let exists = Command::new("id")
        .args(["-u", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match exists {
        true => Ok(()),
        false => run(Command::new("useradd").args(["--system", "postgres"])),
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = output_with_timeout(cmd, Duration::from_secs(120));
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{} failed ({}):\n{}{}",
            super::process::describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}
