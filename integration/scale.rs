//! Thousands of tenants on one cluster: every one of 2,000 tenants logs in and runs a
//! query through a budget of 50 server connections, without an error; sluice's memory
//! per tenant stays small, and idle tenants cost it next to no CPU.

use std::time::Duration;

use crate::common::scalar;
use crate::harness::{connect, Postgres, Sluice, SluiceConfig, Tenant};

const TENANTS: usize = 2_000;
const BUDGET: u32 = 50;
/// Clients logging in at once.
const CONCURRENCY: usize = 100;

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name, which is in parentheses: utime and stime are the
    // 12th and 13th, in clock ticks (100 per second on Linux).
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<u64> = after_name
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse().expect("ticks"))
        .collect();
    Duration::from_millis((fields[0] + fields[1]) * 10)
}

/// Resident memory of a process, from `/proc/PID/status`.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_tenants_log_in_through_a_budget_of_fifty() {
    let _alone = crate::alone().await;
    let pg = Postgres::shared();
    let tenants = pg.create_tenant_group("scale", TENANTS);
    let mut config = SluiceConfig::new(pg).max_server_connections(BUDGET);
    for tenant in &tenants {
        // A short idle timeout: pool maintenance runs every second, so the idle
        // measurement below includes its rounds over all tenants.
        config = config.tenant(
            Tenant::new(tenant)
                .auth_type("md5")
                .line("server_idle_timeout = \"2s\""),
        );
    }
    let baseline_kib = {
        let one = Sluice::start(&SluiceConfig::new(pg).tenant(Tenant::new(&tenants[0])));
        resident_kib(one.pid())
    };
    let sluice = Sluice::start(&config);
    let started_kib = resident_kib(sluice.pid());
    let configured = started_kib.saturating_sub(baseline_kib) * 1024 / TENANTS as u64;

    let logins_started = std::time::Instant::now();
    let observer = pg.superuser_client().await;
    let count_sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE '{}_%'",
        tenants[0].database
    );
    let mut most_connections = 0i64;
    for wave in tenants.chunks(CONCURRENCY) {
        let mut clients = Vec::new();
        for tenant in wave {
            let (addr, tenant) = (sluice.addr(), tenant.clone());
            clients.push(tokio::spawn(async move {
                let client = connect(&addr, &tenant).await;
                let user = scalar(&client, "SELECT current_user").await;
                (user, tenant.user)
            }));
        }
        for client in clients {
            let (got, expected) = client.await.expect("client");
            assert_eq!(got.as_deref(), Some(expected.as_str()));
        }
        let row = observer.query_one(&count_sql, &[]).await.expect("count");
        most_connections = most_connections.max(row.get(0));
    }
    assert!(
        most_connections <= i64::from(BUDGET),
        "{most_connections} server connections, budget {BUDGET}"
    );

    let logins_took = logins_started.elapsed();
    // Every tenant has now held a server connection and logged a client in.
    let after_kib = resident_kib(sluice.pid());
    let active = after_kib.saturating_sub(started_kib) * 1024 / TENANTS as u64;
    println!(
        "{TENANTS} tenants: RSS {baseline_kib} KiB with one tenant, {started_kib} KiB with all \
         configured ({configured} bytes per tenant), {after_kib} KiB after each logged in \
         once ({active} more bytes per tenant); logins and first queries took {logins_took:?}"
    );
    // Idle: the clients are gone, the server connections close after 2 s, and the one
    // maintenance task goes over all tenants every second.
    const IDLE: Duration = Duration::from_secs(4);
    let cpu_before = cpu_time(sluice.pid());
    tokio::time::sleep(IDLE).await;
    let idle_cpu = cpu_time(sluice.pid()) - cpu_before;
    println!(
        "{TENANTS} idle tenants: {idle_cpu:?} of CPU in {IDLE:?} ({:.1} µs per tenant per second)",
        idle_cpu.as_secs_f64() * 1e6 / TENANTS as f64 / IDLE.as_secs_f64()
    );
    assert!(
        idle_cpu < IDLE / 20,
        "{idle_cpu:?} of CPU in {IDLE:?} with {TENANTS} idle tenants"
    );
    assert!(
        configured < 8 * 1024,
        "{configured} bytes per configured tenant ({baseline_kib} -> {started_kib} KiB)"
    );
    assert!(
        active < 16 * 1024,
        "{active} bytes per tenant after logging in ({started_kib} -> {after_kib} KiB)"
    );
}
