//! Where cached responses live: a bounded in-memory store behind pingora-cache's `Storage`.
//!
//! pingora-cache's own `MemCache` is for tests: it never evicts. This store charges every entry
//! its real cost (body, stored header, bookkeeping) against `[cache] max_size` and evicts with
//! CLOCK (second chance) once the total would pass it: entries wait in a FIFO ring; an entry
//! read since it last came round gets one more turn, an unread one is evicted. Reads only set a
//! flag under a shard's read lock, so hits never contend on a global lock; writes (a completed
//! miss) are serialized on the ring, which is what keeps `used <= max_size` exact.
//!
//! A body is kept as one `Bytes`, so a hit hands out a reference-counted slice, never a copy.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;

use super::key::UrlHash;
use super::shared::SharedTier;
use arc_swap::ArcSwapOption;

const SHARDS: usize = 16;

/// What an entry costs besides its body and header bytes: the entry itself, its map slot,
/// its ring slot and the decoded header's maps. An estimate on the generous side.
const ENTRY_OVERHEAD: usize = 512;
/// Per stored header line, besides its name and value bytes (map slots, case map).
const HEADER_OVERHEAD: usize = 64;

pub struct CacheStore {
    shards: Vec<RwLock<HashMap<HashBinary, Arc<Entry>>>>,
    /// Entries in insertion order, visited by the CLOCK hand. Also the writers' lock.
    ring: Mutex<VecDeque<(HashBinary, u64)>>,
    max_size: AtomicUsize,
    used: AtomicUsize,
    entries: AtomicUsize,
    next_id: AtomicU64,
    /// `[cache] shared = "redis"`: the tier a memory miss asks next, and every fill writes.
    shared: ArcSwapOption<SharedTier>,
}

/// Freshness and the header of a stored response: everything of pingora's `CacheMeta` that
/// this gateway uses, kept decoded so a hit does not parse anything.
struct StoredMeta {
    fresh_until: SystemTime,
    /// When the response was fetched or last revalidated: `Age` counts from here.
    updated: SystemTime,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
    variance: Option<HashBinary>,
    header: ResponseHeader,
}

impl StoredMeta {
    fn from_meta(meta: &CacheMeta) -> Self {
        StoredMeta {
            fresh_until: meta.fresh_until(),
            updated: meta.updated(),
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
            variance: meta.variance(),
            header: meta.response_header_copy(),
        }
    }

    fn to_meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.updated,
            self.stale_while_revalidate_sec,
            self.stale_if_error_sec,
            self.header.clone(),
        );
        if let Some(variance) = self.variance {
            meta.set_variance(variance);
        }
        meta
    }

    fn header_bytes(&self) -> usize {
        self.header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + HEADER_OVERHEAD)
            .sum()
    }
}

struct Entry {
    /// Tells this entry from a later one under the same key (the ring may hold both).
    id: u64,
    /// The request URL this answers (method, host, path, query), for purge by URL.
    url: Option<HashBinary>,
    route: Box<str>,
    meta: StoredMeta,
    body: Bytes,
    size: usize,
    /// Read since the CLOCK hand last passed: spared once.
    referenced: AtomicBool,
}

/// The store's figures, for `/status` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub max_size: usize,
    pub used: usize,
    pub entries: usize,
}

