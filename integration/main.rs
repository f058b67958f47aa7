//! End-to-end tests: the real `sluice` binary between real clients (psql, pgbench,
//! tokio-postgres) and a throwaway PostgreSQL. One test binary; the harness owns the
//! server, and every test creates its own tenants, so tests run in parallel.
#![forbid(unsafe_code)]

mod common;
mod harness;
mod raw;
mod smoke;

mod admin_console;
mod auth_query;
mod basics;
mod budget;
mod cancel;
mod config_check;
mod copy_and_more;
mod errors;
mod hygiene;
mod isolation;
mod libpq_pattern;
mod listen_notify;
mod observability;
mod operations;
mod pgbench;
mod pipeline;
mod prepared;
mod relay_paths;
mod session_params;
mod timeouts;
mod tls;
