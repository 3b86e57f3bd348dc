//! The in-process store: one sliding window per key, shared by every worker thread.
//! Memory is bounded: each shard holds at most `max_keys / SHARDS` keys; when one is full its
//! idle keys (nothing counted for two windows) go first, then, if the flood is of live keys,
//! an arbitrary half of the shard, so a flood of distinct keys costs accuracy for those keys,
//! never unbounded memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Instant;

use super::window::{Decision, Window};
use super::KeyDigest;

const SHARDS: usize = 32;

pub struct LocalStore {
    shards: Vec<Mutex<HashMap<KeyDigest, Window>>>,
    per_shard: usize,
    hasher: RandomState,
    /// The store's clock: milliseconds since it was made.
    epoch: Instant,
}

impl LocalStore {
    pub fn new(max_keys: usize) -> LocalStore {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Count one request for `key` at `now` (ms on this store's clock) against `limit` per
    /// `window` ms.
    pub fn check(&self, key: &KeyDigest, now: u64, window: u64, limit: u64) -> Decision {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= self.per_shard {
            evict(&mut map, now, window);
        }
        let counts = map.entry(*key).or_default();
        let allowed = counts.take(now, window, limit, 1) == 1;
        counts.decision(allowed, now, window, limit)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

fn evict(map: &mut HashMap<KeyDigest, Window>, now: u64, window: u64) {
    let before = map.len();
    map.retain(|_, w| w.start + 2 * window > now);
    if map.len() >= before {
        let mut keep = false;
        map.retain(|_, _| {
            keep = !keep;
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> KeyDigest {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&i.to_le_bytes());
        k
    }

    #[test]
    fn keys_are_limited_separately() {
        let store = LocalStore::new(1000);
        for _ in 0..3 {
            assert!(store.check(&key(1), 10, 1000, 3).allowed);
        }
        assert!(!store.check(&key(1), 10, 1000, 3).allowed);
        assert!(store.check(&key(2), 10, 1000, 3).allowed);
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_max_keys() {
        let store = LocalStore::new(1024);
        for i in 0..100_000 {
            store.check(&key(i), 10, 60_000, 5);
        }
        assert!(store.len() <= 1024, "{}", store.len());
    }
}
