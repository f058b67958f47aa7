//! Bad input (PRODUCT.md, "Bad input"): refused logins with their SQLSTATEs, the client
//! and wait limits, the login timeout, and raw-socket garbage before and after login. Every
//! case ends that client with an ErrorResponse (or a quiet close where nothing can be said)
//! while a client connected beforehand keeps working, new clients still log in, and sluice
//! neither exits nor panics.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::common::{
    assert_alive, connect_when_free, identity, refused_login, scalar, try_scalar, PROMPTLY,
};
use crate::harness::{
    connect, error_text, sqlstate, Postgres, Sluice, SluiceConfig, Tenant, TenantDb,
};
use crate::raw::{message, query, startup_packet, RawConn};

/// `client` (connected before the bad input) still answers, a new client logs in, and
/// sluice is alive.
async fn assert_still_serving(sluice: &mut Sluice, tenant: &TenantDb, client: &Client) {
    assert_eq!(scalar(client, "SELECT 41 + 1").await.as_deref(), Some("42"));
    let fresh = connect(sluice, tenant).await;
    assert_eq!(
        identity(&fresh).await,
        (tenant.user.clone(), tenant.database.clone())
    );
    assert_alive(sluice);
}

/// The SQLSTATE and message of a failed login.
async fn login_error(sluice: &Sluice, user: &str, password: &str, db: &str) -> (String, String) {
    let e = refused_login(sluice, user, password, db).await;
    let db_error = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {}", error_text(&e)));
    (
        db_error.code().code().to_owned(),
        db_error.message().to_owned(),
    )
}

#[tokio::test]
async fn refused_logins_get_their_sqlstate() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("err_refused");
    let mut sluice = Sluice::start(&SluiceConfig::new(pg).tenant(Tenant::new(&tenant)));
    let before = connect(&sluice, &tenant).await;

    let (code, text) = login_error(&sluice, &tenant.user, &tenant.password, "no_such_db").await;
    assert_eq!(code, "3D000", "unknown database: {text}");
    assert_eq!(text, "database \"no_such_db\" does not exist");

    let (code, text) =
        login_error(&sluice, "no_such_user", &tenant.password, &tenant.database).await;
    assert_eq!(
        code, "28000",
        "user that is not a tenant of the database: {text}"
    );

    let (code, text) = login_error(&sluice, &tenant.user, "wrong", &tenant.database).await;
    assert_eq!(code, "28P01", "wrong password: {text}");
    assert_eq!(
        text,
        format!(
            "password authentication failed for user \"{}\"",
            tenant.user
        )
    );

    assert_still_serving(&mut sluice, &tenant, &before).await;
}

#[tokio::test]
async fn third_client_over_max_client_connections_gets_53300() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("err_max_clients");
    let config = SluiceConfig::new(pg).tenant(Tenant::new(&tenant).max_client_connections(2));
    let mut sluice = Sluice::start(&config);

    let first = connect(&sluice, &tenant).await;
    let second = connect(&sluice, &tenant).await;
    let (code, text) = login_error(&sluice, &tenant.user, &tenant.password, &tenant.database).await;
    assert_eq!(code, "53300", "{text}");
    let name = format!("{}/{}", tenant.database, tenant.user);
    assert_eq!(
        text,
        format!("too many client connections for tenant {name} (max_client_connections is 2)")
    );
    assert_eq!(scalar(&first, "SELECT 1").await.as_deref(), Some("1"));
    assert_eq!(scalar(&second, "SELECT 2").await.as_deref(), Some("2"));

    // A slot comes back when a client leaves.
    drop(second);
    let third = connect_when_free(&sluice, &tenant).await;
    assert_eq!(scalar(&third, "SELECT 3").await.as_deref(), Some("3"));
    assert_alive(&mut sluice);
}

#[tokio::test]
async fn query_wait_timeout_gives_53300_naming_the_tenant() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("err_wait");
    let config =
        SluiceConfig::new(pg).tenant(Tenant::new(&tenant).pool_size(1).query_wait_timeout("1s"));
    let mut sluice = Sluice::start(&config);

    let holder = connect(&sluice, &tenant).await;
    let waiter = connect(&sluice, &tenant).await;
    holder.batch_execute("BEGIN").await.expect("BEGIN");

    let started = Instant::now();
    let e = try_scalar(&waiter, "SELECT 1")
        .await
        .expect_err("the only server connection is held by an open transaction");
    let waited = started.elapsed();
    assert_eq!(sqlstate(&e), Some("53300"), "{}", error_text(&e));
    let name = format!("{}/{}", tenant.database, tenant.user);
    let text = e.as_db_error().expect("db error").message().to_owned();
    assert!(
        text.contains(&name) && text.contains("query_wait_timeout"),
        "the error names the tenant and the setting: {text}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < PROMPTLY,
        "gave up after {waited:?}, configured 1s"
    );

    // The holder's transaction is untouched.
    assert_eq!(scalar(&holder, "SELECT 7").await.as_deref(), Some("7"));
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    assert_still_serving(&mut sluice, &tenant, &holder).await;
}

