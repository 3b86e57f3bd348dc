//! Graceful shutdown. On SIGTERM Pingora stops accepting and broadcasts shutdown, then waits
//! out the whole grace period even when nothing is left to finish. This service marks the
//! gateway as draining (`/readyz` answers 503) and ends the process as soon as the last
//! in-flight request is done, so a drain takes as long as the slowest request, at most
//! `grace_period`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::state::GatewayState;

const POLL: Duration = Duration::from_millis(10);

pub struct Drain {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        self.state.set_draining();
        let active = &self.state.active_requests;
        log::info!(
            "draining: {} request(s) in flight, grace period {:?}",
            active.load(Ordering::Acquire),
            self.state.current().server.grace_period
        );
        // Two quiet polls in a row: a request whose header was read just as shutdown began
        // gets its context (and is counted) within microseconds.
        let mut quiet = 0;
        while quiet < 2 {
            tokio::time::sleep(POLL).await;
            quiet = if active.load(Ordering::Acquire) == 0 {
                quiet + 1
            } else {
                0
            };
        }
        log::info!("drained: every in-flight request finished");
        self.state.access_log.flush();
        // The spans of the last requests go out before the process does: the processor holds
        // up to its schedule delay's worth. A collector that does not answer gets 5 s.
        if let Some(tracer) = self.state.current().tracer.clone() {
            let flushed = tokio::task::spawn_blocking(move || tracer.flush());
            if tokio::time::timeout(Duration::from_secs(5), flushed)
                .await
                .is_err()
            {
                log::warn!("tracing: the collector did not take the last spans in 5 s");
            }
        }
        std::process::exit(0);
    }
}
