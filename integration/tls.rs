//! TLS on both sides of sluice.
//!
//! Clients → sluice (`client_tls`): psql with `sslmode=require` / `verify-full` (libpq is
//! the reference client; tokio-postgres has no TLS without extra crates), plaintext refused
//! or accepted by mode, plaintext cancel requests, the bytes-after-SSLRequest injection
//! (CVE-2021-23214) refused, direct TLS (PostgreSQL 17's `sslnegotiation=direct`, ALPN
//! "postgresql") with a rustls client, certificate chains and SEC1 keys, certificates
//! re-read on SIGHUP / RELOAD (a broken one is not), missing files, and SIGTERM draining a
//! TLS client.
//!
//! sluice → PostgreSQL (`[clusters.NAME] tls`, `tls_ca_file`): against the harness' second,
//! TLS-only server ([`Postgres::shared_tls`]), the plain first one and a fake server, every
//! mode, with the right CA, a wrong CA and a host name the certificate does not cover,
//! plaintext injected after the server's 'S' (CVE-2021-23222), and the CA file re-read on
//! reload; a server connection that fails fails only its client.
//!
//! The `harness_*` tests check the harness' own TLS material without sluice.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::Client;

use crate::common::{
    assert_alive, console, console_login, http_get, refused_login, scalar, wait_until_running,
    PROMPTLY,
};
use crate::harness::{
    connect, error_text, pg_command, psql_with, sqlstate, tls_client, Ca, Cluster, Postgres,
    Sluice, SluiceConfig, Tenant, TenantDb, TlsFiles,
};
use crate::raw::{
    cancel_request, error_fields, field, md5_response, message, query, startup_packet, Next,
    RawConn, READ_TIMEOUT,
};

/// The SSLRequest packet: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

const ADMIN: &str = "tls_admin";
const ADMIN_PASSWORD: &str = "tls-admin-secret";

// ---------------------------------------------------------------------------------------
// Helpers.

/// A sluice with `client_tls = mode` and the certificate of `files`, serving `tenants`
/// on the plain PostgreSQL.
fn client_tls_sluice(mode: &str, files: &TlsFiles, tenants: &[&TenantDb]) -> Sluice {
    let mut config = SluiceConfig::new(Postgres::shared())
        .admin(ADMIN, ADMIN_PASSWORD)
        .client_tls(mode, &files.cert_file(), &files.key_file());
    for tenant in tenants {
        config = config.tenant(Tenant::new(tenant).auth_type("md5"));
    }
    Sluice::start(&config)
}

/// libpq options for a verified connection to `localhost` (at 127.0.0.1) trusting `ca`.
fn verify_full(ca: &Path) -> String {
    format!(
        "sslmode=verify-full sslrootcert='{}' host=localhost hostaddr=127.0.0.1",
        ca.display()
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// psql as `tenant` through `sluice` with the libpq options `extra`: `SELECT current_user`
/// and `\conninfo`. Returns (success, stdout, stderr).
fn psql_tls(sluice: &Sluice, tenant: &TenantDb, extra: &str) -> (bool, String, String) {
    let out = psql_with(
        sluice,
        &tenant.user,
        &tenant.password,
        &tenant.database,
        extra,
        &["SELECT current_user", "\\conninfo"],
    );
    (out.status.success(), stdout(&out), stderr(&out))
}

/// psql with `extra` must log in over TLS as `tenant`.
#[track_caller]
fn assert_tls_login(sluice: &Sluice, tenant: &TenantDb, extra: &str) {
    let (ok, out, err) = psql_tls(sluice, tenant, extra);
    assert!(
        ok,
        "psql with {extra:?} failed:\n{err}\n--- sluice log ---\n{}",
        sluice.log()
    );
    assert!(
        out.lines().next() == Some(tenant.user.as_str()),
        "current_user over TLS: {out:?}"
    );
    assert!(
        out.contains("SSL connection"),
        "psql with {extra:?} is not on TLS: {out:?}"
    );
}

/// psql with `extra` must fail; returns its stderr.
#[track_caller]
fn assert_psql_refused(sluice: &Sluice, tenant: &TenantDb, extra: &str) -> String {
    let (ok, out, err) = psql_tls(sluice, tenant, extra);
    assert!(!ok, "psql with {extra:?} logged in: {out}");
    err
}

/// A wire-protocol client over any stream (here: TLS), just enough for an md5 login and
/// simple queries.
struct Wire<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    fn new(stream: S) -> Wire<S> {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// The next message or EOF (a TLS error or reset after the peer closed counts as EOF),
    /// within [`READ_TIMEOUT`].
    async fn next(&mut self) -> Next {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes"));
                let total = 1 + len as usize;
                if self.buf.len() >= total {
                    let rest = self.buf.split_off(total);
                    let whole = std::mem::replace(&mut self.buf, rest);
                    return Next::Message(whole[0], whole[5..].to_vec());
                }
            }
            let mut chunk = [0u8; 8192];
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("nothing from sluice within {READ_TIMEOUT:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return Next::Eof,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn expect_message(&mut self) -> (u8, Vec<u8>) {
        match self.next().await {
            Next::Message(tag, body) => (tag, body),
            Next::Eof => panic!("connection closed where a message was expected"),
        }
    }

    /// Startup and md5 login as `tenant`, up to ReadyForQuery; returns the cancel key
    /// (BackendKeyData: pid, secret).
    async fn login_md5(&mut self, tenant: &TenantDb) -> (i32, i32) {
        self.send(&startup_packet(&tenant.user, &tenant.database))
            .await;
        let (tag, body) = self.expect_message().await;
        assert_eq!(
            (tag, body.get(..4)),
            (b'R', Some(&5u32.to_be_bytes()[..])),
            "expected AuthenticationMD5Password, got {tag:?} {:?}",
            error_fields(&body)
        );
        let salt: [u8; 4] = body[4..8].try_into().expect("salt");
        let mut response = md5_response(&tenant.user, &tenant.password, salt).into_bytes();
        response.push(0);
        self.send(&message(b'p', &response)).await;
        let mut key = None;
        loop {
            match self.expect_message().await {
                (b'Z', _) => return key.expect("BackendKeyData"),
                (b'E', body) => panic!("login failed: {:?}", error_fields(&body)),
                (b'K', body) => {
                    let int = |at: usize| {
                        i32::from_be_bytes(body[at..at + 4].try_into().expect("4 bytes"))
                    };
                    key = Some((int(0), int(4)));
                }
                _ => {}
            }
        }
    }

    /// The first column of the first row of simple query `sql`.
    async fn scalar(&mut self, sql: &str) -> String {
        self.send(&query(sql)).await;
        let mut first = None;
        loop {
            match self.expect_message().await {
                (b'E', body) => panic!("{sql}: {:?}", error_fields(&body)),
                (b'D', body) if first.is_none() => {
                    let len = i32::from_be_bytes(body[2..6].try_into().expect("4 bytes"));
                    first = Some(String::from_utf8_lossy(&body[6..6 + len as usize]).into());
                }
                (b'Z', _) => return first.unwrap_or_else(|| panic!("{sql}: no row")),
                _ => {}
            }
        }
    }
}

/// A TLS connection to sluice negotiated with an SSLRequest, trusting `ca`.
async fn ssl_request_connect(
    sluice: &Sluice,
    ca: &Ca,
) -> Wire<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(sluice.addr()).await.expect("connect");
    tcp.write_all(&SSL_REQUEST).await.expect("SSLRequest");
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .expect("SSLRequest answer");
    assert_eq!(answer[0], b'S', "SSLRequest answered with {:?}", answer[0]);
    let tls = tls_client(tcp, &[ca.der()], "localhost", &[])
        .await
        .unwrap_or_else(|e| panic!("TLS handshake after SSLRequest: {e}"));
    Wire::new(tls)
}

// ---------------------------------------------------------------------------------------
// The harness' own TLS material, checked without sluice (so a failure below is not blamed
// on it).

/// The chain and SEC1 key of [`Leaf`] load into rustls and verify against the root only;
/// a client trusting another CA refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_tls_material_works_with_rustls() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let root = Ca::new("harness check CA");
    let leaf = root.issue_via_intermediate(&["localhost", "127.0.0.1"]);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain PEM");
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    for key_pem in [leaf.key_pem.clone(), leaf.sec1_key_pem()] {
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key)
            .unwrap_or_else(|e| panic!("rustls refuses the certificate and key: {e}"));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.expect("accept");
                let _ = acceptor.accept(tcp).await;
            }
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tls_client(tcp, &[root.der()], "localhost", &[])
            .await
            .expect("handshake trusting the root");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let other = Ca::new("other");
        let refused = tls_client(tcp, &[other.der()], "localhost", &[]).await;
        assert!(refused.is_err(), "a client trusting another CA accepted it");
        server.await.expect("server task");
    }
}

