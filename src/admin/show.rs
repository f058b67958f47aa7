//! `SHOW` commands of the admin console. Columns carry PgBouncer's names where they mean
//! the same (see PgBouncer's `SHOW POOLS`, `STATS`, `CLIENTS`, `SERVERS`, `DATABASES`),
//! so pgbouncer_exporter reads them unchanged; times are in microseconds like PgBouncer's.
//!
//! Read-only: renders what the tenants, pools and registries hold; changes nothing.

use super::command::Show;
use crate::config::PoolMode;
use crate::shared::Shared;
use crate::stats::{pin_reasons, ClientState};
use crate::tenant::Tenant;
use bytes::BytesMut;
use sluice_protocol::backend::{encode_data_row, encode_row_description};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Rows of text values; `None` is NULL.
struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn new(columns: &[&'static str]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, values: Vec<String>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values.into_iter().map(Some).collect());
    }

    fn encode(&self, out: &mut BytesMut) {
        encode_row_description(out, &self.columns);
        for row in &self.rows {
            let values: Vec<Option<&str>> = row.iter().map(Option::as_deref).collect();
            encode_data_row(out, &values);
        }
    }
}

/// Appends the result set of `SHOW what`, or an error message.
pub fn render(what: Show, shared: &Shared, out: &mut BytesMut) -> Result<(), String> {
    let tenants = shared.tenants.load_full();
    let mut tenants: Vec<Arc<Tenant>> = tenants.iter().collect();
    tenants.sort_by(|a, b| {
        let key = |t: &Tenant| (t.settings.database.clone(), t.settings.user.clone());
        key(a).cmp(&key(b))
    });
    let table = match what {
        Show::Pools => pools(shared, &tenants),
        Show::Stats => stats(shared, &tenants, true, true),
        Show::StatsTotals => stats(shared, &tenants, true, false),
        Show::StatsAverages => stats(shared, &tenants, false, true),
        Show::Clients => clients(shared),
        Show::Servers => servers(&tenants),
        Show::Databases => databases(shared, &tenants),
        Show::Tenants => tenant_list(&tenants),
        Show::Clusters => clusters(shared),
        Show::Config => config(shared),
        Show::Users => users(&tenants),
        Show::Lists => lists(shared, &tenants),
        Show::Version => {
            let mut table = Table::new(&["version"]);
            table.row(vec![format!("sluice {}", env!("CARGO_PKG_VERSION"))]);
            table
        }
        Show::Help => {
            let mut table = Table::new(&["command"]);
            for show in Show::ALL {
                table.row(vec![format!("SHOW {}", show.name())]);
            }
            for command in ["PAUSE [db]", "RESUME [db]", "RELOAD", "KILL db", "SHUTDOWN"] {
                table.row(vec![command.to_owned()]);
            }
            table
        }
        Show::Mem => {
            return Err("SHOW MEM is PgBouncer-specific and not supported by sluice".into())
        }
    };
    table.encode(out);
    Ok(())
}

fn mode(tenant: &Tenant) -> &'static str {
    match tenant.settings.pool_mode {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
}

fn n(value: impl ToString) -> String {
    value.to_string()
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Relaxed)
}

fn pools(shared: &Shared, tenants: &[Arc<Tenant>]) -> Table {
    let mut table = Table::new(&[
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active",
        "sv_active_cancel",
        "sv_being_canceled",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        "load_balance_hosts",
    ]);
    let waits = shared.clients.longest_waits();
    for tenant in tenants {
        let s = &tenant.settings;
        let status = tenant.pool.status();
        let active = load(&tenant.stats.clients_active);
        let waiting = load(&tenant.stats.clients_waiting);
        let longest = waits
            .get(&(s.database.clone(), s.user.clone()))
            .copied()
            .unwrap_or_default();
        table.row(vec![
            s.database.clone(),
            s.user.clone(),
            n(active),
            n(waiting),
            n(0),
            n(0),
            n(status.active),
            n(0),
            n(0),
            n(status.available),
            n(0),
            n(0),
            n(load(&tenant.stats.servers_connecting)),
            n(longest.as_secs()),
            n(longest.subsec_micros()),
            mode(tenant).to_owned(),
            String::new(),
        ]);
    }
    table
}

