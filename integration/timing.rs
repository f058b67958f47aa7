//! Budget behaviour measured in time: a flooding tenant does not starve quiet ones (their
//! p99 latency), and a login storm opens server connections no faster than
//! `max_connects_per_second` (from PostgreSQL's own log).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{cluster_metric, scalar, server_connections};
use crate::harness::{connect, error_text, Postgres, Sluice, SluiceConfig, Tenant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_starve_quiet_ones() {
    let _alone = crate::alone().await;
    const BUDGET: u32 = 12;
    const FLOOD_CLIENTS: usize = 60;
    const QUIET_QUERIES: usize = 40;
    let pg = Postgres::shared();
    let group = pg.create_tenant_group("fair", 11);
    let (flood, quiet) = (group[0].clone(), group[1..].to_vec());
    let mut config = SluiceConfig::new(pg)
        .max_server_connections(BUDGET)
        .tenant(Tenant::new(&flood).auth_type("md5").pool_size(20));
    for tenant in &quiet {
        config = config.tenant(Tenant::new(tenant).auth_type("md5"));
    }
    let sluice = Sluice::start(&config);

    let flooding = Arc::new(AtomicBool::new(true));
    let mut flooders = Vec::new();
    for _ in 0..FLOOD_CLIENTS {
        let (addr, flood, flooding) = (sluice.addr(), flood.clone(), flooding.clone());
        flooders.push(tokio::spawn(async move {
            let client = connect(&addr, &flood).await;
            let mut done = 0usize;
            while flooding.load(Ordering::Relaxed) {
                client
                    .simple_query("SELECT pg_sleep(0.05)")
                    .await
                    .unwrap_or_else(|e| panic!("flood: {}", error_text(&e)));
                done += 1;
            }
            done
        }));
    }
    // The flood holds the whole budget before the quiet tenants start.
    let observer = pg.superuser_client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while server_connections(&observer, &flood.user).await < BUDGET as usize {
        assert!(
            Instant::now() < deadline,
            "the flood never filled the budget"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut quiet_tasks = Vec::new();
    for tenant in &quiet {
        let (addr, tenant) = (sluice.addr(), tenant.clone());
        quiet_tasks.push(tokio::spawn(async move {
            let client = connect(&addr, &tenant).await;
            let mut latencies = Vec::with_capacity(QUIET_QUERIES);
            for _ in 0..QUIET_QUERIES {
                let started = Instant::now();
                scalar(&client, "SELECT 1").await;
                latencies.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in quiet_tasks {
        latencies.extend(task.await.expect("quiet tenant"));
    }
    flooding.store(false, Ordering::Relaxed);
    let mut flood_transactions = 0;
    for flooder in flooders {
        flood_transactions += flooder.await.expect("flooder");
    }

    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(
        p99 < Duration::from_millis(150),
        "quiet tenants' p99 {p99:?} (max {:?}) while flooded",
        latencies.last()
    );
    assert!(flood_transactions > 0, "the flood made no progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_opens_connections_no_faster_than_the_bound() {
    let _alone = crate::alone().await;
    const RATE: u32 = 50;
    const TENANTS: usize = 100;
    const CLIENTS: usize = 500;
    let pg = Postgres::shared();
    let tenants = pg.create_tenant_group("storm", TENANTS);
    let mut config = SluiceConfig::new(pg).max_server_connections(20);
    config
        .cluster_mut("main")
        .extra
        .push(format!("max_connects_per_second = {RATE}"));
    for tenant in &tenants {
        config = config.tenant(
            Tenant::new(tenant)
                .auth_type("md5")
                .query_wait_timeout("60s"),
        );
    }
    let sluice = Sluice::start(&config);

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (addr, tenant) = (sluice.addr(), tenants[i % TENANTS].clone());
        clients.push(tokio::spawn(async move {
            let client = connect(&addr, &tenant).await;
            scalar(&client, "SELECT current_user").await
        }));
    }
    for (i, client) in clients.into_iter().enumerate() {
        let user = client.await.expect("client");
        assert_eq!(user.as_deref(), Some(tenants[i % TENANTS].user.as_str()));
    }
    // PostgreSQL logs every connection it receives, with a millisecond timestamp and
    // the backend's pid, and then the user it authorized on that pid: the server's own
    // record of when each of the storm's server connections was opened.
    let log = pg.log();
    let needle = format!("connection authorized: user={}_", tenants[0].database);
    let storm_pids: std::collections::HashSet<&str> = log
        .lines()
        .filter(|line| line.contains(&needle))
        .map(log_pid)
        .collect();
    let mut opened: Vec<u64> = log
        .lines()
        .filter(|line| line.contains("connection received:") && storm_pids.contains(log_pid(line)))
        .map(log_millis)
        .collect();
    // A run across midnight: times after it count from the day before.
    if opened.iter().any(|&t| t < 3_600_000) && opened.iter().any(|&t| t > 82_800_000) {
        for t in opened.iter_mut().filter(|t| **t < 3_600_000) {
            *t += 86_400_000;
        }
    }
    opened.sort_unstable();
    let most_in_a_second = opened
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            opened[i..]
                .iter()
                .take_while(|&&t| t < start + 1000)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        opened.len() >= TENANTS,
        "only {} logins of {TENANTS} tenants in PostgreSQL's log",
        opened.len()
    );
    // sluice spaces the openings exactly; PostgreSQL logs a connection once its
    // postmaster has accepted it and forked, which on a loaded 2-core machine lags by
    // up to a couple of hundred milliseconds, so a one-second window can catch up to a
    // quarter more than the bound. Over the whole storm the rate is the bound.
    assert!(
        most_in_a_second as f64 <= f64::from(RATE) * 1.25,
        "{most_in_a_second} server logins within one second, bound {RATE}/s ({} in all)",
        opened.len()
    );
    let span = (opened[opened.len() - 1] - opened[0]) as f64 / 1000.0;
    let sustained = (opened.len() - 1) as f64 / span;
    assert!(
        sustained <= f64::from(RATE) * 1.02,
        "{sustained:.1} server logins per second over {span:.1} s, bound {RATE}/s"
    );
    assert_eq!(
        cluster_metric(&sluice, "sluice_server_connects_total"),
        opened.len() as f64
    );
}

/// The pid of a PostgreSQL log line (`log_line_prefix` `%m [%p] …`).
fn log_pid(line: &str) -> &str {
    line.split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(pid, _)| pid)
        .unwrap_or_else(|| panic!("no pid in log line {line:?}"))
}

/// Milliseconds since midnight of a PostgreSQL log line starting `YYYY-MM-DD HH:MM:SS.mmm`.
fn log_millis(line: &str) -> u64 {
    let time = line
        .get(11..23)
        .unwrap_or_else(|| panic!("log line {line:?}"));
    let field = |range: std::ops::Range<usize>| -> u64 {
        time[range]
            .parse()
            .unwrap_or_else(|_| panic!("log time in {line:?}"))
    };
    ((field(0..2) * 60 + field(3..5)) * 60 + field(6..8)) * 1000 + field(9..12)
}
