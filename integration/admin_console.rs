//! The admin console (database `sluice` or `pgbouncer`, `[[admins]]` users only), with psql
//! and tokio-postgres' simple query protocol: PgBouncer's columns for `SHOW POOLS`,
//! `SHOW STATS` and what pgbouncer_exporter reads; `SHOW POOLS`/`CLIENTS`/`SERVERS` while a
//! client holds the only server connection and another waits (remote_pid is the real
//! backend); totals that grow with traffic; `SHOW DATABASES`/`TENANTS`/`CLUSTERS`/`CONFIG`
//! without any secret; `PAUSE db` (waits for running transactions, holds new ones of that
//! database only, until `RESUME db`), `KILL db` (57P01 for that database's clients, their
//! transactions rolled back), `SHUTDOWN`; errors: unknown commands (42601, the session goes
//! on), non-admins (28000), a wrong admin password (28P01), the extended protocol (an
//! ErrorResponse and a close, not a hang).

use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::{
    assert_alive, console, console_login, http_get, raw_login, raw_scalar, refused_login, scalar,
    superuser, try_console, ShowResult, PROMPTLY,
};
use crate::harness::{
    connect, conninfo, error_text, literal, output_with_timeout, pg_command, poll_until, sqlstate,
    Postgres, Sluice, SluiceConfig, Tenant, TenantDb,
};
use crate::raw::{error_fields, field, parse, query, sync, Next, RawConn, READ_TIMEOUT};

const ADMIN: &str = "console_admin";
const ADMIN_PASSWORD: &str = "console-admin-password";
/// Both names reach the console.
const CONSOLE_DATABASES: [&str; 2] = ["sluice", "pgbouncer"];
const POLL: Duration = Duration::from_millis(20);

/// PgBouncer's `SHOW POOLS` columns (1.23).
const POOLS_COLUMNS: [&str; 17] = [
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
    "load_balance_hosts",
];

/// PgBouncer's `SHOW STATS` columns (1.23).
const STATS_COLUMNS: [&str; 23] = [
    "database",
    "total_server_assignment_count",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "total_client_parse_count",
    "total_server_parse_count",
    "total_bind_count",
    "avg_server_assignment_count",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
    "avg_client_parse_count",
    "avg_server_parse_count",
    "avg_bind_count",
];

