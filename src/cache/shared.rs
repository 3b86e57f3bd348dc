//! The shared cache tier (`[cache] shared = "redis"`): behind each instance's memory store, one
//! store in Redis that every instance reads and fills, so instance B serves what instance A
//! fetched. An entry is the response exactly as the memory store keeps it (pingora-cache's
//! serialized meta, with its freshness, `Vary` variance and stale windows, and the body), so
//! the same RFC 9111 rules apply to it; it expires in Redis when even its stale windows end.
//!
//! Keys, hash-tagged by URL so that a URL's variants and their index live in one Cluster slot:
//! - `portico:cache:{URL}:KEY`: one stored response (`KEY` is the variant's full cache key);
//! - `portico:cache:{URL}:keys`: a set of the URL's `KEY`s, for purge by URL;
//! - `portico:cache:route:{ROUTE}`: a set of the route's `URL`s, for purge by route.
//!
//! Every call is bounded by `redis.timeout`: a Redis that is slow or down makes the tier a
//! miss (or a skipped write), never an error. Purges are published on `portico:cache:purge`
//! so every instance drops the entry from its memory too.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;
use portico_plugins::redis_store::redis;
use portico_plugins::redis_store::RedisStore;
use prometheus::{IntCounter, IntCounterVec};

/// The channel every instance listens on for purges.
pub const PURGE_CHANNEL: &str = "portico:cache:purge";
/// Tells a stored entry's layout; a different one is a miss.
const FORMAT: &[u8; 4] = b"PCE1";

pub struct SharedTier {
    redis: Arc<RedisStore>,
    pub counts: TierCounts,
}

/// What the tier did: `portico_cache_shared_operations_total{result}`.
pub struct TierCounts {
    pub hits: IntCounter,
    pub misses: IntCounter,
    /// Lookups, writes and purges that Redis did not answer in time or failed.
    pub errors: IntCounter,
    pub writes: IntCounter,
}

impl TierCounts {
    pub fn new(metric: &IntCounterVec) -> TierCounts {
        let counter = |result: &str| metric.with_label_values(&[result]);
        TierCounts {
            hits: counter("hit"),
            misses: counter("miss"),
            errors: counter("error"),
            writes: counter("write"),
        }
    }
}

/// One response as the tier returns it.
pub struct SharedEntry {
    pub meta: CacheMeta,
    pub route: Box<str>,
    pub body: Bytes,
}

/// A purge, as published to every instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeMessage {
    Url(HashBinary),
    Route(String),
}

