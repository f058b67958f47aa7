//! Operating sluice: reloads that add and remove tenants under a running transaction,
//! SIGTERM in the middle of a transaction, passwords given as references (`{ env = … }`,
//! `{ file = … }`; tests named `secrets_*`), and no password ever written to the log.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::common::{
    assert_alive, console, console_login, refused_login, scalar, try_console, wait_until_running,
    PROMPTLY,
};
use crate::harness::{
    connect, error_text, literal, sqlstate, Postgres, Sluice, SluiceConfig, Tenant, TenantDb,
};

/// A table `t (x int)` in the tenant's database that the tenant may write.
fn create_table(tenant: &TenantDb) {
    let pg = Postgres::shared();
    pg.query_as_superuser_in(
        &tenant.database,
        &format!(
            "CREATE TABLE t (x int); GRANT ALL ON t TO {}",
            crate::harness::ident(&tenant.user)
        ),
    );
}

/// Rows in the tenant's table `t`, counted by the superuser straight on PostgreSQL.
fn committed_rows(tenant: &TenantDb) -> String {
    Postgres::shared().query_as_superuser_in(&tenant.database, "SELECT count(*) FROM t")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_tenants_while_a_transaction_stays_open() {
    let pg = Postgres::shared();
    let kept = pg.create_tenant("ops_reload_kept");
    let removed = pg.create_tenant("ops_reload_removed");
    let added = pg.create_tenant("ops_reload_added");
    create_table(&kept);
    let config = SluiceConfig::new(pg)
        .tenant(Tenant::new(&kept))
        .tenant(Tenant::new(&removed));
    let mut sluice = Sluice::start(&config);

    let e = refused_login(&sluice, &added.user, &added.password, &added.database).await;
    assert_eq!(sqlstate(&e), Some("3D000"), "{}", error_text(&e));
    let open = connect(&sluice, &kept).await;
    open.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("BEGIN");
    let xid = scalar(&open, "SELECT txid_current()").await;

    let mut next = config.clone();
    next.tenants.retain(|t| t.database != removed.database);
    let next = next.tenant(Tenant::new(&added));
    sluice.write_config(&next);
    sluice
        .reload_and_wait(PROMPTLY)
        .unwrap_or_else(|log| panic!("reload refused:\n{log}"));

    // The added tenant logs in; the removed one is unknown now.
    let newcomer = connect(&sluice, &added).await;
    assert_eq!(
        scalar(&newcomer, "SELECT current_user").await.as_deref(),
        Some(added.user.as_str())
    );
    let e = refused_login(&sluice, &removed.user, &removed.password, &removed.database).await;
    assert_eq!(sqlstate(&e), Some("3D000"), "{}", error_text(&e));

    // The transaction opened before the reload is the same one, and commits.
    assert_eq!(scalar(&open, "SELECT txid_current()").await, xid);
    assert_eq!(committed_rows(&kept), "0", "uncommitted row visible");
    open.batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .unwrap_or_else(|e| panic!("COMMIT after the reload: {}", error_text(&e)));
    assert_eq!(committed_rows(&kept), "2");
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_two_second_transaction_commit_then_exits_0() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("ops_sigterm");
    create_table(&tenant);
    let mut config = SluiceConfig::new(pg).tenant(Tenant::new(&tenant));
    // Far longer than the transaction: the exit must come from the drain finishing.
    config.shutdown_timeout = Some("60s".into());
    let mut sluice = Sluice::start(&config);

    let client = Arc::new(connect(&sluice, &tenant).await);
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("BEGIN");
    let sleeper = client.clone();
    let sleep = tokio::spawn(async move { sleeper.batch_execute("SELECT pg_sleep(2)").await });
    wait_until_running(&tenant, "SELECT pg_sleep(2)");
    assert!(sluice.terminate(), "SIGTERM not delivered");

    sleep
        .await
        .expect("sleep task")
        .unwrap_or_else(|e| panic!("the query running at SIGTERM: {}", error_text(&e)));
    assert!(
        sluice.try_exit_status().is_none(),
        "sluice exited with a transaction open"
    );
    client
        .batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .unwrap_or_else(|e| panic!("finishing the transaction: {}", error_text(&e)));
    assert_eq!(committed_rows(&tenant), "2");

    let status = sluice.wait_exit(PROMPTLY).unwrap_or_else(|| {
        panic!(
            "sluice still running after the last transaction:\n{}",
            sluice.log()
        )
    });
    assert!(status.success(), "sluice exited with {status}");
    assert!(
        sluice.log().contains("SIGTERM received"),
        "{}",
        sluice.log()
    );
    drop(client);
}

/// A TOML inline table referring to environment variable `name`.
fn from_env(name: &str) -> String {
    format!("{{ env = {} }}", toml_string(name))
}

/// A TOML inline table referring to file `path`.
fn from_file(path: &std::path::Path) -> String {
    format!("{{ file = {} }}", toml_string(&path.to_string_lossy()))
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Tenant `db` whose `password` line is `value` (raw TOML).
fn tenant_with_password(db: &TenantDb, value: &str) -> Tenant {
    Tenant {
        password: None,
        ..Tenant::new(db)
    }
    .line(&format!("password = {value}"))
}

/// Logs in as `tenant` and checks who the server says it is.
async fn logs_in(sluice: &Sluice, tenant: &TenantDb) -> Client {
    let client = connect(sluice, tenant).await;
    assert_eq!(
        scalar(&client, "SELECT current_user").await.as_deref(),
        Some(tenant.user.as_str())
    );
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_env_and_file() {
    let pg = Postgres::shared();
    let by_env = pg.create_tenant("ops_secret_env");
    let by_file = pg.create_tenant("ops_secret_file");
    let by_verifier = pg.create_tenant("ops_secret_server");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("password");
    // As `echo "$PASSWORD" > file` writes it: one trailing newline, not part of the secret.
    std::fs::write(&file, format!("{}\n", by_file.password)).expect("password file");
    let server_file = dir.path().join("server-password");
    std::fs::write(&server_file, &by_verifier.password).expect("password file");

    let env_name = format!("OPS_SECRET_{}", by_env.user.to_uppercase());
    let config = SluiceConfig::new(pg)
        .env(&env_name, &by_env.password)
        .tenant(tenant_with_password(&by_env, &from_env(&env_name)))
        .tenant(tenant_with_password(&by_file, &from_file(&file)))
        // Clients are checked against the verifier; sluice logs in to PostgreSQL with the
        // password from the file.
        .tenant(
            Tenant::new(&by_verifier)
                .password(&pg.scram_verifier(&by_verifier.user))
                .line(&format!("server_password = {}", from_file(&server_file))),
        );
    let mut sluice = Sluice::start(&config);

    logs_in(&sluice, &by_env).await;
    logs_in(&sluice, &by_file).await;
    logs_in(&sluice, &by_verifier).await;
    let e = refused_login(&sluice, &by_env.user, "wrong", &by_env.database).await;
    assert_eq!(sqlstate(&e), Some("28P01"), "{}", error_text(&e));

    let log = sluice.log();
    for secret in [&by_env.password, &by_file.password, &by_verifier.password] {
        assert!(
            !log.contains(secret.as_str()),
            "a secret in the log:\n{log}"
        );
    }
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_file_is_reread_on_reload() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("ops_secret_rotate");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("password");
    std::fs::write(&file, &tenant.password).expect("password file");
    let config = SluiceConfig::new(pg).tenant(tenant_with_password(&tenant, &from_file(&file)));
    let mut sluice = Sluice::start(&config);
    logs_in(&sluice, &tenant).await;

    // Rotate: PostgreSQL first, then the file, then reload.
    let rotated = TenantDb {
        password: format!("{}-rotated", tenant.password),
        ..tenant.clone()
    };
    pg.query_as_superuser(&format!(
        "ALTER ROLE {} PASSWORD {}",
        crate::harness::ident(&tenant.user),
        literal(&rotated.password)
    ));
    std::fs::write(&file, &rotated.password).expect("password file");
    sluice
        .reload_and_wait(PROMPTLY)
        .unwrap_or_else(|log| panic!("reload refused:\n{log}"));

    logs_in(&sluice, &rotated).await;
    let e = refused_login(&sluice, &tenant.user, &tenant.password, &tenant.database).await;
    assert_eq!(sqlstate(&e), Some("28P01"), "{}", error_text(&e));
    assert_alive(&mut sluice);
}

/// Passwords of every kind go through sluice — right and wrong, client and server side,
/// tenants and admins, md5 and SCRAM — with a successful reload and failed ones (a TOML
/// syntax error on a password's own line, a validation error) at debug log level; none of
/// them may appear in sluice's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_in_logs() {
    let pg = Postgres::shared();
    let scram = pg.create_tenant("ops_nolog_scram");
    let md5 = pg.create_tenant("ops_nolog_md5");
    let verifier = pg.create_tenant("ops_nolog_verifier");
    let bad_server = pg.create_tenant("ops_nolog_bad_server");
    let token = |what: &str| format!("{what}-{}", crate::harness::random_token());
    let admin_password = token("admin");
    let wrong = token("wrong");
    let wrong_server = token("wrong-server");
    let reload_only = token("reload-only");
    let config = SluiceConfig::new(pg)
        .env("SLUICE_LOG", "debug")
        .admin("nolog_admin", &admin_password)
        .tenant(Tenant::new(&scram))
        .tenant(Tenant::new(&md5).auth_type("md5"))
        .tenant(
            Tenant::new(&verifier)
                .password(&pg.scram_verifier(&verifier.user))
                .server_password(&verifier.password),
        )
        .tenant(
            Tenant::new(&bad_server)
                .password(&pg.scram_verifier(&bad_server.user))
                .server_password(&wrong_server),
        );
    let mut sluice = Sluice::start(&config);

    // Right and wrong passwords, SCRAM and md5, tenants and the admin console.
    for tenant in [&scram, &md5, &verifier] {
        let client = logs_in(&sluice, tenant).await;
        drop(client);
        let e = refused_login(&sluice, &tenant.user, &wrong, &tenant.database).await;
        assert_eq!(sqlstate(&e), Some("28P01"), "{}", error_text(&e));
    }
    // The server refuses sluice's (wrong) server password.
    let e = refused_login(
        &sluice,
        &bad_server.user,
        &bad_server.password,
        &bad_server.database,
    )
    .await;
    assert!(e.as_db_error().is_some(), "{}", error_text(&e));
    let e = refused_login(&sluice, "nolog_admin", &wrong, "sluice").await;
    assert_eq!(sqlstate(&e), Some("28P01"), "{}", error_text(&e));
    let admin = console_login(&sluice, "nolog_admin", &admin_password, "sluice").await;

    // A successful reload that brings a new password, then two failed ones.
    let reloaded = config.clone().tenant(
        Tenant::new(&TenantDb {
            database: "nolog_paper".into(),
            user: "nolog_paper".into(),
            password: reload_only.clone(),
        })
        .auth_type("md5"),
    );
    sluice.write_config(&reloaded);
    sluice
        .reload_and_wait(PROMPTLY)
        .unwrap_or_else(|log| panic!("reload refused:\n{log}"));
    let broken_line = format!("password = \"{reload_only}\" \"{wrong}\"");
    let syntax_error = reloaded.clone().tenant(
        Tenant {
            password: None,
            ..Tenant::new(&scram)
        }
        .line(&broken_line),
    );
    sluice.write_config(&syntax_error);
    assert!(
        sluice.reload_and_wait(PROMPTLY).is_err(),
        "a config with a TOML syntax error was loaded"
    );
    let mut invalid = reloaded.clone();
    invalid.tenants.push(Tenant {
        cluster: "nowhere".into(),
        ..Tenant::new(&TenantDb {
            database: "nolog_invalid".into(),
            user: "nolog_invalid".into(),
            password: wrong.clone(),
        })
    });
    sluice.write_config(&invalid);
    let e = try_console(&admin, "RELOAD")
        .await
        .expect_err("RELOAD of an invalid config succeeded");
    assert!(e.as_db_error().is_some(), "{}", error_text(&e));
    // Things still work with the configuration of the successful reload.
    logs_in(&sluice, &scram).await;
    console(&admin, "SHOW VERSION").await;

    let log = sluice.log();
    let passwords = [
        ("tenant (plaintext in the config)", &scram.password),
        ("md5 tenant", &md5.password),
        ("server_password", &verifier.password),
        ("client side of the verifier tenant", &bad_server.password),
        ("admin", &admin_password),
        ("wrong client password", &wrong),
        ("wrong server_password", &wrong_server),
        ("password added by reload", &reload_only),
    ];
    let leaked: Vec<String> = passwords
        .iter()
        .filter_map(|(what, pw)| {
            let line = log.lines().find(|l| l.contains(pw.as_str()))?;
            Some(format!("{what}: {line}"))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "passwords in sluice's log:\n{}",
        leaked.join("\n")
    );
    assert_alive(&mut sluice);
}