/// The TLS-only PostgreSQL: libpq (OpenSSL) verifies its certificate for localhost and
/// 127.0.0.1, not for 127.0.0.2; plaintext TCP is rejected by pg_hba.
#[test]
fn harness_tls_only_postgres_takes_only_tls() {
    let pg = Postgres::shared_tls();
    let tenant = pg.create_tenant("harness_tls_pg");
    let ca = pg.tls_ca_file().expect("CA file");
    let run = |to: std::net::SocketAddr, extra: &str| {
        let out = psql_with(
            &to,
            &tenant.user,
            &tenant.password,
            &tenant.database,
            extra,
            &["SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
        );
        (out.status.success(), stdout(&out), stderr(&out))
    };
    let (ok, out, err) = run(pg.addr(), &verify_full(ca));
    assert!(ok && out.trim() == "t", "verify-full: {out}{err}");
    let (ok, _, err) = run(pg.addr(), "sslmode=disable");
    assert!(!ok && err.contains("no encryption"), "plaintext: {err}");
    let other_ip = std::net::SocketAddr::from(([127, 0, 0, 2], pg.port()));
    let ca_only = format!("sslmode=verify-ca sslrootcert='{}'", ca.display());
    let (ok, out, err) = run(other_ip, &ca_only);
    assert!(
        ok && out.trim() == "t",
        "verify-ca at 127.0.0.2: {out}{err}"
    );
    let full = format!("sslmode=verify-full sslrootcert='{}'", ca.display());
    let (ok, _, err) = run(other_ip, &full);
    assert!(
        !ok,
        "verify-full at 127.0.0.2 accepted a certificate without that name"
    );
    assert!(err.contains("127.0.0.2"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Clients → sluice.

#[test]
fn psql_logs_in_with_sslmode_require_and_verify_full() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_psql");
    let files = TlsFiles::new();
    let mut sluice = client_tls_sluice("require", &files, &[&tenant]);

    assert_tls_login(&sluice, &tenant, "sslmode=require");
    assert_tls_login(&sluice, &tenant, &verify_full(&files.ca_file()));
    // The certificate names 127.0.0.1 too (libpq checks IP SANs since PostgreSQL 14).
    let by_ip = format!(
        "sslmode=verify-full sslrootcert='{}'",
        files.ca_file().display()
    );
    assert_tls_login(&sluice, &tenant, &by_ip);

    // A client that does not trust sluice's CA gives up in the handshake.
    let err = assert_psql_refused(&sluice, &tenant, &verify_full(&files.other_ca_file()));
    assert!(err.contains("certificate verify failed"), "{err}");
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_under_require_with_28000() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_require_plain");
    let files = TlsFiles::new();
    let mut sluice = client_tls_sluice("require", &files, &[&tenant]);

    // A startup packet without SSLRequest: FATAL 28000 before any authentication request.
    let mut raw = RawConn::connect(sluice.addr()).await;
    raw.send(&startup_packet(&tenant.user, &tenant.database))
        .await;
    let text = raw.expect_error_then_eof("28000").await;
    let lower = text.to_lowercase();
    assert!(
        lower.contains("tls") || lower.contains("ssl"),
        "the refusal does not mention TLS: {text:?}"
    );

    // The same through tokio-postgres (no TLS) and psql with sslmode=disable.
    let e = refused_login(&sluice, &tenant.user, &tenant.password, &tenant.database).await;
    assert_eq!(sqlstate(&e), Some("28000"), "{}", error_text(&e));
    let err = assert_psql_refused(&sluice, &tenant, "sslmode=disable");
    assert!(err.contains("FATAL"), "{err}");

    // TLS clients are unaffected.
    assert_tls_login(&sluice, &tenant, "sslmode=require");
    // The refusals are counted as such (README, metrics).
    let metrics = http_get(sluice.metrics_addr(), "/metrics").body;
    let refused: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("sluice_client_logins_total{") && l.contains("result=\"tls_required\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        refused >= 3.0,
        "tls_required logins counted {refused}:\n{metrics}"
    );
    assert_alive(&mut sluice);
}

/// Under `require`, a CancelRequest may come in plaintext (libpq before 17 sends it so) and
/// cancels the query of a TLS session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_cancel_request_cancels_a_tls_session() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_cancel");
    let files = TlsFiles::new();
    let mut sluice = client_tls_sluice("require", &files, &[&tenant]);
    let mut session = ssl_request_connect(&sluice, &files.ca).await;
    let (pid, secret) = session.login_md5(&tenant).await;
    session.send(&query("SELECT pg_sleep(60)")).await;
    wait_until_running(&tenant, "SELECT pg_sleep(60)");

    let started = Instant::now();
    let mut cancel = RawConn::connect(sluice.addr()).await;
    cancel.send(&cancel_request(pid, secret)).await;
    cancel.expect_eof().await;
    let mut code = None;
    loop {
        match session.expect_message().await {
            (b'E', body) => code = Some(field(&error_fields(&body), b'C').to_owned()),
            (b'Z', _) => break,
            _ => {}
        }
    }
    assert_eq!(
        code.as_deref(),
        Some("57014"),
        "the query was not cancelled"
    );
    assert!(
        started.elapsed() < PROMPTLY,
        "cancelled after {:?}",
        started.elapsed()
    );
    assert_eq!(
        session.scalar("SELECT 'after cancel'").await,
        "after cancel"
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_are_both_accepted_under_allow() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_allow");
    let files = TlsFiles::new();
    let mut sluice = client_tls_sluice("allow", &files, &[&tenant]);

    let plain = connect(&sluice, &tenant).await;
    assert_eq!(scalar(&plain, "SELECT 1").await.as_deref(), Some("1"));
    let (ok, out, err) = psql_tls(&sluice, &tenant, "sslmode=disable");
    assert!(ok, "psql sslmode=disable under allow: {err}");
    assert!(!out.contains("SSL connection"), "{out}");
    assert_tls_login(&sluice, &tenant, "sslmode=require");
    // libpq's default (prefer) takes TLS when offered.
    assert_tls_login(&sluice, &tenant, "");
    assert_tls_login(&sluice, &tenant, &verify_full(&files.ca_file()));
    assert_eq!(scalar(&plain, "SELECT 2").await.as_deref(), Some("2"));
    assert_alive(&mut sluice);
}

#[test]
fn without_client_tls_ssl_requests_are_declined() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_disabled");
    let mut sluice = Sluice::start(&SluiceConfig::new(pg).tenant(Tenant::new(&tenant)));
    let (ok, out, err) = psql_tls(&sluice, &tenant, "");
    assert!(ok, "psql with sslmode=prefer: {err}");
    assert!(!out.contains("SSL connection"), "{out}");
    let err = assert_psql_refused(&sluice, &tenant, "sslmode=require");
    assert!(err.contains("does not support SSL"), "{err}");
    assert_alive(&mut sluice);
}

/// CVE-2021-23214: bytes that arrive with the SSLRequest (before the handshake) were not
/// encrypted and may have been injected by a man in the middle; they must never be taken
/// as the client's startup packet. Accepted outcomes: the connection is closed or refused
/// (an ErrorResponse such as PostgreSQL's 08P01 "received unencrypted data after SSL
/// request"), before or after 'S' and the handshake; never an authentication request for
/// the injected startup packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_an_ssl_request_are_not_processed() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_injection");
    let files = TlsFiles::new();
    for mode in ["allow", "require"] {
        let mut sluice = client_tls_sluice(mode, &files, &[&tenant]);
        let mut tcp = TcpStream::connect(sluice.addr()).await.expect("connect");
        let mut injected = SSL_REQUEST.to_vec();
        injected.extend(startup_packet(&tenant.user, &tenant.database));
        tcp.write_all(&injected).await.expect("write");

        let mut first = [0u8; 1];
        let read = tokio::time::timeout(READ_TIMEOUT, tcp.read(&mut first)).await;
        let outcome = match read {
            Err(_) => panic!("{mode}: no answer to SSLRequest + startup within {READ_TIMEOUT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => "closed before answering".to_owned(),
            Ok(Ok(_)) if first[0] == b'E' => {
                let mut rest = Wire::new(tcp);
                rest.buf.push(b'E');
                match rest.next().await {
                    Next::Message(_, body) => {
                        let fields = error_fields(&body);
                        let code = field(&fields, b'C').to_owned();
                        assert_eq!(code, "08P01", "{mode}: plaintext error {fields:?}");
                        format!("refused in plaintext: {fields:?}")
                    }
                    Next::Eof => "closed in the middle of an error".to_owned(),
                }
            }
            Ok(Ok(_)) => {
                assert_eq!(first[0], b'S', "{mode}: SSLRequest answered with {first:?}");
                match tls_client(tcp, &[files.ca.der()], "localhost", &[]).await {
                    Err(e) => format!("handshake failed: {e}"),
                    Ok(tls) => {
                        let mut wire = Wire::new(tls);
                        match wire.next().await {
                            Next::Eof => "closed after the handshake".to_owned(),
                            Next::Message(b'E', body) => {
                                let fields = error_fields(&body);
                                let code = field(&fields, b'C');
                                assert!(
                                    code == "08P01" || code == "08006",
                                    "{mode}: the injected startup packet was routed: {fields:?}"
                                );
                                format!("refused over TLS: {fields:?}")
                            }
                            Next::Message(tag, body) => panic!(
                                "{mode}: the startup packet sent before the TLS handshake \
                                 was processed (CVE-2021-23214 pattern): got {:?} {:?}",
                                tag as char, body
                            ),
                        }
                    }
                }
            }
        };
        eprintln!("client_tls={mode}: bytes after SSLRequest: {outcome}");
        // A normal TLS client still gets in.
        assert_tls_login(&sluice, &tenant, "sslmode=require");
        assert_alive(&mut sluice);
    }
}

/// Direct TLS (PostgreSQL 17, `sslnegotiation=direct`): the TLS handshake is the first
/// thing on the socket, with ALPN "postgresql". Done with rustls, since psql 15 cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_postgresql_is_accepted() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_direct");
    let files = TlsFiles::new();
    for mode in ["allow", "require"] {
        let mut sluice = client_tls_sluice(mode, &files, &[&tenant]);
        let tcp = TcpStream::connect(sluice.addr()).await.expect("connect");
        let tls = tls_client(tcp, &[files.ca.der()], "localhost", &[b"postgresql"])
            .await
            .unwrap_or_else(|e| panic!("{mode}: direct TLS handshake: {e}\n{}", sluice.log()));
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"postgresql"[..]),
            "{mode}: ALPN"
        );
        let mut wire = Wire::new(tls);
        wire.login_md5(&tenant).await;
        assert_eq!(wire.scalar("SELECT current_user").await, tenant.user);
        assert_alive(&mut sluice);
    }
}

