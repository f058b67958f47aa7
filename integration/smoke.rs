//! Proves the harness itself, without sluice: the throwaway PostgreSQL starts, tenants can
//! log in with SCRAM, and the config builder renders TOML that parses.

use crate::harness::{connect, psql_ok, Postgres, SluiceConfig, Tenant};

#[tokio::test]
async fn tenant_logs_in_directly_to_postgres() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("smoke");

    let client = connect(pg, &tenant).await;
    let row = client
        .query_one("SELECT current_user, current_database()", &[])
        .await
        .expect("query as the tenant");
    assert_eq!(row.get::<_, String>(0), tenant.user);
    assert_eq!(row.get::<_, String>(1), tenant.database);

    let out = psql_ok(
        pg,
        &tenant.user,
        &tenant.password,
        &tenant.database,
        "SELECT 1",
    );
    assert_eq!(out, "1");
    assert!(pg
        .scram_verifier(&tenant.user)
        .starts_with("SCRAM-SHA-256$4096:"));

    let superuser = pg.superuser_client().await;
    let sessions: i64 = superuser
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&tenant.user],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert_eq!(sessions, 1, "the tokio-postgres session of the tenant");
}

#[test]
fn config_renders_valid_toml() {
    use figment::providers::{Format, Toml};
    use figment::value::{Dict, Value};

    let pg = Postgres::shared();
    let tenant = pg.create_tenant("smoke config \"quoted\"");
    let verifier = pg.scram_verifier(&tenant.user);
    let mut config = SluiceConfig::new(pg)
        .tenant(Tenant::new(&tenant).pool_size(3).query_wait_timeout("2s"))
        .tenant(
            Tenant::new(&tenant)
                .password(&verifier)
                .pool_mode("session"),
        )
        .top_line(r#"shutdown_timeout = "1s""#);
    config.defaults.pool_size = Some(4);

    let text = config.render();
    let parsed: Dict = figment::Figment::from(Toml::string(&text))
        .extract()
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let tenants = match parsed.get("tenants") {
        Some(Value::Array(_, tenants)) => tenants,
        other => panic!("tenants: {other:?}\n{text}"),
    };
    assert_eq!(tenants.len(), 2);
    let second = tenants[1].as_dict().expect("tenant table");
    assert_eq!(second["password"].as_str(), Some(verifier.as_str()));
    assert_eq!(second["pool_mode"].as_str(), Some("session"));
    let main = parsed["clusters"].as_dict().expect("clusters")["main"]
        .as_dict()
        .expect("clusters.main");
    assert_eq!(main["port"].to_i128(), Some(pg.port().into()));
    assert_eq!(parsed["shutdown_timeout"].as_str(), Some("1s"));
}
