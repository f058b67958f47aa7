//! Tenant isolation: under concurrent load every query runs as the tenant the client
//! logged in as, on that tenant's database; logins across tenants are refused; tenants
//! configured with a SCRAM verifier or for md5 authenticate exactly like PostgreSQL would.

use tokio_postgres::SimpleQueryMessage;

use crate::common::{identity, refused_login};
use crate::harness::{
    connect, error_text, psql, psql_ok, sqlstate, Postgres, Sluice, SluiceConfig, Tenant, TenantDb,
};
use crate::raw::md5_stored;

const TENANTS: usize = 6;
const CLIENTS_PER_TENANT: usize = 4;
const TRANSACTIONS_PER_CLIENT: usize = 50;

/// One client's work: `TRANSACTIONS_PER_CLIENT` rounds, each asking "who am I" in a
/// different way (explicit transaction in one query string, a transaction spread over
/// several messages, a single simple statement, a single extended-protocol statement
/// with an unnamed statement). Returns every answer that was not `expected`.
async fn who_am_i_rounds(
    client: tokio_postgres::Client,
    expected: (String, String),
) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut check = |round: usize, how: &str, got: (String, String)| {
        if got != expected {
            wrong.push(format!(
                "round {round} ({how}): got {got:?}, expected {expected:?}"
            ));
        }
    };
    for round in 0..TRANSACTIONS_PER_CLIENT {
        match round % 4 {
            0 => {
                let messages = client
                    .simple_query("BEGIN; SELECT current_user, current_database(); COMMIT")
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: {}", error_text(&e)));
                let row = messages
                    .iter()
                    .find_map(|m| match m {
                        SimpleQueryMessage::Row(row) => Some(row),
                        _ => None,
                    })
                    .expect("a row");
                let got = (
                    row.get(0).unwrap_or("").to_owned(),
                    row.get(1).unwrap_or("").to_owned(),
                );
                check(round, "BEGIN; SELECT; COMMIT", got);
            }
            1 => {
                client.batch_execute("BEGIN").await.expect("BEGIN");
                let got = identity(&client).await;
                client.batch_execute("COMMIT").await.expect("COMMIT");
                check(round, "transaction over three messages", got);
            }
            2 => check(round, "single statement", identity(&client).await),
            _ => {
                let row = client
                    .query_typed_one("SELECT current_user::text, current_database()::text", &[])
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: {}", error_text(&e)));
                check(round, "extended protocol", (row.get(0), row.get(1)));
            }
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tenants_only_ever_see_their_own_identity() {
    let pg = Postgres::shared();
    let tenants: Vec<TenantDb> = (0..TENANTS)
        .map(|i| pg.create_tenant(&format!("iso_load_{i}")))
        .collect();
    let mut config = SluiceConfig::new(pg);
    for tenant in &tenants {
        config = config.tenant(Tenant::new(tenant).pool_size(2));
    }
    let sluice = Sluice::start(&config);

    let mut clients = Vec::new();
    for tenant in &tenants {
        for _ in 0..CLIENTS_PER_TENANT {
            let expected = (tenant.user.clone(), tenant.database.clone());
            clients.push((connect(&sluice, tenant).await, expected));
        }
    }
    let workers: Vec<_> = clients
        .into_iter()
        .map(|(client, expected)| tokio::spawn(who_am_i_rounds(client, expected)))
        .collect();
    let mut wrong = Vec::new();
    for worker in workers {
        wrong.extend(worker.await.expect("a client task panicked"));
    }
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[tokio::test]
async fn logins_across_tenants_are_refused() {
    let pg = Postgres::shared();
    let a = pg.create_tenant("iso_cross_a");
    let b = pg.create_tenant("iso_cross_b");
    let config = SluiceConfig::new(pg)
        .tenant(Tenant::new(&a))
        .tenant(Tenant::new(&b));
    let sluice = Sluice::start(&config);

    let e = refused_login(&sluice, &a.user, &a.password, &b.database).await;
    assert_eq!(sqlstate(&e), Some("28000"), "{}", error_text(&e));

    let e = refused_login(&sluice, &a.user, &b.password, &a.database).await;
    assert_eq!(sqlstate(&e), Some("28P01"), "{}", error_text(&e));

    // Both still work with their own credentials.
    for tenant in [&a, &b] {
        let client = connect(&sluice, tenant).await;
        assert_eq!(
            identity(&client).await,
            (tenant.user.clone(), tenant.database.clone())
        );
    }
}

#[tokio::test]
async fn tenant_configured_by_scram_verifier() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("iso_verifier");
    let verifier = pg.scram_verifier(&tenant.user);
    let config = SluiceConfig::new(pg).tenant(
        Tenant::new(&tenant)
            .password(&verifier)
            .server_password(&tenant.password),
    );
    let sluice = Sluice::start(&config);

    let client = connect(&sluice, &tenant).await;
    assert_eq!(
        identity(&client).await,
        (tenant.user.clone(), tenant.database.clone())
    );

    let e = refused_login(&sluice, &tenant.user, "not-the-password", &tenant.database).await;
    assert_eq!(sqlstate(&e), Some("28P01"), "{}", error_text(&e));
    // The verifier itself is not a password.
    let e = refused_login(&sluice, &tenant.user, &verifier, &tenant.database).await;
    assert_eq!(sqlstate(&e), Some("28P01"), "{}", error_text(&e));
}

#[test]
fn md5_tenants_log_in_with_psql() {
    let pg = Postgres::shared();
    let plain = pg.create_tenant("iso_md5_plain");
    let hashed = pg.create_tenant("iso_md5_hashed");
    let config = SluiceConfig::new(pg)
        .tenant(Tenant::new(&plain).auth_type("md5"))
        .tenant(
            Tenant::new(&hashed)
                .auth_type("md5")
                .password(&md5_stored(&hashed.user, &hashed.password))
                .server_password(&hashed.password),
        );
    let sluice = Sluice::start(&config);

    for tenant in [&plain, &hashed] {
        let (user, db) = (&tenant.user, &tenant.database);
        let sql = "SELECT current_user, current_database()";
        let out = psql_ok(&sluice, user, &tenant.password, db, sql);
        assert_eq!(out, format!("{user}|{db}"));

        let wrong = psql(&sluice, user, "not-the-password", db, "SELECT 1");
        let stderr = String::from_utf8_lossy(&wrong.stderr);
        assert!(!wrong.status.success(), "a wrong md5 password was accepted");
        assert!(
            stderr.contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{stderr}"
        );
    }
}
