//! Session parameters in transaction mode: the settings a client asked for at startup
//! (application_name, DateStyle, TimeZone, `options=-c search_path=… -c …`) and the ones
//! it changes with SET that the server reports (ParameterStatus) follow the client to
//! whichever server connection it lands on. With `pool_size = 1` two clients with
//! different settings share one server connection, transaction by transaction: each
//! always sees its own values, never the other's; a SET rolled back does not stick; a
//! client that asked for nothing sees what a direct connection to PostgreSQL sees.

use tokio_postgres::{Client, NoTls};

use crate::common::{assert_alive, md5_tenant, raw_scalar, scalar};
use crate::harness::{error_text, Postgres, Sluice, TenantDb};
use crate::raw::RawConn;

/// A tokio-postgres client of the tenant with `application_name` and `options`.
async fn connect_as(
    sluice: &Sluice,
    tenant: &TenantDb,
    application: &str,
    options: &str,
) -> Client {
    let addr = sluice.addr();
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(&tenant.user)
        .password(&tenant.password)
        .dbname(&tenant.database);
    if !application.is_empty() {
        config.application_name(application);
    }
    if !options.is_empty() {
        config.options(options);
    }
    let (client, connection) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("login as {application}: {}", error_text(&e)));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// What the server connection a query runs on says about `columns`, in one transaction.
async fn settings(client: &Client, columns: &str) -> Vec<String> {
    let sql = format!("SELECT {columns}");
    let messages = client
        .simple_query(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .expect("a row");
    (0..row.len())
        .map(|i| row.get(i).unwrap_or("NULL").to_owned())
        .collect()
}

const STARTUP_SETTINGS: &str = "current_setting('application_name'), \
     current_setting('search_path'), (SELECT v FROM t), current_setting('extra_float_digits')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_follow_each_client_onto_the_shared_connection() {
    let (tenant, mut sluice) = md5_tenant("sp_startup", |t| t.pool_size(1));
    let setup = connect_as(&sluice, &tenant, "", "").await;
    setup
        .batch_execute(
            "CREATE SCHEMA s_a; CREATE SCHEMA s_b; \
             CREATE TABLE s_a.t (v text); INSERT INTO s_a.t VALUES ('a'); \
             CREATE TABLE s_b.t (v text); INSERT INTO s_b.t VALUES ('b')",
        )
        .await
        .expect("schemas");
    let a = connect_as(
        &sluice,
        &tenant,
        "alpha",
        "-c search_path=s_a -c extra_float_digits=-3",
    )
    .await;
    let b = connect_as(&sluice, &tenant, "beta", "-c search_path=s_b").await;
    let expected_a = ["alpha", "s_a", "a", "-3"];
    let expected_b = ["beta", "s_b", "b", "1"];
    for round in 0..3 {
        assert_eq!(
            settings(&a, STARTUP_SETTINGS).await,
            expected_a,
            "round {round}: client A"
        );
        assert_eq!(
            settings(&b, STARTUP_SETTINGS).await,
            expected_b,
            "round {round}: client B"
        );
    }
    // Both ran on the one server connection.
    assert_eq!(
        scalar(&a, "SELECT pg_backend_pid()").await,
        scalar(&b, "SELECT pg_backend_pid()").await
    );
    assert_alive(&mut sluice);
}

