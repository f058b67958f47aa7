//! Dynamic tenants with `auth_query`: roles unknown to sluice's configuration log in with
//! the password their database returns through a SECURITY DEFINER lookup function, and
//! sluice logs in to PostgreSQL as them with SCRAM pass-through (no plaintext password
//! anywhere in its configuration). Read-only routes land on the reader cluster.
//!
//! The shared server's pg_hba asks for SCRAM on TCP, so md5 pass-through is covered by unit
//! tests (`server::connect` against a scripted server) rather than here. Read-only routes
//! are checked twice: against a real streaming standby (`pg_is_in_recovery()`), and, for
//! configured tenants' routes too, against the primary reached as `localhost`, where
//! `SHOW DATABASES` tells the clusters apart.

use std::time::{Duration, Instant};

use crate::common::{assert_alive, console, console_login, identity, refused_login};
use crate::harness::{
    connect, error_text, ident, literal, psql, psql_ok, random_token, sqlstate, try_connect,
    Cluster, Postgres, Sluice, SluiceConfig, Tenant, TenantDb,
};

const ADMIN: &str = "authq_admin";
const ADMIN_PASSWORD: &str = "authq-admin-secret";
/// How long an answer is cached in these tests: short, so changes show quickly.
const CACHE_TTL: &str = "1s";
/// Bound for waiting on something the cache TTL should bring about.
const WITHIN_TTL: Duration = Duration::from_secs(15);

/// A database with a `pgbouncer.get_auth` lookup function, and the auth user allowed to
/// call it (and nothing else).
struct AuthDb {
    db: TenantDb,
    auth_user: String,
    auth_password: String,
}

impl AuthDb {
    fn new(pg: &Postgres, name: &str) -> AuthDb {
        let db = pg.create_tenant(name);
        let auth_user = format!("{}_auth", db.user);
        let auth_password = random_token();
        pg.query_as_superuser(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            ident(&auth_user),
            literal(&auth_password)
        ));
        let function = format!(
            "CREATE SCHEMA pgbouncer; \
             CREATE FUNCTION pgbouncer.get_auth(p_user text) \
               RETURNS TABLE(username text, password text) \
               LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS \
               $$ SELECT rolname::text, rolpassword::text FROM pg_catalog.pg_authid \
                  WHERE rolname = p_user AND rolcanlogin \
                  AND (rolvaliduntil IS NULL OR rolvaliduntil > now()) $$; \
             REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC; \
             GRANT USAGE ON SCHEMA pgbouncer TO {auth}; \
             GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO {auth};",
            auth = ident(&auth_user)
        );
        pg.query_as_superuser_in(&db.database, &function);
        AuthDb {
            db,
            auth_user,
            auth_password,
        }
    }

    /// `[clusters.main]` lines making `self.db` a database of dynamic tenants.
    fn cluster_lines(&self, query: &str) -> Vec<String> {
        vec![
            format!("auth_user = {}", toml_str(&self.auth_user)),
            format!("auth_password = {}", toml_str(&self.auth_password)),
            format!("auth_query = {}", toml_str(query)),
            format!("auth_databases = [{}]", toml_str(&self.db.database)),
            format!("auth_cache_ttl = {}", toml_str(CACHE_TTL)),
        ]
    }

    fn config(&self, pg: &Postgres, query: &str) -> SluiceConfig {
        let mut config = SluiceConfig::new(pg).admin(ADMIN, ADMIN_PASSWORD);
        config.cluster_mut("main").extra = self.cluster_lines(query);
        config
    }

    /// A new LOGIN role (SCRAM verifier, as `password_encryption` says) with its password.
    fn create_role(&self, pg: &Postgres, name: &str) -> TenantDb {
        let user = format!("{}_{name}", self.db.user);
        let password = random_token();
        pg.query_as_superuser(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            ident(&user),
            literal(&password)
        ));
        TenantDb {
            database: self.db.database.clone(),
            user,
            password,
        }
    }
}

