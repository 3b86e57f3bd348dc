//! `mirror`: a share of a route's requests also sent to another upstream (shadow traffic),
//! body included, fire-and-forget. The copy leaves once the client's exchange is over, from
//! its own task, so the mirror's answer, slowness or failure never touches the client's
//! answer or its latency. Copies are bounded: at most `MAX_IN_FLIGHT` per route at once,
//! each given at most `DEADLINE`, bodies up to `MAX_BODY`; a copy over a bound is dropped and
//! counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora_http::RequestHeader;

use crate::compose::client::{self, Sender};
use crate::state::GatewayState;
use crate::upstream::live::Upstream;

/// Copies of one route in flight at once; past this, new copies are dropped.
pub const MAX_IN_FLIGHT: usize = 64;
/// The longest one copy may take, connection included.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The largest request body a copy carries; a request with a larger one is not copied.
pub const MAX_BODY: usize = 1 << 20;

/// A route's `mirror`, compiled.
pub struct Mirror {
    pub upstream: Arc<Upstream>,
    /// Of 100.
    pub percent: f64,
    in_flight: Arc<AtomicUsize>,
}

/// How one copy ended: the label of `portico_mirror_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The mirror answered (whatever its status).
    Sent,
    /// It did not: refused, failed, or past the deadline.
    Failed,
    /// Not sent: too many copies in flight, or the body was over `MAX_BODY` or not read whole.
    Dropped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Failed => "failed",
            Outcome::Dropped => "dropped",
        }
    }
}

/// A request chosen for copying, gathered while it is served: the request as its upstream
/// got it, and its body.
#[derive(Default)]
pub struct Copy {
    pub head: Option<RequestHeader>,
    body: BytesMut,
    too_large: bool,
}

impl Copy {
    /// A piece of the client's body went by.
    pub fn add_body(&mut self, chunk: &[u8]) {
        if self.too_large || self.body.len() + chunk.len() > MAX_BODY {
            self.too_large = true;
            self.body = BytesMut::new();
            return;
        }
        self.body.extend_from_slice(chunk);
    }
}

impl Mirror {
    pub fn new(upstream: Arc<Upstream>, percent: f64) -> Mirror {
        Mirror {
            upstream,
            percent,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Whether this request is one of the `percent` copied.
    pub fn sample(&self) -> bool {
        self.percent >= 100.0 || fastrand::f64() * 100.0 < self.percent
    }

    /// Send `copy` from a task of its own, unless a bound says no. `body_whole`: the
    /// client's body was read to its end (a copy with half a body would be a lie).
    pub fn send(&self, state: &Arc<GatewayState>, route: &str, copy: Copy, body_whole: bool) {
        let count = |outcome: Outcome| {
            state
                .metrics
                .mirror_requests
                .with_label_values(&[route, outcome.as_str()])
                .inc();
        };
        // Nothing went upstream (a cache hit, a refusal after the plugins): nothing to copy.
        let Some(mut head) = copy.head else {
            return;
        };
        if !body_whole || copy.too_large {
            return count(Outcome::Dropped);
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return count(Outcome::Dropped);
        }
        let body = copy.body.freeze();
        as_http1(&mut head);
        // The body goes whole, with its length: however the client framed it.
        head.remove_header(&http::header::TRANSFER_ENCODING);
        head.remove_header(&http::header::CONTENT_LENGTH);
        if !body.is_empty() {
            let _ = head.insert_header(http::header::CONTENT_LENGTH, body.len());
        }
        let (state, upstream) = (Arc::clone(state), Arc::clone(&self.upstream));
        let in_flight = Arc::clone(&self.in_flight);
        let route = route.to_string();
        tokio::spawn(async move {
            let outcome = deliver(&state, &upstream, &head, body).await;
            in_flight.fetch_sub(1, Ordering::AcqRel);
            state
                .metrics
                .mirror_requests
                .with_label_values(&[&route, outcome.as_str()])
                .inc();
        });
    }
}

/// The copy goes over HTTP/1.1 whatever the client spoke: a request that came over HTTP/2
/// has its authority in the URI and no `Host`.
fn as_http1(head: &mut RequestHeader) {
    if head.version != http::Version::HTTP_11 {
        head.set_version(http::Version::HTTP_11);
    }
    if let Some(authority) = head.uri.authority().cloned() {
        if head.headers.get(http::header::HOST).is_none() {
            let _ = head.insert_header(http::header::HOST, authority.as_str());
        }
        let origin_form = head
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<http::Uri>();
        if let Ok(uri) = origin_form {
            head.set_uri(uri);
        }
    }
}

async fn deliver(
    state: &GatewayState,
    upstream: &Upstream,
    head: &RequestHeader,
    body: Bytes,
) -> Outcome {
    // A copy is not part of the client's trace: its answer is thrown away.
    let sender = Sender {
        transport: &state.transport,
        requests: &state.metrics.upstream_requests,
        trace: None,
    };
    let deadline = Instant::now() + DEADLINE;
    // Sent once: a copy that may have reached the mirror is not sent again.
    match client::send_once(&sender, upstream, head, body, deadline).await {
        Ok(_) => Outcome::Sent,
        Err(e) if e.status.is_some() && e.code == "upstream_error" => Outcome::Sent,
        Err(_) => Outcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_request_is_copied_as_http1_with_a_host() {
        let mut head = RequestHeader::build("PUT", b"/", None).unwrap();
        head.set_uri("https://api.example.com/p/1?x=2".parse().unwrap());
        head.set_version(http::Version::HTTP_2);
        as_http1(&mut head);
        assert_eq!(head.version, http::Version::HTTP_11);
        assert_eq!(head.uri.to_string(), "/p/1?x=2");
        assert_eq!(
            head.headers.get("host").map(|v| v.to_str().unwrap()),
            Some("api.example.com"),
            "{head:?}"
        );
    }

    #[test]
    fn a_body_over_the_limit_is_not_kept() {
        let mut copy = Copy::default();
        copy.add_body(&[1; 1000]);
        assert_eq!(copy.body.len(), 1000);
        copy.add_body(&vec![2; MAX_BODY]);
        assert!(copy.too_large);
        assert!(
            copy.body.is_empty(),
            "nothing held for a copy that will not go"
        );
        copy.add_body(&[3; 10]);
        assert!(copy.body.is_empty());
    }
}
