//! What one request carries from hook to hook.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use portico_plugins::{ErrorCode, PluginCtx};

use crate::snapshot::{Route, Snapshot};
use crate::upstream::InFlight;

pub struct RequestCtx {
    pub started: Instant,
    /// The config generation this request is served by, from its first hook to its last.
    pub snapshot: Option<Arc<Snapshot>>,
    pub route: Option<Arc<Route>>,
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    /// Whether the direct peer is a trusted proxy (its X-Forwarded-* are believed).
    pub peer_trusted: bool,
    pub traceparent: String,
    /// The normalized path, when it differs from what the client sent.
    pub normalized_path: Option<String>,
    pub plugin_cx: Option<PluginCtx>,
    /// The target the current attempt went to; counts as in flight while held.
    pub in_flight: Option<InFlight>,
    pub upstream_started: Option<Instant>,
    /// Request body bytes seen so far, against `max_request_body`.
    pub body_bytes: u64,
    /// Set when the gateway itself decided the answer, so `fail_to_proxy` reports the
    /// decision rather than guessing it from a transport error.
    pub decided: Option<ErrorCode>,
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
    pub fn new(active_requests: &Arc<AtomicUsize>) -> Self {
        RequestCtx {
            started: Instant::now(),
            snapshot: None,
            route: None,
            request_id: String::new(),
            client_ip: None,
            peer_trusted: false,
            traceparent: String::new(),
            normalized_path: None,
            plugin_cx: None,
            in_flight: None,
            upstream_started: None,
            body_bytes: 0,
            decided: None,
            _active: ActiveRequest::new(active_requests),
        }
    }

    pub fn trace_id(&self) -> Option<&str> {
        super::forwarding::trace_id_of(self.traceparent.as_bytes())
    }
}
