//! The status page at `/` on the metrics port, for teams without Prometheus: clusters
//! with their budget in use, and the busiest tenants. Plain HTML, no scripts; a reload
//! of the page shows fresh numbers.
//!
//! Read-only.

use crate::shared::Shared;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// How many tenants the page lists.
const BUSIEST: usize = 20;

pub fn render(shared: &Shared) -> String {
    let tenants = shared.tenants.load();
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>sluice status</title><style>\
         body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}\
         th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}\
         th:first-child,td:first-child{text-align:left}.down{color:#b00}\
         </style></head><body>\n",
    );
    let _ = writeln!(
        html,
        "<h1>sluice {}</h1><p>{} tenants, {} clients connected{}</p>",
        env!("CARGO_PKG_VERSION"),
        tenants.iter().count(),
        shared.clients.clients().len(),
        if shared.is_ready() {
            ""
        } else {
            " — <b>not ready</b>"
        }
    );
    html.push_str(
        "<h2>Clusters</h2><table><tr><th>cluster</th><th>server</th>\
         <th>connections used / max</th><th>reachable</th></tr>\n",
    );
    for cluster in tenants.clusters.values() {
        let reachable = cluster.is_reachable();
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}:{}</td><td>{} / {}</td><td{}>{}</td></tr>",
            escape(&cluster.name),
            escape(&cluster.host),
            cluster.port,
            cluster.used(),
            cluster.budget.max(),
            if reachable { "" } else { " class=\"down\"" },
            if reachable { "yes" } else { "no" },
        );
    }
    html.push_str("</table>\n");

    let pinned = shared.clients.pinned();
    let mut busiest: Vec<_> = tenants.iter().collect();
    busiest.sort_by_key(|t| {
        let status = t.pool.status();
        std::cmp::Reverse(u64::from(t.client_count()) + status.size as u64)
    });
    html.push_str(
        "<h2>Busiest tenants</h2><table><tr><th>tenant</th><th>cluster</th><th>clients</th>\
         <th>waiting</th><th>pinned</th><th>servers (active / pool size)</th>\
         <th>transactions</th><th>wait p99</th></tr>\n",
    );
    for tenant in busiest.into_iter().take(BUSIEST) {
        let status = tenant.pool.status();
        let settings = &tenant.settings;
        let key = (settings.database.clone(), settings.user.clone());
        let pinned_clients = pinned.get(&key).map_or(0, |p| p.clients);
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({} / {})</td><td>{}</td><td>{}</td></tr>",
            escape(&tenant.name()),
            escape(&settings.cluster),
            tenant.client_count(),
            tenant.stats.clients_waiting.load(Relaxed),
            pinned_clients,
            status.size,
            status.size.saturating_sub(status.available),
            settings.pool_size,
            tenant.stats.transactions.load(Relaxed),
            tenant.stats.wait_p99().map_or("—".to_owned(), describe),
        );
    }
    html.push_str("</table>\n<p>Metrics for Prometheus: <a href=\"/metrics\">/metrics</a></p></body></html>\n");
    html
}

fn describe(bound: Duration) -> String {
    if bound == Duration::MAX {
        "&gt; 30 s".to_owned()
    } else {
        format!("≤ {bound:?}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
