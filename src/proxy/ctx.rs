//! What one request carries from hook to hook.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use portico_plugins::{ErrorCode, PluginCtx};

use crate::cache::CacheResult;
use crate::snapshot::{Route, Snapshot};
use crate::upstream::InFlight;

pub struct RequestCtx {
    pub started: Instant,
    /// The config generation this request is served by, from its first hook to its last.
    pub snapshot: Option<Arc<Snapshot>>,
    pub route: Option<Arc<Route>>,
    /// `X-Request-Id`: the client's when sane, else a new one; empty before `request_filter`.
    /// Kept as a header value, so it goes upstream, back to the client and into the access
    /// log without being copied or checked again.
    pub request_id: HeaderValue,
    pub client_ip: Option<IpAddr>,
    /// Whether the direct peer is a trusted proxy (its X-Forwarded-* are believed).
    pub peer_trusted: bool,
    /// A valid W3C traceparent once `request_filter` has run (the client's, checked, or a new
    /// one); empty before. The access log takes its trace id from it without checking again.
    pub traceparent: HeaderValue,
    pub plugin_cx: Option<PluginCtx>,
    /// The target the current attempt went to; counts as in flight while held.
    pub in_flight: Option<InFlight>,
    /// The last target that answered or failed, for the access log.
    pub last_target: Option<(Arc<str>, Arc<str>)>,
    /// Targets already tried, so a retry goes elsewhere.
    pub tried: Vec<usize>,
    pub retries_left: u32,
    /// The next `upstream_peer` call is a counted retry, so it waits `backoff` first.
    pub retrying: bool,
    /// The route's total deadline upstream, retries included.
    pub deadline: Option<Instant>,
    /// For a 503 when no target is available: when one may be.
    pub retry_after: Option<std::time::Duration>,
    /// For a composition: the keys of the parts that failed.
    pub failed_parts: Option<String>,
    pub upstream_started: Option<Instant>,
    /// Request body bytes seen so far, against `max_request_body`.
    pub body_bytes: u64,
    /// Set when the gateway itself decided the answer, so `fail_to_proxy` reports the
    /// decision rather than guessing it from a transport error.
    pub decided: Option<ErrorCode>,
    /// The route caches and the request reached the cache's first hook.
    pub cache_considered: bool,
    /// How the cache took part, once known (a bypass is known early, the rest when the
    /// answer is written).
    pub cache: Option<CacheResult>,
    _active: ActiveRequest,
}

/// Counts a request as active from its context's creation to its drop, so a draining
/// gateway knows when the last one is done.
struct ActiveRequest(Arc<AtomicUsize>);

impl ActiveRequest {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(Arc::clone(counter))
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RequestCtx {
    /// The request id as text, for logs and problem answers (it is visible ASCII).
    pub fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }

    pub fn new(active_requests: &Arc<AtomicUsize>) -> Self {
        RequestCtx {
            started: Instant::now(),
            snapshot: None,
            route: None,
            request_id: HeaderValue::from_static(""),
            client_ip: None,
            peer_trusted: false,
            traceparent: HeaderValue::from_static(""),
            plugin_cx: None,
            in_flight: None,
            last_target: None,
            tried: Vec::new(),
            retries_left: 0,
            retrying: false,
            deadline: None,
            retry_after: None,
            failed_parts: None,
            upstream_started: None,
            body_bytes: 0,
            decided: None,
            cache_considered: false,
            cache: None,
            _active: ActiveRequest::new(active_requests),
        }
    }
}
