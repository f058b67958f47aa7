//! Configuration from the outside: `sluice --check-config` accepts a valid file and rejects
//! unknown keys, naming the key and where it came from (the file, or the environment
//! variable); and a `SLUICE_…` environment override really changes how sluice runs.

use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{scalar, try_scalar};
use crate::harness::{
    connect, error_text, output_with_timeout, sqlstate, Postgres, Sluice, SluiceConfig, Tenant,
    TenantDb,
};

/// A tenant for configs that are only checked, never served: nothing connects to it.
fn paper_tenant() -> Tenant {
    Tenant::new(&TenantDb {
        database: "app".into(),
        user: "app".into(),
        password: "app-password".into(),
    })
}

/// Runs `sluice --check-config` on `config` rendered to a file, with only `env` of the
/// `SLUICE_` variables set. Returns the output and the file's path.
fn check_config(config: &SluiceConfig, env: &[(&str, &str)]) -> (Output, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config.render()).expect("writing the config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLUICE_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--check-config")
        .arg(&path)
        .envs(env.iter().copied());
    let out = output_with_timeout(&mut cmd, Duration::from_secs(30));
    (out, path.display().to_string())
}

#[test]
fn check_config_accepts_a_valid_file() {
    let config = SluiceConfig::new(Postgres::shared()).tenant(paper_tenant().pool_size(3));
    let (out, path) = check_config(&config, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&path) && stdout.contains("ok"), "{stdout}");
}

#[test]
fn check_config_names_an_unknown_key_and_its_file() {
    let pg = Postgres::shared();
    let cases = [
        (
            "bogus_key",
            SluiceConfig::new(pg)
                .tenant(paper_tenant())
                .top_line("bogus_key = 1"),
        ),
        (
            "tenants[0].pool_sise",
            SluiceConfig::new(pg).tenant(paper_tenant().line("pool_sise = 3")),
        ),
    ];
    for (key, config) in cases {
        let (out, path) = check_config(&config, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key} was accepted");
        assert!(stderr.contains(key), "the error names {key}: {stderr}");
        assert!(
            stderr.contains(&path),
            "the error names the file {path}: {stderr}"
        );
    }
}

#[test]
fn check_config_names_an_unknown_environment_variable() {
    let config = SluiceConfig::new(Postgres::shared()).tenant(paper_tenant());
    let (out, _) = check_config(&config, &[("SLUICE_DEFAULTS__POOL_SISE", "1")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an unknown SLUICE_ variable was accepted"
    );
    assert!(
        stderr.contains("defaults.pool_sise"),
        "names the key: {stderr}"
    );
    assert!(
        stderr.contains("SLUICE_DEFAULTS__POOL_SISE"),
        "names the variable: {stderr}"
    );
}

/// Whether a second client gets a server connection while a first holds one in an open
/// transaction (with a 1 s wait), i.e. whether the tenant's pool has room for two.
async fn second_client_gets_a_connection(sluice: &Sluice, tenant: &TenantDb) -> bool {
    let holder = connect(sluice, tenant).await;
    let other = connect(sluice, tenant).await;
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let answer = try_scalar(&other, "SELECT 1").await;
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    assert_eq!(scalar(&holder, "SELECT 2").await.as_deref(), Some("2"));
    match answer {
        Ok(_) => true,
        Err(e) if sqlstate(&e) == Some("53300") => false,
        Err(e) => panic!("unexpected error: {}", error_text(&e)),
    }
}

#[tokio::test]
async fn environment_overrides_the_default_pool_size() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("cfg_env_pool");
    // The tenant inherits pool_size from [defaults] (5 unless overridden).
    let config = SluiceConfig::new(pg).tenant(Tenant::new(&tenant).query_wait_timeout("1s"));

    let default = Sluice::start(&config);
    assert!(
        second_client_gets_a_connection(&default, &tenant).await,
        "with the default pool_size two clients are served at once"
    );
    drop(default);

    let overridden = Sluice::start(&config.clone().env("SLUICE_DEFAULTS__POOL_SIZE", "1"));
    assert!(
        !second_client_gets_a_connection(&overridden, &tenant).await,
        "SLUICE_DEFAULTS__POOL_SIZE=1 leaves room for one server connection only"
    );
}
