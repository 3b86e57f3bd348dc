//! The first three phases: identify the request, route it, run the route's plugins. A request
//! refused on the way is answered here with a problem.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use portico_plugins::{Answer, ErrorCode, Flow, PluginCtx};

use super::ctx::{RequestCtx, Routed};
use super::forwarding::{
    client_ip, is_trusted, new_request_id, new_traceparent, sane_request_id, trace_id_of,
    TRACEPARENT, X_REQUEST_ID,
};
use super::phases::Phase;
use super::split::Split;
use super::{request_headers, target, Portico};
use crate::problem;
use crate::router::RouteMatch;
use crate::snapshot::{Route, Snapshot};
use crate::upstream::exchange::Exchange;

impl Portico {
    /// Identify, route and filter the request. `Ok(true)`: it has been answered.
    pub(super) async fn request_phases(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let snapshot = self.state.current();
        let answered = self.identify_and_route(session, ctx, &snapshot).await;
        ctx.snapshot = Some(snapshot);
        answered
    }

    async fn identify_and_route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: &Snapshot,
    ) -> Result<bool> {
        // Interim answers the client did not ask for (anything but a 100 to its own
        // `Expect: 100-continue`) are not passed on.
        session.downstream_session.set_ignore_info_resp(true);
        client_timeouts(session, &snapshot.server);
        identify(session, ctx, snapshot);

        // From here on the request header's URI is the one target that is routed, shown to
        // plugins, cached under, logged and forwarded (see `target`).
        if let Err(rejection) = target::apply(session.req_header_mut()) {
            return self
                .reject(session, ctx, ErrorCode::BadRequest, rejection.detail(), &[])
                .await;
        }
        if let Some(tls) = snapshot
            .tls
            .as_ref()
            .filter(|t| t.redirect_http && !ctx.tls)
        {
            return redirect_to_https(session, tls.https_port).await;
        }
        let underscores = snapshot.server.underscore_headers;
        if let Err(rejection) = request_headers::check(session.req_header_mut(), underscores) {
            return self
                .reject(session, ctx, ErrorCode::BadRequest, rejection.detail(), &[])
                .await;
        }
        let req = session.req_header();
        let declared_length = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let route = match match_route(snapshot, req, req.uri.path()) {
            RouteMatch::Found(route) => Arc::clone(route),
            RouteMatch::NotFound => {
                let detail = "no route matches this request";
                return self
                    .reject(session, ctx, ErrorCode::NoRoute, detail, &[])
                    .await;
            }
            RouteMatch::MethodNotAllowed(allowed) => {
                let allow = allowed
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let extra: Vec<_> = HeaderValue::from_str(&allow)
                    .map(|v| (http::header::ALLOW, v))
                    .into_iter()
                    .collect();
                let detail = format!("this route accepts {allow}");
                return self
                    .reject(session, ctx, ErrorCode::MethodNotAllowed, &detail, &extra)
                    .await;
            }
        };
        ctx.phases.mark(Phase::Route);
        if declared_length.is_some_and(|n| n > route.max_request_body) {
            let detail = format!(
                "the request body is larger than {} bytes",
                route.max_request_body
            );
            return self
                .reject(session, ctx, ErrorCode::PayloadTooLarge, &detail, &[])
                .await;
        }
        // A gRPC call's own deadline shortens the route's.
        let grpc_timeout = ctx.grpc.then(|| super::grpc::timeout(req)).flatten();
        if super::forwarding::is_websocket_upgrade(req) {
            let Some(idle) = route.tunnel_idle_timeout else {
                let detail = "this route does not take WebSocket upgrades";
                return self
                    .reject(session, ctx, ErrorCode::BadRequest, detail, &[])
                    .await;
            };
            // The tunnel's reads and writes are bounded by its idle timeout, not these.
            ctx.tunnel = Some(idle);
            session.downstream_session.set_read_timeout(None);
        }
        let client_ip = ctx
            .client_ip
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let deadline = match (route.timeout, grpc_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|t| ctx.started + t);
        let exchange = route.upstream.as_ref().map(|upstream| {
            Exchange::new(
                upstream.current(),
                deadline,
                &self.state.metrics.upstream_requests,
            )
            .traced(ctx.span_parent())
        });
        let mut plugin_cx = PluginCtx::new(Arc::clone(&route.name), client_ip, ctx.id().to_owned());
        plugin_cx.client_cert = ctx.client_cert.clone();
        ctx.routed = Some(Routed {
            plugin_cx,
            route: Arc::clone(&route),
            exchange,
            variant: None,
            set_cookie: None,
            mirror: None,
        });
        let answered = self.plugins_phase(session, ctx, &route).await?;
        if answered {
            return Ok(true);
        }
        if let Some(split) = &route.split {
            // After the plugins: a split by consumer needs to know who is calling.
            self.choose_variant(session, ctx, split, deadline);
        }
        if let (Some(mirror), Some(routed)) = (&route.mirror, ctx.routed.as_mut()) {
            // Only what the plugins let through is copied.
            if mirror.sample() {
                routed.mirror = Some(Box::default());
            }
        }
        Ok(false)
    }

    /// The split's variant for this request, and the exchange with it.
    fn choose_variant(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        split: &Split,
        deadline: Option<std::time::Instant>,
    ) {
        let parent = ctx.span_parent();
        let Some(routed) = ctx.routed.as_mut() else {
            return;
        };
        let consumer = routed.plugin_cx.identity.as_ref().map(|i| &*i.consumer);
        let choice = split.choose(session.req_header(), consumer, routed.plugin_cx.client_ip);
        self.state
            .metrics
            .split_requests
            .with_label_values(&[&routed.route.name, &choice.upstream.name])
            .inc();
        routed.exchange = Some(
            Exchange::new(
                choice.upstream.current(),
                deadline,
                &self.state.metrics.upstream_requests,
            )
            .traced(parent),
        );
        routed.variant = Some(choice.upstream);
        routed.set_cookie = choice.set_cookie;
    }

    /// The route's plugins in order, then a composition's or a GraphQL schema's answer.
    /// `Ok(true)`: answered.
    async fn plugins_phase(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
    ) -> Result<bool> {
        ctx.phases.mark(Phase::Plugins);
        for (name, plugin) in &route.plugins {
            let Some(routed) = ctx.routed.as_mut() else {
                break;
            };
            match plugin.on_request(session, &mut routed.plugin_cx).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Reject(rejection)) => {
                    return self
                        .reject(
                            session,
                            ctx,
                            rejection.code,
                            &rejection.detail,
                            &rejection.headers,
                        )
                        .await;
                }
                Ok(Flow::Respond(answer)) => {
                    respond(session, ctx, answer).await?;
                    return Ok(true);
                }
                Err(e) => {
                    log::error!("plugin {name} failed on request {}: {e}", ctx.id());
                    let detail = "the gateway failed to process the request";
                    return self
                        .reject(session, ctx, ErrorCode::Internal, detail, &[])
                        .await;
                }
            }
        }
        // Boxed: their futures (the calls they make) would otherwise size every request's.
        if let Some(composition) = route.compose.clone() {
            return Box::pin(self.answer_composition(session, ctx, route, &composition)).await;
        }
        if let Some(schema) = route.graphql.clone() {
            return Box::pin(self.answer_graphql(session, ctx, route, &schema)).await;
        }
        Ok(false)
    }

    /// Answer with a problem now; the request phases then return `Ok(true)`.
    pub(super) async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        code: ErrorCode,
        detail: &str,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<bool> {
        // After a malformed request, what follows on the connection cannot be trusted to be
        // the next request: answer, then close (as nginx does).
        if code == ErrorCode::BadRequest {
            session.set_keepalive(None);
        }
        let mut extra = extra.to_vec();
        extra.extend(answer_headers(session, ctx));
        problem::respond(session, code, detail, ctx.id(), &extra).await?;
        if ctx.grpc {
            ctx.grpc_status = Some(super::grpc::status_for(code));
        }
        Ok(true)
    }
}

