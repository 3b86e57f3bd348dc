//! The `portico` command (SPEC.md): validate a config with `-t`, or run the gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use portico::metrics::Metrics;
use portico::server::{self, StartOptions};
use portico::snapshot;

/// An API gateway and edge proxy on Pingora.
#[derive(Debug, Parser)]
#[command(name = "portico", version)]
struct Cli {
    /// Config file (default: $PORTICO_CONFIG, else conf/portico.toml)
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Load and validate the config, print every problem, exit 0 (valid) or 1
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Take over the listening sockets of a running instance (zero-downtime upgrade)
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    /// Run in the background
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let config_path = cli
        .config
        .or_else(|| std::env::var_os("PORTICO_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("conf/portico.toml"));

    let metrics = match Metrics::new() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("portico: cannot set up metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let snapshot = match snapshot::load(
        &config_path,
        None,
        &metrics.build_context(Default::default()),
    ) {
        Ok(s) => s,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        println!("{}: the config is valid", config_path.display());
        return ExitCode::SUCCESS;
    }
    let options = StartOptions {
        config_path,
        upgrade: cli.upgrade,
        daemon: cli.daemon,
    };
    match server::run(snapshot, metrics, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portico: {e}");
            ExitCode::FAILURE
        }
    }
}
