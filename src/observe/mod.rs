//! What sluice shows of itself over HTTP on `metrics_listen`: the endpoint (`http`), the
//! Prometheus exposition (`prometheus`) and the status page (`status_page`).
//!
//! Read-only: renders from the shared state and the tenants' statistics, changes nothing.

pub mod http;
pub mod prometheus;
mod status_page;
