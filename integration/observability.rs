//! Observability end to end, over the HTTP port (`metrics_listen`):
//! - `/metrics`: every line of every scrape is checked against the Prometheus text format
//!   (a small parser below); during and after a pgbench run the tenant's counters move, the
//!   per-cluster histograms fill up, login results are counted, and each tenant has exactly
//!   18 series; label values are escaped.
//! - Reload (SIGHUP and the console's `RELOAD`): a removed tenant's series disappear while a
//!   kept tenant's stay (with their counts) and its connected client goes on; an invalid
//!   file is refused and changes nothing.
//! - `/healthz` and `/readyz` through `PAUSE`/`RESUME` and a SIGTERM drain, which ends idle
//!   sessions with 57P01 and exits 0 once the last transaction is over.
//! - The status page `/`, as HTML and rendered by headless Chromium.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use crate::common::{
    assert_alive, console, console_login, http_get, raw_login, raw_scalar, refused_login, scalar,
    try_console, HttpResponse, PROMPTLY,
};
use crate::harness::{
    connect, error_text, output_with_timeout, pgbench, pgbench_init, poll_until, psql, psql_ok,
    sqlstate, Postgres, Sluice, SluiceConfig, Tenant, TenantDb,
};
use crate::raw::query;

const ADMIN: &str = "obs_admin";
const ADMIN_PASSWORD: &str = "obs-admin-password";
/// Series per tenant (README, "Cardinality").
const TENANT_SERIES: usize = 18;
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------
// A parser for the Prometheus text exposition format (version 0.0.4), strict enough to
// catch what breaks a scrape: malformed lines, bad escapes, a sample before its TYPE, a
// family split in two groups, a TYPE given twice, the same series twice.
// See <https://prometheus.io/docs/instrumenting/exposition_formats/>.

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name{label="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err("bad metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let label = &rest[..eq];
            if !is_label_name(label) {
                return Err("bad label name");
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("unterminated label value"),
                    Some((at, '"')) => break at,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => return Err("bad escape in a label value"),
                    },
                    Some((_, '\n')) => return Err("raw newline in a label value"),
                    Some((_, c)) => value.push(c),
                }
            };
            rest = &rest[end + 1..];
            if labels.insert(label.to_owned(), value).is_some() {
                return Err("label given twice");
            }
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("expected ',' or '}' after a label");
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut parts = rest.split(' ');
    let value = match parts.next().unwrap_or_default() {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        text if !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) =>
        {
            text.parse().map_err(|_| "bad value")?
        }
        _ => return Err("bad value"),
    };
    if let Some(timestamp) = parts.next() {
        timestamp.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if parts.next().is_some() {
        return Err("trailing text after the value");
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses a whole scrape body; the error names the line and what is wrong with it.
fn parse_exposition(body: &str) -> Result<Vec<Sample>, String> {
    const KINDS: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut closed = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut seen = BTreeSet::new();
    let mut samples = Vec::new();
    for (n, line) in body.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue; // the format ignores empty lines
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start_matches(' ').splitn(3, ' ');
            match words.next() {
                Some("TYPE") => {
                    let name = words.next().unwrap_or_default();
                    let kind = words.next().unwrap_or_default();
                    if !is_metric_name(name) || !KINDS.contains(&kind) {
                        return Err(bad("bad TYPE line"));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(bad("second TYPE line for a family"));
                    }
                    if closed.contains(name) || current.as_deref() == Some(name) {
                        return Err(bad("TYPE after the family's samples"));
                    }
                }
                Some("HELP") => {
                    let name = words.next().unwrap_or_default();
                    if !is_metric_name(name) {
                        return Err(bad("bad HELP line"));
                    }
                    if !helps.insert(name.to_owned()) {
                        return Err(bad("second HELP line for a family"));
                    }
                }
                _ => {} // a plain comment
            }
            continue;
        }
        let sample = parse_sample(line).map_err(&bad)?;
        let family = family_of(&sample.name, &types);
        if !types.contains_key(&family) {
            return Err(bad("sample without a TYPE line before it"));
        }
        if current.as_deref() != Some(family.as_str()) {
            if closed.contains(&family) {
                return Err(bad("family split into two groups"));
            }
            if let Some(previous) = current.take() {
                closed.insert(previous);
            }
            current = Some(family);
        }
        if !seen.insert((sample.name.clone(), sample.labels.clone())) {
            return Err(bad("the same series twice"));
        }
        samples.push(sample);
    }
    Ok(samples)
}