impl CacheStore {
    /// An empty store that holds at most `max_size` bytes. Lives for the whole process (the
    /// `Storage` trait wants `'static`); a reload only changes its limit.
    pub fn leak(max_size: usize) -> &'static CacheStore {
        Box::leak(Box::new(CacheStore {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            ring: Mutex::new(VecDeque::new()),
            max_size: AtomicUsize::new(max_size),
            used: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            shared: ArcSwapOption::empty(),
        }))
    }

    /// The shared tier of the config serving now (a reload may add, keep or remove it).
    pub fn set_shared(&self, tier: Option<Arc<SharedTier>>) {
        self.shared.store(tier);
    }

    pub fn shared(&self) -> Option<Arc<SharedTier>> {
        self.shared.load_full()
    }

    /// Apply a purge to this instance's memory; how many entries were removed.
    pub fn purge(&self, message: &super::shared::PurgeMessage) -> usize {
        match message {
            super::shared::PurgeMessage::Url(url) => self.purge_url(url),
            super::shared::PurgeMessage::Route(route) => self.purge_route(route),
        }
    }

    /// Empty the memory store (a purge may have been missed while the purge channel was lost).
    pub fn purge_all(&self) -> usize {
        self.purge_where(|_| true)
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            max_size: self.max_size.load(Ordering::Relaxed),
            used: self.used.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
        }
    }

    /// A new limit (from a reload); evicts at once down to it. 0 empties the store.
    pub fn set_max_size(&self, max_size: usize) {
        self.max_size.store(max_size, Ordering::Relaxed);
        let mut ring = self.ring();
        self.evict_to_limit(&mut ring);
    }

    /// Remove every entry answering this URL (all its variants); returns how many.
    pub fn purge_url(&self, url: &HashBinary) -> usize {
        self.purge_where(|e| e.url.as_ref() == Some(url))
    }

    /// Remove every entry stored by this route; returns how many.
    pub fn purge_route(&self, route: &str) -> usize {
        self.purge_where(|e| &*e.route == route)
    }

    /// A scan of every shard: purges are rare admin calls, and a scan needs no index to keep
    /// in step with evictions.
    fn purge_where(&self, doomed: impl Fn(&Entry) -> bool) -> usize {
        let mut removed = 0;
        for shard in &self.shards {
            let mut map = write(shard);
            map.retain(|_, entry| {
                if doomed(entry) {
                    self.forget(entry.size);
                    removed += 1;
                    false
                } else {
                    true
                }
            });
        }
        removed
    }

    fn shard(&self, key: &HashBinary) -> &RwLock<HashMap<HashBinary, Arc<Entry>>> {
        &self.shards[key[0] as usize % SHARDS]
    }

    fn ring(&self) -> MutexGuard<'_, VecDeque<(HashBinary, u64)>> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, size: usize) {
        self.used.fetch_sub(size, Ordering::Relaxed);
        self.entries.fetch_sub(1, Ordering::Relaxed);
    }

    fn get(&self, key: &HashBinary) -> Option<Arc<Entry>> {
        let entry = read(self.shard(key)).get(key).cloned()?;
        if !entry.referenced.load(Ordering::Relaxed) {
            entry.referenced.store(true, Ordering::Relaxed);
        }
        Some(entry)
    }

    /// Admit a complete response, and hand it back. One larger than the whole store is not kept.
    fn insert(&self, key: HashBinary, entry: Entry) -> Arc<Entry> {
        let entry = Arc::new(entry);
        if entry.size > self.max_size.load(Ordering::Relaxed) {
            return entry;
        }
        let (id, size) = (entry.id, entry.size);
        let mut ring = self.ring();
        if let Some(old) = write(self.shard(&key)).insert(key, Arc::clone(&entry)) {
            self.forget(old.size);
        }
        self.used.fetch_add(size, Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Relaxed);
        ring.push_back((key, id));
        self.evict_to_limit(&mut ring);
        // Replaced and purged entries leave dead slots in the ring; sweep them now and then
        // so a store that never fills up cannot grow its ring without bound.
        let live = self.entries.load(Ordering::Relaxed);
        if ring.len() > 2 * live + 64 {
            ring.retain(|(key, id)| read(self.shard(key)).get(key).is_some_and(|e| e.id == *id));
        }
        entry
    }

    /// The CLOCK hand: evict unread entries, spare read ones once, until under the limit.
    /// Holding the ring lock makes this the only writer besides purges.
    fn evict_to_limit(&self, ring: &mut VecDeque<(HashBinary, u64)>) {
        // Two passes over the ring suffice: the first clears every flag it spares.
        let mut budget = 2 * ring.len() + 1;
        while self.used.load(Ordering::Relaxed) > self.max_size.load(Ordering::Relaxed)
            && budget > 0
        {
            budget -= 1;
            let Some((key, id)) = ring.pop_front() else {
                break;
            };
            let mut map = write(self.shard(&key));
            let Some(entry) = map.get(&key).filter(|e| e.id == id) else {
                continue; // replaced or purged since
            };
            if entry.referenced.swap(false, Ordering::Relaxed) {
                drop(map);
                ring.push_back((key, id));
                continue;
            }
            if let Some(evicted) = map.remove(&key) {
                self.forget(evicted.size);
            }
        }
    }

    /// A memory miss asks the shared tier; what it has is kept in memory from then on, and
    /// served either way: an entry larger than the whole memory tier is a hit all the same.
    async fn fetch_shared(&self, key: &CacheKey, combined: HashBinary) -> Option<Arc<Entry>> {
        let tier = self.shared.load_full()?;
        let url = key.extensions.get::<UrlHash>()?.0;
        let found = tier.fetch(&url, &combined).await?;
        let meta = StoredMeta::from_meta(&found.meta);
        let size = entry_size(&meta, found.body.len(), &found.route);
        let entry = Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            url: Some(url),
            route: found.route,
            meta,
            body: found.body,
            size,
            referenced: AtomicBool::new(true),
        };
        Some(self.insert(combined, entry))
    }

    /// Write a response to the shared tier too, off the request's path.
    fn share(
        &self,
        url: Option<HashBinary>,
        key: HashBinary,
        route: &str,
        meta: &StoredMeta,
        body: &Bytes,
    ) {
        let (Some(tier), Some(url)) = (self.shared.load_full(), url) else {
            return;
        };
        let (meta, route, body) = (meta.to_meta(), route.to_string(), body.clone());
        tokio::spawn(async move {
            tier.store(&url, &key, &route, &meta, &body).await;
        });
    }

    /// Test hook: whether this exact key is held.
    #[cfg(test)]
    fn contains(&self, key: &HashBinary) -> bool {
        read(self.shard(key)).contains_key(key)
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn entry_size(meta: &StoredMeta, body_len: usize, route: &str) -> usize {
    ENTRY_OVERHEAD + meta.header_bytes() + body_len + route.len()
}

#[async_trait]
impl Storage for CacheStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let combined = key.combined_bin();
        let entry = match self.get(&combined) {
            Some(entry) => entry,
            None => match self.fetch_shared(key, combined).await {
                Some(entry) => entry,
                None => return Ok(None),
            },
        };
        let hit = Hit {
            body: entry.body.clone(),
            start: 0,
            end: entry.body.len(),
            done: false,
            size: entry.size,
        };
        Ok(Some((entry.meta.to_meta(), Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let stored = StoredMeta::from_meta(meta);
        let declared_length = stored
            .header
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        Ok(Box::new(Fill {
            store: self,
            key: key.combined_bin(),
            url: key.extensions.get::<UrlHash>().map(|u| u.0),
            route: key.user_tag.as_str().into(),
            meta: stored,
            body: BytesMut::with_capacity(declared_length.unwrap_or(0).min(1 << 20)),
            declared_length,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key().combined_bin();
        let removed = write(self.shard(&key)).remove(&key);
        Ok(match removed {
            Some(entry) => {
                self.forget(entry.size);
                PurgeOutcome::Purged(None)
            }
            None => PurgeOutcome::NotFound,
        })
    }

    /// A revalidation (304) refreshed the entry's freshness and headers; the body stays.
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let key = key.combined_bin();
        let _writers = self.ring();
        let mut map = write(self.shard(&key));
        let Some(old) = map.get(&key) else {
            return Ok(false);
        };
        let stored = StoredMeta::from_meta(meta);
        let size = entry_size(&stored, old.body.len(), &old.route);
        let entry = Entry {
            id: old.id,
            url: old.url,
            route: old.route.clone(),
            meta: stored,
            body: old.body.clone(),
            size,
            referenced: AtomicBool::new(true),
        };
        let old_size = old.size;
        self.share(entry.url, key, &entry.route, &entry.meta, &entry.body);
        map.insert(key, Arc::new(entry));
        self.used.fetch_add(size, Ordering::Relaxed);
        self.used.fetch_sub(old_size, Ordering::Relaxed);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A hit: the stored body, or the part of it a Range asked for.
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
    size: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!(
                    "seek start {start} past the body's {} bytes",
                    self.body.len()
                ),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |end| end.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.size
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A miss being filled: the body gathers here and becomes an entry only when `finish` sees
/// all of it. Dropped unfinished (the upstream failed mid-body), it leaves nothing behind.
struct Fill {
    store: &'static CacheStore,
    key: HashBinary,
    url: Option<HashBinary>,
    route: Box<str>,
    meta: StoredMeta,
    body: BytesMut,
    declared_length: Option<usize>,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let fill = *self;
        if let Some(declared) = fill.declared_length {
            if declared != fill.body.len() {
                // Never store a body shorter (or longer) than its Content-Length said.
                return Error::e_explain(
                    ErrorType::InternalError,
                    format!(
                        "body of {} bytes where Content-Length said {declared}: not stored",
                        fill.body.len()
                    ),
                );
            }
        }
        let body = fill.body.freeze();
        let size = entry_size(&fill.meta, body.len(), &fill.route);
        let entry = Entry {
            id: fill.store.next_id.fetch_add(1, Ordering::Relaxed),
            url: fill.url,
            route: fill.route,
            meta: fill.meta,
            body,
            size,
            referenced: AtomicBool::new(false),
        };
        fill.store
            .share(entry.url, fill.key, &entry.route, &entry.meta, &entry.body);
        fill.store.insert(fill.key, entry);
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta(body_len: usize) -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header
            .insert_header("content-length", body_len.to_string())
            .unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    fn key(path: &str) -> CacheKey {
        CacheKey::new(path.as_bytes().to_vec(), "route-a")
    }

    async fn put(store: &'static CacheStore, path: &str, body_len: usize) {
        let span = pingora_cache::trace::Span::inactive().handle();
        let mut fill = store
            .get_miss_handler(&key(path), &meta(body_len), &span)
            .await
            .unwrap();
        fill.write_body(Bytes::from(vec![b'x'; body_len]), true)
            .await
            .unwrap();
        fill.finish().await.unwrap();
    }

    async fn body_of(store: &'static CacheStore, path: &str) -> Option<Bytes> {
        let span = pingora_cache::trace::Span::inactive().handle();
        let (_, mut hit) = store.lookup(&key(path), &span).await.unwrap()?;
        hit.read_body().await.unwrap()
    }

    #[tokio::test]
    async fn a_stored_body_is_served_whole_and_by_range() {
        let store = CacheStore::leak(1 << 20);
        put(store, "/a", 100).await;
        assert_eq!(body_of(store, "/a").await.unwrap().len(), 100);
        let span = pingora_cache::trace::Span::inactive().handle();
        let (_, mut hit) = store.lookup(&key("/a"), &span).await.unwrap().unwrap();
        hit.seek(10, Some(20)).unwrap();
        assert_eq!(hit.read_body().await.unwrap().unwrap().len(), 10);
        assert_eq!(store.stats().entries, 1);
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_content_length_is_not_stored() {
        let store = CacheStore::leak(1 << 20);
        let span = pingora_cache::trace::Span::inactive().handle();
        let mut fill = store
            .get_miss_handler(&key("/short"), &meta(100), &span)
            .await
            .unwrap();
        fill.write_body(Bytes::from_static(b"only part"), true)
            .await
            .unwrap();
        assert!(fill.finish().await.is_err());
        assert!(body_of(store, "/short").await.is_none());
        assert_eq!(store.stats().used, 0);
    }

    #[tokio::test]
    async fn the_store_never_holds_more_than_max_size_and_spares_what_is_read() {
        let store = CacheStore::leak(64 * 1024);
        put(store, "/hot", 4000).await;
        for i in 0..200 {
            put(store, &format!("/cold/{i}"), 4000).await;
            // Read the hot entry now and then: CLOCK keeps it.
            if i % 4 == 0 {
                assert!(body_of(store, "/hot").await.is_some(), "evicted at {i}");
            }
            let stats = store.stats();
            assert!(stats.used <= stats.max_size, "{stats:?}");
        }
        assert!(store.stats().entries < 200);
        assert!(!store.contains(&key("/cold/0").combined_bin()));
    }

    #[tokio::test]
    async fn lowering_the_limit_evicts_and_purges_free_their_bytes() {
        let store = CacheStore::leak(1 << 20);
        for i in 0..10 {
            put(store, &format!("/p/{i}"), 1000).await;
        }
        store.set_max_size(5 * 1700);
        assert!(store.stats().used <= 5 * 1700);
        let left = store.stats().entries;
        assert_eq!(store.purge_route("route-a"), left);
        assert_eq!(
            store.stats(),
            StoreStats {
                max_size: 5 * 1700,
                used: 0,
                entries: 0
            }
        );
    }

    #[tokio::test]
    async fn replacing_an_entry_many_times_keeps_the_ring_small() {
        let store = CacheStore::leak(1 << 20);
        for _ in 0..1000 {
            put(store, "/same", 10).await;
        }
        assert_eq!(store.stats().entries, 1);
        assert!(store.ring().len() <= 2 + 64);
    }
}
