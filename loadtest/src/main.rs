//! `portico-backend`: the demo services for `make run` and the benchmark backend for `make bench`
//! (see the library, `portico_loadtest`), on the named listeners given on the command line.

use std::process::ExitCode;

use portico_loadtest::{bind, serve};

const USAGE: &str = "usage: portico-backend [--threads N] NAME=ADDR [NAME=ADDR ...]\n\
                     example: portico-backend users=127.0.0.1:3001 orders=127.0.0.1:3002";

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct Args {
    threads: usize,
    listeners: Vec<(String, String)>,
}

/// Hand-parsed on purpose: the binary has two options and must start fast with few deps.
/// `Ok(None)` means `--help` was asked for.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut threads = 1;
    let mut listeners = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let threads_value = if arg == "--threads" || arg == "-t" {
            Some(args.next().ok_or("--threads needs a value")?)
        } else {
            arg.strip_prefix("--threads=").map(str::to_owned)
        };
        if let Some(value) = threads_value {
            threads = match value.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(format!(
                        "--threads must be a positive number, got {value:?}"
                    ))
                }
            };
        } else if arg == "--help" || arg == "-h" {
            return Ok(None);
        } else if arg.starts_with('-') {
            return Err(format!("unknown option {arg:?}"));
        } else {
            match arg.split_once('=') {
                Some((name, addr)) if !name.is_empty() && !addr.is_empty() => {
                    listeners.push((name.to_owned(), addr.to_owned()));
                }
                _ => return Err(format!("expected NAME=ADDR, got {arg:?}")),
            }
        }
    }
    if listeners.is_empty() {
        return Err("no listeners given".to_owned());
    }
    Ok(Some(Args { threads, listeners }))
}

async fn shutdown_signal() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

async fn run(args: Args) -> Result<(), String> {
    // Bind everything before serving anything, so a bad address fails the whole start.
    let mut bound = Vec::with_capacity(args.listeners.len());
    for (name, addr) in &args.listeners {
        bound.push((name, bind(name, addr).await?));
    }
    for (name, (listener, backend)) in bound {
        let local = listener
            .local_addr()
            .map_err(|e| format!("cannot read the address of {name}: {e}"))?;
        println!("portico-backend: {name} listening on {local}");
        tokio::spawn(serve(listener, backend));
    }
    shutdown_signal().await
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("portico-backend: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("portico-backend: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args));
    // Open keep-alive connections and pending delays are dropped, not drained: this is a test
    // backend and callers expect it to stop at once.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("portico-backend: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let parse = |s: &str| parse_args(s.split_whitespace().map(str::to_owned));
        assert_eq!(
            parse("--threads 2 users=127.0.0.1:3001 orders=127.0.0.1:3002"),
            Ok(Some(Args {
                threads: 2,
                listeners: vec![
                    ("users".into(), "127.0.0.1:3001".into()),
                    ("orders".into(), "127.0.0.1:3002".into()),
                ],
            }))
        );
        assert_eq!(parse("--threads=3 a=x:1").unwrap().unwrap().threads, 3);
        assert_eq!(parse("--help"), Ok(None));
        assert!(parse("").is_err());
        assert!(parse("--threads 0 a=x:1").is_err());
        assert!(parse("--threads").is_err());
        assert!(parse("users").is_err());
        assert!(parse("--bogus a=x:1").is_err());
    }
}