/// The family a sample belongs to: `x` for `x_bucket`, `x_sum`, `x_count` of a histogram
/// or summary `x`, else its own name.
fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
    if !types.contains_key(name) {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if matches!(
                    types.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                ) {
                    return base.to_owned();
                }
            }
        }
    }
    name.to_owned()
}

/// One scrape of `/metrics`, parsed.
struct Scrape {
    samples: Vec<Sample>,
    body: String,
}

impl Scrape {
    /// GETs `/metrics`; asserts 200, the Prometheus content type and a valid body.
    fn of(sluice: &Sluice) -> Scrape {
        let response = http_get(sluice.metrics_addr(), "/metrics");
        assert_eq!(response.status, 200, "/metrics: {response:?}");
        let content_type = response.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "/metrics content type {content_type:?}"
        );
        let samples = parse_exposition(&response.body)
            .unwrap_or_else(|e| panic!("/metrics is not valid exposition text: {e}"));
        Scrape {
            samples,
            body: response.body,
        }
    }

    /// Samples called `name` whose labels include all of `labels`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample `name` with `labels`, `None` if there is none; panics
    /// if several match.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} matches {} samples: {found:?}",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// [`Scrape::get`] that must find its sample.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in /metrics:\n{}", self.body))
    }

    /// A per-tenant single series of `tenant`.
    fn tenant(&self, name: &str, tenant: &TenantDb) -> f64 {
        self.value(name, &tenant_labels(tenant))
    }

    /// A per-tenant state series of `tenant`.
    fn tenant_state(&self, name: &str, tenant: &TenantDb, state: &str) -> f64 {
        let [cluster, database, user] = tenant_labels(tenant);
        self.value(name, &[cluster, database, user, ("state", state)])
    }

    /// How many series carry the tenant's labels.
    fn tenant_series(&self, tenant: &TenantDb) -> usize {
        let labels = tenant_labels(tenant);
        self.samples
            .iter()
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .count()
    }

    /// Checks histogram `name` of `cluster` (buckets cumulative, ending in `+Inf`, which
    /// equals `_count`); returns its `_count`.
    fn histogram_count(&self, name: &str, cluster: &str) -> f64 {
        let labels = [("cluster", cluster)];
        let bucket_name = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .matching(&bucket_name, &labels)
            .map(|s| {
                let le = s.labels.get("le").expect("a bucket has `le`");
                let bound = match le.as_str() {
                    "+Inf" => f64::INFINITY,
                    other => other.parse().expect("numeric `le`"),
                };
                (bound, s.value)
            })
            .collect();
        assert!(
            buckets.len() >= 2,
            "{bucket_name}{{cluster=\"{cluster}\"}}: {} bucket lines",
            buckets.len()
        );
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: buckets are not cumulative: {buckets:?}"
        );
        let (last_bound, last_count) = *buckets.last().expect("buckets");
        assert_eq!(last_bound, f64::INFINITY, "{name}: no +Inf bucket");
        let count = self.value(&format!("{name}_count"), &labels);
        assert_eq!(last_count, count, "{name}: +Inf bucket != _count");
        let sum = self.value(&format!("{name}_sum"), &labels);
        assert!(sum >= 0.0, "{name}_sum = {sum}");
        count
    }
}

