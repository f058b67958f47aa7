//! sluice: a PostgreSQL connection-pooling proxy with tenant isolation.
//!
//! `main` only wires things together: command line, configuration, logging, the tokio
//! runtime, the listener, the background tasks and signal handling. The modules, from the
//! bottom up (each uses only those before it; README "Layout" says why):
//! `config`, `locks`, `random`, `lifecycle`, `tls`, `net`, `stats` (leaves); `server` (one
//! server connection); `pool` (a tenant's pool, the cluster and its budget, maintenance);
//! `tenant` (tenants, their registry, dynamic tenants and `auth_query`); `cancel` (the
//! client registry and cancel requests); `client` (what every client connection goes
//! through); `shared` (process-wide state and reload); `session` (a tenant client's
//! session and its relay), `admin` (the console), `observe` (HTTP: metrics, status page);
//! `listener` (accept and dispatch).

#![cfg_attr(not(test), forbid(unsafe_code))]
// Test builds count allocations with a global allocator, the one place that needs unsafe.
#![cfg_attr(test, deny(unsafe_code))]

mod admin;
#[cfg(test)]
mod alloc_count;
mod cancel;
mod client;
mod config;
mod lifecycle;
mod listener;
mod locks;
mod net;
mod observe;
mod pool;
mod random;
mod server;
mod session;
mod shared;
mod stats;
mod tenant;
#[cfg(test)]
mod test_support;
mod tls;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use config::Config;
use lifecycle::Shutdown;
use observe::{http, prometheus};
use shared::Shared;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

#[derive(Parser)]
#[command(
    version,
    about = "PostgreSQL connection-pooling proxy with tenant isolation"
)]
struct Args {
    /// Configuration file (TOML); every key can be overridden with SLUICE_<KEY>.
    #[arg(long, value_name = "FILE", required_unless_present = "check_config")]
    config: Option<PathBuf>,
    /// Validate this configuration file and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    match run_command(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain of causes, without a backtrace even when RUST_BACKTRACE is set.
            eprintln!("sluice: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_command(args: Args) -> anyhow::Result<()> {
    if let Some(path) = args.check_config {
        let config = load(&path)?;
        println!(
            "{}: ok ({} clusters, {} tenants)",
            path.display(),
            config.clusters.len(),
            config.tenants.len()
        );
        return Ok(());
    }
    let path = args
        .config
        .expect("clap requires --config without --check-config");
    let config = load(&path)?;
    init_logging(args.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(config, path))
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    tls::check(&config)?;
    Ok(config)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: Config, config_path: PathBuf) -> anyhow::Result<()> {
    let metrics = prometheus::install_recorder()?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(&config.metrics_listen)
        .await
        .with_context(|| format!("listening on {}", config.metrics_listen))?;
    let drain_timeout = config.shutdown_timeout;
    let shared = Arc::new(Shared::new(config, config_path, metrics)?);
    info!(
        listen = %listener.local_addr()?,
        metrics_listen = %metrics_listener.local_addr()?,
        tenants = shared.config.load().tenants.len(),
        version = env!("CARGO_PKG_VERSION"),
        "sluice started"
    );
    let maintained = shared.clone();
    let every = shared
        .tenants
        .load()
        .maintenance_interval(&shared.config.load());
    tokio::spawn(pool::maintenance::run(
        move || maintained.tenants.load_full(),
        every,
    ));
    tokio::spawn(prometheus::upkeep(shared.clone()));
    tokio::spawn(http::serve(metrics_listener, shared.clone()));
    tokio::spawn(reload_on_sighup(shared.clone()));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let admin_shutdown = shared.clone();
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {
                info!("SIGTERM received");
                Shutdown::Graceful
            }
            _ = interrupt.recv() => {
                info!("SIGINT received");
                Shutdown::Fast
            }
            () = admin_shutdown.shutdown.notified() => {
                info!("SHUTDOWN requested on the admin console");
                Shutdown::Graceful
            }
        }
    };
    listener::serve(listener, shared, shutdown, drain_timeout).await;
    info!("sluice stopped");
    Ok(())
}

/// SIGHUP re-reads the configuration; an invalid file is logged and changes nothing.
async fn reload_on_sighup(shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    while hangup.recv().await.is_some() {
        if let Err(e) = shared.reload() {
            tracing::error!(error = %e, "configuration not reloaded; the old one stays in force");
        }
    }
    Ok(())
}