const LOOKUP: &str = "SELECT username, password FROM pgbouncer.get_auth($1)";

fn toml_str(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Polls `attempt` every 100 ms until it returns `Some`, for at most `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(done) = attempt().await {
            return done;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_created_after_start_logs_in_with_scram_pass_through() {
    let pg = Postgres::shared();
    let auth = AuthDb::new(pg, "authq_new_role");
    let mut sluice = Sluice::start(&auth.config(pg, LOOKUP));
    let role = auth.create_role(pg, "late");

    let client = connect(&sluice, &role).await;
    assert_eq!(
        identity(&client).await,
        (role.user.clone(), role.database.clone())
    );
    // Several server connections at once: each new one logs in with the learned keys.
    let (a, b) = (connect(&sluice, &role).await, connect(&sluice, &role).await);
    for c in [&a, &b] {
        c.batch_execute("BEGIN").await.expect("BEGIN");
    }
    let mut pids = Vec::new();
    for c in [&a, &b] {
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        pids.push(pid);
    }
    assert_ne!(pids[0], pids[1], "two transactions, two server connections");
    for c in [&a, &b] {
        c.batch_execute("COMMIT").await.expect("COMMIT");
    }
    let out = psql_ok(
        &sluice,
        &role.user,
        &role.password,
        &role.database,
        "SELECT current_user",
    );
    assert_eq!(out, role.user);

    let config = std::fs::read_to_string(sluice.config_path()).unwrap();
    assert!(!config.contains(&role.password));
    let verifier = pg.scram_verifier(&role.user);
    assert!(
        !config.contains(&verifier),
        "no verifier in the config either"
    );

    let wrong = refused_login(&sluice, &role.user, "not-the-password", &role.database).await;
    assert_eq!(sqlstate(&wrong), Some("28P01"), "{}", error_text(&wrong));
    let unknown = refused_login(&sluice, "authq_nobody", "whatever", &role.database).await;
    assert_eq!(
        sqlstate(&unknown),
        Some("28P01"),
        "{}",
        error_text(&unknown)
    );
    assert_eq!(
        error_text(&unknown).replace("authq_nobody", "U"),
        error_text(&wrong).replace(&role.user, "U"),
        "an unknown role is refused exactly like a wrong password"
    );
    let bad_psql = psql(&sluice, &role.user, "nope", &role.database, "SELECT 1");
    assert!(!bad_psql.status.success());

    let log = sluice.log();
    for secret in [&role.password, &auth.auth_password] {
        assert!(
            !log.contains(secret.as_str()),
            "a password in the log:\n{log}"
        );
    }
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_passwords_and_dropped_roles_take_effect_within_the_cache_ttl() {
    let pg = Postgres::shared();
    let auth = AuthDb::new(pg, "authq_changes");
    let mut sluice = Sluice::start(&auth.config(pg, LOOKUP));
    let role = auth.create_role(pg, "changing");
    drop(connect(&sluice, &role).await);

    let new_password = random_token();
    pg.query_as_superuser(&format!(
        "ALTER ROLE {} PASSWORD {}",
        ident(&role.user),
        literal(&new_password)
    ));
    eventually(WITHIN_TTL, "the old password refused", || async {
        match try_connect(&sluice, &role.user, &role.password, &role.database).await {
            Err(e) if sqlstate(&e) == Some("28P01") => Some(()),
            _ => None,
        }
    })
    .await;
    let renewed = TenantDb {
        password: new_password,
        ..role.clone()
    };
    // A login with the new password refreshes the keys sluice logs in to the server with.
    let client = connect(&sluice, &renewed).await;
    assert_eq!(identity(&client).await.0, role.user);
    drop(client);

    pg.query_as_superuser(&format!("DROP ROLE {}", ident(&role.user)));
    eventually(WITHIN_TTL, "the dropped role refused", || async {
        match try_connect(&sluice, &renewed.user, &renewed.password, &role.database).await {
            Err(e) if sqlstate(&e) == Some("28P01") => Some(()),
            _ => None,
        }
    })
    .await;
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_auth_query_is_a_clear_error_and_other_tenants_carry_on() {
    let pg = Postgres::shared();
    let auth = AuthDb::new(pg, "authq_broken");
    let other = pg.create_tenant("authq_bystander");
    let config = auth
        .config(
            pg,
            "SELECT username, password FROM pgbouncer.no_such_function($1)",
        )
        .tenant(Tenant::new(&other));
    let mut sluice = Sluice::start(&config);
    let role = auth.create_role(pg, "stranded");

    for _ in 0..2 {
        let e = refused_login(&sluice, &role.user, &role.password, &role.database).await;
        assert_eq!(sqlstate(&e), Some("08006"), "{}", error_text(&e));
        assert!(
            error_text(&e).contains("auth_query failed"),
            "{}",
            error_text(&e)
        );
    }
    let client = connect(&sluice, &other).await;
    assert_eq!(
        identity(&client).await,
        (other.user.clone(), other.database.clone())
    );
    sluice.wait_for_log("no_such_function", Duration::from_secs(5));
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_pg_shadow_query_works_for_a_superuser_auth_user() {
    let pg = Postgres::shared();
    let db = pg.create_tenant("authq_shadow");
    let mut config = SluiceConfig::new(pg);
    config.cluster_mut("main").extra = vec![
        "auth_user = \"postgres\"".to_owned(),
        format!("auth_password = {}", toml_str(pg.superuser_password())),
        format!("auth_databases = [{}]", toml_str(&db.database)),
    ];
    let sluice = Sluice::start(&config);
    let client = connect(&sluice, &db).await;
    assert_eq!(
        identity(&client).await,
        (db.user.clone(), db.database.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_routes_land_on_the_reader_cluster() {
    let pg = Postgres::shared();
    let auth = AuthDb::new(pg, "authq_reader");
    let configured = pg.create_tenant("authq_configured_ro");
    let configured_ro = format!("{}-ro", configured.database);
    let mut config = auth.config(pg, LOOKUP).tenant(
        Tenant::new(&configured)
            .line(&format!(
                "read_only_database = {}",
                toml_str(&configured_ro)
            ))
            .line("read_only_cluster = \"reader\""),
    );
    config.cluster_mut("main").extra.extend([
        "read_only_suffix = \"-ro\"".to_owned(),
        "read_only_cluster = \"reader\"".to_owned(),
    ]);
    let config = config.cluster(Cluster::new("reader", "localhost", pg.port()));
    let mut sluice = Sluice::start(&config);
    let role = auth.create_role(pg, "reader");
    let dynamic_ro = format!("{}-ro", role.database);

    let on_reader = TenantDb {
        database: dynamic_ro.clone(),
        ..role.clone()
    };
    let client = connect(&sluice, &on_reader).await;
    assert_eq!(
        identity(&client).await,
        (role.user.clone(), role.database.clone()),
        "the -ro route logs in to the database without the suffix"
    );
    let primary = connect(&sluice, &role).await;
    assert_eq!(identity(&primary).await.1, role.database);
    let configured_client = connect(
        &sluice,
        &TenantDb {
            database: configured_ro.clone(),
            ..configured.clone()
        },
    )
    .await;
    assert_eq!(identity(&configured_client).await.1, configured.database);

    let admin = console_login(&sluice, ADMIN, ADMIN_PASSWORD, "sluice").await;
    let databases = console(&admin, "SHOW DATABASES").await;
    let host_of = |name: &str| databases.row_where("name", name).get("host").to_owned();
    assert_eq!(host_of(&dynamic_ro), "localhost");
    assert_eq!(host_of(&role.database), "127.0.0.1");
    assert_eq!(host_of(&configured_ro), "localhost");
    assert_eq!(host_of(&configured.database), "127.0.0.1");
    let route = databases.row_where("name", &dynamic_ro);
    assert_eq!(route.get("database"), role.database);
    assert_alive(&mut sluice);
}

/// How many `SHOW POOLS` rows name `user`.
async fn pools_of(admin: &tokio_postgres::Client, user: &str) -> usize {
    console(admin, "SHOW POOLS")
        .await
        .rows_where("user", user)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_tenants_survive_a_reload_and_idle_ones_are_dropped() {
    let pg = Postgres::shared();
    let auth = AuthDb::new(pg, "authq_lifecycle");
    let mut config = auth.config(pg, LOOKUP);
    config
        .cluster_mut("main")
        .extra
        .push("dynamic_tenant_idle_timeout = \"1s\"".to_owned());
    config
        .defaults
        .extra
        .push("server_idle_timeout = \"1s\"".to_owned());
    let mut sluice = Sluice::start(&config);
    let admin = console_login(&sluice, ADMIN, ADMIN_PASSWORD, "sluice").await;
    let role = auth.create_role(pg, "lifecycle");

    let client = connect(&sluice, &role).await;
    assert_eq!(identity(&client).await.0, role.user);
    assert_eq!(pools_of(&admin, &role.user).await, 1);
    sluice
        .reload_and_wait(Duration::from_secs(10))
        .expect("reload");
    assert_eq!(
        identity(&client).await.0,
        role.user,
        "the client keeps working across the reload"
    );
    assert_eq!(pools_of(&admin, &role.user).await, 1, "carried over");

    // While a client is connected the tenant stays, however long it is idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pools_of(&admin, &role.user).await, 1);
    drop(client);
    eventually(WITHIN_TTL, "the idle dynamic tenant dropped", || async {
        (pools_of(&admin, &role.user).await == 0).then_some(())
    })
    .await;
    // And made again at the next login.
    let client = connect(&sluice, &role).await;
    assert_eq!(identity(&client).await.0, role.user);
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_route_reaches_a_streaming_standby() {
    let pg = Postgres::shared();
    let standby = Postgres::shared_standby();
    let auth = AuthDb::new(pg, "authq_standby");
    let mut config = auth.config(pg, LOOKUP);
    config.cluster_mut("main").extra.extend([
        "read_only_suffix = \"-ro\"".to_owned(),
        "read_only_cluster = \"reader\"".to_owned(),
    ]);
    let config = config.cluster(Cluster::new("reader", "127.0.0.1", standby.port()));
    let mut sluice = Sluice::start(&config);
    let role = auth.create_role(pg, "replica_reader");
    let on_reader = TenantDb {
        database: format!("{}-ro", role.database),
        ..role.clone()
    };

    // The role (created on the primary) reaches the standby after the replication delay.
    let reader = eventually(WITHIN_TTL, "a login through the -ro route", || async {
        let client = try_connect(
            &sluice,
            &on_reader.user,
            &on_reader.password,
            &on_reader.database,
        )
        .await
        .ok()?;
        scalar_ok(&client, "SELECT 1").await.map(|_| client)
    })
    .await;
    assert_eq!(
        scalar_ok(&reader, "SELECT pg_is_in_recovery()::text")
            .await
            .as_deref(),
        Some("true")
    );
    assert_eq!(
        identity(&reader).await,
        (role.user.clone(), role.database.clone())
    );
    let writer = connect(&sluice, &role).await;
    assert_eq!(
        scalar_ok(&writer, "SELECT pg_is_in_recovery()::text")
            .await
            .as_deref(),
        Some("false")
    );
    assert_alive(&mut sluice);
}

/// The first column of the first row, or `None` on any error (the role may not have
/// reached the standby yet: its server login fails).
async fn scalar_ok(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let messages = client.simple_query(sql).await.ok()?;
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}