/// Per-database totals and averages, as PgBouncer aggregates them.
fn stats(shared: &Shared, tenants: &[Arc<Tenant>], totals: bool, averages: bool) -> Table {
    const TOTALS: [&str; 11] = [
        "total_server_assignment_count",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "total_client_parse_count",
        "total_server_parse_count",
        "total_bind_count",
    ];
    const AVERAGES: [&str; 11] = [
        "avg_server_assignment_count",
        "avg_xact_count",
        "avg_query_count",
        "avg_recv",
        "avg_sent",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
        "avg_client_parse_count",
        "avg_server_parse_count",
        "avg_bind_count",
    ];
    // SHOW STATS_TOTALS and STATS_AVERAGES name the same values without a prefix, as
    // PgBouncer does (and pgbouncer_exporter reads).
    const UNPREFIXED: [&str; 11] = [
        "server_assignment_count",
        "xact_count",
        "query_count",
        "bytes_received",
        "bytes_sent",
        "xact_time",
        "query_time",
        "wait_time",
        "client_parse_count",
        "server_parse_count",
        "bind_count",
    ];
    let mut columns = vec!["database"];
    if totals && averages {
        columns.extend(TOTALS);
        columns.extend(AVERAGES);
    } else {
        columns.extend(UNPREFIXED);
    }
    let mut by_database: BTreeMap<&str, [u64; 9]> = BTreeMap::new();
    for tenant in tenants {
        let st = &tenant.stats;
        let sums = by_database.entry(&tenant.settings.database).or_default();
        let values = [
            load(&st.waits),
            load(&st.transactions),
            load(&st.queries),
            load(&st.received_bytes),
            load(&st.sent_bytes),
            load(&st.transaction_micros),
            load(&st.query_micros),
            load(&st.wait_micros),
            load(&st.prepared_misses),
        ];
        for (sum, value) in sums.iter_mut().zip(values) {
            *sum += value;
        }
    }
    let uptime = shared
        .started_at
        .elapsed()
        .unwrap_or_default()
        .as_secs()
        .max(1);
    let per = |value: u64, of: u64| value.checked_div(of).unwrap_or(0);
    let mut table = Table::new(&columns);
    for (
        database,
        [assignments, xacts, queries, received, sent, xact_us, query_us, wait_us, server_parses],
    ) in by_database
    {
        let mut row = vec![database.to_owned()];
        if totals {
            row.extend(
                [
                    assignments,
                    xacts,
                    queries,
                    received,
                    sent,
                    xact_us,
                    query_us,
                    wait_us,
                    0,
                    server_parses,
                    0,
                ]
                .map(n),
            );
        }
        if averages {
            row.extend(
                [
                    assignments / uptime,
                    xacts / uptime,
                    queries / uptime,
                    received / uptime,
                    sent / uptime,
                    per(xact_us, xacts),
                    per(query_us, queries),
                    per(wait_us, assignments),
                    0,
                    server_parses / uptime,
                    0,
                ]
                .map(n),
            );
        }
        table.row(row);
    }
    table
}

const SOCKET_COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