impl PurgeMessage {
    pub fn encode(&self) -> String {
        match self {
            PurgeMessage::Url(url) => format!("url {}", hex(url)),
            PurgeMessage::Route(route) => format!("route {route}"),
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<PurgeMessage> {
        let text = std::str::from_utf8(bytes).ok()?;
        match text.split_once(' ')? {
            ("url", url) => unhex(url).map(PurgeMessage::Url),
            ("route", route) => Some(PurgeMessage::Route(route.to_string())),
            _ => None,
        }
    }
}

impl SharedTier {
    pub fn new(redis: Arc<RedisStore>, counts: TierCounts) -> SharedTier {
        SharedTier { redis, counts }
    }

    pub fn redis(&self) -> &Arc<RedisStore> {
        &self.redis
    }

    /// The stored response for this variant of this URL, if Redis has it and answers in time.
    pub async fn fetch(&self, url: &HashBinary, key: &HashBinary) -> Option<SharedEntry> {
        let reply: Result<Option<Vec<u8>>, _> = self
            .redis
            .query(redis::cmd("GET").arg(entry_key(url, key)))
            .await;
        let found = match reply {
            Ok(found) => found,
            Err(_) => {
                self.counts.errors.inc();
                return None;
            }
        };
        match found.as_deref().and_then(decode) {
            Some(entry) => {
                self.counts.hits.inc();
                Some(entry)
            }
            None => {
                self.counts.misses.inc();
                None
            }
        }
    }

    /// Store a complete response for every instance, until its stale windows end.
    pub async fn store(
        &self,
        url: &HashBinary,
        key: &HashBinary,
        route: &str,
        meta: &CacheMeta,
        body: &Bytes,
    ) {
        let Some(ttl_ms) = keep_for_ms(meta) else {
            return;
        };
        let Some(value) = encode(meta, route, body) else {
            return;
        };
        // The entry and its URL's index share a slot: one round trip. The route's index is
        // elsewhere in a cluster: a second one.
        let mut same_slot = redis::pipe();
        same_slot
            .cmd("SET")
            .arg(entry_key(url, key))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(url_index(url))
            .arg(hex(key))
            .ignore()
            .cmd("PEXPIRE")
            .arg(url_index(url))
            .arg(ttl_ms)
            .arg("GT")
            .ignore()
            // PEXPIRE GT leaves a key without expiry alone: give a new index one first.
            .cmd("PEXPIRE")
            .arg(url_index(url))
            .arg(ttl_ms)
            .arg("NX")
            .ignore();
        let mut route_index = redis::pipe();
        route_index
            .cmd("SADD")
            .arg(route_key(route))
            .arg(hex(url))
            .ignore()
            .cmd("PEXPIRE")
            .arg(route_key(route))
            .arg(ttl_ms)
            .arg("GT")
            .ignore()
            .cmd("PEXPIRE")
            .arg(route_key(route))
            .arg(ttl_ms)
            .arg("NX")
            .ignore();
        let stored: Result<(), _> = self.redis.pipeline(&same_slot).await;
        let indexed: Result<(), _> = self.redis.pipeline(&route_index).await;
        if stored.is_ok() && indexed.is_ok() {
            self.counts.writes.inc();
        } else {
            self.counts.errors.inc();
        }
    }

    /// Remove every variant of a URL; how many were there.
    pub async fn purge_url(&self, url: &HashBinary) -> Result<usize, String> {
        let keys: Vec<String> = self
            .redis
            .query(redis::cmd("SMEMBERS").arg(url_index(url)))
            .await
            .map_err(|e| self.failed(e))?;
        let mut del = redis::cmd("DEL");
        for key in &keys {
            if let Some(key) = unhex(key) {
                del.arg(entry_key(url, &key));
            }
        }
        del.arg(url_index(url));
        let removed: usize = self.redis.query(&del).await.map_err(|e| self.failed(e))?;
        // The index itself was one of the keys removed, when it existed.
        Ok(removed.saturating_sub(usize::from(!keys.is_empty())))
    }

    /// Remove every entry a route stored; how many were there.
    pub async fn purge_route(&self, route: &str) -> Result<usize, String> {
        let urls: Vec<String> = self
            .redis
            .query(redis::cmd("SMEMBERS").arg(route_key(route)))
            .await
            .map_err(|e| self.failed(e))?;
        let mut removed = 0;
        for url in urls.iter().filter_map(|u| unhex(u)) {
            removed += self.purge_url(&url).await?;
        }
        let _: usize = self
            .redis
            .query(redis::cmd("DEL").arg(route_key(route)))
            .await
            .map_err(|e| self.failed(e))?;
        Ok(removed)
    }

    /// Remove a purge's entries from Redis, then tell every instance to drop them from memory.
    pub async fn purge(&self, message: &PurgeMessage) -> Result<usize, String> {
        let removed = match message {
            PurgeMessage::Url(url) => self.purge_url(url).await?,
            PurgeMessage::Route(route) => self.purge_route(route).await?,
        };
        self.publish(message).await?;
        Ok(removed)
    }

    /// Tell every instance (this one included) to drop the purged entries from memory.
    pub async fn publish(&self, message: &PurgeMessage) -> Result<(), String> {
        let _: i64 = self
            .redis
            .query(
                redis::cmd("PUBLISH")
                    .arg(PURGE_CHANNEL)
                    .arg(message.encode()),
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    fn failed(&self, error: portico_plugins::redis_store::StoreError) -> String {
        self.counts.errors.inc();
        error.to_string()
    }
}

/// The tier a snapshot asks for: the one serving now when it uses the same Redis store (its
/// counts go on), else a new one.
pub fn tier_for(
    snapshot: &crate::snapshot::Snapshot,
    current: Option<&Arc<SharedTier>>,
    metric: &IntCounterVec,
) -> Option<Arc<SharedTier>> {
    if !snapshot.cache_shared {
        return None;
    }
    let (_, redis) = snapshot.reuse.redis.as_ref()?;
    match current {
        Some(tier) if Arc::ptr_eq(&tier.redis, redis) => Some(Arc::clone(tier)),
        _ => Some(Arc::new(SharedTier::new(
            Arc::clone(redis),
            TierCounts::new(metric),
        ))),
    }
}

/// How long Redis keeps an entry: until its freshness and the longer of its stale windows
/// end. `None`: already past them, not worth storing.
fn keep_for_ms(meta: &CacheMeta) -> Option<u64> {
    let stale = u64::from(
        meta.stale_while_revalidate_sec()
            .max(meta.stale_if_error_sec()),
    );
    let fresh_for = meta
        .fresh_until()
        .duration_since(SystemTime::now())
        .map_or(0, |d| d.as_millis() as u64);
    let keep = fresh_for + stale * 1000;
    (keep > 0).then_some(keep)
}

fn entry_key(url: &HashBinary, key: &HashBinary) -> String {
    format!("portico:cache:{{{}}}:{}", hex(url), hex(key))
}

fn url_index(url: &HashBinary) -> String {
    format!("portico:cache:{{{}}}:keys", hex(url))
}

fn route_key(route: &str) -> String {
    format!("portico:cache:route:{{{route}}}")
}

/// `FORMAT`, then the meta's two parts and the route, each length-prefixed, then the body.
fn encode(meta: &CacheMeta, route: &str, body: &Bytes) -> Option<Vec<u8>> {
    let (internal, header) = meta.serialize().ok()?;
    let mut out = Vec::with_capacity(
        FORMAT.len() + 12 + internal.len() + header.len() + route.len() + body.len(),
    );
    out.extend_from_slice(FORMAT);
    for part in [&internal[..], &header[..], route.as_bytes()] {
        out.extend_from_slice(&u32::try_from(part.len()).ok()?.to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(body);
    Some(out)
}

fn decode(bytes: &[u8]) -> Option<SharedEntry> {
    let mut rest = bytes.strip_prefix(FORMAT)?;
    let mut parts: [&[u8]; 3] = [&[]; 3];
    for part in &mut parts {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return None;
        }
        let (value, tail) = tail.split_at(len);
        *part = value;
        rest = tail;
    }
    let meta = CacheMeta::deserialize(parts[0], parts[1]).ok()?;
    let route = std::str::from_utf8(parts[2]).ok()?.into();
    Some(SharedEntry {
        meta,
        route,
        body: Bytes::copy_from_slice(rest),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<HashBinary> {
    let mut out = HashBinary::default();
    if text.len() != out.len() * 2 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::ResponseHeader;
    use std::time::Duration;

    fn meta(fresh_for: u64, stale: u32) -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("content-type", "text/plain").unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(fresh_for), now, stale, 0, header)
    }

    #[test]
    fn an_entry_comes_back_as_it_was_stored() {
        let meta = meta(60, 30);
        let body = Bytes::from_static(b"hello");
        let bytes = encode(&meta, "route-a", &body).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back.body, body);
        assert_eq!(&*back.route, "route-a");
        assert_eq!(back.meta.stale_while_revalidate_sec(), 30);
        assert_eq!(
            back.meta
                .fresh_until()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            meta.fresh_until()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        );
        assert_eq!(
            back.meta.headers().get("content-type").unwrap(),
            "text/plain"
        );
        // Anything else, truncated included, is a miss.
        assert!(decode(&bytes[..bytes.len() - 6 - 5]).is_none());
        assert!(decode(b"PCE0").is_none());
    }

    #[test]
    fn redis_keeps_an_entry_for_its_freshness_and_stale_windows() {
        let kept = keep_for_ms(&meta(60, 30)).unwrap();
        assert!((89_000..=90_000).contains(&kept), "{kept}");
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("x", "y").unwrap();
        let past = SystemTime::now() - Duration::from_secs(10);
        assert_eq!(keep_for_ms(&CacheMeta::new(past, past, 0, 0, header)), None);
    }

    #[test]
    fn purge_messages_round_trip_and_hashes_hex_round_trip() {
        let url = [7u8; 16];
        for message in [PurgeMessage::Url(url), PurgeMessage::Route("docs".into())] {
            assert_eq!(
                PurgeMessage::decode(message.encode().as_bytes()),
                Some(message)
            );
        }
        assert_eq!(unhex(&hex(&url)), Some(url));
        assert_eq!(PurgeMessage::decode(b"nonsense"), None);
        // One URL's entry and index share a Cluster hash tag.
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_string();
        assert_eq!(tag(&entry_key(&url, &[1; 16])), tag(&url_index(&url)));
    }
}
