//! One loop for the signals the gateway acts on itself (SIGHUP, SIGUSR1; Pingora handles
//! TERM, INT and QUIT): run an action on each arrival until shutdown.

use pingora_core::server::ShutdownWatch;
use tokio::signal::unix::{signal, SignalKind};

/// Calls `action` each time signal `kind` (named `name` in the log) arrives, until shutdown.
/// `without` says what an operator loses when the handler cannot be installed.
pub async fn on_each<F: std::future::Future<Output = ()>>(
    kind: SignalKind,
    name: &str,
    without: &str,
    shutdown: &mut ShutdownWatch,
    mut action: impl FnMut() -> F,
) {
    let mut signals = match signal(kind) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot listen for {name}, {without}: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            received = signals.recv() => {
                if received.is_none() {
                    return;
                }
                action().await;
            }
        }
    }
}
