//! The `/metrics` exposition. Process-wide and per-cluster series go through the
//! `metrics` facade and metrics-exporter-prometheus (histograms with fixed buckets, so
//! they aggregate across replicas). Per-tenant series are rendered here from the live
//! tenants' atomics at scrape time, so a removed tenant's series disappear with it and
//! their number stays bounded: 18 series per tenant (client and server connections by
//! three states each, and twelve single series).
//!
//! Read-only, except the process-wide recorder it installs at start.

use crate::cancel::Pinned;
use crate::shared::Shared;
use crate::stats::PIN_REASONS;
use crate::tenant::Tenant;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Bucket bounds (seconds) for waits and latencies: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the exporter's histogram storage is compacted.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder (the one global sluice has).
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    metrics::gauge!(
        "sluice_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => option_env!("SLUICE_COMMIT").unwrap_or("unknown")
    )
    .set(1.0);
    Ok(handle)
}

/// Runs the exporter's periodic upkeep.
pub async fn upkeep(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        ticks.tick().await;
        shared.metrics.run_upkeep();
    }
}

/// The whole scrape body.
pub fn render(shared: &Shared) -> String {
    let tenants = shared.tenants.load();
    for cluster in tenants.clusters.values() {
        cluster.refresh_gauges();
    }
    let mut out = shared.metrics.render();
    let owned: Vec<Arc<Tenant>> = tenants.iter().collect();
    let all: Vec<&Arc<Tenant>> = owned.iter().collect();
    let max_waits = shared.clients.longest_waits();
    render_tenants(&mut out, &all, &max_waits);
    render_pinned(&mut out, &all, &shared.clients.pinned());
    render_process(&mut out, shared);
    out
}

type Read = fn(&Tenant) -> f64;

fn micros(counter: &AtomicU64) -> f64 {
    counter.load(Relaxed) as f64 / 1e6
}

fn count(counter: &AtomicU64) -> f64 {
    counter.load(Relaxed) as f64
}

