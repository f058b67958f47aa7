//! End-to-end tests: the real `sluice` binary between real clients (psql, pgbench,
//! tokio-postgres) and a throwaway PostgreSQL. One test binary; the harness owns the
//! server, and every test creates its own tenants, so tests run in parallel.
#![forbid(unsafe_code)]

mod common;
mod harness;
mod raw;
mod smoke;

mod basics;
mod config_check;
mod errors;
mod hygiene;
mod isolation;
mod pgbench;
