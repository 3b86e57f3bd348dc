//! Sub-requests of a composition, through the upstream exchange like proxied traffic: the
//! same balancing, health checks, circuit breakers, connection pool, retries (for these
//! GETs, to another target), and every timeout bounded by the call's deadline.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::protocols::http::HttpTask;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;
use portico_plugins::ErrorCode;
use prometheus::IntCounterVec;

use crate::proxy::direct::read_final_head;
use crate::proxy::failure::{self, GatewayError};
use crate::proxy::forwarding::{GATEWAY_HEADERS, TRACEPARENT};
use crate::upstream::exchange::{ConnectFailure, Exchange, Stage};
use crate::upstream::live::Upstream;

/// Sub-responses larger than this are an error of their part.
pub const MAX_BODY: usize = 1 << 20;

/// Why one part failed; becomes its entry in `_errors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartError {
    /// The upstream's status, when it answered.
    pub status: Option<u16>,
    pub code: &'static str,
}

impl PartError {
    pub fn gateway(code: ErrorCode) -> PartError {
        PartError {
            status: Some(code.status()),
            code: code.as_str(),
        }
    }
    pub fn new(code: &'static str) -> PartError {
        PartError { status: None, code }
    }
}

/// Who a sub-request (a composition's part, a GraphQL resolver's call) is made for: what
/// the route's plugins see of the client's request when they shape it.
#[derive(Clone)]
pub struct Caller {
    pub route: std::sync::Arc<str>,
    pub client_ip: std::net::IpAddr,
    pub request_id: String,
    pub identity: Option<std::sync::Arc<portico_plugins::Identity>>,
}

impl Caller {
    pub fn of(cx: &portico_plugins::PluginCtx) -> Caller {
        Caller {
            route: std::sync::Arc::clone(&cx.route),
            client_ip: cx.client_ip,
            request_id: cx.request_id.clone(),
            identity: cx.identity.clone(),
        }
    }

    /// Let the route's plugins shape `request` as they shape a proxied one, so verified
    /// identity (`forward_claims`, a consumer header) reaches every sub-request.
    pub async fn shape(
        &self,
        request: &mut RequestHeader,
        plugins: &[(
            std::sync::Arc<str>,
            std::sync::Arc<dyn portico_plugins::Plugin>,
        )],
    ) -> Result<(), PartError> {
        let mut cx = portico_plugins::PluginCtx::new(
            std::sync::Arc::clone(&self.route),
            self.client_ip,
            self.request_id.clone(),
        );
        cx.identity = self.identity.clone();
        for (_, plugin) in plugins {
            plugin
                .on_upstream_request(request, &mut cx)
                .await
                .map_err(|_| PartError::gateway(ErrorCode::Internal))?;
        }
        Ok(())
    }
}

/// A sub-request to `uri` carrying what every sub-request of the client's request carries:
/// `base`'s gateway headers (`X-Forwarded-*`, the request id, `traceparent`) and its `Host`.
pub fn sub_request(
    method: http::Method,
    uri: &str,
    base: &RequestHeader,
) -> Result<RequestHeader, PartError> {
    let mut request = RequestHeader::build(method, uri.as_bytes(), None)
        .map_err(|_| PartError::new("bad_request"))?;
    for name in GATEWAY_HEADERS.iter().cloned().chain([http::header::HOST]) {
        if let Some(v) = base.headers.get(&name) {
            let _ = request.insert_header(name, v.clone());
        }
    }
    Ok(request)
}

/// What composition calls are sent with: new connections are made by `transport`; every
/// attempt is counted in `requests` (`portico_upstream_requests_total`) by the exchange.
pub struct Sender<'a> {
    pub transport: &'a TransportConnector,
    pub requests: &'a IntCounterVec,
    /// The client request's server span, when it is traced: each attempt is a span under it.
    pub trace: Option<crate::trace::SpanParent>,
}

/// One GET-like sub-request through the upstream exchange: the same target choice, pool,
/// breakers, retries and timeouts as a proxied request. `Ok` is a 2xx answer's body.
pub async fn send(
    sender: &Sender<'_>,
    upstream: &Upstream,
    request: &RequestHeader,
    deadline: Instant,
) -> Result<Bytes, PartError> {
    exchange(sender, upstream, request, Bytes::new(), deadline, true).await
}

/// A request with `body`, through the exchange like `send`, but never sent twice: only a
/// connection that failed is tried again (a mirrored copy, say, which may write).
pub async fn send_once(
    sender: &Sender<'_>,
    upstream: &Upstream,
    request: &RequestHeader,
    body: Bytes,
    deadline: Instant,
) -> Result<Bytes, PartError> {
    exchange(sender, upstream, request, body, deadline, false).await
}

