//! What one request carries from phase to phase.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use portico_plugins::PluginCtx;

use super::phases::PhasesRun;
use crate::cache::CacheResult;
use crate::snapshot::{Route, Snapshot};
use crate::upstream::exchange::Exchange;
use crate::upstream::live::Upstream;

pub struct RequestCtx {
    pub started: Instant,
    /// The config generation this request is served by, from its first phase to its last;
    /// set by the identify phase.
    pub snapshot: Option<Arc<Snapshot>>,
    /// `X-Request-Id`: the client's when sane, else a new one; empty before the identify
    /// phase. Kept as a header value, so it goes upstream, back to the client and into the
    /// access log without being copied or checked again.
    pub request_id: HeaderValue,
    pub client_ip: Option<IpAddr>,
    /// Whether the direct peer is a trusted proxy (its X-Forwarded-* are believed).
    pub peer_trusted: bool,
    /// The request came over TLS.
    pub tls: bool,
    /// The subject of the client certificate the TLS handshake verified (mTLS).
    pub client_cert: Option<Arc<str>>,
    /// A valid W3C traceparent once identified (the client's, checked, or a new one); empty
    /// before. The access log takes its trace id from it without checking again.
    pub traceparent: HeaderValue,
    /// A sampled request's server span (`[tracing]`); then `traceparent` is its own.
    pub trace: Option<Box<crate::trace::ServerSpan>>,
    /// Everything a request has once it has a route; `None` until then.
    pub routed: Option<Routed>,
    /// Request body bytes seen so far, against `max_request_body`.
    pub body_bytes: u64,
    /// The route caches and the request reached the cache's first hook.
    pub cache_considered: bool,
    /// How the cache took part, once known (a bypass is known early, the rest when the
    /// answer is written).
    pub cache: Option<CacheResult>,
    /// For a composition: the keys of the parts that failed.
    pub failed_parts: Option<String>,
    /// A WebSocket upgrade on a route that takes them: the route's `tunnel_idle_timeout`.
    pub tunnel: Option<std::time::Duration>,
    /// A gRPC call (`proxy::grpc`), and its `grpc-status` once known.
    pub grpc: bool,
    pub grpc_status: Option<u32>,
    pub phases: PhasesRun,
    /// Compresses the answer's body (`compress`), once its head chose a coding.
    pub encoder: Option<Box<dyn pingora_core::protocols::http::compression::Encode + Send + Sync>>,
    _active: ActiveRequest,
}

/// A request with a route: the route, its plugins' context, and for a proxied route the
/// exchange with its upstream.
pub struct Routed {
    pub route: Arc<Route>,
    pub plugin_cx: PluginCtx,
    pub exchange: Option<Exchange>,
    /// On a route with `split`: the variant chosen once the plugins ran.
    pub variant: Option<Arc<Upstream>>,
    /// The split cookie to set on the answer, when the client came without one.
    pub set_cookie: Option<HeaderValue>,
    /// This request is copied to the route's mirror: what is gathered for the copy.
    pub mirror: Option<Box<crate::proxy::mirror::Copy>>,
}

impl Routed {
    /// The upstream this request goes to: the route's, or its split's chosen variant.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.route.upstream.as_ref().or(self.variant.as_ref())
    }
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

    pub fn route(&self) -> Option<&Arc<Route>> {
        self.routed.as_ref().map(|r| &r.route)
    }

    /// The parent of this request's upstream attempts, when it is traced.
    pub fn span_parent(&self) -> Option<crate::trace::SpanParent> {
        self.trace.as_ref().map(|t| t.parent().clone())
    }

    /// The `traceparent` to send upstream now: the current attempt's own when the request is
    /// traced, else the one the request carries.
    pub fn upstream_traceparent(&self) -> HeaderValue {
        self.routed
            .as_ref()
            .and_then(|r| r.exchange.as_ref())
            .and_then(Exchange::traceparent)
            .unwrap_or_else(|| self.traceparent.clone())
    }

    pub fn exchange(&mut self) -> Option<&mut Exchange> {
        self.routed.as_mut()?.exchange.as_mut()
    }

    pub fn new(active_requests: &Arc<AtomicUsize>) -> Self {
        RequestCtx {
            started: Instant::now(),
            snapshot: None,
            request_id: HeaderValue::from_static(""),
            client_ip: None,
            peer_trusted: false,
            tls: false,
            client_cert: None,
            traceparent: HeaderValue::from_static(""),
            trace: None,
            routed: None,
            body_bytes: 0,
            cache_considered: false,
            encoder: None,
            cache: None,
            failed_parts: None,
            tunnel: None,
            grpc: false,
            grpc_status: None,
            phases: PhasesRun::default(),
            _active: ActiveRequest::new(active_requests),
        }
    }
}