/// Direct TLS without ALPN "postgresql" is refused, as PostgreSQL 17 does (it guards
/// against cross-protocol attacks): the handshake may complete, but no login follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_without_alpn_is_refused() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_direct_no_alpn");
    let files = TlsFiles::new();
    let mut sluice = client_tls_sluice("require", &files, &[&tenant]);
    let tcp = TcpStream::connect(sluice.addr()).await.expect("connect");
    match tls_client(tcp, &[files.ca.der()], "localhost", &[]).await {
        Err(e) => eprintln!("direct TLS without ALPN: handshake refused: {e}"),
        Ok(tls) => {
            let mut wire = Wire::new(tls);
            wire.send(&startup_packet(&tenant.user, &tenant.database))
                .await;
            match wire.next().await {
                Next::Eof => {}
                Next::Message(b'E', body) => {
                    let fields = error_fields(&body);
                    assert_eq!(field(&fields, b'C'), "08P01", "{fields:?}");
                }
                Next::Message(tag, _) => {
                    panic!("direct TLS without ALPN went on to {:?}", tag as char)
                }
            }
        }
    }
    assert_tls_login(&sluice, &tenant, "sslmode=require");
    assert_alive(&mut sluice);
}

/// psql ≥ 17 with `sslnegotiation=direct`. The harness' psql is usually 15, which does not
/// know the option: then this test only says so (the rustls test above covers the wire).
#[test]
fn psql_direct_tls_when_psql_17_is_available() {
    let out = pg_command("psql", "").arg("--version").output();
    let version = out
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let major: u32 = version
        .split_whitespace()
        .find_map(|w| w.split('.').next()?.parse().ok())
        .unwrap_or(0);
    if major < 17 {
        eprintln!("skipped: psql {major} cannot do sslnegotiation=direct ({version:?})");
        return;
    }
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_psql_direct");
    let files = TlsFiles::new();
    let mut sluice = client_tls_sluice("require", &files, &[&tenant]);
    let direct = format!("sslnegotiation=direct {}", verify_full(&files.ca_file()));
    assert_tls_login(&sluice, &tenant, &direct);
    assert_alive(&mut sluice);
}

