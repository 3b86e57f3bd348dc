//! A JWKS kept fresh in the background. Fetched at start, refreshed every `refresh`, and on
//! demand when a token names an unknown `kid`. Forced refreshes are single-flight (one fetch
//! however many requests ask) and rate-limited (at most one per `min_refresh`), so a flood
//! of bogus kids cannot hammer the issuer. When the issuer is down, the last good key set
//! stays in use.
//!
//! The fetcher is a small thread with its own runtime, so it works the same whether the
//! plugin is built at start-up, during a reload, or in a test; it ends when the plugin is
//! dropped. It starts only when the config the plugin belongs to is about to serve
//! (`Jwks::start`): building the plugin, which validating a config does, fetches nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use super::keys::{parse_jwks, KeyMap};

/// The largest JWKS document accepted.
const MAX_BODY: usize = 1 << 20;

pub struct Jwks {
    url: String,
    keys: ArcSwap<KeyMap>,
    /// Bumped after every fetch attempt, so waiters learn the outcome either way.
    attempts: watch::Sender<u64>,
    /// Bumped only when a fetch brings a different key set: cached verifications made with
    /// the old set are then re-checked, and an unchanged refresh costs nothing.
    key_generation: AtomicU64,
    last_body: Mutex<Vec<u8>>,
    wake: Notify,
    last_forced: Mutex<Option<Instant>>,
    min_refresh: Duration,
    timeout: Duration,
    refresh: Duration,
    started: std::sync::Once,
}

pub struct JwksSettings {
    pub url: String,
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub timeout: Duration,
}

impl Jwks {
    /// A key set with nothing fetched yet; `start` begins fetching.
    pub fn new(settings: JwksSettings) -> Arc<Jwks> {
        let (attempts, _) = watch::channel(0);
        Arc::new(Jwks {
            url: settings.url,
            keys: ArcSwap::from_pointee(KeyMap::default()),
            attempts,
            key_generation: AtomicU64::new(0),
            last_body: Mutex::new(Vec::new()),
            wake: Notify::new(),
            last_forced: Mutex::new(None),
            min_refresh: settings.min_refresh,
            timeout: settings.timeout,
            refresh: settings.refresh,
            started: std::sync::Once::new(),
        })
    }

    /// Start the fetcher, once: the first fetch now, then every `refresh`.
    pub fn start(self: &Arc<Self>) {
        self.started.call_once(|| {
            let weak = Arc::downgrade(self);
            let refresh = self.refresh;
            let spawned = std::thread::Builder::new()
                .name("jwks-refresh".into())
                .spawn(move || fetch_loop(weak, refresh));
            if let Err(e) = spawned {
                log::error!("cannot start the JWKS fetcher for {}: {e}", self.url);
            }
        });
    }

    pub fn current(&self) -> Arc<KeyMap> {
        self.keys.load_full()
    }

    /// Changes whenever the key set does (a generation number for caches).
    pub fn generation(&self) -> u64 {
        self.key_generation.load(Ordering::Acquire)
    }

    fn publish(&self, body: &[u8], map: KeyMap) {
        let mut last = self.last_body.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_slice() != body {
            *last = body.to_vec();
            self.keys.store(Arc::new(map));
            self.key_generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A token named a key we do not have. Ask for a refresh, unless one was forced within
    /// `min_refresh` and it has already finished; wait (at most `timeout`) for the fetch under
    /// way to finish. Returns the key set to look in again, or `None` when asking again is
    /// not allowed yet.
    pub async fn refresh_for_unknown_kid(&self) -> Option<Arc<KeyMap>> {
        let mut attempts = self.attempts.subscribe();
        let seen = *attempts.borrow_and_update();
        let allowed = {
            let mut last = self.last_forced.lock().unwrap_or_else(|p| p.into_inner());
            let allowed = last.is_none_or(|t| t.elapsed() >= self.min_refresh);
            if allowed {
                *last = Some(Instant::now());
            }
            allowed
        };
        // Before the first fetch has finished, waiting for it is always allowed.
        if !allowed && seen > 0 {
            return None;
        }
        if allowed {
            self.wake.notify_one();
        }
        let finished = tokio::time::timeout(self.timeout, attempts.wait_for(|n| *n > seen)).await;
        finished.ok().map(|_| self.current())
    }
}

fn fetch_loop(jwks: Weak<Jwks>, refresh: Duration) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("JWKS fetcher cannot start a runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let client = match reqwest::Client::builder().build() {
            Ok(c) => c,
            Err(e) => {
                log::error!("JWKS fetcher cannot build an HTTP client: {e}");
                return;
            }
        };
        loop {
            let Some(this) = jwks.upgrade() else { return };
            match fetch(&client, &this.url, this.timeout).await {
                Ok((body, map, skipped)) => {
                    if skipped > 0 {
                        log::warn!(
                            "JWKS {}: skipped {skipped} key(s) that cannot verify signatures",
                            this.url
                        );
                    }
                    this.publish(&body, map);
                }
                Err(e) => log::warn!(
                    "JWKS {} could not be refreshed, keeping the last good keys: {e}",
                    this.url
                ),
            }
            this.attempts.send_modify(|n| *n += 1);
            let wait = tokio::time::sleep(refresh);
            tokio::select! {
                _ = wait => {}
                _ = this.wake.notified() => {}
            }
            drop(this);
        }
    });
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<(bytes::Bytes, KeyMap, usize), String> {
    let resp = client
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err("the document is larger than 1 MiB".into());
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MAX_BODY {
        return Err("the document is larger than 1 MiB".into());
    }
    let (map, skipped) = parse_jwks(&body)?;
    Ok((body, map, skipped))
}
