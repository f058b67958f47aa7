//! sluice: a PostgreSQL connection-pooling proxy with tenant isolation.
//!
//! `main` only wires things together: command line, configuration, logging, the tokio
//! runtime, the listener and signal handling.

mod cancel;
mod config;
mod listener;
mod params;
mod pool;
mod random;
mod server;
mod session;
mod statements;
mod tenant;
mod wire;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use config::Config;
use listener::Shared;
use session::SessionConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tenant::Tenants;
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
        .block_on(run(config))
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    config.validate()?;
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

async fn run(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let shared = Arc::new(Shared {
        tenants: Tenants::from_config(&config),
        session: SessionConfig {
            client_login_timeout: config.client_login_timeout,
        },
        cancels: Default::default(),
    });
    info!(
        listen = %listener.local_addr()?,
        tenants = config.tenants.len(),
        version = env!("CARGO_PKG_VERSION"),
        "sluice started"
    );
    tokio::spawn(tenant::maintain_pools(shared.clone()));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received"),
            _ = interrupt.recv() => info!("SIGINT received"),
        }
    };
    listener::serve(listener, shared, shutdown, config.shutdown_timeout).await;
    info!("sluice stopped");
    Ok(())
}