/// What the route's plugins add to an answer the gateway gives itself (`Plugin::
/// answer_headers`: CORS headers, so a browser lets the page read a 401 or a 429).
pub(super) fn answer_headers(
    session: &Session,
    ctx: &RequestCtx,
) -> Vec<(HeaderName, HeaderValue)> {
    let traced = ctx
        .trace
        .is_some()
        .then(|| (TRACEPARENT, ctx.traceparent.clone()));
    let Some(routed) = ctx.routed.as_ref() else {
        return traced.into_iter().collect();
    };
    let req = session.req_header();
    routed
        .route
        .plugins
        .iter()
        .flat_map(|(_, plugin)| plugin.answer_headers(req, &routed.plugin_cx))
        .chain(traced)
        .collect()
}

/// A plugin's own answer that is not a problem (a CORS preflight's 204, a GraphQL errors
/// document): its status, headers and body, with the body's Content-Length.
async fn respond(session: &mut Session, ctx: &RequestCtx, answer: Answer) -> Result<()> {
    let mut headers = answer.headers;
    headers.extend(answer_headers(session, ctx));
    let mut resp = ResponseHeader::build(answer.status, Some(headers.len() + 2))?;
    for (name, value) in headers {
        resp.append_header(name, value)?;
    }
    // A 204 or 304 carries no Content-Length and no body (RFC 9110 sections 8.6 and 15.3.5).
    let bodiless = matches!(answer.status.as_u16(), 204 | 304);
    if !bodiless {
        resp.insert_header(http::header::CONTENT_LENGTH, answer.body.len())?;
    }
    resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
    // A HEAD is told the length and gets no body (RFC 9110 section 9.3.2).
    let with_body =
        !bodiless && !answer.body.is_empty() && session.req_header().method != Method::HEAD;
    session
        .write_response_header(Box::new(resp), !with_body)
        .await?;
    if with_body {
        session.write_response_body(Some(answer.body), true).await?;
    }
    Ok(())
}