#[tokio::test]
async fn login_timeout_closes_stalled_clients_with_08006() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("err_login_timeout");
    let mut config = SluiceConfig::new(pg).tenant(Tenant::new(&tenant).auth_type("md5"));
    config.client_login_timeout = Some("1s".into());
    let mut sluice = Sluice::start(&config);
    let before = connect(&sluice, &tenant).await;

    // Three ways to stall: say nothing, send half a startup packet, stop at the
    // password request.
    let silent = RawConn::connect(sluice.addr());
    let partial = async {
        let mut conn = RawConn::connect(sluice.addr()).await;
        conn.send(&startup_packet(&tenant.user, &tenant.database)[..7])
            .await;
        conn
    };
    let no_password = async {
        let mut conn = RawConn::connect(sluice.addr()).await;
        conn.send(&startup_packet(&tenant.user, &tenant.database))
            .await;
        let (tag, _) = conn.expect_message().await;
        assert_eq!(tag, b'R', "the md5 password request");
        conn
    };
    let started = Instant::now();
    let (silent, partial, no_password) = tokio::join!(silent, partial, no_password);
    let closed = |mut conn: RawConn| async move {
        let text = conn.expect_error_then_eof("08006").await;
        assert!(text.contains("client_login_timeout"), "{text}");
        started.elapsed()
    };
    let times = tokio::join!(closed(silent), closed(partial), closed(no_password));
    for waited in [times.0, times.1, times.2] {
        assert!(
            waited >= Duration::from_millis(900) && waited < PROMPTLY,
            "closed after {waited:?}, client_login_timeout is 1s"
        );
    }
    assert_still_serving(&mut sluice, &tenant, &before).await;
}

/// Deterministic noise whose first byte makes the length field absurd.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    out[0] = 0xC3;
    out
}

#[tokio::test]
async fn garbage_instead_of_a_startup_packet_gets_08p01() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("err_garbage_startup");
    let mut sluice = Sluice::start(&SluiceConfig::new(pg).tenant(Tenant::new(&tenant)));
    let before = connect(&sluice, &tenant).await;

    let with_length = |len: u32| {
        let mut packet = len.to_be_bytes().to_vec();
        packet.extend_from_slice(&196_608u32.to_be_bytes());
        packet
    };
    let cases: [(&str, Vec<u8>); 5] = [
        ("random bytes", noise(64)),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: sluice\r\n\r\n".to_vec(),
        ),
        ("length 0xFFFFFFFF", with_length(u32::MAX)),
        ("length 2^31-1", with_length(i32::MAX as u32)),
        ("length 3", with_length(3)),
    ];
    for (what, bytes) in cases {
        let mut conn = RawConn::connect(sluice.addr()).await;
        conn.send(&bytes).await;
        let text = conn.expect_error_then_eof("08P01").await;
        assert!(text.starts_with("protocol violation"), "{what}: {text}");
        assert_still_serving(&mut sluice, &tenant, &before).await;
    }
}

#[tokio::test]
async fn garbage_after_login_gets_08p01_and_never_reaches_the_server() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("err_garbage_after_login");
    let config = SluiceConfig::new(pg).tenant(Tenant::new(&tenant).auth_type("md5").pool_size(1));
    let mut sluice = Sluice::start(&config);
    let before = connect(&sluice, &tenant).await;
    before
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .expect("CREATE TABLE");
    let addr = sluice.addr();
    let login = || RawConn::login_md5(addr, &tenant.user, &tenant.password, &tenant.database);

    // The raw login is a working session.
    let mut conn = login().await;
    conn.send(&query("SELECT 1")).await;
    let tags = conn.read_until_ready().await;
    assert_eq!(
        tags, b"TDCZ",
        "RowDescription, DataRow, CommandComplete, ReadyForQuery"
    );

    let cases: [(&str, Vec<u8>); 3] = [
        ("an unknown message type", message(b'z', b"")),
        ("an absurd length", {
            let mut m = vec![b'Q'];
            m.extend_from_slice(&0x7fff_fff0u32.to_be_bytes());
            m.extend_from_slice(b"SELECT 1");
            m
        }),
        ("a Sync with a body", message(b'S', b"xxxx")),
    ];
    for (what, bytes) in cases {
        let mut conn = login().await;
        conn.send(&bytes).await;
        let text = conn.expect_error_then_eof("08P01").await;
        assert!(text.starts_with("protocol violation"), "{what}: {text}");
        assert_still_serving(&mut sluice, &tenant, &before).await;
    }

    // Garbage inside a transaction: the transaction is rolled back, not committed or
    // left open on the (only) server connection.
    let mut conn = login().await;
    conn.send(&query("BEGIN; INSERT INTO t VALUES (1)")).await;
    conn.read_until_ready().await;
    conn.send(&message(b'z', b"")).await;
    conn.expect_error_then_eof("08P01").await;
    assert_eq!(
        scalar(&before, "SELECT count(*) FROM t").await.as_deref(),
        Some("0")
    );
    assert_still_serving(&mut sluice, &tenant, &before).await;

    let leaked: Vec<String> = pg
        .log()
        .lines()
        .filter(|l| l.contains(&tenant.user) && l.contains("invalid frontend message"))
        .map(str::to_owned)
        .collect();
    assert!(leaked.is_empty(), "garbage reached PostgreSQL: {leaked:?}");
}

