//! Reload triggers outside the admin API: SIGHUP (SPEC.md; without a handler the signal's
//! default action would terminate the process), and the config file changing on disk.
//!
//! The watcher watches the file's directory, not the file, so an editor's atomic rename and a
//! delete-then-recreate are both seen. A change is read only once its writer is done with it:
//! after the file is closed from writing, or renamed into place, and then `SETTLE` passes
//! with nothing more written. A writer that pauses in the middle of the file, or truncates and
//! writes it in two steps, never has its first part read, though that part may be a valid
//! config of its own (a new route, its auth plugin not yet there). Writing the new file
//! elsewhere and renaming it into place is the safe way; it is one event. A file that is
//! missing when read is waited for rather than reported; content that did not change causes
//! no reload. Where the platform reports no close (some network filesystems), `QUIET_READ`
//! without any event reads the file anyway.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::SignalKind;

use crate::state::GatewayState;

pub struct SighupReload {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for SighupReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let reload = || {
            log::info!("SIGHUP: reloading {}", self.state.config_path.display());
            let state = Arc::clone(&self.state);
            async move {
                // The outcome is logged, counted and shown in /status by `reload` itself.
                let _ = tokio::task::spawn_blocking(move || state.reload()).await;
            }
        };
        crate::signals::on_each(
            SignalKind::hangup(),
            "SIGHUP",
            "reload with POST /reload instead",
            &mut shutdown,
            reload,
        )
        .await;
    }
}

/// Quiet time after the writer closed the file (or renamed it into place) before it is read.
const SETTLE: Duration = Duration::from_millis(500);
/// Quiet time after a change with no close seen, before the file is read anyway.
const QUIET_READ: Duration = Duration::from_secs(2);

/// What an event says about the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// A writer closed it, or it was renamed into place: a write is complete.
    Complete,
    /// It is being written, created or removed.
    Changing,
}

fn change_of(kind: &notify::EventKind) -> Option<Change> {
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    use notify::EventKind;
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
            Some(Change::Complete)
        }
        // Reading the file (Portico's own reads included) changes nothing.
        EventKind::Access(_) => None,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => {
            Some(Change::Changing)
        }
        _ => None,
    }
}

pub struct ConfigWatcher {
    pub state: Arc<GatewayState>,
}

/// Which watched file an event was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Config,
    /// A certificate, key or CA file of `[tls]`: its content is not the config's, so the
    /// config is reloaded whether or not its own file changed.
    TlsFile,
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(path) = std::path::absolute(&self.state.config_path) else {
            log::warn!("cannot watch the config file: reload with SIGHUP or POST /reload");
            return;
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if let Some(change) = change_of(&event.kind) {
                for p in event.paths {
                    let _ = tx.send((p, change));
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
        let mut dirs = std::collections::BTreeSet::new();
        let mut first = true;
        loop {
            // The folders of the config file and of every file its `[tls]` names, as the
            // config now serving has them.
            let files = self.watched_files(&path);
            for dir in files.iter().filter_map(|f| f.parent()) {
                if !dirs.contains(dir) {
                    match notify::Watcher::watch(
                        &mut watcher,
                        dir,
                        notify::RecursiveMode::NonRecursive,
                    ) {
                        Ok(()) => {
                            dirs.insert(dir.to_path_buf());
                        }
                        Err(e) => log::warn!("cannot watch {}: {e}", dir.display()),
                    }
                }
            }
            let which = |p: &PathBuf| {
                if *p == path {
                    Some(Watched::Config)
                } else if files.contains(p) {
                    Some(Watched::TlsFile)
                } else {
                    None
                }
            };
            // The first time round, a write between the config's load and the watch above
            // made no event: the file is looked at once the watch is on, as after an event
            // (a write still going on is waited out the same way).
            let (mut change, mut tls_changed) = if std::mem::take(&mut first) {
                (Change::Changing, false)
            } else {
                loop {
                    let (p, change) = tokio::select! {
                        _ = shutdown.changed() => return,
                        event = rx.recv() => match event {
                            Some(event) => event,
                            None => return,
                        },
                    };
                    if let Some(w) = which(&p) {
                        break (change, w == Watched::TlsFile);
                    }
                }
            };
            // Until the writers are done: a close (or rename) followed by SETTLE of quiet.
            loop {
                let wait = match change {
                    Change::Complete => SETTLE,
                    Change::Changing => QUIET_READ,
                };
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some((p, next))) => {
                        if let Some(w) = which(&p) {
                            change = next;
                            tls_changed |= w == Watched::TlsFile;
                        }
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if !path.exists() {
                log::info!("{} is gone; waiting for it to come back", path.display());
                continue;
            }
            let state = Arc::clone(&self.state);
            let _ = tokio::task::spawn_blocking(move || {
                if tls_changed {
                    log::info!("a TLS file changed: reloading");
                    Some(state.reload())
                } else {
                    state.reload_if_changed()
                }
            })
            .await;
        }
    }
}

impl ConfigWatcher {
    /// The config file (absolute) and the files the serving config's `[tls]` names.
    fn watched_files(&self, config: &std::path::Path) -> std::collections::BTreeSet<PathBuf> {
        let mut files = std::collections::BTreeSet::from([config.to_path_buf()]);
        if let Some(tls) = &self.state.current().tls {
            files.extend(tls.files.iter().filter_map(|f| std::path::absolute(f).ok()));
        }
        files
    }
}