const SET_SETTINGS: &str = "current_setting('TimeZone'), current_setting('application_name'), \
     current_setting('DateStyle')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_values_follow_each_client_and_rolled_back_ones_do_not_stick() {
    let (tenant, mut sluice) = md5_tenant("sp_set", |t| t.pool_size(1));
    let a = connect_as(&sluice, &tenant, "alpha", "").await;
    let b = connect_as(&sluice, &tenant, "beta", "").await;
    a.batch_execute("SET TimeZone = 'UTC'").await.expect("SET");
    b.batch_execute("SET TimeZone = 'Europe/Berlin'")
        .await
        .expect("SET");
    // B keeps the server's default DateStyle (ISO, MDY); A changes it.
    a.batch_execute("SET DateStyle = 'SQL, DMY'")
        .await
        .expect("SET");
    let expected_a = ["UTC", "alpha", "SQL, DMY"];
    let expected_b = ["Europe/Berlin", "beta", "ISO, MDY"];
    for round in 0..2 {
        assert_eq!(
            settings(&a, SET_SETTINGS).await,
            expected_a,
            "round {round}: A"
        );
        assert_eq!(
            settings(&b, SET_SETTINGS).await,
            expected_b,
            "round {round}: B"
        );
    }

    // Rolled back, or local to a transaction: the value is gone after it.
    a.batch_execute("BEGIN; SET TimeZone = 'Asia/Tokyo'; SET application_name = 'x'")
        .await
        .expect("SET inside a transaction");
    assert_eq!(
        settings(&a, SET_SETTINGS).await,
        ["Asia/Tokyo", "x", "SQL, DMY"],
        "inside the transaction"
    );
    a.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    assert_eq!(settings(&b, SET_SETTINGS).await, expected_b, "B in between");
    assert_eq!(
        settings(&a, SET_SETTINGS).await,
        expected_a,
        "after ROLLBACK"
    );
    a.batch_execute("BEGIN; SET LOCAL TimeZone = 'Asia/Tokyo'; COMMIT")
        .await
        .expect("SET LOCAL");
    assert_eq!(settings(&b, SET_SETTINGS).await, expected_b, "B in between");
    assert_eq!(
        settings(&a, SET_SETTINGS).await,
        expected_a,
        "after a committed SET LOCAL"
    );

    // A committed SET sticks, for A only.
    a.batch_execute("SET application_name = 'alpha2'")
        .await
        .expect("SET");
    assert_eq!(settings(&b, SET_SETTINGS).await, expected_b, "B in between");
    assert_eq!(
        settings(&a, SET_SETTINGS).await,
        ["UTC", "alpha2", "SQL, DMY"]
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeting_reports_the_clients_own_parameters() {
    let (tenant, mut sluice) = md5_tenant("sp_greeting", |t| t.pool_size(1));
    let login = |extra: &'static [(&'static str, &'static str)]| {
        RawConn::login_md5_with(
            sluice.addr(),
            &tenant.user,
            &tenant.password,
            &tenant.database,
            extra,
        )
    };
    let (mut a, greeting_a) = login(&[
        ("application_name", "alpha"),
        ("DateStyle", "ISO, DMY"),
        ("TimeZone", "Europe/Berlin"),
    ])
    .await;
    for (name, value) in [
        ("application_name", "alpha"),
        ("DateStyle", "ISO, DMY"),
        ("TimeZone", "Europe/Berlin"),
    ] {
        assert_eq!(
            greeting_a.parameter(name),
            Some(value),
            "{name} in A's greeting: {:?}",
            greeting_a.parameters
        );
    }
    // A client that asked for nothing is greeted with the server's defaults, not A's.
    let (mut plain, greeting_plain) = login(&[]).await;
    assert_eq!(
        greeting_plain.parameter("application_name"),
        Some(""),
        "{:?}",
        greeting_plain.parameters
    );
    assert_ne!(greeting_plain.parameter("TimeZone"), Some("Europe/Berlin"));
    assert_ne!(greeting_plain.parameter("DateStyle"), Some("ISO, DMY"));

    // And the sessions agree with the greetings, alternating on the one connection.
    for _ in 0..2 {
        assert_eq!(
            raw_scalar(
                &mut a,
                "SELECT current_setting('application_name') || ' ' || current_setting('TimeZone')"
            )
            .await
            .as_deref(),
            Some("alpha Europe/Berlin")
        );
        assert_eq!(
            raw_scalar(&mut plain, "SHOW application_name")
                .await
                .as_deref(),
            Some("")
        );
    }
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asked_for_nothing_sees_the_server_defaults() {
    let (tenant, mut sluice) = md5_tenant("sp_defaults", |t| t.pool_size(1));
    let columns = "current_setting('application_name'), current_setting('search_path'), \
         current_setting('TimeZone'), current_setting('DateStyle'), \
         current_setting('extra_float_digits'), current_setting('IntervalStyle')";
    // What a direct connection to PostgreSQL with the same driver sees.
    let direct = {
        let pg = Postgres::shared();
        let (client, connection) = tokio_postgres::Config::new()
            .host(pg.addr().ip().to_string())
            .port(pg.port())
            .user(&tenant.user)
            .password(&tenant.password)
            .dbname(&tenant.database)
            .connect(NoTls)
            .await
            .unwrap_or_else(|e| panic!("direct login: {}", error_text(&e)));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        settings(&client, columns).await
    };

    let picky = connect_as(
        &sluice,
        &tenant,
        "picky",
        "-c search_path=pg_catalog -c extra_float_digits=0 -c IntervalStyle=iso_8601",
    )
    .await;
    picky
        .batch_execute("SET TimeZone = 'America/New_York'; SET DateStyle = 'German'")
        .await
        .expect("SET");
    let plain = connect_as(&sluice, &tenant, "", "").await;
    for _ in 0..2 {
        let mine = settings(&picky, columns).await;
        assert_eq!(
            mine,
            [
                "picky",
                "pg_catalog",
                "America/New_York",
                "German, DMY",
                "0",
                "iso_8601"
            ]
        );
        assert_eq!(settings(&plain, columns).await, direct, "plain after picky");
    }
    // Also once the picky client has gone.
    drop(picky);
    let later = connect_as(&sluice, &tenant, "", "").await;
    assert_eq!(settings(&later, columns).await, direct, "after picky left");
    assert_alive(&mut sluice);
}

/// On PostgreSQL the startup packet's settings are the session's defaults: `RESET`,
/// `RESET ALL` and `DISCARD ALL` go back to them, not to the server's. Applications and
/// client-side pools run these to clean a session; the client's own settings must not
/// vanish through sluice either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_goes_back_to_the_clients_startup_values() {
    let (tenant, mut sluice) = md5_tenant("sp_reset", |t| t.pool_size(1));
    let setup = connect_as(&sluice, &tenant, "", "").await;
    setup
        .batch_execute("CREATE SCHEMA s_a")
        .await
        .expect("schema");
    let a = connect_as(&sluice, &tenant, "alpha", "-c search_path=s_a").await;
    let b = connect_as(&sluice, &tenant, "beta", "").await;
    let columns = "current_setting('application_name'), current_setting('search_path')";
    let startup = ["alpha", "s_a"];
    for reset in [
        "RESET application_name; RESET search_path",
        "RESET ALL",
        "DISCARD ALL",
    ] {
        a.batch_execute("SET application_name = 'changed'; SET search_path = public")
            .await
            .expect("SET");
        a.batch_execute(reset).await.expect(reset);
        assert_eq!(settings(&a, columns).await, startup, "after {reset}");
        // And still after another client had the connection.
        assert_eq!(settings(&b, columns).await[0], "beta");
        assert_eq!(
            settings(&a, columns).await,
            startup,
            "after {reset} and another client"
        );
    }
    assert_alive(&mut sluice);
}

