//! The gateway's live state: the config snapshot now serving, swapped whole on reload, and
//! what the admin API reports about it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::access_log::AccessLog;
use crate::cache::CacheStore;
use crate::config::ConfigErrors;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// The result of the last attempt to load a config, for `/status`.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub at: SystemTime,
    pub ok: bool,
    pub errors: Vec<String>,
}

pub struct GatewayState {
    snapshot: ArcSwap<Snapshot>,
    pub config_path: PathBuf,
    generation: AtomicU64,
    loaded_at: Mutex<SystemTime>,
    last_load: Mutex<LoadReport>,
    draining: AtomicBool,
    /// The config file's bytes when it was last read, to tell a real change from a touch.
    /// Held for the whole of a reload, so reloads happen one at a time: whatever triggers
    /// them (the file watcher, SIGHUP, `POST /reload`), the last file read is the config
    /// that serves, never an older compile swapped in after it.
    last_content: Mutex<Vec<u8>>,
    /// Requests between their first hook and their last, for draining.
    pub active_requests: Arc<AtomicUsize>,
    /// Client connections open now, against `server.max_client_connections`.
    pub client_connections: Arc<AtomicUsize>,
    pub metrics: Metrics,
    pub access_log: AccessLog,
    /// Makes new upstream connections for the fast driver and composition calls (Pingora's
    /// proxy has its own); the idle ones live in each target's pool.
    pub transport: pingora_core::connectors::TransportConnector,
    /// The response cache's store: one for the process, its limit set by each config.
    pub cache: &'static CacheStore,
    /// What the TLS listeners serve from, when the config has `[tls]`.
    pub tls: Option<crate::tls::TlsRuntime>,
    /// The last minute of request counters, sampled for `/status` and the status page.
    pub traffic: crate::admin::traffic::Traffic,
}

impl GatewayState {
    pub fn new(
        snapshot: Snapshot,
        config_path: PathBuf,
        metrics: Metrics,
        access_log: AccessLog,
    ) -> Arc<Self> {
        let now = SystemTime::now();
        let last_content = std::fs::read(&config_path).unwrap_or_default();
        metrics.config_generation.set(1);
        metrics.config_reloads.with_label_values(&["ok"]).inc();
        let cache =
            CacheStore::leak(usize::try_from(snapshot.cache_max_size).unwrap_or(usize::MAX));
        cache.set_shared(crate::cache::shared::tier_for(
            &snapshot,
            None,
            &metrics.cache_shared,
        ));
        let tls = snapshot
            .tls
            .as_ref()
            .map(|tls| crate::tls::TlsRuntime::new(tls, metrics.tls_certificate_expiry.clone()));
        Arc::new(GatewayState {
            cache,
            tls,
            snapshot: ArcSwap::from_pointee(snapshot),
            config_path,
            generation: AtomicU64::new(1),
            loaded_at: Mutex::new(now),
            last_load: Mutex::new(LoadReport {
                at: now,
                ok: true,
                errors: Vec::new(),
            }),
            draining: AtomicBool::new(false),
            last_content: Mutex::new(last_content),
            active_requests: Arc::new(AtomicUsize::new(0)),
            client_connections: Arc::new(AtomicUsize::new(0)),
            metrics,
            access_log,
            transport: pingora_core::connectors::TransportConnector::new(None),
            traffic: Default::default(),
        })
    }

    /// The snapshot now serving. Callers keep the `Arc` for the whole request, so one
    /// request sees one config generation.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Whether any route of the config now serving is only Pingora's proxy's to serve (a
    /// flag the direct path checks before it looks for the request's route a second time).
    pub fn proxy_routes(&self) -> bool {
        self.snapshot.load().proxy_routes
    }

    /// What the next request head may be (`server.header_timeout`, `max_header_size`,
    /// `max_header_line`).
    pub fn current_limits(&self) -> crate::connection::head::HeadLimits {
        self.snapshot.load().server.head
    }

    /// Whether plain requests may take Portico's own driver (`server.fast_path`).
    pub fn fast_path(&self) -> bool {
        self.snapshot.load().server.fast_path
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn loaded_at(&self) -> SystemTime {
        *self.loaded_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn last_load(&self) -> LoadReport {
        self.last_load
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reload when the file's content differs from what was last read (the file watcher's
    /// entry point: an editor touching the file causes nothing).
    pub fn reload_if_changed(&self) -> Option<Result<u64, ConfigErrors>> {
        let mut last = self.last_content.lock().unwrap_or_else(|p| p.into_inner());
        let content = std::fs::read(&self.config_path).ok()?;
        if *last == content {
            return None;
        }
        Some(self.reload_locked(&mut last, content))
    }

    /// Read, validate and compile the config file again; swap it in only if it is wholly
    /// valid. Returns the new generation, or every problem (the old config keeps serving).
    pub fn reload(&self) -> Result<u64, ConfigErrors> {
        let mut last = self.last_content.lock().unwrap_or_else(|p| p.into_inner());
        match std::fs::read(&self.config_path) {
            Ok(content) => self.reload_locked(&mut last, content),
            Err(e) => {
                let origin = self.config_path.display().to_string();
                let errors =
                    ConfigErrors::single(&origin, format!("cannot read the config file: {e}"));
                self.report(Err(errors))
            }
        }
    }

    /// The reload of `content`, the file just read, while `last` (the reload lock) is held.
    fn reload_locked(&self, last: &mut Vec<u8>, content: Vec<u8>) -> Result<u64, ConfigErrors> {
        let current = self.current();
        let ctx = self.metrics.build_context(current.reuse.clone());
        let origin = self.config_path.display().to_string();
        let result = std::str::from_utf8(&content)
            .map_err(|_| ConfigErrors::single(&origin, "the config file is not UTF-8"))
            .and_then(|text| {
                let parsed =
                    crate::config::parse_str(text, &origin, |n| std::env::var(n).ok(), &ctx)?;
                crate::snapshot::compile(parsed, Some(&current))
            });
        *last = content;
        self.report(result)
    }

    /// Swap in a config that compiled, or keep the old one; either way, say so in the
    /// metrics, the log and `/status`.
    fn report(
        &self,
        result: Result<crate::snapshot::Snapshot, ConfigErrors>,
    ) -> Result<u64, ConfigErrors> {
        let now = SystemTime::now();
        let mut last = self.last_load.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(snapshot) => {
                snapshot.start(&self.metrics);
                if let (Some(runtime), Some(tls)) = (&self.tls, &snapshot.tls) {
                    runtime.apply(tls);
                }
                self.cache
                    .set_max_size(usize::try_from(snapshot.cache_max_size).unwrap_or(usize::MAX));
                self.cache.set_shared(crate::cache::shared::tier_for(
                    &snapshot,
                    self.cache.shared().as_ref(),
                    &self.metrics.cache_shared,
                ));
                self.snapshot.store(Arc::new(snapshot));
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                *self.loaded_at.lock().unwrap_or_else(|p| p.into_inner()) = now;
                *last = LoadReport {
                    at: now,
                    ok: true,
                    errors: Vec::new(),
                };
                self.metrics.config_generation.set(generation as i64);
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                log::info!("config reloaded: generation {generation}");
                Ok(generation)
            }
            Err(errors) => {
                *last = LoadReport {
                    at: now,
                    ok: false,
                    errors: errors.lines(),
                };
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                log::error!("config reload rejected, the old config keeps serving:\n{errors}");
                Err(errors)
            }
        }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
