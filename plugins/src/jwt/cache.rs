//! Verified tokens, remembered until they expire so a busy client's token is checked once,
//! not on every request. Bounded: when a shard is full its expired entries go, and if that
//! is not enough, the whole shard is cleared (a burst of distinct tokens costs some
//! re-verification, never unbounded memory). An entry is only valid for the key-set
//! generation it was verified with, so a rotated-out key stops being trusted at once.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
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

/// Entries by the token's keyed hash, which picks the shard too: a token (a few hundred
/// bytes) is hashed once per request, not once for the shard and again for the map. The
/// token itself is kept and compared, so two tokens with the same hash never share an entry.
type Shard = HashMap<u64, (Box<str>, Verified), BuildHasherDefault<HashIsKey>>;

pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: RandomState,
}

/// The map's keys are already the output of a keyed hash: use them as they are.
#[derive(Default)]
struct HashIsKey(u64);

impl Hasher for HashIsKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
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
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: RandomState::new(),
        })
    }

    fn shard(&self, token: &str) -> (u64, std::sync::MutexGuard<'_, Shard>) {
        let hash = self.hasher.hash_one(token);
        let shard = &self.shards[hash as usize % SHARDS];
        (hash, shard.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn get(&self, token: &str, generation: u64) -> Option<Verified> {
        let (hash, mut shard) = self.shard(token);
        let (stored, hit) = shard.get(&hash)?;
        if &**stored != token {
            return None;
        }
        if hit.generation == generation && hit.valid_until > now_secs() {
            return Some(hit.clone());
        }
        shard.remove(&hash);
        None
    }

    pub fn insert(&self, token: &str, verified: Verified) {
        let (hash, mut shard) = self.shard(token);
        if shard.len() >= self.per_shard {
            let now = now_secs();
            shard.retain(|_, (_, v)| v.valid_until > now);
            if shard.len() >= self.per_shard {
                shard.clear();
            }
        }
        shard.insert(hash, (token.into(), verified));
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
    fn a_token_only_finds_its_own_entry() {
        let cache = TokenCache::new(100).unwrap();
        let later = now_secs() + 60;
        cache.insert("token-one", entry(later, 1));
        assert!(cache.get("token-one", 1).is_some());
        assert!(cache.get("token-two", 1).is_none());
        assert!(cache.get("token-on", 1).is_none());
        assert!(cache.get("token-one", 1).is_some(), "still there");
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