#[tokio::test]
async fn truncated_messages_end_the_client_quietly() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("err_truncated");
    let config = SluiceConfig::new(pg).tenant(Tenant::new(&tenant).auth_type("md5").pool_size(1));
    let mut sluice = Sluice::start(&config);
    let before = connect(&sluice, &tenant).await;

    // Half a startup packet, then close: nothing to answer.
    let mut conn = RawConn::connect(sluice.addr()).await;
    conn.send(&startup_packet(&tenant.user, &tenant.database)[..20])
        .await;
    conn.shutdown_write().await;
    conn.expect_eof().await;
    assert_still_serving(&mut sluice, &tenant, &before).await;

    // Half a Query after login, then close. Its first bytes may already sit on the only
    // server connection: that connection must not be handed to the next client, whose
    // query would otherwise be read as the rest of this one.
    let mut conn = RawConn::login_md5(
        sluice.addr(),
        &tenant.user,
        &tenant.password,
        &tenant.database,
    )
    .await;
    let whole = query("SELECT 'this query never ends' AS truncated");
    conn.send(&whole[..whole.len() - 10]).await;
    conn.shutdown_write().await;
    conn.expect_eof().await;
    for round in 0..3 {
        let sql = format!("SELECT {round}");
        assert_eq!(scalar(&before, &sql).await, Some(round.to_string()));
    }
    assert_still_serving(&mut sluice, &tenant, &before).await;
}

/// A server that accepts TCP connections and never answers (a stalled or black-holed
/// PostgreSQL): every client waiting for its first connection gets a clear error once one
/// opening has failed, within about one `server_connect_timeout`, not one timeout after
/// another while each waiter tries again in turn, nor after `query_wait_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unopenable_server_fails_every_waiting_client_within_one_connect_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accepts and holds connections without a byte in answer.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("err_blackhole");
    let config = SluiceConfig::new(pg)
        .cluster(crate::harness::Cluster::new("silent", "127.0.0.1", port).tls("disable"))
        .tenant(Tenant {
            cluster: "silent".into(),
            ..Tenant::new(&tenant)
                .pool_size(1)
                .server_connect_timeout("1s")
                .query_wait_timeout("10s")
        });
    let mut sluice = Sluice::start(&config);
    let started = Instant::now();
    let login = || async {
        let e = refused_login(&sluice, &tenant.user, &tenant.password, &tenant.database).await;
        (
            sqlstate(&e).map(str::to_owned),
            started.elapsed(),
            error_text(&e),
        )
    };
    let (a, b, c) = tokio::join!(login(), login(), login());
    for (code, took, text) in [a, b, c] {
        assert_eq!(code.as_deref(), Some("08006"), "{text}");
        assert!(
            took < Duration::from_millis(1800),
            "a client waited {took:?} for a server that cannot be opened (server_connect_timeout \
             1s, query_wait_timeout 10s): {text}"
        );
    }
    holder.abort();
    assert_alive(&mut sluice);
}

/// A server that refuses sluice's login: the client learns the SQLSTATE and that the server
/// refused, never the server's own words (which may describe pg_hba rules or roles); those
/// go to sluice's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_login_failure_reaches_the_client_without_the_servers_text() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("err_server_login");
    let config = SluiceConfig::new(pg).tenant(
        Tenant::new(&tenant)
            .server_password("not the server password")
            .pool_size(1),
    );
    let mut sluice = Sluice::start(&config);
    let (code, message) =
        login_error(&sluice, &tenant.user, &tenant.password, &tenant.database).await;
    assert_eq!(code, "28P01", "{message}");
    assert!(
        !message.contains("password authentication failed"),
        "the server's text reached the client: {message}"
    );
    assert!(
        message.contains(&tenant.user),
        "names the tenant: {message}"
    );
    // Logged as the session ends, just after the client got its error.
    let logged =
        crate::harness::poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
            sluice
                .log()
                .contains("password authentication failed")
                .then_some(())
        });
    assert!(logged.is_some(), "the server's reason is in sluice's log");
    assert_alive(&mut sluice);
}
