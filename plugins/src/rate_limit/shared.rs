//! A limit shared by every gateway instance through Redis, without a Redis round trip per
//! request. Each instance reserves admissions from Redis in batches (a Lua script runs the
//! same sliding window as `window.rs`, atomically, on Redis's clock) and spends them locally.
//!
//! - A reservation is sized by demand: the requests waiting for it plus a base batch of 1% of
//!   the limit (at most 1000), so at high rates one round trip admits many requests.
//! - Refills are single-flight per key: concurrent requests wait for one reservation.
//! - With batches of 4 or more, the next batch is reserved in the background when a quarter
//!   of the current one is left, so at a steady high rate no request waits for Redis at all.
//! - A refusal from Redis is remembered until its retry time, so excess traffic is refused
//!   locally, with no round trip at all.
//! - A reservation is only spent within the fixed window it was counted in; what is left at
//!   the window's end is dropped, never carried into the next window.
//!
//! Bound: admissions never exceed what the sliding window allows across all instances, since
//! every admission was counted in Redis first. What an instance has reserved but not yet spent
//! is lost to the others only if its own demand stops, so when demand exceeds the limit the
//! total admitted is the limit less, per instance, at most one reservation (1% of the limit plus
//! its waiting requests) and one background batch (1%), and at least 95% in practice.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::window::{Decision, Window};
use super::KeyDigest;
use crate::redis_store::{RedisStore, StoreError};

/// KEYS[1]: the key prefix, hash-tagged whole (`portico:rl:{plugin:digest}`), so in a Redis
/// Cluster both windows' counters (`KEYS[1]:start`) live in the prefix's slot. ARGV: window ms, limit, wanted admissions.
/// Returns {granted, current, previous, elapsed ms in the current window}.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local start = now - (now % window)
local elapsed = now - start
local current_key = KEYS[1] .. ':' .. start
local current = tonumber(redis.call('GET', current_key) or '0')
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (start - window)) or '0')
local weighted = math.ceil(previous * (window - elapsed) / window)
local room = limit - weighted - current
local granted = 0
if room > 0 then
  granted = math.min(room, want)
  redis.call('INCRBY', current_key, granted)
  redis.call('PEXPIRE', current_key, 2 * window + 1000)
end
return {granted, current + granted, previous, elapsed}
"#;

const SHARDS: usize = 32;

/// What this instance knows about one key.
#[derive(Default)]
struct KeyState {
    /// Admissions reserved in Redis and not yet spent, valid until `valid_until`.
    tokens: u64,
    valid_until: Option<Instant>,
    /// Redis refused: refuse locally until then.
    refused_until: Option<Instant>,
    /// The counts Redis last reported, for the headers, and when they were read.
    last: Option<(Window, u64, Instant)>,
}

struct KeyEntry {
    state: Mutex<KeyState>,
    /// Held by the one request refilling this key; the others wait on it.
    refill: tokio::sync::Mutex<()>,
    waiting: AtomicU64,
    /// A background reservation is on its way.
    prefetching: AtomicBool,
}

pub struct SharedLimiter {
    redis: Arc<RedisStore>,
    script: redis::Script,
    prefix: String,
    keys: Vec<Mutex<HashMap<KeyDigest, Arc<KeyEntry>>>>,
    per_shard: usize,
    hasher: RandomState,
}

enum Local {
    /// `tokens_left`: what this instance still holds for the key after this request.
    Decided(Decision, Option<u64>),
    NeedRefill,
}