/// `replayable`: the request may be sent again after it may have reached a target.
async fn exchange(
    sender: &Sender<'_>,
    upstream: &Upstream,
    request: &RequestHeader,
    body: Bytes,
    deadline: Instant,
    replayable: bool,
) -> Result<Bytes, PartError> {
    let trace = sender
        .trace
        .as_ref()
        .map(|t| t.with_method(&request.method));
    let mut exchange =
        Exchange::new(upstream.current(), Some(deadline), sender.requests).traced(trace);
    loop {
        // Consistent hashing keys a sub-request by its path.
        let peer = exchange
            .next_attempt(request.uri.path().as_bytes())
            .await
            .map_err(|refused| PartError::gateway(GatewayError::from(refused).code))?;
        let (stream, _reused) = match exchange.connection(sender.transport, &peer).await {
            Ok(connection) => connection,
            Err(ConnectFailure::Refused(refused)) => {
                return Err(PartError::gateway(GatewayError::from(refused).code))
            }
            Err(ConnectFailure::Failed(e)) => {
                if exchange.retry_after(&e, Stage::Connect, true) {
                    continue;
                }
                return Err(part_error(&e));
            }
        };
        let left = exchange.time_left();
        let head = match exchange.traceparent() {
            // Traced: this attempt's request names its own span as the parent.
            Some(traceparent) => {
                let mut head = request.clone();
                head.insert_header(TRACEPARENT, traceparent)
                    .map_err(|_| PartError::gateway(ErrorCode::Internal))?;
                head
            }
            None => request.clone(),
        };
        let sent = tokio::time::timeout(left, send_on(stream, &peer, head, &body)).await;
        let sent = sent.unwrap_or_else(|_| {
            let mut e = Error::explain(ErrorType::ReadTimedout, "the call's deadline passed");
            e.esource = pingora_error::ErrorSource::Upstream;
            Err(e)
        });
        match sent {
            Ok(answer) => {
                // The connection goes back to the pool first: recording the answer ends the
                // attempt, and with it the pool slot the connection would go back into.
                if let Some(stream) = answer.reusable {
                    exchange.give_back(stream);
                }
                exchange.answered(answer.status);
                return match answer.status {
                    200..=299 => Ok(answer.body),
                    status => Err(PartError {
                        status: Some(status),
                        code: "upstream_error",
                    }),
                };
            }
            Err(e) if e.etype() == &ErrorType::Custom("too_large") => {
                exchange.end(None, 200);
                return Err(PartError::new("too_large"));
            }
            Err(e) => {
                if exchange.retry_after(&e, Stage::Sent, replayable) {
                    continue;
                }
                return Err(part_error(&e));
            }
        }
    }
}

fn part_error(e: &Error) -> PartError {
    PartError::gateway(failure::classify(e).unwrap_or(ErrorCode::BadGateway))
}

/// An answer to a sub-request, and its connection when it may carry another.
struct SubAnswer {
    status: u16,
    body: Bytes,
    reusable: Option<Stream>,
}

async fn send_on(
    stream: Stream,
    peer: &HttpPeer,
    request: RequestHeader,
    body: &[u8],
) -> pingora_error::Result<SubAnswer> {
    let mut session = HttpSession::new_with_options(stream, peer);
    session.read_timeout = peer.options.read_timeout;
    session.write_timeout = peer.options.write_timeout;
    session
        .write_request_header(Box::new(request))
        .await
        .map_err(|e| e.into_up())?;
    if !body.is_empty() {
        session.write_body(body).await.map_err(|e| e.into_up())?;
    }
    session.finish_body().await.map_err(|e| e.into_up())?;
    let (head, mut done) = read_final_head(&mut session)
        .await
        .map_err(|e| e.into_up())?;
    let status = head.status.as_u16();
    let mut body = BytesMut::new();
    while !done {
        let (chunk, end) = match session
            .read_response_task()
            .await
            .map_err(|e| e.into_up())?
        {
            HttpTask::Body(chunk, end) => (chunk, end),
            HttpTask::Failed(e) => return Err(e.into_up()),
            _ => (None, true),
        };
        if let Some(chunk) = chunk {
            if body.len() + chunk.len() > MAX_BODY {
                return Error::e_explain(ErrorType::Custom("too_large"), "sub-response over 1 MiB");
            }
            body.extend_from_slice(&chunk);
        }
        done = end;
    }
    session.respect_keepalive();
    Ok(SubAnswer {
        status,
        body: body.freeze(),
        reusable: session.reuse().await,
    })
}