/// Columns of `SHOW CLIENTS` and `SHOW SERVERS` (PgBouncer's, plus `id`).
const SOCKET_COLUMNS: [&str; 21] = [
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

/// New tenants (md5, so raw clients can log in too) named after `names`, configured by
/// `configure`, and a sluice with the console admin serving them.
fn start(
    names: &[&str],
    configure: impl Fn(Tenant) -> Tenant,
    sluice: impl FnOnce(SluiceConfig) -> SluiceConfig,
) -> (Vec<TenantDb>, Sluice) {
    let pg = Postgres::shared();
    let tenants: Vec<TenantDb> = names.iter().map(|n| pg.create_tenant(n)).collect();
    let mut config = SluiceConfig::new(pg).admin(ADMIN, ADMIN_PASSWORD);
    for tenant in &tenants {
        config = config.tenant(configure(Tenant::new(tenant).auth_type("md5")));
    }
    (tenants, Sluice::start(&sluice(config)))
}

async fn admin(sluice: &Sluice) -> tokio_postgres::Client {
    console_login(sluice, ADMIN, ADMIN_PASSWORD, "sluice").await
}

/// Runs `sql` on the console until `done` holds for its result (every 20 ms, up to
/// [`PROMPTLY`]); returns that result.
async fn console_until(
    client: &tokio_postgres::Client,
    sql: &str,
    what: &str,
    done: impl Fn(&ShowResult) -> bool,
) -> ShowResult {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let result = console(client, sql).await;
        if done(&result) {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {PROMPTLY:?}; last {sql}: {result:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `psql -X -A -F '|' -P footer=off -c <sql>` as the admin: a header line, then rows.
fn psql_console(sluice: &Sluice, db: &str, sql: &str) -> Output {
    let mut cmd = pg_command("psql", ADMIN_PASSWORD);
    cmd.args(["-X", "-A", "-F", "|", "-P", "footer=off", "-d"])
        .arg(conninfo(sluice, ADMIN, db))
        .arg("-c")
        .arg(sql);
    output_with_timeout(&mut cmd, Duration::from_secs(60))
}

fn psql_console_ok(sluice: &Sluice, db: &str, sql: &str) -> String {
    let out = psql_console(sluice, db, sql);
    assert!(
        out.status.success(),
        "psql {sql:?} on console {db} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Microseconds in a `maxwait`/`maxwait_us` or `wait`/`wait_us` pair.
fn micros(row: crate::common::ShowRow<'_>, seconds: &str, micros: &str) -> i64 {
    row.int(seconds) * 1_000_000 + row.int(micros)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_answer_on_both_console_databases() {
    let (tenants, mut sluice) = start(&["adm_both"], |t| t, |c| c);
    let tenant = &tenants[0];
    let client = connect(&sluice, tenant).await;
    assert_eq!(scalar(&client, "SELECT 1").await.as_deref(), Some("1"));

    for db in CONSOLE_DATABASES {
        let admin = console_login(&sluice, ADMIN, ADMIN_PASSWORD, db).await;
        let pools = console(&admin, "SHOW POOLS").await;
        assert_eq!(pools.columns, POOLS_COLUMNS, "SHOW POOLS columns on {db}");
        let row = pools.row_where("database", &tenant.database);
        assert_eq!(row.get("user"), tenant.user);
        assert_eq!(row.get("pool_mode"), "transaction");
        assert_eq!((row.int("cl_active"), row.int("cl_waiting")), (0, 0));
        assert_eq!(row.int("sv_active"), 0);
        assert!(row.int("sv_idle") >= 1, "the server connection of SELECT 1");
        // Keywords are case-insensitive; one trailing `;` is fine.
        let lower = console(&admin, "show pools;").await;
        assert_eq!(lower.columns, POOLS_COLUMNS);

        let stats = console(&admin, "SHOW STATS").await;
        assert_eq!(stats.columns, STATS_COLUMNS, "SHOW STATS columns on {db}");
        assert!(
            stats
                .row_where("database", &tenant.database)
                .int("total_query_count")
                >= 1
        );

        let version = console(&admin, "SHOW VERSION").await;
        assert_eq!(version.columns, ["version"]);
        let expected = format!("sluice {}", env!("CARGO_PKG_VERSION"));
        assert_eq!(version.rows, [[Some(expected)]]);

        let help = console(&admin, "SHOW HELP").await;
        let commands: Vec<&str> = help.rows().map(|r| r.get("command")).collect();
        for command in [
            "SHOW POOLS",
            "SHOW STATS",
            "SHOW CLIENTS",
            "SHOW SERVERS",
            "SHOW DATABASES",
            "SHOW TENANTS",
            "SHOW CLUSTERS",
            "SHOW CONFIG",
            "SHOW VERSION",
            "SHOW HELP",
            "PAUSE [db]",
            "RESUME [db]",
            "RELOAD",
            "KILL db",
            "SHUTDOWN",
        ] {
            assert!(commands.contains(&command), "{command} not in {commands:?}");
        }

        // psql, as people use it.
        let out = psql_console_ok(&sluice, db, "SHOW POOLS");
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some(POOLS_COLUMNS.join("|").as_str()),
            "{out}"
        );
        let prefix = format!("{}|{}|", tenant.database, tenant.user);
        assert!(lines.any(|l| l.starts_with(&prefix)), "{out}");
        let out = psql_console_ok(&sluice, db, "SHOW VERSION");
        assert_eq!(
            out,
            format!("version\nsluice {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_clients_and_servers_while_a_client_waits() {
    let (tenants, mut sluice) = start(&["adm_load"], |t| t.pool_size(1), |c| c);
    let tenant = &tenants[0];
    let db = tenant.database.as_str();
    let admin = admin(&sluice).await;

    // The first login takes the server's parameters from the pool; later logins reuse them.
    let holder = connect(&sluice, tenant).await;
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let pid = scalar(&holder, "SELECT pg_backend_pid()")
        .await
        .expect("a pid");
    let idle = connect(&sluice, tenant).await;
    let waiter = connect(&sluice, tenant).await;
    let waiting = tokio::spawn(async move { scalar(&waiter, "SELECT 'served'").await });

    let pools = console_until(&admin, "SHOW POOLS", "a waiting client", |r| {
        r.row_where("database", db).int("cl_waiting") == 1
    })
    .await;
    let row = pools.row_where("database", db);
    assert_eq!(row.int("cl_active"), 1, "{row:?}");
    assert_eq!(row.int("sv_active"), 1, "{row:?}");
    assert_eq!(row.int("sv_idle"), 0, "{row:?}");
    assert_eq!(row.int("sv_login"), 0, "{row:?}");
    // The longest wait is live: it grows while the client waits.
    let first = micros(row, "maxwait", "maxwait_us");
    console_until(&admin, "SHOW POOLS", "maxwait growing", |r| {
        micros(r.row_where("database", db), "maxwait", "maxwait_us") > first.max(0)
    })
    .await;

    let clients = console(&admin, "SHOW CLIENTS").await;
    // PgBouncer's columns, then why a client is pinned to its server connection.
    assert_eq!(clients.columns[..SOCKET_COLUMNS.len()], SOCKET_COLUMNS);
    assert_eq!(clients.columns[SOCKET_COLUMNS.len()..], ["pinned"]);
    let mine: Vec<_> = clients.rows_where("database", db).collect();
    let mut states: Vec<&str> = mine.iter().map(|r| r.get("state")).collect();
    states.sort_unstable();
    assert_eq!(states, ["active", "idle", "waiting"], "{clients:?}");
    let active = clients.row_where("state", "active");
    assert_eq!(active.get("type"), "C");
    assert_eq!(active.get("user"), tenant.user);
    assert_eq!(active.get("addr"), "127.0.0.1");
    assert_eq!(active.get("remote_pid"), pid, "the active client's server");
    let waiting_row = clients.row_where("state", "waiting");
    assert_eq!(waiting_row.int("remote_pid"), 0);
    assert_eq!(clients.row_where("state", "idle").int("remote_pid"), 0);

    let servers = console(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.columns, SOCKET_COLUMNS);
    let server = servers.row_where("database", db);
    assert_eq!(server.get("type"), "S");
    assert_eq!(server.get("state"), "active");
    assert_eq!(server.get("user"), tenant.user);
    assert_eq!(server.get("port"), Postgres::shared().port().to_string());
    assert_eq!(server.get("remote_pid"), pid);
    assert_eq!(
        server.get("link"),
        active.get("ptr"),
        "linked to the holder"
    );
    // remote_pid is a real backend of this tenant.
    let backend = superuser(
        tenant,
        &format!(
            "SELECT usename || '|' || state FROM pg_stat_activity WHERE pid = {}",
            literal(&pid)
        ),
    );
    assert_eq!(backend, format!("{}|idle in transaction", tenant.user));

    holder.batch_execute("COMMIT").await.expect("COMMIT");
    let served = tokio::time::timeout(PROMPTLY, waiting)
        .await
        .expect("the waiting client was not served after COMMIT")
        .expect("waiter task");
    assert_eq!(served.as_deref(), Some("served"));
    let pools = console_until(&admin, "SHOW POOLS", "the pool at rest", |r| {
        let row = r.row_where("database", db);
        row.int("cl_active") == 0 && row.int("sv_active") == 0
    })
    .await;
    let row = pools.row_where("database", db);
    assert_eq!((row.int("cl_waiting"), row.int("sv_idle")), (0, 1));
    assert_eq!(micros(row, "maxwait", "maxwait_us"), 0);
    let servers = console(&admin, "SHOW SERVERS").await;
    let server = servers.row_where("database", db);
    assert_eq!((server.get("state"), server.get("link")), ("idle", ""));
    assert_eq!(
        server.get("remote_pid"),
        pid,
        "pool_size 1: the same server"
    );
    let clients = console(&admin, "SHOW CLIENTS").await;
    assert!(clients
        .rows_where("database", db)
        .all(|r| r.get("state") == "idle"));
    drop(idle);
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_stats_totals_grow_with_traffic() {
    const QUERIES: i64 = 10;
    let (tenants, mut sluice) = start(&["adm_stats"], |t| t, |c| c);
    let tenant = &tenants[0];
    let db = tenant.database.as_str();
    let admin = admin(&sluice).await;
    let client = connect(&sluice, tenant).await;

    let before = console(&admin, "SHOW STATS").await;
    assert_eq!(before.columns, STATS_COLUMNS);
    for i in 0..QUERIES {
        let sql = format!("SELECT {i}, repeat('x', 100)");
        assert_eq!(scalar(&client, &sql).await, Some(i.to_string()));
    }
    let after = console(&admin, "SHOW STATS").await;
    let (b, a) = (
        before.row_where("database", db),
        after.row_where("database", db),
    );
    let grew = |column: &str| a.int(column) - b.int(column);
    for column in [
        "total_query_count",
        "total_xact_count",
        "total_server_assignment_count",
    ] {
        assert!(grew(column) >= QUERIES, "{column} grew by {}", grew(column));
    }
    assert!(grew("total_received") >= QUERIES * 20, "total_received");
    assert!(grew("total_sent") >= QUERIES * 100, "total_sent");
    assert!(grew("total_query_time") > 0, "total_query_time");
    assert!(grew("total_xact_time") > 0, "total_xact_time");
    for column in STATS_COLUMNS.iter().skip(1) {
        assert!(a.int(column) >= 0, "{column}");
    }

    let totals = console(&admin, "SHOW STATS_TOTALS").await;
    assert_eq!(totals.columns.first().map(String::as_str), Some("database"));
    assert_eq!(totals.columns.len(), 12, "{:?}", totals.columns);
    let averages = console(&admin, "SHOW STATS_AVERAGES").await;
    assert_eq!(
        averages.columns.first().map(String::as_str),
        Some("database")
    );
    assert_eq!(averages.columns.len(), 12, "{:?}", averages.columns);
    assert_eq!(averages.rows_where("database", db).count(), 1);

    let lists = console(&admin, "SHOW LISTS").await;
    assert_eq!(lists.columns, ["list", "items"]);
    assert_eq!(lists.row_where("list", "pools").int("items"), 1);
    assert_eq!(lists.row_where("list", "used_clients").int("items"), 1);
    let users = console(&admin, "SHOW USERS").await;
    assert_eq!(
        users.row_where("name", &tenant.user).get("pool_mode"),
        "transaction"
    );
    assert_alive(&mut sluice);
}

/// What prometheus-community/pgbouncer_exporter reads from the console (its
/// collector.go): `SHOW VERSION` (one column `version`), `SHOW LISTS` (two columns),
/// `SHOW CONFIG` (3 or 4 columns, else the scrape reports `pgbouncer_up 0`),
/// `SHOW DATABASES`, `SHOW POOLS`, and `SHOW STATS_TOTALS` with PgBouncer's column names
/// (`xact_count`, `query_count`, `bytes_received`… without `total_`), which it maps to
/// counters and silently skips when named otherwise. The README promises that the
/// exporter works against sluice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_pgbouncer_exporter_reads_is_there() {
    let (tenants, mut sluice) = start(&["adm_exporter"], |t| t, |c| c);
    let tenant = &tenants[0];
    let client = connect(&sluice, tenant).await;
    scalar(&client, "SELECT 1").await;
    let admin = console_login(&sluice, ADMIN, ADMIN_PASSWORD, "pgbouncer").await;

    let version = console(&admin, "SHOW VERSION;").await;
    assert_eq!(version.columns, ["version"]);
    let lists = console(&admin, "SHOW LISTS;").await;
    assert_eq!(lists.columns.len(), 2);
    for row in lists.rows() {
        let items = row.get("items");
        assert!(items.parse::<f64>().is_ok(), "SHOW LISTS items {items:?}");
    }
    let databases = console(&admin, "SHOW DATABASES;").await;
    for column in [
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "pool_mode",
        "max_connections",
        "current_connections",
        "paused",
        "disabled",
    ] {
        assert!(databases.columns.iter().any(|c| c == column), "{column}");
    }
    let pools = console(&admin, "SHOW POOLS;").await;
    assert_eq!(pools.columns, POOLS_COLUMNS);

    let mut problems = Vec::new();
    let config = console(&admin, "SHOW CONFIG;").await;
    if !(3..=4).contains(&config.columns.len()) {
        problems.push(format!(
            "SHOW CONFIG has {} columns {:?}; the exporter needs 3 (key, value, changeable) \
             or 4 (key, value, default, changeable) and otherwise fails the scrape",
            config.columns.len(),
            config.columns
        ));
    }
    let totals = console(&admin, "SHOW STATS_TOTALS;").await;
    let wanted = [
        "database",
        "server_assignment_count",
        "xact_count",
        "query_count",
        "bytes_received",
        "bytes_sent",
        "xact_time",
        "query_time",
        "wait_time",
        "client_parse_count",
        "server_parse_count",
        "bind_count",
    ];
    if totals.columns != wanted {
        problems.push(format!(
            "SHOW STATS_TOTALS columns are {:?}; PgBouncer's (which the exporter maps) are \
             {wanted:?}",
            totals.columns
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_databases_tenants_clusters_and_config_without_secrets() {
    const BUDGET: u32 = 13;
    let pg = Postgres::shared();
    let first = pg.create_tenant("adm_cfg_a");
    let second = pg.create_tenant("adm_cfg_b");
    // The first tenant by SCRAM verifier plus the server password, the second by plain
    // password: every kind of secret the config can hold.
    let verifier = pg.scram_verifier(&first.user);
    let config = SluiceConfig::new(pg)
        .max_server_connections(BUDGET)
        .admin(ADMIN, ADMIN_PASSWORD)
        .tenant(
            Tenant::new(&first)
                .password(&verifier)
                .server_password(&first.password)
                .pool_size(3),
        )
        .tenant(Tenant::new(&second).pool_mode("session"));
    let mut sluice = Sluice::start(&config);
    let client = connect(&sluice, &first).await;
    scalar(&client, "SELECT 1").await;
    let admin = admin(&sluice).await;

    let databases = console(&admin, "SHOW DATABASES").await;
    let row = databases.row_where("name", &first.database);
    assert_eq!(row.get("host"), "127.0.0.1");
    assert_eq!(row.get("port"), pg.port().to_string());
    assert_eq!(row.get("database"), first.database);
    assert_eq!(row.get("force_user"), first.user);
    assert_eq!(row.int("pool_size"), 3);
    assert_eq!(row.get("pool_mode"), "transaction");
    assert_eq!(row.int("max_connections"), i64::from(BUDGET));
    assert_eq!(row.int("current_client_connections"), 1);
    assert_eq!((row.int("paused"), row.int("disabled")), (0, 0));
    assert_eq!(
        databases
            .row_where("name", &second.database)
            .get("pool_mode"),
        "session"
    );

    let tenants = console(&admin, "SHOW TENANTS").await;
    let row = tenants.row_where("database", &first.database);
    assert_eq!(row.get("user"), first.user);
    assert_eq!(row.get("cluster"), "main");
    assert_eq!(row.get("server_user"), first.user);
    assert_eq!(row.int("pool_size"), 3);
    assert_eq!(row.int("clients"), 1);
    assert!(row.int("servers") >= 1);
    assert_eq!(row.int("paused"), 0);
    assert_eq!(tenants.rows.len(), 2);

    let clusters = console(&admin, "SHOW CLUSTERS").await;
    let row = clusters.row_where("name", "main");
    assert_eq!(row.get("host"), "127.0.0.1");
    assert_eq!(row.get("port"), pg.port().to_string());
    assert_eq!(row.int("max_server_connections"), i64::from(BUDGET));
    assert!(row.int("server_connections") >= 1);
    assert_eq!((row.int("reachable"), row.int("tenants")), (1, 2));

    let config = console(&admin, "SHOW CONFIG").await;
    let value = |key: &str| config.row_where("key", key).get("value").to_owned();
    assert_eq!(value("listen"), sluice.addr().to_string());
    assert_eq!(value("metrics_listen"), sluice.metrics_addr().to_string());
    assert_eq!(value("admins"), "1");
    assert_eq!(value("tenants"), "2");
    assert_eq!(value("clusters"), "1");
    assert_eq!(
        value("config_file"),
        sluice.config_path().display().to_string()
    );

    // No secret in any SHOW output.
    let secrets = [
        ADMIN_PASSWORD,
        first.password.as_str(),
        second.password.as_str(),
        verifier.as_str(),
        "SCRAM-SHA-256$",
    ];
    for item in [
        "CONFIG",
        "DATABASES",
        "TENANTS",
        "CLUSTERS",
        "USERS",
        "POOLS",
        "STATS",
        "CLIENTS",
        "SERVERS",
        "LISTS",
    ] {
        let result = console(&admin, &format!("SHOW {item}")).await;
        let text = format!("{result:?}");
        for secret in secrets {
            assert!(!text.contains(secret), "SHOW {item} shows a secret: {text}");
        }
    }
    let e = try_console(&admin, "SHOW MEM")
        .await
        .expect_err("SHOW MEM is not supported");
    assert!(e.as_db_error().is_some(), "{}", error_text(&e));
    assert_eq!(console(&admin, "SHOW VERSION").await.rows.len(), 1);
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_db_holds_that_databases_new_transactions_until_resume() {
    let (tenants, mut sluice) = start(&["adm_pause_a", "adm_pause_b"], |t| t.pool_size(2), |c| c);
    let (a, b) = (&tenants[0], &tenants[1]);
    let watcher = admin(&sluice).await;
    let pauser = admin(&sluice).await;
    let in_transaction = connect(&sluice, a).await;
    in_transaction.batch_execute("BEGIN").await.expect("BEGIN");
    scalar(&in_transaction, "SELECT 1").await;
    let later = connect(&sluice, a).await;
    let other = connect(&sluice, b).await;

    // PAUSE marks the database at once, but returns only once its transaction is over.
    let pause_sql = format!("PAUSE {}", a.database);
    let pausing = tokio::spawn(async move {
        console(&pauser, &pause_sql).await;
        pauser
    });
    let databases = console_until(&watcher, "SHOW DATABASES", "PAUSE taking effect", |r| {
        r.row_where("name", &a.database).int("paused") == 1
    })
    .await;
    assert_eq!(databases.row_where("name", &b.database).int("paused"), 0);
    assert!(
        !pausing.is_finished(),
        "PAUSE returned while a transaction of the database was open"
    );
    assert_eq!(
        scalar(&in_transaction, "SELECT 'inside'").await.as_deref(),
        Some("inside"),
        "the running transaction must go on"
    );
    in_transaction
        .batch_execute("COMMIT")
        .await
        .expect("COMMIT");
    let pauser = tokio::time::timeout(PROMPTLY, pausing)
        .await
        .expect("PAUSE did not return after the transaction ended")
        .expect("pause task");

    // A new transaction of the paused database waits; the other database runs.
    let held = tokio::spawn(async move { scalar(&later, "SELECT 'after resume'").await });
    console_until(&watcher, "SHOW POOLS", "the held client waiting", |r| {
        r.row_where("database", &a.database).int("cl_waiting") == 1
    })
    .await;
    let other_ran = tokio::time::timeout(PROMPTLY, scalar(&other, "SELECT 'other db'")).await;
    assert_eq!(
        other_ran
            .expect("the other database was held too")
            .as_deref(),
        Some("other db")
    );
    let pools = console(&watcher, "SHOW POOLS").await;
    assert_eq!(
        pools.row_where("database", &a.database).int("cl_waiting"),
        1
    );
    assert!(!held.is_finished(), "a query ran in a paused database");
    // Pausing one database does not make the process unready.
    assert_eq!(http_get(sluice.metrics_addr(), "/readyz").status, 200);

    console(&pauser, &format!("RESUME {}", a.database)).await;
    let resumed = tokio::time::timeout(PROMPTLY, held)
        .await
        .expect("the held query did not run after RESUME")
        .expect("held task");
    assert_eq!(resumed.as_deref(), Some("after resume"));
    let databases = console(&watcher, "SHOW DATABASES").await;
    assert_eq!(databases.row_where("name", &a.database).int("paused"), 0);

    for sql in ["PAUSE no_such_db", "RESUME no_such_db"] {
        let e = try_console(&watcher, sql).await.expect_err(sql);
        assert!(e.as_db_error().is_some(), "{sql}: {}", error_text(&e));
    }
    assert_eq!(console(&watcher, "SHOW VERSION").await.rows.len(), 1);
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_db_disconnects_that_databases_clients_only() {
    let (tenants, mut sluice) = start(&["adm_kill_a", "adm_kill_b"], |t| t.pool_size(2), |c| c);
    let (a, b) = (&tenants[0], &tenants[1]);
    let admin = admin(&sluice).await;
    let setup = connect(&sluice, a).await;
    setup
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .expect("CREATE TABLE");
    drop(setup);
    let mut idle = raw_login(&sluice, a).await;
    let mut in_transaction = raw_login(&sluice, a).await;
    in_transaction
        .send(&query("BEGIN; INSERT INTO t VALUES (1)"))
        .await;
    in_transaction.read_until_ready().await;
    let mut bystander = raw_login(&sluice, b).await;

    console(&admin, &format!("KILL {}", a.database)).await;
    idle.expect_error_then_eof("57P01").await;
    in_transaction.expect_error_then_eof("57P01").await;
    assert_eq!(
        raw_scalar(&mut bystander, "SELECT 'still here'")
            .await
            .as_deref(),
        Some("still here")
    );
    console_until(&admin, "SHOW CLIENTS", "the killed clients gone", |r| {
        r.rows_where("database", &a.database).count() == 0
            && r.rows_where("database", &b.database).count() == 1
    })
    .await;

    // The killed transaction was rolled back, and nothing of it is left open.
    let open = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = {} \
         AND state LIKE 'idle in transaction%'",
        literal(&a.user)
    );
    let closed = poll_until(PROMPTLY, POLL, || {
        (superuser(a, &open) == "0").then_some(())
    });
    assert!(
        closed.is_some(),
        "the killed client's transaction is still open"
    );
    let fresh = connect(&sluice, a).await;
    assert_eq!(
        scalar(&fresh, "SELECT count(*) FROM t").await.as_deref(),
        Some("0"),
        "the killed transaction's row is there"
    );

    let e = try_console(&admin, "KILL no_such_db")
        .await
        .expect_err("KILL of an unknown database");
    assert!(e.as_db_error().is_some(), "{}", error_text(&e));
    assert_eq!(console(&admin, "SHOW VERSION").await.rows.len(), 1);
    assert_alive(&mut sluice);
}

/// A sluice whose drain would wait 60 s for open transactions: far longer than the tests
/// wait, so an exit must come from the drain finishing.
fn start_for_shutdown(name: &str) -> (TenantDb, Sluice) {
    let (mut tenants, sluice) = start(
        &[name],
        |t| t,
        |mut c| {
            c.shutdown_timeout = Some("60s".into());
            c
        },
    );
    (tenants.remove(0), sluice)
}

/// SHUTDOWN answers, then: the log says why, /readyz turns 503.
/// True when `GET /readyz` on `addr` gets a 200; a refused or cut connection is false.
fn answers_ready(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, PROMPTLY) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(PROMPTLY));
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_end(&mut response).is_ok()
        && response.starts_with(b"HTTP/1.1 200")
}

async fn shut_down(sluice: &Sluice, admin: &tokio_postgres::Client) {
    let result = console(admin, "SHUTDOWN").await;
    assert!(result.columns.is_empty());
    sluice.wait_for_log("SHUTDOWN requested on the admin console", PROMPTLY);
    // Draining sluice answers 503; with nothing left to drain it may already be gone.
    let not_ready = poll_until(PROMPTLY, POLL, || {
        (!answers_ready(sluice.metrics_addr())).then_some(())
    });
    assert!(not_ready.is_some(), "/readyz still 200 after SHUTDOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_sluice_exits_0() {
    let (tenant, mut sluice) = start_for_shutdown("adm_shutdown");
    let mut idle = raw_login(&sluice, &tenant).await;
    let admin = admin(&sluice).await;
    shut_down(&sluice, &admin).await;
    // As SIGTERM does (README): no new clients, idle ones get 57P01 at once.
    let refused = poll_until(PROMPTLY, POLL, || {
        std::net::TcpStream::connect_timeout(&sluice.addr(), PROMPTLY)
            .is_err()
            .then_some(())
    });
    assert!(refused.is_some(), "still accepting clients after SHUTDOWN");
    idle.expect_error_then_eof("57P01").await;
    drop(admin);
    let status = sluice
        .wait_exit(PROMPTLY)
        .expect("sluice still running after SHUTDOWN once every client left");
    assert!(status.success(), "sluice exited with {status}");
}

/// README: SHUTDOWN drains as SIGTERM does, and every session holding no transaction ends
/// at once; the console session that sent SHUTDOWN holds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_the_console_session() {
    let (_tenant, mut sluice) = start_for_shutdown("adm_shutdown_console");
    let admin = admin(&sluice).await;
    shut_down(&sluice, &admin).await;
    let exited = sluice.wait_exit(PROMPTLY);
    let answered = try_console(&admin, "SHOW VERSION").await.is_ok();
    let status = exited.unwrap_or_else(|| {
        panic!(
            "sluice still running {PROMPTLY:?} after SHUTDOWN while the console session that \
             sent it stays connected (it still answers queries: {answered}); the drain does \
             not end admin sessions, so SHUTDOWN from psql waits for shutdown_timeout"
        )
    });
    assert!(status.success(), "sluice exited with {status}");
    assert!(!answered, "the console answered after sluice exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_are_42601_and_the_session_goes_on() {
    let (_tenants, mut sluice) = start(&["adm_unknown"], |t| t, |c| c);
    let admin = admin(&sluice).await;
    for sql in [
        "FOO",
        "SELECT 1",
        "SET server_reset_query = ''",
        "SHOW NOTHING",
        "SHOW",
        "KILL",
        "RELOAD now",
        "SHOW POOLS; SHOW STATS",
        "PAUSE \"unterminated",
    ] {
        let e = try_console(&admin, sql)
            .await
            .expect_err("an unknown command succeeded");
        assert_eq!(sqlstate(&e), Some("42601"), "{sql}: {}", error_text(&e));
        assert_eq!(
            console(&admin, "SHOW VERSION").await.rows.len(),
            1,
            "the session did not go on after {sql:?}"
        );
    }
    // An empty query is no error.
    assert!(console(&admin, "").await.rows.is_empty());

    let out = psql_console(&sluice, "sluice", "FOO");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown command"), "{stderr}");
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_get_the_console() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("adm_refuse");
    let config = SluiceConfig::new(pg)
        .admin(ADMIN, ADMIN_PASSWORD)
        .tenant(Tenant::new(&tenant));
    let mut sluice = Sluice::start(&config);
    for db in CONSOLE_DATABASES {
        let e = refused_login(&sluice, &tenant.user, &tenant.password, db).await;
        assert_eq!(
            sqlstate(&e),
            Some("28000"),
            "tenant on {db}: {}",
            error_text(&e)
        );
        let e = refused_login(&sluice, "no_such_role", "whatever", db).await;
        assert_eq!(
            sqlstate(&e),
            Some("28000"),
            "unknown on {db}: {}",
            error_text(&e)
        );
        let e = refused_login(&sluice, ADMIN, "not-the-password", db).await;
        assert_eq!(
            sqlstate(&e),
            Some("28P01"),
            "bad password on {db}: {}",
            error_text(&e)
        );
        let admin = console_login(&sluice, ADMIN, ADMIN_PASSWORD, db).await;
        assert_eq!(console(&admin, "SHOW VERSION").await.rows.len(), 1);
    }
    // psql gets the same refusal.
    let mut cmd = pg_command("psql", &tenant.password);
    cmd.args(["-X", "-d"])
        .arg(conninfo(&sluice, &tenant.user, "sluice"))
        .args(["-c", "SHOW POOLS"]);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(60));
    assert!(!out.status.success(), "a tenant's role got the console");
    // The tenant itself is unaffected.
    let client = connect(&sluice, &tenant).await;
    assert_eq!(scalar(&client, "SELECT 1").await.as_deref(), Some("1"));
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_on_the_console_is_an_error_not_a_hang() {
    let (_tenants, mut sluice) = start(
        &["adm_extended"],
        |t| t,
        // md5 for the admin too, so the raw client can log in.
        |mut c| {
            c.defaults.auth_type = Some("md5".into());
            c
        },
    );
    let console_client = admin(&sluice).await;
    let answered =
        tokio::time::timeout(PROMPTLY, console_client.query("SELECT $1::int", &[&1i32])).await;
    let result = answered.expect("the extended protocol hung the console");
    assert!(
        result.is_err(),
        "the extended protocol worked on the console"
    );

    // Exactly what comes back: an ErrorResponse (08P01), then the close.
    let mut raw = RawConn::login_md5(sluice.addr(), ADMIN, ADMIN_PASSWORD, "sluice").await;
    let mut messages = parse("", "SHOW POOLS", &[]);
    messages.extend(sync());
    raw.send(&messages).await;
    match raw.next_within(READ_TIMEOUT).await {
        Next::Message(b'E', body) => {
            let fields = error_fields(&body);
            assert_eq!(field(&fields, b'C'), "08P01", "{fields:?}");
            raw.expect_eof().await;
        }
        Next::Message(tag, body) => panic!(
            "expected an ErrorResponse, got '{}' {:?}",
            tag.escape_ascii(),
            error_fields(&body)
        ),
        Next::Eof => panic!("the console closed the connection without an ErrorResponse"),
    }

    // The console is fine for the next admin.
    let next = admin(&sluice).await;
    assert_eq!(console(&next, "SHOW VERSION").await.rows.len(), 1);
    assert_alive(&mut sluice);
}