/// A route's `fallback` in place of the gateway's 502/503/504: marked `Portico-Fallback: 1`
/// and `Cache-Control: no-store`, so no cache keeps it as the upstream's answer.
pub(super) async fn respond_fallback(
    session: &mut Session,
    ctx: &RequestCtx,
    fallback: &crate::snapshot::Fallback,
    extra: Vec<(HeaderName, HeaderValue)>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(fallback.status, Some(extra.len() + 5))?;
    resp.insert_header(http::header::CONTENT_TYPE, fallback.content_type.clone())?;
    resp.insert_header(http::header::CONTENT_LENGTH, fallback.body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    resp.insert_header("portico-fallback", "1")?;
    resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
    for (name, value) in extra {
        resp.append_header(name, value)?;
    }
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(fallback.body.clone()), true)
            .await?;
    }
    Ok(())
}

/// What a slow client may hold: the answer goes out at `min_send_rate` at least (or each
/// write within `send_timeout`), and a body must arrive within `body_timeout`. A client that
/// sends its whole request and then closes its side (HTTP/1.0 tools do) still gets its
/// answer: a half-closed connection is not an aborted request (RFC 9112 section 9.6).
fn client_timeouts(session: &mut Session, server: &crate::snapshot::ServerSettings) {
    let downstream = &mut session.downstream_session;
    downstream.set_write_timeout(Some(server.send_timeout));
    downstream.set_min_send_rate((server.min_send_rate > 0).then_some(server.min_send_rate));
    downstream.set_abort_on_close(false);
    if !downstream.is_body_empty() {
        downstream.set_read_timeout(Some(server.body_timeout));
    }
}

/// `[tls] redirect_http`: a request on a plain listener is told to come again over TLS (308
/// keeps the method and body). Not an error, so not a problem.
async fn redirect_to_https(session: &mut Session, https_port: u16) -> Result<bool> {
    let req = session.req_header();
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    // The host without its port (an IPv6 literal keeps its brackets).
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    let authority = if https_port == 443 {
        name.to_string()
    } else {
        format!("{name}:{https_port}")
    };
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{authority}{target}");
    let mut resp = pingora_http::ResponseHeader::build(308, Some(3))?;
    resp.insert_header(http::header::LOCATION, location.as_str())?;
    resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(resp), true).await?;
    Ok(true)
}

