//! Verified tokens, remembered until they expire so a busy client's token is checked once,
//! not on every request. Bounded: when a shard is full its expired entries go, and if that
//! is not enough, the whole shard is cleared (a burst of distinct tokens costs some
//! re-verification, never unbounded memory). An entry is only valid for the key-set
//! generation it was verified with, so a rotated-out key stops being trusted at once.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Identity;

const SHARDS: usize = 16;

#[derive(Clone)]
pub struct Verified {
    pub identity: Arc<Identity>,
    /// `exp` (seconds since the epoch), leeway included.
    pub valid_until: u64,
    pub generation: u64,
}

pub struct TokenCache {
    shards: Vec<Mutex<HashMap<Box<str>, Verified>>>,
    per_shard: usize,
    hasher: RandomState,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenCache {
    /// `None` when `capacity` is 0 (caching off).
    pub fn new(capacity: usize) -> Option<TokenCache> {
        (capacity > 0).then(|| TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: RandomState::new(),
        })
    }

    fn shard(&self, token: &str) -> &Mutex<HashMap<Box<str>, Verified>> {
        &self.shards[self.hasher.hash_one(token) as usize % SHARDS]
    }

    pub fn get(&self, token: &str, generation: u64) -> Option<Verified> {
        let mut shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        let hit = shard.get(token)?;
        if hit.generation == generation && hit.valid_until > now_secs() {
            return Some(hit.clone());
        }
        shard.remove(token);
        None
    }

    pub fn insert(&self, token: &str, verified: Verified) {
        let mut shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard {
            let now = now_secs();
            shard.retain(|_, v| v.valid_until > now);
            if shard.len() >= self.per_shard {
                shard.clear();
            }
        }
        shard.insert(token.into(), verified);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(valid_until: u64, generation: u64) -> Verified {
        Verified {
            identity: Arc::new(Identity::default()),
            valid_until,
            generation,
        }
    }

    #[test]
    fn entries_expire_and_follow_the_key_generation() {
        let cache = TokenCache::new(100).unwrap();
        let later = now_secs() + 60;
        cache.insert("a", entry(later, 1));
        assert!(cache.get("a", 1).is_some());
        assert!(cache.get("a", 2).is_none(), "a new key set invalidates");
        assert!(cache.get("a", 1).is_none(), "and the entry is gone");
        cache.insert("b", entry(now_secs() - 1, 1));
        assert!(cache.get("b", 1).is_none(), "expired");
    }

    #[test]
    fn memory_stays_bounded() {
        let cache = TokenCache::new(32).unwrap();
        let later = now_secs() + 60;
        for i in 0..10_000 {
            cache.insert(&format!("token-{i}"), entry(later, 1));
        }
        let total: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 32, "{total}");
        assert!(TokenCache::new(0).is_none());
    }
}