impl SharedLimiter {
    pub fn new(redis: Arc<RedisStore>, plugin: &str, max_keys: usize) -> SharedLimiter {
        SharedLimiter {
            redis,
            script: redis::Script::new(RESERVE),
            prefix: format!("portico:rl:{{{plugin}"),
            keys: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    fn entry(&self, key: &KeyDigest) -> Arc<KeyEntry> {
        let shard = &self.keys[self.hasher.hash_one(key) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= self.per_shard {
            let now = Instant::now();
            map.retain(|_, e| {
                let s = e.state.lock().unwrap_or_else(|p| p.into_inner());
                s.valid_until.is_some_and(|t| t > now) || s.refused_until.is_some_and(|t| t > now)
            });
            if map.len() >= self.per_shard {
                map.clear();
            }
        }
        Arc::clone(map.entry(*key).or_insert_with(|| {
            Arc::new(KeyEntry {
                state: Mutex::new(KeyState::default()),
                refill: tokio::sync::Mutex::new(()),
                waiting: AtomicU64::new(0),
                prefetching: AtomicBool::new(false),
            })
        }))
    }

    /// Decide from what this instance already holds, if it can.
    fn decide_locally(entry: &KeyEntry, window: u64, limit: u64) -> Local {
        let mut s = entry.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if s.tokens > 0 && s.valid_until.is_some_and(|t| now < t) {
            s.tokens -= 1;
            let remaining = s.tokens;
            let decision = headers_from(&s, true, window, limit, remaining, now);
            return Local::Decided(decision, Some(remaining));
        }
        if s.refused_until.is_some_and(|t| now < t) {
            return Local::Decided(headers_from(&s, false, window, limit, 0, now), None);
        }
        Local::NeedRefill
    }

    /// Count one request for `key`. `Err` means Redis could not be asked; the caller applies
    /// `on_store_error`.
    pub async fn check(
        &self,
        key: &KeyDigest,
        window: u64,
        limit: u64,
    ) -> Result<Decision, StoreError> {
        let entry = self.entry(key);
        let base_batch = (limit / 100).clamp(1, 1000);
        loop {
            if let Local::Decided(d, left) = Self::decide_locally(&entry, window, limit) {
                if left.is_some_and(|left| base_batch >= 4 && left <= base_batch / 4) {
                    self.prefetch(key, &entry, window, limit, base_batch);
                }
                return Ok(d);
            }
            if self.redis.is_down() {
                return Err(StoreError::Down);
            }
            entry.waiting.fetch_add(1, Ordering::AcqRel);
            let guard = tokio::time::timeout(self.redis.timeout * 2, entry.refill.lock()).await;
            entry.waiting.fetch_sub(1, Ordering::AcqRel);
            let Ok(_refilling) = guard else {
                return Err(StoreError::Timeout(self.redis.timeout * 2));
            };
            // Whoever held the lock before may have refilled for us.
            if let Local::Decided(d, _) = Self::decide_locally(&entry, window, limit) {
                return Ok(d);
            }
            let want = base_batch + entry.waiting.load(Ordering::Acquire) + 1;
            let reply: (u64, u64, u64, u64) = self
                .redis
                .run_script(&self.script, &[&self.key_name(key)], &[window, limit, want])
                .await?;
            store_reply(&entry, reply, window, limit);
        }
    }

    /// `portico:rl:{plugin:digest}`: the braces are the Cluster hash tag.
    fn key_name(&self, key: &KeyDigest) -> String {
        format!("{}:{}}}", self.prefix, hex(key))
    }

    /// Reserve the next batch in the background, once at a time per key. A failure is left to
    /// the next request that finds nothing reserved: it asks Redis itself and, if Redis is
    /// down, applies `on_store_error`.
    fn prefetch(
        &self,
        key: &KeyDigest,
        entry: &Arc<KeyEntry>,
        window: u64,
        limit: u64,
        batch: u64,
    ) {
        if entry.prefetching.swap(true, Ordering::AcqRel) || self.redis.is_down() {
            return;
        }
        let (redis, script) = (Arc::clone(&self.redis), self.script.clone());
        let (entry, key_name) = (Arc::clone(entry), self.key_name(key));
        tokio::spawn(async move {
            {
                // Never alongside a foreground refill of the same key.
                let _refilling = entry.refill.lock().await;
                let reply = redis
                    .run_script(&script, &[&key_name], &[window, limit, batch])
                    .await;
                if let Ok(reply) = reply {
                    store_reply(&entry, reply, window, limit);
                }
            }
            entry.prefetching.store(false, Ordering::Release);
        });
    }
}

/// Take in what Redis granted. Tokens still held from the same window are kept (a background
/// reservation adds to them); tokens of an earlier window are dropped, never spent in this one.
fn store_reply(entry: &KeyEntry, reply: (u64, u64, u64, u64), window: u64, limit: u64) {
    let (granted, current, previous, elapsed) = reply;
    let now = Instant::now();
    let counts = Window {
        start: 0,
        current,
        previous,
    };
    let mut s = entry.state.lock().unwrap_or_else(|p| p.into_inner());
    s.last = Some((counts, elapsed, now));
    let window_end = now + Duration::from_millis(window.saturating_sub(elapsed));
    let same_window = s.valid_until.is_some_and(|held_until| {
        let apart = if held_until > window_end {
            held_until - window_end
        } else {
            window_end - held_until
        };
        held_until > now && apart < Duration::from_millis(window / 2)
    });
    let held = if same_window { s.tokens } else { 0 };
    if granted > 0 {
        s.tokens = held + granted;
        s.valid_until = Some(window_end);
        s.refused_until = None;
    } else {
        // What is held was counted in Redis: still spend it, then refuse locally.
        s.tokens = held;
        if held == 0 {
            s.valid_until = None;
        }
        let wait = counts.wait_for_one(elapsed, window, limit);
        s.refused_until = Some(now + Duration::from_millis(wait.max(1)));
    }
}

/// Headers from the counts Redis last reported, aged by the time since.
fn headers_from(
    s: &KeyState,
    allowed: bool,
    window: u64,
    limit: u64,
    local_tokens: u64,
    now: Instant,
) -> Decision {
    let Some((counts, elapsed, read_at)) = s.last else {
        return Decision {
            allowed,
            limit,
            remaining: local_tokens,
            reset_secs: 1,
            retry_after_secs: 1,
        };
    };
    let elapsed = (elapsed + now.duration_since(read_at).as_millis() as u64).min(window);
    let mut d = counts.decision(allowed, elapsed, window, limit);
    d.remaining = d.remaining.saturating_add(local_tokens);
    if !allowed {
        let until = s
            .refused_until
            .map_or(1, |t| t.duration_since(now).as_millis() as u64);
        d.retry_after_secs = until.div_ceil(1000).max(1);
    }
    d
}

fn hex(key: &KeyDigest) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}
