//! SIGUSR1 reopens the access-log file (SPEC.md), the signal logrotate's `postrotate` sends
//! after renaming it, as with nginx: the writer goes on in a new file by the configured path.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::SignalKind;

use crate::state::GatewayState;

pub struct LogReopen {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for LogReopen {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        crate::signals::on_each(
            SignalKind::user_defined1(),
            "SIGUSR1",
            "the access log cannot be reopened",
            &mut shutdown,
            || {
                self.state.access_log.reopen();
                std::future::ready(())
            },
        )
        .await;
    }
}
