//! The `portico` command (SPEC.md): validate a config with `-t`, or run the gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use portico::metrics::Metrics;
use portico::server::{self, StartOptions};
use portico::snapshot;

/// mimalloc, called the way its fast paths expect (see `portico::allocator`).
#[global_allocator]
static ALLOCATOR: portico::allocator::Allocator = portico::allocator::Allocator;

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

/// Set in the environment of the background process `-d` starts.
const DAEMON_CHILD: &str = "PORTICO_DAEMON_CHILD";

/// `-d`: start this same command again in the background, in a process group of its own,
/// and return. Done before any thread exists (Pingora's own daemon mode forks after Portico
/// has started its access-log and JWKS threads, which a forked child would not have). The
/// config was already checked, so its problems reach the terminal; stdout and stderr are
/// inherited (under systemd, the journal).
fn daemonize() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let args: Vec<_> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "-d" && a != "--daemon")
        .collect();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("portico: cannot find its own executable to run in the background: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::process::Command::new(exe)
        .args(args)
        .env(DAEMON_CHILD, "1")
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    match started {
        Ok(child) => {
            println!("portico running in the background, pid {}", child.id());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portico: cannot start in the background: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    portico::server::ignore_hangups_until_handled();
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
    if cli.daemon && std::env::var_os(DAEMON_CHILD).is_none() {
        return daemonize();
    }
    let options = StartOptions {
        config_path,
        upgrade: cli.upgrade,
        write_pid_file: std::env::var_os(DAEMON_CHILD).is_some(),
    };
    match server::run(snapshot, metrics, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portico: {e}");
            ExitCode::FAILURE
        }
    }
}
