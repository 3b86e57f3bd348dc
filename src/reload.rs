//! Reload triggers outside the admin API. SIGHUP reloads the config (SPEC.md), as in nginx;
//! without a handler the signal's default action would terminate the process.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::state::GatewayState;

pub struct SighupReload {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for SighupReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload with POST /reload instead: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    log::info!("SIGHUP: reloading {}", self.state.config_path.display());
                    let state = Arc::clone(&self.state);
                    // The outcome is logged, counted and shown in /status by `reload` itself.
                    let _ = tokio::task::spawn_blocking(move || state.reload()).await;
                }
            }
        }
    }
}
