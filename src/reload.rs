//! Reload triggers outside the admin API: SIGHUP (SPEC.md; without a handler the signal's
//! default action would terminate the process), and the config file changing on disk.
//!
//! The watcher watches the file's directory, not the file, so an editor's atomic rename and a
//! delete-then-recreate are both seen. Events are debounced (`DEBOUNCE` of quiet) so a file
//! written in two steps is read once, complete; a file that is missing after the quiet period
//! is waited for rather than reported; content that did not change causes no reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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

/// Quiet time after the last change before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(200);

pub struct ConfigWatcher {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let path = self.state.config_path.clone();
        let (Some(dir), Some(name)) =
            (watch_dir(&path), path.file_name().map(|n| n.to_os_string()))
        else {
            log::warn!(
                "cannot watch {}: reload with SIGHUP or POST /reload",
                path.display()
            );
            return;
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let handler = move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if event
                    .paths
                    .iter()
                    .any(|p| p.file_name() == Some(name.as_os_str()))
                {
                    let _ = tx.send(());
                }
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                log::warn!(
                    "cannot watch {}: {e}; reload with SIGHUP or POST /reload",
                    path.display()
                );
                return;
            }
        };
        if let Err(e) =
            notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)
        {
            log::warn!(
                "cannot watch {}: {e}; reload with SIGHUP or POST /reload",
                dir.display()
            );
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                event = rx.recv() => if event.is_none() { return },
            }
            // Wait for the writes to stop.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            if !path.exists() {
                log::info!("{} is gone; waiting for it to come back", path.display());
                continue;
            }
            let state = Arc::clone(&self.state);
            let _ = tokio::task::spawn_blocking(move || state.reload_if_changed()).await;
        }
    }
}

fn watch_dir(path: &std::path::Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    absolute.parent().map(PathBuf::from)
}