fn clients(shared: &Shared) -> Table {
    // PgBouncer's columns, then sluice's own: why the client is pinned to its connection.
    let columns: Vec<&'static str> = SOCKET_COLUMNS.iter().copied().chain(["pinned"]).collect();
    let mut table = Table::new(&columns);
    let now = SystemTime::now();
    for client in shared.clients.clients() {
        let state = client.state();
        let in_state = client.in_state_for();
        let (wait, state_name) = match state {
            ClientState::Waiting => (in_state, "waiting"),
            ClientState::Active => (Duration::ZERO, "active"),
            ClientState::Idle => (Duration::ZERO, "idle"),
        };
        let server_pid = client.server_pid.load(Relaxed);
        table.row(vec![
            "C".into(),
            client.user.clone(),
            client.database.clone(),
            "none".into(),
            state_name.into(),
            client.peer.ip().to_string(),
            n(client.peer.port()),
            String::new(),
            n(0),
            timestamp(client.connected_at),
            timestamp(now - in_state),
            n(wait.as_secs()),
            n(wait.subsec_micros()),
            n(0),
            format!("{:x}", client.id),
            String::new(),
            n(server_pid),
            String::new(),
            client.application_name.clone(),
            n(0),
            n(client.id),
            pin_reasons(client.pins()),
        ]);
    }
    table
}

fn servers(tenants: &[Arc<Tenant>]) -> Table {
    let mut table = Table::new(SOCKET_COLUMNS);
    for tenant in tenants {
        for server in tenant.servers.snapshot() {
            let active = server.active.load(Relaxed);
            let client = server.client_id.load(Relaxed);
            table.row(vec![
                "S".into(),
                tenant.settings.server_user.clone(),
                tenant.settings.database.clone(),
                "none".into(),
                if active { "active" } else { "idle" }.into(),
                server.addr.ip().to_string(),
                n(server.addr.port()),
                String::new(),
                n(0),
                timestamp(server.connected_at),
                timestamp(server.connected_at),
                n(0),
                n(0),
                n(0),
                format!("s{:x}", server.id),
                if client == 0 {
                    String::new()
                } else {
                    format!("{client:x}")
                },
                n(server.pid),
                String::new(),
                String::new(),
                n(0),
                n(server.id),
            ]);
        }
    }
    table
}

fn databases(shared: &Shared, tenants: &[Arc<Tenant>]) -> Table {
    let mut table = Table::new(&[
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "min_pool_size",
        "reserve_pool_size",
        "server_lifetime",
        "pool_mode",
        "load_balance_hosts",
        "max_connections",
        "current_connections",
        "max_client_connections",
        "current_client_connections",
        "paused",
        "disabled",
    ]);
    for tenant in tenants {
        let s = &tenant.settings;
        let cluster = &tenant.cluster;
        let paused = shared.pause.is_paused(&tenant.paused);
        table.row(vec![
            s.database.clone(),
            cluster.host.clone(),
            n(cluster.port),
            s.server_database.clone(),
            s.server_user.clone(),
            n(s.pool_size),
            n(s.min_pool_size),
            n(0),
            n(s.server_lifetime.as_secs()),
            mode(tenant).into(),
            String::new(),
            n(cluster.budget.max()),
            n(tenant.pool.status().size),
            n(s.max_client_connections),
            n(tenant.client_count()),
            n(u8::from(paused)),
            n(0),
        ]);
    }
    table
}

fn tenant_list(tenants: &[Arc<Tenant>]) -> Table {
    let mut table = Table::new(&[
        "database",
        "user",
        "cluster",
        "server_database",
        "server_user",
        "pool_mode",
        "pool_size",
        "min_pool_size",
        "max_client_connections",
        "clients",
        "servers",
        "paused",
    ]);
    for tenant in tenants {
        let s = &tenant.settings;
        table.row(vec![
            s.database.clone(),
            s.user.clone(),
            s.cluster.clone(),
            s.server_database.clone(),
            s.server_user.clone(),
            mode(tenant).into(),
            n(s.pool_size),
            n(s.min_pool_size),
            n(s.max_client_connections),
            n(tenant.client_count()),
            n(tenant.pool.status().size),
            n(u8::from(tenant.paused.load(Relaxed))),
        ]);
    }
    table
}