/// A startup setting PostgreSQL refuses ends that client with PostgreSQL's error (at
/// login or at its first query); other clients of the tenant never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_startup_setting_fails_only_that_client() {
    let (tenant, mut sluice) = md5_tenant("sp_refused", |t| t.pool_size(1));
    let good = connect_as(&sluice, &tenant, "good", "").await;
    assert_eq!(scalar(&good, "SELECT 1").await.as_deref(), Some("1"));

    for options in ["-c work_mem=banana", "-c no_such_setting=1"] {
        let addr = sluice.addr();
        let login = tokio_postgres::Config::new()
            .host(addr.ip().to_string())
            .port(addr.port())
            .user(&tenant.user)
            .password(&tenant.password)
            .dbname(&tenant.database)
            .options(options)
            .connect(NoTls)
            .await;
        let e = match login {
            Err(e) => e,
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                crate::common::try_scalar(&client, "SELECT 1")
                    .await
                    .expect_err("the refused setting fails the first query")
            }
        };
        let code = crate::harness::sqlstate(&e).map(str::to_owned);
        assert!(
            matches!(code.as_deref(), Some("22023" | "42704")),
            "{options}: {}",
            error_text(&e)
        );
        assert_eq!(
            settings(
                &good,
                "current_setting('application_name'), current_setting('work_mem')"
            )
            .await,
            ["good", "4MB"],
            "{options}: the other client is unaffected"
        );
    }
    assert_alive(&mut sluice);
}
