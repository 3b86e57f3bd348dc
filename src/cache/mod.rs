//! Response caching on pingora-cache: the `cache` plugin's policy (HTTP caching rules), the
//! keys, and the bounded store. The proxy's cache hooks (`proxy::cache`) tie them together.

pub mod key;
pub mod policy;
pub mod shared;
pub mod store;

pub use key::RequestIdentity;
pub use policy::{CacheConfig, CachePolicy};
pub use store::{CacheStore, StoreStats};

/// How a request on a cached route was answered: the `X-Cache` header, the access log's
/// `cache` field and the `result` label of `portico_cache_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the cache, fresh (or revalidated with a 304).
    Hit,
    /// Looked up, not usable: fetched from the upstream.
    Miss,
    /// Served from the cache past its freshness: while it refreshes, or because the
    /// upstream failed.
    Stale,
    /// The cache was not consulted (not GET/HEAD, or credentials the stored answer does not
    /// allow).
    Bypass,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "HIT",
            CacheResult::Miss => "MISS",
            CacheResult::Stale => "STALE",
            CacheResult::Bypass => "BYPASS",
        }
    }

    /// The metric label: lowercase, like every other label value.
    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Bypass => "bypass",
        }
    }
}