fn clusters(shared: &Shared) -> Table {
    let tenants = shared.tenants.load();
    let mut table = Table::new(&[
        "name",
        "host",
        "port",
        "max_server_connections",
        "server_connections",
        "reachable",
        "tenants",
    ]);
    for cluster in tenants.clusters.values() {
        let members = tenants
            .iter()
            .filter(|t| Arc::ptr_eq(&t.cluster, cluster))
            .count();
        table.row(vec![
            cluster.name.clone(),
            cluster.host.clone(),
            n(cluster.port),
            n(cluster.budget.max()),
            n(cluster.used()),
            n(u8::from(cluster.is_reachable())),
            n(members),
        ]);
    }
    table
}

/// The process-wide settings and defaults. Passwords are never listed.
fn config(shared: &Shared) -> Table {
    let config = shared.config.load();
    let d = &config.defaults;
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    let mut table = Table::new(&["key", "value", "default", "changeable"]);
    for (key, value) in [
        ("config_file", shared.config_path.display().to_string()),
        ("listen", config.listen.clone()),
        ("metrics_listen", config.metrics_listen.clone()),
        ("client_login_timeout", secs(config.client_login_timeout)),
        ("shutdown_timeout", secs(config.shutdown_timeout)),
        ("admins", n(config.admins.len())),
        ("clusters", n(config.clusters.len())),
        ("tenants", n(config.tenants.len())),
        (
            "defaults.pool_mode",
            match d.pool_mode {
                PoolMode::Transaction => "transaction".into(),
                PoolMode::Session => "session".into(),
            },
        ),
        ("defaults.pool_size", n(d.pool_size)),
        ("defaults.min_pool_size", n(d.min_pool_size)),
        (
            "defaults.max_client_connections",
            n(d.max_client_connections),
        ),
        ("defaults.query_wait_timeout", secs(d.query_wait_timeout)),
        (
            "defaults.server_connect_timeout",
            secs(d.server_connect_timeout),
        ),
        (
            "defaults.max_prepared_statements",
            n(d.max_prepared_statements),
        ),
        ("defaults.query_timeout", secs(d.query_timeout)),
        (
            "defaults.idle_transaction_timeout",
            secs(d.idle_transaction_timeout),
        ),
        ("defaults.client_idle_timeout", secs(d.client_idle_timeout)),
        ("defaults.server_idle_timeout", secs(d.server_idle_timeout)),
        ("defaults.server_lifetime", secs(d.server_lifetime)),
    ] {
        // Settings change by editing the file and RELOAD, not with SET.
        table.row(vec![key.to_owned(), value, String::new(), "no".to_owned()]);
    }
    table
}

fn users(tenants: &[Arc<Tenant>]) -> Table {
    let mut table = Table::new(&["name", "pool_mode"]);
    let mut seen = std::collections::BTreeSet::new();
    for tenant in tenants {
        if seen.insert(tenant.settings.user.clone()) {
            table.row(vec![tenant.settings.user.clone(), mode(tenant).into()]);
        }
    }
    table
}

fn lists(shared: &Shared, tenants: &[Arc<Tenant>]) -> Table {
    let databases: std::collections::BTreeSet<&str> = tenants
        .iter()
        .map(|t| t.settings.database.as_str())
        .collect();
    let servers: usize = tenants.iter().map(|t| t.pool.status().size).sum();
    let mut table = Table::new(&["list", "items"]);
    for (list, items) in [
        ("databases", databases.len()),
        ("users", users(tenants).rows.len()),
        ("pools", tenants.len()),
        ("used_clients", shared.clients.clients().len()),
        ("used_servers", servers),
    ] {
        table.row(vec![list.to_owned(), n(items)]);
    }
    table
}

/// "YYYY-MM-DD HH:MM:SS UTC", as PgBouncer prints connect times.
fn timestamp(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let leap_day = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_661);
        assert_eq!(timestamp(leap_day), "2000-02-29 01:01:01 UTC");
    }
}