#[test]
fn client_tls_serves_a_chain_and_reads_a_sec1_key() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_chain");
    let files = TlsFiles::new();
    // The server certificate is signed by an intermediate; the client trusts only the root.
    let leaf = files.ca.issue_via_intermediate(&["localhost", "127.0.0.1"]);
    files.write("chain.crt", &leaf.chain_pem);
    let key = files.write("sec1.key", &leaf.sec1_key_pem());
    assert!(leaf.sec1_key_pem().contains("BEGIN EC PRIVATE KEY"));
    let config = SluiceConfig::new(pg)
        .client_tls("require", &files.dir().join("chain.crt"), &key)
        .tenant(Tenant::new(&tenant));
    let mut sluice = Sluice::start(&config);
    assert_tls_login(&sluice, &tenant, &verify_full(&files.ca_file()));
    assert_alive(&mut sluice);
}

/// Replaces sluice's certificate and key by ones from a new CA; returns the new CA's file.
fn rotate_certificate(files: &TlsFiles) -> PathBuf {
    let new_ca = Ca::new("rotated test CA");
    files.install(&new_ca.issue(&["localhost", "127.0.0.1"]));
    files.write("new-ca.pem", &new_ca.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_reread_on_sighup() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_rotate_hup");
    let files = TlsFiles::new();
    let mut sluice = client_tls_sluice("require", &files, &[&tenant]);
    assert_tls_login(&sluice, &tenant, &verify_full(&files.ca_file()));
    // A TLS session opened before the rotation.
    let mut before = ssl_request_connect(&sluice, &files.ca).await;
    before.login_md5(&tenant).await;

    let new_ca = rotate_certificate(&files);
    sluice
        .reload_and_wait(PROMPTLY)
        .unwrap_or_else(|log| panic!("reload refused:\n{log}"));
    assert_tls_login(&sluice, &tenant, &verify_full(&new_ca));
    let err = assert_psql_refused(&sluice, &tenant, &verify_full(&files.ca_file()));
    assert!(err.contains("certificate verify failed"), "{err}");

    // The session from before goes on, on its old keys.
    assert_eq!(before.scalar("SELECT 'still here'").await, "still here");
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_reread_on_console_reload() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_rotate_console");
    let files = TlsFiles::new();
    // `allow`, so the console is reachable without TLS from tokio-postgres.
    let mut sluice = client_tls_sluice("allow", &files, &[&tenant]);
    assert_tls_login(&sluice, &tenant, &verify_full(&files.ca_file()));
    let admin = console_login(&sluice, ADMIN, ADMIN_PASSWORD, "sluice").await;

    let new_ca = rotate_certificate(&files);
    // RELOAD answers once the new configuration is in force.
    console(&admin, "RELOAD").await;
    assert_tls_login(&sluice, &tenant, &verify_full(&new_ca));
    assert_psql_refused(&sluice, &tenant, &verify_full(&files.ca_file()));
    assert_alive(&mut sluice);
}

/// `client_tls` from disable to require by reload: plaintext clients already connected go
/// on, new ones are refused, TLS clients get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_can_be_required_by_reload() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_turn_on");
    let files = TlsFiles::new();
    let config = SluiceConfig::new(pg).tenant(Tenant::new(&tenant));
    let mut sluice = Sluice::start(&config);
    let plain = connect(&sluice, &tenant).await;
    assert_psql_refused(&sluice, &tenant, "sslmode=require");

    sluice.write_config(&config.client_tls("require", &files.cert_file(), &files.key_file()));
    sluice
        .reload_and_wait(PROMPTLY)
        .unwrap_or_else(|log| panic!("reload refused:\n{log}"));
    assert_tls_login(&sluice, &tenant, &verify_full(&files.ca_file()));
    let e = refused_login(&sluice, &tenant.user, &tenant.password, &tenant.database).await;
    assert_eq!(sqlstate(&e), Some("28000"), "{}", error_text(&e));
    assert_eq!(
        scalar(&plain, "SELECT 'kept'").await.as_deref(),
        Some("kept")
    );
    assert_alive(&mut sluice);
}