/// Who is asking: the request id, the trace context, and the client's address (believing
/// `X-Forwarded-For` only from a trusted proxy).
fn identify(session: &Session, ctx: &mut RequestCtx, snapshot: &Snapshot) {
    let req = session.req_header();
    ctx.request_id = match req.headers.get(X_REQUEST_ID) {
        Some(v) if sane_request_id(v.as_bytes()) => v.clone(),
        _ => new_request_id(),
    };
    match &snapshot.tracer {
        Some(tracer) => {
            (ctx.traceparent, ctx.trace) = tracer.begin(req.headers.get(TRACEPARENT), &req.method);
        }
        None => {
            ctx.traceparent = match req.headers.get(TRACEPARENT) {
                Some(v) if trace_id_of(v.as_bytes()).is_some() => v.clone(),
                _ => new_traceparent(),
            };
        }
    }
    // Both are unique to the request: in an HTTP/2 header table (the client's, or an HTTP/2
    // upstream's) an entry for either would never be used again, and adding it would evict
    // entries that would be, on every response (callgrind: the encoder walked every id
    // indexed before, about a tenth of an HTTP/2 request's instructions). HPACK's "never
    // indexed" form keeps them out of the table; over HTTP/1.1 the flag changes nothing.
    ctx.request_id.set_sensitive(true);
    ctx.traceparent.set_sensitive(true);
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let trusted = &snapshot.server.trusted_proxies;
    ctx.peer_trusted = is_trusted(peer, trusted);
    ctx.client_ip = Some(client_ip(peer, &req.headers, trusted));
    let ssl = session.digest().and_then(|d| d.ssl_digest.as_ref());
    ctx.tls = ssl.is_some();
    ctx.grpc = super::grpc::is_grpc(req);
    ctx.client_cert = ssl
        .and_then(|d| d.extension.get::<crate::tls::ClientCert>())
        .map(|c| Arc::clone(&c.subject));
    ctx.phases.mark(Phase::Identify);
}

/// The route `req` takes, matched on `path` (its target after `target::check`).
pub(super) fn match_route<'s>(
    snapshot: &'s Snapshot,
    req: &pingora_http::RequestHeader,
    path: &str,
) -> RouteMatch<'s, Arc<Route>> {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    snapshot
        .routes
        .match_request(host, &req.method, path, &req.headers)
}

impl Portico {
    /// A piece of the request body has been read (`None`: it ended): hold the body to
    /// `max_request_body` (413) and to `body_timeout` from the end of the head (408), and
    /// give the next read only the time that is left, so a body that trickles in is cut off
    /// at its deadline however quick each read is. Both drivers call this after every read.
    pub(crate) fn request_body_phase(
        &self,
        session: &mut Session,
        chunk: Option<&bytes::Bytes>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(server) = ctx.snapshot.as_ref().map(|s| &s.server) else {
            return Ok(());
        };
        if ctx.tunnel.is_some() {
            // What crosses a WebSocket is not a request body: no size, no deadline.
            return Ok(());
        }
        if let Some(chunk) = chunk {
            ctx.body_bytes += chunk.len() as u64;
            if let Some(copy) = ctx.routed.as_mut().and_then(|r| r.mirror.as_mut()) {
                copy.add_body(chunk);
            }
            let limit = ctx
                .route()
                .map_or(server.max_request_body, |r| r.max_request_body);
            if ctx.body_bytes > limit {
                return Err(
                    crate::proxy::failure::GatewayError::new(ErrorCode::PayloadTooLarge)
                        .into_error("request body over max_request_body"),
                );
            }
        }
        let left = (ctx.started + server.body_timeout)
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(
                crate::proxy::failure::GatewayError::new(ErrorCode::RequestTimeout)
                    .into_error("the request body did not arrive within body_timeout"),
            );
        }
        session.downstream_session.set_read_timeout(Some(left));
        Ok(())
    }
}