fn render_tenants(
    out: &mut String,
    tenants: &[&Arc<Tenant>],
    max_waits: &HashMap<(String, String), Duration>,
) {
    let client_states: [(&str, Read); 3] = [
        ("active", |t| count(&t.stats.clients_active)),
        ("waiting", |t| count(&t.stats.clients_waiting)),
        ("idle", |t| {
            let busy = t.stats.clients_active.load(Relaxed) + t.stats.clients_waiting.load(Relaxed);
            f64::from(t.client_count()).max(busy as f64) - busy as f64
        }),
    ];
    family(
        out,
        "sluice_client_connections",
        "gauge",
        "Client connections by state.",
    );
    for (state, read) in client_states {
        for tenant in tenants {
            sample(
                out,
                "sluice_client_connections",
                tenant,
                Some(state),
                read(tenant),
            );
        }
    }
    let server_states: [(&str, Read); 3] = [
        ("active", |t| t.pool.status().active as f64),
        ("idle", |t| t.pool.status().available as f64),
        ("connecting", |t| count(&t.stats.servers_connecting)),
    ];
    family(
        out,
        "sluice_server_connections",
        "gauge",
        "Server connections by state.",
    );
    for (state, read) in server_states {
        for tenant in tenants {
            sample(
                out,
                "sluice_server_connections",
                tenant,
                Some(state),
                read(tenant),
            );
        }
    }
    let singles: [(&str, &str, &str, Read); 11] = [
        ("sluice_pool_size", "gauge", "Configured pool_size.", |t| {
            f64::from(t.settings.pool_size)
        }),
        (
            "sluice_tenant_pool_wait_seconds_total",
            "counter",
            "Time clients waited for a server connection.",
            |t| micros(&t.stats.wait_micros),
        ),
        (
            "sluice_tenant_pool_waits_total",
            "counter",
            "Waits for a server connection.",
            |t| count(&t.stats.waits),
        ),
        (
            "sluice_queries_total",
            "counter",
            "Requests (queries or Sync batches) answered.",
            |t| count(&t.stats.queries),
        ),
        (
            "sluice_tenant_query_seconds_total",
            "counter",
            "Time from request to ReadyForQuery.",
            |t| micros(&t.stats.query_micros),
        ),
        (
            "sluice_transactions_total",
            "counter",
            "Server connection leases (transactions in transaction mode).",
            |t| count(&t.stats.transactions),
        ),
        (
            "sluice_tenant_transaction_seconds_total",
            "counter",
            "Time server connections were leased.",
            |t| micros(&t.stats.transaction_micros),
        ),
        (
            "sluice_received_bytes_total",
            "counter",
            "Bytes received from clients.",
            |t| count(&t.stats.received_bytes),
        ),
        (
            "sluice_sent_bytes_total",
            "counter",
            "Bytes sent to clients.",
            |t| count(&t.stats.sent_bytes),
        ),
        (
            "sluice_prepared_statement_hits_total",
            "counter",
            "Uses of a prepared statement the server connection already had.",
            |t| count(&t.stats.prepared_hits),
        ),
        (
            "sluice_prepared_statement_misses_total",
            "counter",
            "Prepared statements prepared on demand on a server connection.",
            |t| count(&t.stats.prepared_misses),
        ),
    ];
    for (name, kind, help, read) in singles {
        family(out, name, kind, help);
        for tenant in tenants {
            sample(out, name, tenant, None, read(tenant));
        }
    }
    let name = "sluice_tenant_pool_wait_max_seconds";
    family(
        out,
        name,
        "gauge",
        "Longest current wait for a server connection.",
    );
    for tenant in tenants {
        let key = (
            tenant.settings.database.clone(),
            tenant.settings.user.clone(),
        );
        let longest = max_waits.get(&key).map_or(0.0, Duration::as_secs_f64);
        sample(out, name, tenant, None, longest);
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, tenant: &Tenant, state: Option<&str>, value: f64) {
    labelled(
        out,
        name,
        tenant,
        state.map(|state| ("state", state)),
        value,
    );
}

fn labelled(
    out: &mut String,
    name: &str,
    tenant: &Tenant,
    label: Option<(&str, &str)>,
    value: f64,
) {
    let settings = &tenant.settings;
    let _ = write!(
        out,
        "{name}{{cluster=\"{}\",database=\"{}\",user=\"{}\"",
        escape(&settings.cluster),
        escape(&settings.database),
        escape(&settings.user)
    );
    if let Some((label, value)) = label {
        let _ = write!(out, ",{label}=\"{value}\"");
    }
    let _ = writeln!(out, "}} {value}");
}

/// `sluice_pinned_clients{reason}`: only the tenants and reasons with pinned clients, so
/// the series stay few with thousands of tenants.
fn render_pinned(
    out: &mut String,
    tenants: &[&Arc<Tenant>],
    pinned: &HashMap<(String, String), Pinned>,
) {
    let name = "sluice_pinned_clients";
    family(
        out,
        name,
        "gauge",
        "Clients pinned to their server connection by session state, by reason.",
    );
    for tenant in tenants {
        let key = (
            tenant.settings.database.clone(),
            tenant.settings.user.clone(),
        );
        let Some(counts) = pinned.get(&key) else {
            continue;
        };
        for (reason, count) in PIN_REASONS.iter().zip(&counts.by_reason) {
            if *count > 0 {
                labelled(
                    out,
                    name,
                    tenant,
                    Some(("reason", reason)),
                    f64::from(*count),
                );
            }
        }
    }
}

/// Escapes a label value for the text exposition format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The conventional process_* series, read from /proc.
fn render_process(out: &mut String, shared: &Shared) {
    const TICKS_PER_SECOND: f64 = 100.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses and may contain spaces.
        if let Some((_, rest)) = stat.rsplit_once(") ") {
            let fields: Vec<&str> = rest.split(' ').collect();
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
            if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
                family(
                    out,
                    "process_cpu_seconds_total",
                    "counter",
                    "User and system CPU time.",
                );
                let _ = writeln!(
                    out,
                    "process_cpu_seconds_total {}",
                    (user + system) / TICKS_PER_SECOND
                );
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        if let Some(kib) = rss_kib {
            family(
                out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory.",
            );
            let _ = writeln!(out, "process_resident_memory_bytes {}", kib * 1024.0);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        family(out, "process_open_fds", "gauge", "Open file descriptors.");
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
    if let Ok(started) = shared.started_at.duration_since(std::time::UNIX_EPOCH) {
        family(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time since the Unix epoch.",
        );
        let _ = writeln!(out, "process_start_time_seconds {}", started.as_secs_f64());
    }
}