#[test]
fn a_broken_certificate_file_is_not_reloaded() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_rotate_broken");
    let files = TlsFiles::new();
    let mut sluice = client_tls_sluice("require", &files, &[&tenant]);
    assert_tls_login(&sluice, &tenant, &verify_full(&files.ca_file()));

    // A key that does not belong to the certificate, then a certificate that is not PEM.
    let stranger = files.other_ca.issue(&["localhost"]);
    let good_key = std::fs::read_to_string(files.key_file()).expect("key");
    files.write("server.key", &stranger.key_pem);
    let refused = sluice.reload_and_wait(PROMPTLY);
    assert!(refused.is_err(), "a key that does not match was accepted");
    assert_tls_login(&sluice, &tenant, &verify_full(&files.ca_file()));

    files.write("server.key", &good_key);
    files.write("server.crt", "this is not a certificate\n");
    let refused = sluice.reload_and_wait(PROMPTLY);
    assert!(
        refused.is_err(),
        "a certificate file without a certificate was accepted"
    );
    assert_tls_login(&sluice, &tenant, &verify_full(&files.ca_file()));
    assert_alive(&mut sluice);
}

/// SIGTERM while a psql over TLS is inside a 2-second transaction: the transaction
/// commits, psql exits 0, then sluice exits 0.
#[test]
fn sigterm_lets_a_tls_client_finish_its_transaction() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("tls_drain");
    pg.query_as_superuser_in(
        &tenant.database,
        &format!(
            "CREATE TABLE t (x int); GRANT ALL ON t TO \"{}\"",
            tenant.user
        ),
    );
    let files = TlsFiles::new();
    let mut config = SluiceConfig::new(pg)
        .client_tls("require", &files.cert_file(), &files.key_file())
        .tenant(Tenant::new(&tenant));
    config.shutdown_timeout = Some("60s".into());
    let mut sluice = Sluice::start(&config);

    let addr = sluice.addr();
    let t = tenant.clone();
    let ca = files.ca_file();
    let client = std::thread::spawn(move || {
        psql_with(
            &addr,
            &t.user,
            &t.password,
            &t.database,
            &verify_full(&ca),
            &[
                "BEGIN",
                "INSERT INTO t VALUES (1)",
                "SELECT pg_sleep(2)",
                "INSERT INTO t VALUES (2)",
                "COMMIT",
            ],
        )
    });
    wait_until_running(&tenant, "%pg_sleep(2)%");
    assert!(sluice.terminate(), "SIGTERM not delivered");
    let out = client.join().expect("psql thread");
    assert!(out.status.success(), "psql: {}", stderr(&out));
    let rows = pg.query_as_superuser_in(&tenant.database, "SELECT count(*) FROM t");
    assert_eq!(rows, "2", "the transaction did not commit");
    let status = sluice.wait_exit(PROMPTLY).unwrap_or_else(|| {
        panic!(
            "sluice still running after the transaction:\n{}",
            sluice.log()
        )
    });
    assert!(
        status.success(),
        "sluice exited with {status}:\n{}",
        sluice.log()
    );
}

/// `--check-config` on a TLS configuration; returns (accepted, stderr).
fn check_config(config: &SluiceConfig) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config.render()).expect("writing the config");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLUICE_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--check-config").arg(&path);
    let out = crate::harness::output_with_timeout(&mut cmd, Duration::from_secs(30));
    (out.status.success(), stderr(&out))
}

