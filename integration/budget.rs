//! The cluster connection budget under many tenants: it is never exceeded (sampled from
//! PostgreSQL's own `pg_stat_activity`), a flooding tenant cannot starve quiet ones, idle
//! connections of other tenants make room, a reserve pool lets a waiting tenant burst,
//! and new server connections are paced to `max_connects_per_second`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    cluster_metric, disconnects, sample_server_connections, scalar, server_connections,
};
use crate::harness::{connect, error_text, Postgres, Sluice, SluiceConfig, Tenant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_tenants_share_a_budget_of_twelve_without_errors() {
    const BUDGET: u32 = 12;
    const CLIENTS_PER_TENANT: usize = 3;
    const TRANSACTIONS: usize = 15;
    let pg = Postgres::shared();
    let tenants = pg.create_tenant_group("budget", 20);
    let mut config = SluiceConfig::new(pg).max_server_connections(BUDGET);
    for tenant in &tenants {
        config = config.tenant(Tenant::new(tenant).auth_type("md5"));
    }
    let sluice = Sluice::start(&config);
    let prefix = format!("{}_", tenants[0].database);

    let running = Arc::new(AtomicBool::new(true));
    let sampler = sample_server_connections(pg, prefix, running.clone());
    let mut clients = Vec::new();
    for tenant in &tenants {
        for _ in 0..CLIENTS_PER_TENANT {
            let (sluice, tenant) = (sluice.addr(), tenant.clone());
            clients.push(tokio::spawn(async move {
                let client = connect(&sluice, &tenant).await;
                let mut errors = Vec::new();
                for _ in 0..TRANSACTIONS {
                    let tx = "BEGIN; SELECT current_user, pg_sleep(0.002); COMMIT";
                    if let Err(e) = client.simple_query(tx).await {
                        errors.push(format!("{}: {}", tenant.user, error_text(&e)));
                    }
                }
                errors
            }));
        }
    }
    let mut errors = Vec::new();
    for client in clients {
        errors.extend(client.await.expect("client task"));
    }
    running.store(false, Ordering::Relaxed);
    let (most, samples) = sampler.await.expect("sampler");

    assert!(errors.is_empty(), "{} errors: {errors:?}", errors.len());
    assert!(samples > 10, "only {samples} samples of pg_stat_activity");
    assert!(
        most <= BUDGET as usize,
        "PostgreSQL saw {most} tenant connections, budget {BUDGET}"
    );
    assert!(most > 0, "no tenant connection seen in {samples} samples");
    assert!(cluster_metric(&sluice, "sluice_cluster_server_connections") <= f64::from(BUDGET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_of_another_tenant_makes_room() {
    let pg = Postgres::shared();
    let group = pg.create_tenant_group("evict", 2);
    let (holder, newcomer) = (&group[0], &group[1]);
    let config = SluiceConfig::new(pg)
        .max_server_connections(2)
        .tenant(Tenant::new(holder).auth_type("md5"))
        .tenant(
            Tenant::new(newcomer)
                .auth_type("md5")
                .query_wait_timeout("3s"),
        );
    let sluice = Sluice::start(&config);

    // The holder fills the budget with two connections, then leaves them idle.
    let (a, b) = (
        connect(&sluice.addr(), holder).await,
        connect(&sluice.addr(), holder).await,
    );
    a.batch_execute("BEGIN").await.expect("BEGIN");
    b.batch_execute("BEGIN").await.expect("BEGIN");
    a.batch_execute("COMMIT").await.expect("COMMIT");
    b.batch_execute("COMMIT").await.expect("COMMIT");
    assert_eq!(
        cluster_metric(&sluice, "sluice_cluster_server_connections"),
        2.0
    );

    let started = Instant::now();
    let client = connect(&sluice.addr(), newcomer).await;
    assert_eq!(
        scalar(&client, "SELECT current_user").await.as_deref(),
        Some(newcomer.user.as_str())
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?} although the holder's connections were idle",
        started.elapsed()
    );
    assert!(disconnects(&sluice, "evicted") >= 1.0);
    assert!(cluster_metric(&sluice, "sluice_cluster_server_connections") <= 2.0);
    // The holder still works: it gets a place back the same way.
    assert_eq!(scalar(&a, "SELECT 1").await.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_bursts_into_the_reserve_pool() {
    let pg = Postgres::shared();
    let group = pg.create_tenant_group("reserve", 1);
    let tenant = &group[0];
    let config = SluiceConfig::new(pg).tenant(
        Tenant::new(tenant)
            .auth_type("md5")
            .pool_size(1)
            .query_wait_timeout("5s")
            .line("reserve_pool_size = 1")
            .line("reserve_pool_timeout = \"300ms\""),
    );
    let sluice = Sluice::start(&config);

    let holder = connect(&sluice.addr(), tenant).await;
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let waiter = connect(&sluice.addr(), tenant).await;
    let started = Instant::now();
    assert_eq!(scalar(&waiter, "SELECT 1").await.as_deref(), Some("1"));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "served after {waited:?}, expected just after reserve_pool_timeout"
    );
    let observer = pg.superuser_client().await;
    assert_eq!(server_connections(&observer, &tenant.user).await, 2);

    // The reserve is one connection: a third client waits for one of the two.
    let third = connect(&sluice.addr(), tenant).await;
    waiter.batch_execute("BEGIN").await.expect("BEGIN");
    let third_query = tokio::spawn(async move { scalar(&third, "SELECT 3").await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!third_query.is_finished(), "a third connection was opened");
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    assert_eq!(third_query.await.expect("third").as_deref(), Some("3"));
    assert_eq!(server_connections(&observer, &tenant.user).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_of_one_connection_take_turns_on_a_budget_of_one() {
    const TRANSACTIONS: usize = 20;
    let pg = Postgres::shared();
    let group = pg.create_tenant_group("turns", 2);
    let mut config = SluiceConfig::new(pg).max_server_connections(1);
    for tenant in &group {
        config = config.tenant(
            Tenant::new(tenant)
                .auth_type("md5")
                .pool_size(1)
                .query_wait_timeout("20s"),
        );
    }
    let sluice = Sluice::start(&config);

    let started = Instant::now();
    let mut clients = Vec::new();
    for tenant in group.iter().chain(group.iter()) {
        let (addr, tenant) = (sluice.addr(), tenant.clone());
        clients.push(tokio::spawn(async move {
            let client = connect(&addr, &tenant).await;
            for _ in 0..TRANSACTIONS {
                let user = scalar(&client, "SELECT current_user").await;
                assert_eq!(user.as_deref(), Some(tenant.user.as_str()));
            }
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    // Each turn costs a server login; no client may be left waiting for a connection
    // its own tenant gave up.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "80 queries took {:?}",
        started.elapsed()
    );
    assert!(cluster_metric(&sluice, "sluice_server_connects_total") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_budget_on_reload_closes_idle_connections_over_it() {
    let pg = Postgres::shared();
    let group = pg.create_tenant_group("shrink", 1);
    let tenant = &group[0];
    let config = SluiceConfig::new(pg)
        .max_server_connections(4)
        .tenant(Tenant::new(tenant).auth_type("md5"));
    let mut sluice = Sluice::start(&config);

    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&sluice.addr(), tenant).await);
    }
    for client in &clients {
        client.batch_execute("BEGIN").await.expect("BEGIN");
    }
    for client in &clients {
        client.batch_execute("COMMIT").await.expect("COMMIT");
    }
    let observer = pg.superuser_client().await;
    assert_eq!(server_connections(&observer, &tenant.user).await, 4);

    sluice.write_config(&config.clone().max_server_connections(2));
    sluice
        .reload_and_wait(Duration::from_secs(10))
        .expect("reloaded");
    let deadline = Instant::now() + Duration::from_secs(5);
    while server_connections(&observer, &tenant.user).await > 2 {
        assert!(
            Instant::now() < deadline,
            "idle connections over the budget stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        cluster_metric(&sluice, "sluice_cluster_max_server_connections"),
        2.0
    );

    // All four clients keep working, on at most two server connections.
    let running = Arc::new(AtomicBool::new(true));
    let sampler = sample_server_connections(pg, tenant.user.clone(), running.clone());
    let mut work = Vec::new();
    for client in clients {
        work.push(tokio::spawn(async move {
            for _ in 0..10 {
                let tx = "BEGIN; SELECT pg_sleep(0.005); COMMIT";
                client.simple_query(tx).await.expect("transaction");
            }
        }));
    }
    for task in work {
        task.await.expect("client");
    }
    running.store(false, Ordering::Relaxed);
    let (most, _) = sampler.await.expect("sampler");
    assert!(most <= 2, "{most} server connections after shrinking to 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_is_kept_warm_as_far_as_the_budget_allows() {
    let pg = Postgres::shared();
    let group = pg.create_tenant_group("warm", 2);
    let mut config = SluiceConfig::new(pg).max_server_connections(3);
    for tenant in &group {
        config = config.tenant(Tenant::new(tenant).auth_type("md5").min_pool_size(2));
    }
    let sluice = Sluice::start(&config);
    let prefix = format!("{}_", group[0].database);

    // No client has logged in: sluice opens the connections on its own, and stops at
    // the budget.
    let observer = pg.superuser_client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while server_connections(&observer, &prefix).await < 3 {
        assert!(
            Instant::now() < deadline,
            "min_pool_size connections not opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        cluster_metric(&sluice, "sluice_cluster_server_connections"),
        3.0
    );
    assert_eq!(server_connections(&observer, &prefix).await, 3);

    // A client of either tenant is served from what is warm or by eviction.
    for tenant in &group {
        let client = connect(&sluice.addr(), tenant).await;
        assert_eq!(
            scalar(&client, "SELECT current_user").await.as_deref(),
            Some(tenant.user.as_str())
        );
    }
    assert!(server_connections(&observer, &prefix).await <= 3);
}
