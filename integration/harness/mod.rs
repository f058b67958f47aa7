//! Harness for sluice's end-to-end tests and the demo:
//! - [`Postgres`]: one throwaway PostgreSQL per process, cleaned up when the process exits;
//!   [`Postgres::create_tenant`] gives each test its own role and database.
//! - [`SluiceConfig`] / [`Tenant`]: the TOML config of the contract in PRODUCT.md.
//! - [`Sluice`]: the proxy as a child process, killed on drop.
//! - [`psql`], [`pgbench`], [`connect`]: clients for any [`Endpoint`] (sluice or PostgreSQL).
//! - [`TlsFiles`] / [`Ca`]: certificates made with rcgen; [`Postgres::shared_tls`] is a
//!   second server that accepts only TLS; [`Postgres::shared_standby`] a streaming standby
//!   of the first, and [`Postgres::new_standby`] one a test owns (and may promote).
//!
//! Compiled into two crates — the `integration` test binary and the `demo` example — each
//! using a different part of it, so unused items and re-exports are expected here.
#![allow(dead_code)]

mod client;
mod config;
mod postgres;
mod process;
mod sluice;
mod tls;

#[allow(unused_imports)]
pub use client::{
    connect, conninfo, error_text, pg_command, pgbench, pgbench_init, psql, psql_ok, psql_with,
    sqlstate, try_connect, Endpoint, PgbenchSummary,
};
#[allow(unused_imports)]
pub use config::{Admin, Cluster, Defaults, SluiceConfig, Tenant};
#[allow(unused_imports)]
pub use postgres::{ident, literal, Postgres, TenantDb};
#[allow(unused_imports)]
pub use process::{free_port, output_with_timeout, poll_until, port_is_free, random_token, signal};
#[allow(unused_imports)]
pub use sluice::Sluice;
#[allow(unused_imports)]
pub use tls::{tls_client, Ca, Leaf, TlsFiles, SERVER_NAMES};