#[test]
fn incomplete_tls_settings_are_config_errors() {
    let pg = Postgres::shared();
    let files = TlsFiles::new();
    let tenant = Tenant::new(&TenantDb {
        database: "app".into(),
        user: "app".into(),
        password: "app-password".into(),
    });
    let base = SluiceConfig::new(pg).tenant(tenant);

    let good = base
        .clone()
        .client_tls("require", &files.cert_file(), &files.key_file())
        .cluster(
            Cluster::new("secure", "localhost", pg.port())
                .tls("verify-full")
                .tls_ca_file(&files.ca_file()),
        );
    let (ok, err) = check_config(&good);
    assert!(ok, "a complete TLS configuration was rejected: {err}");

    let cases = [
        (
            "client_tls = require without certificate files",
            base.clone().top_line("client_tls = \"require\""),
            "client_tls",
        ),
        (
            "an unknown client_tls mode",
            base.clone()
                .client_tls("sometimes", &files.cert_file(), &files.key_file()),
            "client_tls",
        ),
        (
            "verify-ca without tls_ca_file",
            base.clone()
                .cluster(Cluster::new("secure", "localhost", pg.port()).tls("verify-ca")),
            "tls_ca_file",
        ),
        (
            "verify-full without tls_ca_file",
            base.clone()
                .cluster(Cluster::new("secure", "localhost", pg.port()).tls("verify-full")),
            "tls_ca_file",
        ),
        (
            "an unknown cluster tls mode",
            base.clone()
                .cluster(Cluster::new("secure", "localhost", pg.port()).tls("verify-all")),
            "tls",
        ),
    ];
    for (what, config, named) in cases {
        let (ok, err) = check_config(&config);
        assert!(!ok, "{what}: accepted");
        assert!(
            err.contains(named),
            "{what}: the error does not name {named}: {err}"
        );
    }
}

/// Configurations naming TLS files that do not exist: (what, config, the missing file).
fn configs_with_missing_tls_files(files: &TlsFiles) -> Vec<(&'static str, SluiceConfig, PathBuf)> {
    let pg = Postgres::shared();
    let tenant = Tenant::new(&TenantDb {
        database: "app".into(),
        user: "app".into(),
        password: "app-password".into(),
    });
    let base = SluiceConfig::new(pg).tenant(tenant);
    let missing = files.dir().join("missing.pem");
    vec![
        (
            "client_tls_cert_file",
            base.clone()
                .client_tls("require", &missing, &files.key_file()),
            missing.clone(),
        ),
        (
            "client_tls_key_file",
            base.clone()
                .client_tls("allow", &files.cert_file(), &missing),
            missing.clone(),
        ),
        (
            "tls_ca_file",
            base.cluster(
                Cluster::new("secure", "localhost", pg.port())
                    .tls("verify-full")
                    .tls_ca_file(&missing),
            ),
            missing,
        ),
    ]
}

/// sluice does not start (it exits non-zero) when a TLS file is missing, and says which
/// file once.
#[test]
fn a_missing_tls_file_stops_startup() {
    let files = TlsFiles::new();
    for (what, config, missing) in configs_with_missing_tls_files(&files) {
        // sluice may bind `listen` before it reads the files: then it exits right after.
        let log = match Sluice::try_start(&config) {
            Err(log) => log,
            Ok(mut sluice) => {
                let status = sluice.wait_exit(PROMPTLY).unwrap_or_else(|| {
                    panic!("{what}: sluice runs with a missing file:\n{}", sluice.log())
                });
                assert!(!status.success(), "{what}: exited with {status}");
                sluice.log()
            }
        };
        let name = missing.display().to_string();
        assert!(
            log.contains(&name),
            "{what}: the error does not name {name}:\n{log}"
        );
        let cause = "No such file or directory";
        assert_eq!(
            log.matches(cause).count(),
            1,
            "{what}: the cause is not said exactly once:\n{log}"
        );
    }
}

