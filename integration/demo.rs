//! The demo (`scripts/demo`): a throwaway PostgreSQL with three tenants — acme, globex and
//! initech — behind sluice, to try by hand with psql. Runs until Ctrl-C, then stops sluice
//! and PostgreSQL and removes their files.
//!
//! Usage: `demo [path/to/sluice]`; without an argument it uses the `sluice` binary of the
//! same Cargo profile (`target/<profile>/sluice`, next to `examples/`).

#[path = "harness/mod.rs"]
mod harness;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use harness::{port_is_free, Postgres, Sluice, SluiceConfig, Tenant};

const TENANTS: [(&str, &str, &str); 3] = [
    ("acme", "acme-secret", "transaction"),
    ("globex", "globex-secret", "transaction"),
    ("initech", "initech-secret", "session"),
];
/// The admin-console login the demo configures.
const ADMIN: (&str, &str) = ("sluice_admin", "admin-secret");

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(bin) = sluice_binary() else {
        eprintln!("sluice binary not found: build it (cargo build --bin sluice) or pass its path");
        return ExitCode::FAILURE;
    };

    println!("Starting a throwaway PostgreSQL…");
    let pg = Postgres::shared();
    let mut config = SluiceConfig::new(pg).admin(ADMIN.0, ADMIN.1);
    config.listen = preferred(6432, config.listen);
    config.metrics_listen = preferred(8067, config.metrics_listen);
    for (name, password, mode) in TENANTS {
        let db = pg.create_named_tenant(name, password);
        config = config.tenant(Tenant::new(&db).pool_size(5).pool_mode(mode));
    }

    let mut sluice = Sluice::start_bin(&bin, &config);
    print_instructions(&sluice, pg);

    let outcome = tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => {
            sluice.terminate();
            sluice.wait_exit(Duration::from_secs(5));
            ExitCode::SUCCESS
        }
        status = watch(&mut sluice) => {
            eprintln!("sluice exited ({status}):\n{}", sluice.log());
            ExitCode::FAILURE
        }
    };
    println!("\nStopping sluice and PostgreSQL…");
    drop(sluice);
    pg.shutdown();
    outcome
}

/// `port` on 127.0.0.1 if it is free, else `fallback`.
fn preferred(port: u16, fallback: SocketAddr) -> SocketAddr {
    match port_is_free(port) {
        true => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        false => {
            println!("Port {port} is taken; using {} instead.", fallback.port());
            fallback
        }
    }
}

fn sluice_binary() -> Option<PathBuf> {
    if let Some(arg) = std::env::args_os().nth(1) {
        return Some(PathBuf::from(arg));
    }
    // target/<profile>/examples/demo -> target/<profile>/sluice
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("sluice");
    bin.is_file().then_some(bin)
}

/// Resolves when sluice exits on its own.
async fn watch(sluice: &mut Sluice) -> std::process::ExitStatus {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if let Some(status) = sluice.try_exit_status() {
            return status;
        }
    }
}

fn print_instructions(sluice: &Sluice, pg: &Postgres) {
    let port = sluice.port();
    println!(
        "\nsluice is listening on 127.0.0.1:{port} (PostgreSQL itself on 127.0.0.1:{}).",
        pg.port()
    );
    println!("Connect as a tenant:\n");
    for (name, password, mode) in TENANTS {
        println!(
            "  psql \"host=127.0.0.1 port={port} dbname={name} user={name} password={password}\"    # {mode} pooling"
        );
    }
    println!("\nLoad, e.g.:\n");
    println!("  PGPASSWORD=acme-secret pgbench -h 127.0.0.1 -p {port} -U acme -i acme");
    println!("  PGPASSWORD=acme-secret pgbench -h 127.0.0.1 -p {port} -U acme -c 50 -T 10 -S acme");
    println!("\nAdmin console (SHOW POOLS, SHOW STATS, …):\n");
    println!(
        "  psql \"host=127.0.0.1 port={port} dbname=sluice user={} password={}\"",
        ADMIN.0, ADMIN.1
    );
    println!(
        "\nMetrics: curl http://{0}/metrics    Status page: http://{0}/",
        sluice.metrics_addr()
    );
    println!("Config:  {}", sluice.config_path().display());
    println!("\nPress Ctrl-C to stop.");
}