fn tenant_labels(tenant: &TenantDb) -> [(&str, &str); 3] {
    [
        ("cluster", "main"),
        ("database", tenant.database.as_str()),
        ("user", tenant.user.as_str()),
    ]
}

#[test]
fn the_parser_rejects_what_prometheus_rejects() {
    let ok = "# HELP a_total Help text.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1\n\n\
              # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2 1700000000000\n";
    let samples = parse_exposition(ok).expect("valid text");
    assert_eq!(samples.len(), 4);
    assert_eq!(samples[0].labels["x"], "q\"\\\n");
    for bad in [
        "a 1\n",                                                    // no TYPE
        "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n",             // same series twice
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",                    // TYPE twice
        "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x=\"2\"} 1\n", // split family
        "# TYPE a gauge\na{x=1} 1\n",                               // unquoted
        "# TYPE a gauge\na{x=\"\\t\"} 1\n",                         // bad escape
        "# TYPE a gauge\na 1 2 3\n",                                // trailing text
        "# TYPE a gauge\na one\n",                                  // not a number
        "# TYPE a gauge\na{x=\"1\"}1\n",                            // no space
        "# TYPE a widget\na 1\n",                                   // unknown type
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------
// /metrics under load.

/// Counters of a tenant that any traffic moves.
const TRAFFIC_COUNTERS: [&str; 4] = [
    "sluice_transactions_total",
    "sluice_queries_total",
    "sluice_received_bytes_total",
    "sluice_sent_bytes_total",
];

#[test]
fn metrics_move_during_and_after_a_pgbench_run() {
    const BUDGET: u32 = 9;
    const POOL_SIZE: u32 = 2;
    let pg = Postgres::shared();
    let busy = pg.create_tenant("obs_busy");
    let quiet = pg.create_tenant("obs_quiet");
    let config = SluiceConfig::new(pg)
        .max_server_connections(BUDGET)
        .tenant(Tenant::new(&busy).pool_size(POOL_SIZE))
        .tenant(Tenant::new(&quiet));
    let sluice = Sluice::start(&config);
    pgbench_init(&sluice, &busy.user, &busy.password, &busy.database, 1);

    let before = Scrape::of(&sluice);
    for tenant in [&busy, &quiet] {
        assert_eq!(
            before.tenant_series(tenant),
            TENANT_SERIES,
            "series of {}:\n{}",
            tenant.database,
            before.body
        );
    }

    // `-S -c 8` on a pool of 2: clients queue for server connections.
    let bench = {
        let (addr, t) = (sluice.addr(), busy.clone());
        thread::spawn(move || {
            let args = ["-n", "-S", "-c", "8", "-j", "2", "-T", "2"];
            pgbench(&addr, &t.user, &t.password, &t.database, &args)
        })
    };
    let mut during = Vec::new();
    while !bench.is_finished() {
        during.push(Scrape::of(&sluice));
        thread::sleep(POLL);
    }
    let run = bench.join().expect("pgbench thread");
    assert!(
        run.status.success() && run.failed == 0 && run.processed > 0,
        "pgbench failed ({}):\n{}{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let after = Scrape::of(&sluice);
    assert!(
        during.len() >= 5,
        "only {} scrapes during the run",
        during.len()
    );

    // Counters only go up, and moved by at least what pgbench did.
    let timeline: Vec<&Scrape> = std::iter::once(&before)
        .chain(&during)
        .chain(std::iter::once(&after))
        .collect();
    for name in TRAFFIC_COUNTERS {
        let values: Vec<f64> = timeline.iter().map(|s| s.tenant(name, &busy)).collect();
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "{name} went down: {values:?}"
        );
        let moved = after.tenant(name, &busy) - before.tenant(name, &busy);
        assert!(moved > 0.0, "{name} did not move: {values:?}");
        assert_eq!(after.tenant(name, &quiet), 0.0, "{name} of the idle tenant");
    }
    for name in ["sluice_transactions_total", "sluice_queries_total"] {
        let moved = after.tenant(name, &busy) - before.tenant(name, &busy);
        assert!(
            moved >= run.processed as f64,
            "{name} moved by {moved}, pgbench processed {} transactions",
            run.processed
        );
    }
    let waits = after.tenant("sluice_tenant_pool_waits_total", &busy)
        - before.tenant("sluice_tenant_pool_waits_total", &busy);
    assert!(waits >= run.processed as f64, "{waits} pool waits recorded");

    // Waiting clients showed up while 8 clients shared 2 server connections, and the pool
    // never exceeded pool_size.
    let most_waiting = during
        .iter()
        .map(|s| s.tenant_state("sluice_client_connections", &busy, "waiting"))
        .fold(0.0, f64::max);
    assert!(
        most_waiting > 0.0,
        "no waiting client in {} scrapes during the run",
        during.len()
    );
    for scrape in &during {
        let servers: f64 = ["active", "idle", "connecting"]
            .iter()
            .map(|state| scrape.tenant_state("sluice_server_connections", &busy, state))
            .sum();
        assert!(
            servers <= f64::from(POOL_SIZE),
            "{servers} server connections"
        );
        assert_eq!(
            scrape.tenant("sluice_pool_size", &busy),
            f64::from(POOL_SIZE)
        );
    }

    // Per-cluster series.
    let main = [("cluster", "main")];
    let queries = after.histogram_count("sluice_query_duration_seconds", "main");
    assert!(queries >= run.processed as f64, "{queries} query durations");
    let pool_waits = after.histogram_count("sluice_pool_wait_seconds", "main");
    assert!(pool_waits > 0.0, "no pool wait recorded");
    let transactions = after.histogram_count("sluice_transaction_duration_seconds", "main");
    assert!(transactions >= run.processed as f64);
    assert!(after.value("sluice_server_connects_total", &main) >= 1.0);
    assert_eq!(
        after.value("sluice_cluster_max_server_connections", &main),
        f64::from(BUDGET)
    );
    assert_eq!(after.value("sluice_cluster_up", &main), 1.0);
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(after.value("sluice_build_info", &version), 1.0);
    let ok = after.value("sluice_client_logins_total", &[("result", "ok")]);
    assert!(
        ok >= 8.0,
        "{ok} successful logins after pgbench's 8 clients"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(after.value(name, &[]) > 0.0, "{name}");
    }

    // The clients left: the tenant's client gauges drop back to 0.
    let bad_password = [("result", "bad_password")];
    assert_eq!(
        before.get("sluice_client_logins_total", &bad_password),
        None
    );
    let gone = poll_until(PROMPTLY, POLL, || {
        let scrape = Scrape::of(&sluice);
        let clients: f64 = ["active", "idle", "waiting"]
            .iter()
            .map(|state| scrape.tenant_state("sluice_client_connections", &busy, state))
            .sum();
        (clients == 0.0).then_some(())
    });
    assert!(gone.is_some(), "client gauges did not return to 0");

    // A wrong password is counted by result.
    let out = psql(&sluice, &busy.user, "wrong", &busy.database, "SELECT 1");
    assert!(
        !out.status.success(),
        "login with a wrong password succeeded"
    );
    let counted = poll_until(PROMPTLY, POLL, || {
        Scrape::of(&sluice)
            .get("sluice_client_logins_total", &bad_password)
            .filter(|n| *n >= 1.0)
    });
    assert!(counted.is_some(), "bad_password login not counted");

    let last = Scrape::of(&sluice);
    for tenant in [&busy, &quiet] {
        assert_eq!(last.tenant_series(tenant), TENANT_SERIES, "{}", last.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_names_are_escaped_in_metrics_and_on_the_status_page() {
    let pg = Postgres::shared();
    let name = format!("obs <b>&\"q\\ {}", std::process::id());
    let tenant = pg.create_named_tenant(&name, "obs-escape-password");
    let sluice = Sluice::start(&SluiceConfig::new(pg).tenant(Tenant::new(&tenant)));
    let client = connect(&sluice, &tenant).await;
    assert_eq!(
        scalar(&client, "SELECT current_database()")
            .await
            .as_deref(),
        Some(name.as_str())
    );

    let scrape = Scrape::of(&sluice);
    assert_eq!(
        scrape.tenant_series(&tenant),
        TENANT_SERIES,
        "{}",
        scrape.body
    );
    assert!(scrape.tenant("sluice_transactions_total", &tenant) >= 1.0);
    assert!(
        scrape.body.contains("database=\"obs <b>&\\\"q\\\\ "),
        "label value not escaped as the format says:\n{}",
        scrape.body
    );

    let page = http_get(sluice.metrics_addr(), "/");
    assert_eq!(page.status, 200);
    let escaped = html_escape(&name);
    assert!(
        page.body.contains(&format!("{escaped}/{escaped}")),
        "tenant name not (or not properly) escaped on the status page:\n{}",
        page.body
    );
    assert!(!page.body.contains("<b>&"), "raw markup from a tenant name");
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

// ---------------------------------------------------------------------------------------
// Reload.

#[derive(Clone, Copy, Debug)]
enum Reload {
    Sighup,
    Console,
}

async fn removed_tenants_series_disappear(via: Reload) {
    let pg = Postgres::shared();
    let kept = pg.create_tenant("obs_kept");
    let removed = pg.create_tenant("obs_removed");
    let config = SluiceConfig::new(pg)
        .admin(ADMIN, ADMIN_PASSWORD)
        .tenant(Tenant::new(&kept))
        .tenant(Tenant::new(&removed));
    let mut sluice = Sluice::start(&config);
    let kept_client = connect(&sluice, &kept).await;
    let removed_client = connect(&sluice, &removed).await;
    scalar(&kept_client, "SELECT 1").await;
    scalar(&removed_client, "SELECT 1").await;
    let admin = console_login(&sluice, ADMIN, ADMIN_PASSWORD, "sluice").await;

    let before = Scrape::of(&sluice);
    assert_eq!(before.tenant_series(&kept), TENANT_SERIES);
    assert_eq!(before.tenant_series(&removed), TENANT_SERIES);
    let kept_transactions = before.tenant("sluice_transactions_total", &kept);
    assert!(kept_transactions >= 1.0);

    let mut smaller = sluice.config().clone();
    smaller.tenants.retain(|t| t.database != removed.database);
    sluice.write_config(&smaller);
    let after = match via {
        Reload::Sighup => {
            assert!(sluice.reload(), "SIGHUP not delivered");
            poll_until(PROMPTLY, POLL, || {
                let scrape = Scrape::of(&sluice);
                (scrape.tenant_series(&removed) == 0).then_some(scrape)
            })
            .unwrap_or_else(|| {
                panic!(
                    "the removed tenant's series are still there after {PROMPTLY:?}:\n{}",
                    Scrape::of(&sluice).body
                )
            })
        }
        Reload::Console => {
            // RELOAD answers once the new configuration is in force.
            let result = console(&admin, "RELOAD").await;
            assert!(result.columns.is_empty(), "RELOAD returned rows");
            let scrape = Scrape::of(&sluice);
            assert_eq!(
                scrape.tenant_series(&removed),
                0,
                "series of a removed tenant right after RELOAD:\n{}",
                scrape.body
            );
            scrape
        }
    };
    assert_eq!(after.tenant_series(&kept), TENANT_SERIES, "{}", after.body);
    sluice.wait_for_log("configuration reloaded", PROMPTLY);

    // The kept tenant keeps its pool and statistics, and its client goes on.
    assert_eq!(
        scalar(&kept_client, "SELECT 'after reload'")
            .await
            .as_deref(),
        Some("after reload")
    );
    let later = Scrape::of(&sluice);
    assert!(
        later.tenant("sluice_transactions_total", &kept) >= kept_transactions + 1.0,
        "the kept tenant's counters were reset by the reload"
    );
    let tenants = console(&admin, "SHOW TENANTS").await;
    assert_eq!(tenants.rows_where("database", &kept.database).count(), 1);
    assert_eq!(tenants.rows_where("database", &removed.database).count(), 0);

    // The removed tenant: no new logins; its connected client, idle (outside a
    // transaction), is closed at once with 57P01 (README, Reload).
    let e = refused_login(&sluice, &removed.user, &removed.password, &removed.database).await;
    assert_eq!(sqlstate(&e), Some("3D000"), "{}", error_text(&e));
    let closed = crate::common::try_scalar(&removed_client, "SELECT 'finishing'").await;
    assert!(
        closed.is_err(),
        "the removed tenant's idle client still runs queries"
    );
    assert_eq!(
        Scrape::of(&sluice).tenant_series(&removed),
        0,
        "the removed tenant's series came back once its client ran a query"
    );
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_removes_a_removed_tenants_series() {
    removed_tenants_series_disappear(Reload::Sighup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_reload_removes_a_removed_tenants_series() {
    removed_tenants_series_disappear(Reload::Console).await;
}

/// Sluice still serves `tenant` as before: its connected client, a new login, its series
/// and readiness.
async fn still_serving(sluice: &Sluice, tenant: &TenantDb, client: &tokio_postgres::Client) {
    assert_eq!(
        scalar(client, "SELECT 'still here'").await.as_deref(),
        Some("still here")
    );
    let fresh = connect(sluice, tenant).await;
    assert_eq!(scalar(&fresh, "SELECT 2").await.as_deref(), Some("2"));
    assert_eq!(Scrape::of(sluice).tenant_series(tenant), TENANT_SERIES);
    assert_eq!(http_get(sluice.metrics_addr(), "/readyz").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_not_reloaded() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("obs_reload_ok");
    let newcomer = pg.create_tenant("obs_reload_new");
    let good = SluiceConfig::new(pg)
        .admin(ADMIN, ADMIN_PASSWORD)
        .tenant(Tenant::new(&tenant));
    let mut sluice = Sluice::start(&good);
    let client = connect(&sluice, &tenant).await;
    scalar(&client, "SELECT 1").await;

    // Not TOML, by SIGHUP: logged, nothing changes.
    sluice.write_config(
        &good
            .clone()
            .tenant(Tenant::new(&newcomer))
            .top_line("this is not toml"),
    );
    assert!(sluice.reload(), "SIGHUP not delivered");
    sluice.wait_for_log("not reloaded", PROMPTLY);
    still_serving(&sluice, &tenant, &client).await;
    let e = refused_login(
        &sluice,
        &newcomer.user,
        &newcomer.password,
        &newcomer.database,
    )
    .await;
    assert_eq!(sqlstate(&e), Some("3D000"), "{}", error_text(&e));

    // Valid TOML that fails validation (a tenant on an undefined cluster), by RELOAD: the
    // console answers with an error naming the problem, and the session goes on.
    let mut invalid = good.clone();
    invalid.tenants.push(Tenant {
        cluster: "nowhere".into(),
        ..Tenant::new(&newcomer)
    });
    sluice.write_config(&invalid);
    let admin = console_login(&sluice, ADMIN, ADMIN_PASSWORD, "sluice").await;
    let e = try_console(&admin, "RELOAD")
        .await
        .expect_err("RELOAD of an invalid config succeeded");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("RELOAD: not an ErrorResponse: {}", error_text(&e)));
    assert_eq!(db.severity(), "ERROR", "{}", error_text(&e));
    assert!(
        db.message().contains("nowhere"),
        "the error does not name the problem: {}",
        error_text(&e)
    );
    let version = console(&admin, "SHOW VERSION").await;
    assert_eq!(version.rows.len(), 1, "the console session did not go on");
    still_serving(&sluice, &tenant, &client).await;
    assert_eq!(Scrape::of(&sluice).tenant_series(&newcomer), 0);
    let e = refused_login(
        &sluice,
        &newcomer.user,
        &newcomer.password,
        &newcomer.database,
    )
    .await;
    assert_eq!(sqlstate(&e), Some("3D000"), "{}", error_text(&e));

    // Fixed: the next RELOAD takes it.
    sluice.write_config(&good.clone().tenant(Tenant::new(&newcomer)));
    console(&admin, "RELOAD").await;
    let joined = connect(&sluice, &newcomer).await;
    assert_eq!(scalar(&joined, "SELECT 3").await.as_deref(), Some("3"));
    assert_eq!(Scrape::of(&sluice).tenant_series(&newcomer), TENANT_SERIES);
    still_serving(&sluice, &tenant, &client).await;
    assert_alive(&mut sluice);
}

// ---------------------------------------------------------------------------------------
// Health and readiness.

fn get(sluice: &Sluice, path: &str) -> HttpResponse {
    http_get(sluice.metrics_addr(), path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_follow_pause_and_resume() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("obs_ready");
    let config = SluiceConfig::new(pg)
        .admin(ADMIN, ADMIN_PASSWORD)
        .tenant(Tenant::new(&tenant));
    let mut sluice = Sluice::start(&config);
    let healthz = get(&sluice, "/healthz");
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));
    assert_eq!(get(&sluice, "/readyz").status, 200);
    assert_eq!(get(&sluice, "/no-such-page").status, 404);

    let admin = console_login(&sluice, ADMIN, ADMIN_PASSWORD, "sluice").await;
    console(&admin, "PAUSE").await;
    let paused = get(&sluice, "/readyz");
    assert_eq!(paused.status, 503, "/readyz while paused: {paused:?}");
    assert_eq!(get(&sluice, "/healthz").status, 200);
    let page = get(&sluice, "/");
    assert!(page.body.contains("not ready"), "status page while paused");

    console(&admin, "RESUME").await;
    assert_eq!(get(&sluice, "/readyz").status, 200);
    let client = connect(&sluice, &tenant).await;
    assert_eq!(scalar(&client, "SELECT 1").await.as_deref(), Some("1"));

    // Pausing one database leaves the process ready.
    console(&admin, &format!("PAUSE {}", tenant.database)).await;
    assert_eq!(get(&sluice, "/readyz").status, 200);
    console(&admin, &format!("RESUME {}", tenant.database)).await;
    assert_alive(&mut sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_turns_readyz_503_and_sluice_exits_0_after_the_last_transaction() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("obs_drain");
    let mut config = SluiceConfig::new(pg).tenant(Tenant::new(&tenant).auth_type("md5"));
    // Far longer than the test waits: the exit must come from the drain finishing.
    config.shutdown_timeout = Some("60s".into());
    let mut sluice = Sluice::start(&config);
    let mut idle = raw_login(&sluice, &tenant).await;
    let mut busy = raw_login(&sluice, &tenant).await;
    busy.send(&query("BEGIN; SELECT 1")).await;
    busy.read_until_ready().await;
    assert_eq!(get(&sluice, "/readyz").status, 200);

    assert!(sluice.terminate(), "SIGTERM not delivered");
    let not_ready = poll_until(PROMPTLY, POLL, || {
        (get(&sluice, "/readyz").status == 503).then_some(())
    });
    assert!(not_ready.is_some(), "/readyz still 200 while draining");
    assert_eq!(
        get(&sluice, "/healthz").status,
        200,
        "/healthz while draining"
    );
    // No new clients; the idle one is sent away at once (README, "Shutdown").
    let refused = poll_until(PROMPTLY, POLL, || {
        TcpStream::connect_timeout(&sluice.addr(), PROMPTLY)
            .is_err()
            .then_some(())
    });
    assert!(refused.is_some(), "still accepting clients while draining");
    idle.expect_error_then_eof("57P01").await;

    // The transaction goes on and ends normally; then its client is sent away too.
    assert!(
        sluice.try_exit_status().is_none(),
        "exited with a transaction open"
    );
    assert_eq!(
        raw_scalar(&mut busy, "SELECT 'inside'").await.as_deref(),
        Some("inside")
    );
    busy.send(&query("COMMIT")).await;
    busy.read_until_ready().await;
    busy.expect_error_then_eof("57P01").await;

    let status = sluice
        .wait_exit(PROMPTLY)
        .unwrap_or_else(|| panic!("sluice still running after the last transaction ended"));
    assert!(status.success(), "sluice exited with {status}");
    let log = sluice.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

// ---------------------------------------------------------------------------------------
// The status page.

#[test]
fn status_page_lists_clusters_and_busiest_tenants() {
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("obs_page");
    let sluice = Sluice::start(
        &SluiceConfig::new(pg)
            .max_server_connections(11)
            .tenant(Tenant::new(&tenant).pool_size(3)),
    );
    psql_ok(
        &sluice,
        &tenant.user,
        &tenant.password,
        &tenant.database,
        "SELECT 1",
    );
    let page = get(&sluice, "/");
    assert_eq!(page.status, 200);
    let content_type = page.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "{content_type:?}");
    for needle in [
        "<h2>Clusters</h2>".to_owned(),
        "<td>main</td>".to_owned(),
        format!("<td>127.0.0.1:{}</td>", pg.port()),
        " / 11</td>".to_owned(),
        "<h2>Busiest tenants</h2>".to_owned(),
        format!("<td>{}/{}</td>", tenant.database, tenant.user),
        "href=\"/metrics\"".to_owned(),
    ] {
        assert!(
            page.body.contains(&needle),
            "{needle:?} not in:\n{}",
            page.body
        );
    }
}

/// Chromium from Debian's package, if installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

#[test]
fn status_page_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        assert!(
            !in_ci(),
            "chromium is not installed, and CI is set: scripts/ensure-deps installs it"
        );
        eprintln!(
            "SKIPPED status_page_renders_in_headless_chromium: chromium is not installed \
             (scripts/ensure-deps installs it; in CI this test must run)"
        );
        return;
    };
    let pg = Postgres::shared();
    let tenant = pg.create_tenant("obs_chromium");
    let sluice = Sluice::start(&SluiceConfig::new(pg).tenant(Tenant::new(&tenant)));
    psql_ok(
        &sluice,
        &tenant.user,
        &tenant.password,
        &tenant.database,
        "SELECT 1",
    );
    let url = format!("http://{}/", sluice.metrics_addr());
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |extra: &[String]| {
        let profile = tempfile::tempdir_in(dir.path()).expect("profile dir");
        let mut cmd = std::process::Command::new(&chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(&url);
        let out = output_with_timeout(&mut cmd, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "chromium {extra:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let dom = run(&["--dump-dom".to_owned()]);
    for needle in [
        "<title>sluice status</title>".to_owned(),
        "<h2>Clusters</h2>".to_owned(),
        "<td>main</td>".to_owned(),
        "<h2>Busiest tenants</h2>".to_owned(),
        format!("<td>{}/{}</td>", tenant.database, tenant.user),
    ] {
        assert!(dom.contains(&needle), "{needle:?} not in the DOM:\n{dom}");
    }

    let png = dir.path().join("status.png");
    run(&[
        format!("--screenshot={}", png.display()),
        "--window-size=1024,768".to_owned(),
    ]);
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
        "not a PNG of a page ({} bytes)",
        bytes.len()
    );
    // IHDR: width and height as asked.
    let dimension = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(
        (dimension(16), dimension(20)),
        (1024, 768),
        "screenshot size"
    );
}