/// `--check-config` should not call a configuration ok that sluice then refuses to start
/// with (a TLS file that does not exist).
#[test]
fn check_config_rejects_missing_tls_files() {
    let files = TlsFiles::new();
    for (what, config, missing) in configs_with_missing_tls_files(&files) {
        let (ok, err) = check_config(&config);
        assert!(
            !ok,
            "--check-config accepts a missing {what} ({})",
            missing.display()
        );
        assert!(
            err.contains(&missing.display().to_string()),
            "{what}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// sluice → PostgreSQL.

/// The TLS-only server, a tenant on it and the CA its certificate is signed by.
fn tls_server(name: &str) -> (&'static Postgres, TenantDb, &'static Path) {
    let pg = Postgres::shared_tls();
    let tenant = pg.create_tenant(name);
    let ca = pg.tls_ca_file().expect("the TLS server has a CA");
    (pg, tenant, ca)
}

/// Tenant `tenant` on a cluster `secure` reaching the TLS-only server at `host`.
fn on_secure(tenant: &TenantDb) -> Tenant {
    Tenant {
        cluster: "secure".into(),
        ..Tenant::new(tenant)
    }
}

/// Whether the server connection `client`'s query runs on is TLS (pg_stat_ssl).
async fn server_side_ssl(client: &Client) -> String {
    scalar(
        client,
        "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await
    .unwrap_or_default()
}

/// A login through sluice that must fail because the server connection cannot be opened;
/// returns (SQLSTATE, message). Must not take anywhere near `query_wait_timeout`.
async fn server_connection_refused(sluice: &Sluice, tenant: &TenantDb) -> (String, String) {
    let started = Instant::now();
    let e = refused_login(sluice, &tenant.user, &tenant.password, &tenant.database).await;
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not an ErrorResponse: {}", error_text(&e)));
    assert!(
        started.elapsed() < PROMPTLY,
        "the failure took {:?}",
        started.elapsed()
    );
    (db.code().code().to_owned(), db.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_verify_full_with_the_right_ca() {
    let (pg, tenant, ca) = tls_server("srv_verify_full");
    let config = SluiceConfig::new(Postgres::shared())
        .cluster(
            Cluster::new("secure", "localhost", pg.port())
                .tls("verify-full")
                .tls_ca_file(ca),
        )
        .tenant(on_secure(&tenant));
    let mut sluice = Sluice::start(&config);

    let client = connect(&sluice, &tenant).await;
    assert_eq!(server_side_ssl(&client).await, "true");
    assert_eq!(
        scalar(&client, "SELECT current_user").await.as_deref(),
        Some(tenant.user.as_str())
    );
    assert_alive(&mut sluice);
}

/// psql verifies sluice, sluice verifies PostgreSQL.
#[test]
fn tls_on_both_legs() {
    let (pg, tenant, ca) = tls_server("srv_both_legs");
    let files = TlsFiles::new();
    let config = SluiceConfig::new(Postgres::shared())
        .client_tls("require", &files.cert_file(), &files.key_file())
        .cluster(
            Cluster::new("secure", "localhost", pg.port())
                .tls("verify-full")
                .tls_ca_file(ca),
        )
        .tenant(on_secure(&tenant));
    let mut sluice = Sluice::start(&config);
    let out = psql_with(
        &sluice,
        &tenant.user,
        &tenant.password,
        &tenant.database,
        &verify_full(&files.ca_file()),
        &[
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            "\\conninfo",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("t\n"), "server side not TLS: {text}");
    assert!(
        text.contains("SSL connection"),
        "client side not TLS: {text}"
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_verify_ca_ignores_the_name_and_verify_full_does_not() {
    let (pg, tenant, ca) = tls_server("srv_verify_ca");
    let plain_pg = Postgres::shared();
    let plain = plain_pg.create_tenant("srv_verify_ca_plain");
    // 127.0.0.2 reaches the same server, but its certificate names only localhost and
    // 127.0.0.1.
    let config = SluiceConfig::new(plain_pg)
        .cluster(
            Cluster::new("secure", "127.0.0.2", pg.port())
                .tls("verify-ca")
                .tls_ca_file(ca),
        )
        .cluster(
            Cluster::new("strict", "127.0.0.2", pg.port())
                .tls("verify-full")
                .tls_ca_file(ca),
        )
        .tenant(on_secure(&tenant))
        .tenant(Tenant::new(&plain));
    let strict_tenant = pg.create_tenant("srv_verify_full_name");
    let config = config.tenant(Tenant {
        cluster: "strict".into(),
        ..Tenant::new(&strict_tenant)
    });
    let mut sluice = Sluice::start(&config);

    let client = connect(&sluice, &tenant).await;
    assert_eq!(server_side_ssl(&client).await, "true");
    let (code, text) = server_connection_refused(&sluice, &strict_tenant).await;
    assert_eq!(code, "08006", "{text}");
    // Neither failure nor success of one cluster disturbs another.
    let other = connect(&sluice, &plain).await;
    assert_eq!(scalar(&other, "SELECT 1").await.as_deref(), Some("1"));
    assert_eq!(scalar(&client, "SELECT 2").await.as_deref(), Some("2"));
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_with_a_wrong_ca_fails_only_that_client() {
    let (pg, tenant, ca) = tls_server("srv_wrong_ca");
    let files = TlsFiles::new();
    let plain_pg = Postgres::shared();
    let plain = plain_pg.create_tenant("srv_wrong_ca_plain");
    let mut config = SluiceConfig::new(plain_pg)
        .cluster(
            Cluster::new("secure", "localhost", pg.port())
                .tls("verify-full")
                .tls_ca_file(&files.other_ca_file()),
        )
        .tenant(on_secure(&tenant).query_wait_timeout("3s"))
        .tenant(Tenant::new(&plain));
    config.cluster_mut("secure").max_server_connections = Some(2);
    let mut sluice = Sluice::start(&config);
    let bystander = connect(&sluice, &plain).await;

    // More failures than the cluster's budget: a failed handshake gives its slot back.
    for _ in 0..4 {
        let (code, text) = server_connection_refused(&sluice, &tenant).await;
        assert_eq!(code, "08006", "{text}");
        assert!(text.contains(&tenant.database), "{text}");
    }
    assert_eq!(scalar(&bystander, "SELECT 1").await.as_deref(), Some("1"));
    let fresh = connect(&sluice, &plain).await;
    assert_eq!(scalar(&fresh, "SELECT 2").await.as_deref(), Some("2"));

    // The right CA, by reload: the cluster connects.
    let mut fixed = sluice.config().clone();
    *fixed.cluster_mut("secure") = Cluster {
        max_server_connections: Some(2),
        ..Cluster::new("secure", "localhost", pg.port())
            .tls("verify-full")
            .tls_ca_file(ca)
    };
    sluice.write_config(&fixed);
    sluice
        .reload_and_wait(PROMPTLY)
        .unwrap_or_else(|log| panic!("reload refused:\n{log}"));
    let client = connect(&sluice, &tenant).await;
    assert_eq!(server_side_ssl(&client).await, "true");
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_disable_against_a_tls_only_server_fails_cleanly() {
    let (pg, tenant, _) = tls_server("srv_disable");
    let plain_pg = Postgres::shared();
    let plain = plain_pg.create_tenant("srv_disable_plain");
    let config = SluiceConfig::new(plain_pg)
        .cluster(Cluster::new("secure", "localhost", pg.port()).tls("disable"))
        .tenant(on_secure(&tenant))
        .tenant(Tenant::new(&plain));
    let mut sluice = Sluice::start(&config);
    let bystander = connect(&sluice, &plain).await;

    // pg_hba says `hostnossl … reject`: PostgreSQL's 28000, passed on (or 08006).
    let (code, text) = server_connection_refused(&sluice, &tenant).await;
    assert!(code == "28000" || code == "08006", "{code}: {text}");
    assert_eq!(scalar(&bystander, "SELECT 1").await.as_deref(), Some("1"));
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_prefer_uses_tls_when_offered_and_plain_otherwise() {
    let (pg, tenant, _) = tls_server("srv_prefer");
    let plain_pg = Postgres::shared();
    let plain = plain_pg.create_tenant("srv_prefer_plain");
    let default_tenant = pg.create_tenant("srv_default");
    let mut config = SluiceConfig::new(plain_pg)
        .cluster(Cluster::new("secure", "localhost", pg.port()).tls("prefer"))
        // No `tls` key: the default is prefer.
        .cluster(Cluster::new("default", "localhost", pg.port()))
        .tenant(on_secure(&tenant))
        .tenant(Tenant {
            cluster: "default".into(),
            ..Tenant::new(&default_tenant)
        })
        .tenant(Tenant::new(&plain));
    config
        .cluster_mut("main")
        .extra
        .push("tls = \"prefer\"".into());
    let mut sluice = Sluice::start(&config);

    // The plain server declines TLS: plain it is.
    let client = connect(&sluice, &plain).await;
    assert_eq!(server_side_ssl(&client).await, "false");
    // The TLS-only server accepts it (the certificate is not checked under prefer).
    let client = connect(&sluice, &tenant).await;
    assert_eq!(server_side_ssl(&client).await, "true");
    let client = connect(&sluice, &default_tenant).await;
    assert_eq!(server_side_ssl(&client).await, "true", "default tls mode");
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_require_takes_any_certificate_but_never_plain() {
    let (pg, tenant, _) = tls_server("srv_require");
    let plain_pg = Postgres::shared();
    let plain = plain_pg.create_tenant("srv_require_plain");
    let bystander_db = plain_pg.create_tenant("srv_require_bystander");
    // `require` to the TLS-only server (no CA: its certificate is not checked), and to the
    // plain server (which declines TLS: no connection).
    let config = SluiceConfig::new(plain_pg)
        .cluster(Cluster::new("secure", "127.0.0.2", pg.port()).tls("require"))
        .cluster(Cluster::new("plain_required", "127.0.0.1", plain_pg.port()).tls("require"))
        .tenant(on_secure(&tenant))
        .tenant(Tenant {
            cluster: "plain_required".into(),
            ..Tenant::new(&plain)
        })
        .tenant(Tenant::new(&bystander_db));
    let mut sluice = Sluice::start(&config);
    let bystander = connect(&sluice, &bystander_db).await;

    let client = connect(&sluice, &tenant).await;
    assert_eq!(server_side_ssl(&client).await, "true");
    let (code, text) = server_connection_refused(&sluice, &plain).await;
    assert_eq!(code, "08006", "{text}");
    assert_eq!(scalar(&bystander, "SELECT 1").await.as_deref(), Some("1"));
    assert_eq!(scalar(&client, "SELECT 2").await.as_deref(), Some("2"));
    assert_alive(&mut sluice);
}

/// CVE-2021-23222, the server side: a man in the middle answers sluice's SSLRequest with
/// 'S' followed at once by plaintext (here a complete, successful login). Those bytes came
/// before the handshake, so they must not be taken as the server's: the handshake fails,
/// and the client gets an error instead of a session on a fake server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_ignores_plaintext_injected_after_s() {
    for mode in ["prefer", "require"] {
        let fake = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = fake.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = fake.accept().await.expect("accept");
            let mut request = [0u8; 8];
            tcp.read_exact(&mut request).await.expect("SSLRequest");
            let mut answer = b"S".to_vec();
            answer.extend(message(b'R', &0u32.to_be_bytes()));
            answer.extend(message(b'S', b"server_version\x0016.0\x00"));
            answer.extend(message(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
            answer.extend(message(b'Z', b"I"));
            tcp.write_all(&answer).await.expect("answer");
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await;
            request
        });
        let tenant = TenantDb {
            database: format!("fake_{mode}"),
            user: format!("fake_{mode}"),
            password: "fake-password".into(),
        };
        let config = SluiceConfig::new(Postgres::shared())
            .cluster(Cluster::new("fake", "127.0.0.1", port).tls(mode))
            .tenant(Tenant {
                cluster: "fake".into(),
                ..Tenant::new(&tenant)
            });
        let mut sluice = Sluice::start(&config);
        let (code, text) = server_connection_refused(&sluice, &tenant).await;
        assert_eq!(code, "08006", "{mode}: {text}");
        assert_alive(&mut sluice);
        drop(sluice);
        let request = server.await.expect("fake server");
        assert_eq!(request, SSL_REQUEST, "{mode}: sluice's first packet");
    }
}

/// The cluster's `tls_ca_file` is re-read on reload even when the configuration text is
/// unchanged (a CA rotated in place, as secret mounts do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_ca_file_is_reread_on_reload() {
    let (pg, tenant, ca) = tls_server("srv_ca_rotate");
    let files = TlsFiles::new();
    // The file starts with the wrong CA.
    let ca_file = files.write("cluster-ca.pem", &files.other_ca.pem());
    let config = SluiceConfig::new(Postgres::shared())
        .cluster(
            Cluster::new("secure", "localhost", pg.port())
                .tls("verify-full")
                .tls_ca_file(&ca_file),
        )
        .tenant(on_secure(&tenant));
    let mut sluice = Sluice::start(&config);
    let (code, text) = server_connection_refused(&sluice, &tenant).await;
    assert_eq!(code, "08006", "{text}");

    files.write(
        "cluster-ca.pem",
        &std::fs::read_to_string(ca).expect("the server's CA"),
    );
    sluice
        .reload_and_wait(PROMPTLY)
        .unwrap_or_else(|log| panic!("reload refused:\n{log}"));
    let client = connect(&sluice, &tenant).await;
    assert_eq!(server_side_ssl(&client).await, "true");
    assert_alive(&mut sluice);
}
