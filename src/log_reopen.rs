//! SIGUSR1 reopens the access-log file (SPEC.md), the signal logrotate's `postrotate` sends
//! after renaming it, as with nginx: the writer goes on in a new file by the configured path.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::state::GatewayState;

pub struct LogReopen {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for LogReopen {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut signals = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGUSR1, the access log cannot be reopened: {e}");
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
                    self.state.access_log.reopen();
                }
            }
        }
    }
}
