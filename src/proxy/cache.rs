//! The proxy's side of caching: when a request uses the cache, what it is keyed by, whether a
//! response may be stored, and how the answer is labelled. The `ProxyHttp` hooks in `mod.rs`
//! call these; the rules themselves live in `crate::cache`.

use std::time::Duration;

use http::Method;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::{CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, NoCacheReason};
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::Session;

use super::RequestCtx;
use crate::cache::{CachePolicy, CacheResult, CacheStore, RequestIdentity};

pub const X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");

/// How long a request that is fetching an entry may hold the key's lock before others stop
/// counting on it. Readers give up sooner, after their route's `lock_timeout`.
const LOCK_AGE_TIMEOUT: Duration = Duration::from_secs(60);

/// One lock table for every key of the process: concurrent misses for one key send one
/// request upstream, the others wait for its answer.
pub fn new_lock() -> &'static CacheKeyLockImpl {
    Box::leak(CacheLock::new_boxed(LOCK_AGE_TIMEOUT))
}

/// The route's cache policy, if its route caches.
pub fn policy(ctx: &RequestCtx) -> Option<&CachePolicy> {
    ctx.route()?.cache.as_deref()
}

/// Turn the cache on for this request when its route caches and the method is GET or HEAD.
pub fn enable(
    session: &mut Session,
    ctx: &mut RequestCtx,
    store: &'static CacheStore,
    lock: &'static CacheKeyLockImpl,
) {
    let Some((lock_timeout, max_object_size)) =
        policy(ctx).map(|p| (p.lock_timeout, p.max_object_size))
    else {
        return;
    };
    ctx.cache_considered = true;
    if !matches!(session.req_header().method, Method::GET | Method::HEAD) {
        ctx.cache = Some(CacheResult::Bypass);
        return;
    }
    let mut overrides = CacheOptionOverrides::default();
    overrides.wait_timeout = Some(lock_timeout);
    session
        .cache
        .enable(store, None, None, Some(lock), Some(overrides));
    session.cache.set_max_file_size_bytes(max_object_size);
}

/// The key: the URL as routed (`proxy::target`) and the route's `key_headers`, tagged with
/// the route's name so a purge can find the route's entries.
pub fn key(session: &Session, ctx: &RequestCtx) -> Result<CacheKey> {
    let (Some(route), Some(policy)) = (ctx.route(), policy(ctx)) else {
        return Error::e_explain(ErrorType::InternalError, "cache key without a cached route");
    };
    let req = session.req_header();
    // On a split route each variant's answers are its own: a client on the canary never
    // gets the stable version's stored answer, nor the other way round.
    let variant = ctx
        .routed
        .as_ref()
        .and_then(|r| r.variant.as_ref())
        .map(|u| &*u.name);
    Ok(RequestIdentity::of(req, req.uri.path()).cache_key(
        &route.name,
        &policy.key_headers,
        variant,
        req,
    ))
}

/// A request with credentials may only be answered from a stored response that its origin
/// marked shareable (`public`, `s-maxage`); otherwise it goes upstream as if uncached.
pub fn hit_usable(session: &Session, meta: &CacheMeta) -> bool {
    !session
        .req_header()
        .headers
        .contains_key(http::header::AUTHORIZATION)
        || CachePolicy::serves_credentials(meta)
}

/// How the cache took part in this request; `None` when it had no part (the route does not
/// cache, or the request was answered before the cache was consulted).
pub fn result(session: &Session, ctx: &RequestCtx) -> Option<CacheResult> {
    if !ctx.cache_considered {
        return None;
    }
    if let Some(decided) = ctx.cache {
        return Some(decided);
    }
    Some(match session.cache.phase() {
        CachePhase::Hit | CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
            CacheResult::Hit
        }
        CachePhase::Stale | CachePhase::StaleUpdating => CacheResult::Stale,
        CachePhase::Bypass | CachePhase::Disabled(NoCacheReason::NeverEnabled) => {
            CacheResult::Bypass
        }
        // Looked up and not served from the cache, whether or not the answer was stored.
        _ => CacheResult::Miss,
    })
}

/// Read and drop the request body of a request answered from the cache. Only a body with a
/// declared length is drained (`request_filter` already held it to `max_request_body`); a
/// chunked one of unknown size is left to Pingora, which then closes the connection instead.
pub async fn drain_body(session: &mut Session) {
    let declared = session
        .req_header()
        .headers
        .contains_key(http::header::CONTENT_LENGTH);
    if !declared {
        return;
    }
    if let Err(e) = session.drain_request_body().await {
        log::debug!("could not drain a request body before a cache hit: {e}");
    }
}
