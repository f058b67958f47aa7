//! pgbench through sluice: `pgbench -i` (COPY of 100,000 rows) and short TPC-B runs with
//! the simple and the extended query protocol, 50 clients multiplexed onto a pool of 5.
//! No transaction may fail, and PostgreSQL must never see more than `pool_size` sessions
//! of the tenant (sampled from pg_stat_activity while pgbench runs).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{pgbench, pgbench_init, Postgres, Sluice, SluiceConfig, Tenant, TenantDb};

const POOL_SIZE: i64 = 5;

/// Highest number of the tenant's server sessions seen, and how many samples were taken.
struct Sessions {
    max: i64,
    samples: u32,
}

/// Runs pgbench with `args` against `addr` while sampling the tenant's sessions in
/// pg_stat_activity; asserts the run succeeded without failed transactions.
async fn run_and_sample(
    addr: SocketAddr,
    tenant: &TenantDb,
    args: &'static [&'static str],
) -> Sessions {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, user) = (stop.clone(), tenant.user.clone());
        tokio::spawn(async move {
            let superuser = Postgres::shared().superuser_client().await;
            let mut seen = Sessions { max: 0, samples: 0 };
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = superuser
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                        &[&user],
                    )
                    .await
                    .expect("sampling pg_stat_activity")
                    .get(0);
                seen.max = seen.max.max(n);
                seen.samples += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
    let bench = {
        let tenant = tenant.clone();
        tokio::task::spawn_blocking(move || {
            pgbench(
                &addr,
                &tenant.user,
                &tenant.password,
                &tenant.database,
                args,
            )
        })
    };
    let run = bench.await.expect("pgbench thread");
    stop.store(true, Ordering::Relaxed);
    let seen = sampler.await.expect("sampler");

    assert!(
        run.status.success(),
        "pgbench {args:?} failed ({}):\n{}{}",
        run.status,
        run.stdout,
        run.stderr
    );
    assert_eq!(run.failed, 0, "failed transactions:\n{}", run.stdout);
    assert!(
        run.processed > 0,
        "no transaction processed:\n{}",
        run.stdout
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_on_a_pool_of_five() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("bench");
    let pool = Tenant::new(&tenant).pool_size(POOL_SIZE as u32);
    let sluice = Sluice::start(&SluiceConfig::new(pg).tenant(pool));
    pgbench_init(&sluice, &tenant.user, &tenant.password, &tenant.database, 1);

    for mode in ["simple", "extended"] {
        let args: &'static [&'static str] = match mode {
            "simple" => &["-n", "-M", "simple", "-c", "50", "-j", "2", "-T", "3"],
            _ => &["-n", "-M", "extended", "-c", "50", "-j", "2", "-T", "3"],
        };
        let seen = run_and_sample(sluice.addr(), &tenant, args).await;
        assert!(
            seen.samples >= 10,
            "-M {mode}: only {} samples",
            seen.samples
        );
        assert!(seen.max >= 1, "-M {mode}: the sampler never saw the pool");
        assert!(
            seen.max <= POOL_SIZE,
            "-M {mode}: {} server sessions of the tenant, pool_size is {POOL_SIZE}",
            seen.max
        );
    }
}
