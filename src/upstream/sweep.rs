//! The idle-connection sweeper: one background service that, once a second, closes the idle
//! connections of the serving snapshot's targets that are past their `idle_timeout` or that
//! their upstream closed. A pool a reload replaced closes its idle connections when the last
//! request using it ends and it is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::state::GatewayState;

/// How often idle connections are looked at: `idle_timeout` is honoured to within this.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct PoolSweeper {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for PoolSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            for upstream in self.state.current().pools.values() {
                for target in &upstream.current().targets {
                    target.connections.sweep(now);
                }
            }
        }
    }
}
