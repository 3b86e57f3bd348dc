//! The `ProxyHttp` implementation: each hook in the order Pingora calls it. Every hook reads
//! the route and snapshot kept in the request context, so one request sees one config.

pub mod cache;
pub mod ctx;
pub mod direct;
pub mod failure;
pub mod forwarding;
pub mod target;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri};
use pingora_cache::key::HashBinary;
use pingora_cache::lock::CacheKeyLockImpl;
use pingora_cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result, RetryType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use portico_plugins::{ErrorCode, Flow, PluginCtx};

use crate::access_log::AccessRecord;
use crate::compose::{self, Answer, Composition};
use crate::metrics::method_label;
use crate::problem;
use crate::router::RouteMatch;
use crate::snapshot::strip_segments;
use crate::snapshot::{Route, Snapshot};
use crate::state::GatewayState;
use crate::upstream::breaker::Outcome;
use crate::upstream::{HashKey, UpstreamPool};
pub use ctx::RequestCtx;

/// The request context, boxed: Pingora keeps it inside each connection's request future,
/// which is allocated whole (for the largest state) even while a keep-alive connection waits
/// idle, so inline it would cost every idle connection its size.
pub type Ctx = Box<RequestCtx>;
use forwarding::*;

/// Cloned for the direct path, so both paths share one state and one cache lock.
#[derive(Clone)]
pub struct Portico {
    pub state: Arc<GatewayState>,
    cache_lock: &'static CacheKeyLockImpl,
}

impl Portico {
    pub fn new(state: Arc<GatewayState>) -> Self {
        Portico {
            state,
            cache_lock: cache::new_lock(),
        }
    }

    /// Whether the request in `session` goes to a route that caches (which only Pingora's
    /// proxy can serve). A target that fails its checks, or matches no route, does not.
    pub fn route_caches(&self, session: &Session) -> bool {
        let snapshot = self.state.current();
        let req = session.req_header();
        let routed = match target::check(req) {
            Ok(None) => None,
            Ok(Some(uri)) => Some(uri),
            Err(_) => return false,
        };
        let path = routed.as_ref().unwrap_or(&req.uri).path();
        match match_route(&snapshot, req, path) {
            RouteMatch::Found(route) => route.cache.is_some(),
            _ => false,
        }
    }

    /// End the current attempt: tell the target's breaker and count it. `None`: the attempt
    /// says nothing about the target (the client left, the gateway refused the request).
    fn finish_attempt(&self, ctx: &mut RequestCtx, outcome: Option<Outcome>) {
        let Some(attempt) = ctx.in_flight.take() else {
            return;
        };
        let Some(outcome) = outcome else { return };
        let target = attempt.target();
        self.state
            .metrics
            .upstream_requests
            .with_label_values(&[
                &attempt.pool().name,
                &target.label,
                failure::outcome_label(outcome),
            ])
            .inc();
        attempt.finish(outcome);
    }

    /// Run a composition and answer with the merged JSON (or a 502 naming a failed required
    /// part).
    async fn compose(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        composition: &Composition,
        cx: &mut PluginCtx,
    ) -> Result<bool> {
        let path = session.req_header().uri.path();
        let captures = route.pattern.captures(path).unwrap_or_default();
        let query = session.req_header().uri.query().unwrap_or("").to_string();
        let mut base = session.req_header().clone();
        edit_request_headers(&mut base, 5, |headers| {
            gateway_request_headers(headers, session, ctx)
        })?;
        let inputs = compose::Inputs {
            captures: &captures,
            query: &query,
            cx: &*cx,
        };
        let metrics = &self.state.metrics;
        let record =
            |key: &str, pool: &UpstreamPool, target: usize, outcome: Outcome, part_done: bool| {
                if part_done {
                    metrics
                        .compose_calls
                        .with_label_values(&[&route.name, key, "success"])
                        .inc();
                } else if let Some(t) = pool.targets.get(target) {
                    metrics
                        .upstream_requests
                        .with_label_values(&[&pool.name, &t.label, failure::outcome_label(outcome)])
                        .inc();
                }
            };
        let answer = composition
            .run(
                &inputs,
                &self.state.sub_connector,
                &route.plugins,
                &base,
                &record,
            )
            .await;
        match answer {
            Answer::Complete(body, failed) => {
                for key in &failed {
                    metrics
                        .compose_calls
                        .with_label_values(&[&route.name, key, "failed"])
                        .inc();
                }
                let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
                let mut resp = ResponseHeader::build(200, Some(4))?;
                resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
                resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
                resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
                if !failed.is_empty() {
                    let list = failed.join(", ");
                    resp.insert_header("portico-incomplete", list.as_str())?;
                    ctx.failed_parts = Some(list);
                }
                // The route's plugins see the composed answer as they see a proxied one.
                for (name, plugin) in route.plugins.iter().rev() {
                    if let Err(e) = plugin.on_response(&mut resp, cx).await {
                        log::error!("plugin {name} failed on response {}: {e}", ctx.id());
                    }
                }
                session.write_response_header(Box::new(resp), false).await?;
                session.write_response_body(Some(body), true).await?;
                Ok(true)
            }
            Answer::RequiredFailed(key, error) => {
                metrics
                    .compose_calls
                    .with_label_values(&[&route.name, &key, "failed"])
                    .inc();
                ctx.failed_parts = Some(key.clone());
                let detail = format!("required part \"{key}\" failed ({})", error.code);
                self.reject(session, ctx, ErrorCode::BadGateway, &detail, &[])
                    .await
            }
        }
    }

    /// Whether another attempt may go out: attempts left and the upstream's retry budget.
    fn may_retry(&self, ctx: &mut RequestCtx) -> bool {
        let Some(pool) = ctx.route.as_ref().and_then(|r| r.upstream.as_ref()) else {
            return false;
        };
        if ctx.retries_left == 0 || ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        if !pool.budget.try_retry(Instant::now()) {
            log::warn!(
                "upstream {}: retry budget spent, not retrying request {}",
                pool.name,
                ctx.id()
            );
            return false;
        }
        ctx.retries_left -= 1;
        ctx.retrying = true;
        true
    }

    /// Answer with a problem now; `request_filter` then returns `Ok(true)`.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        code: ErrorCode,
        detail: &str,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<bool> {
        ctx.decided = Some(code);
        problem::respond(session, code, detail, ctx.id(), extra).await?;
        Ok(true)
    }

    /// The bytes consistent hashing hashes for this request.
    fn hash_input(key: &HashKey, session: &Session, ctx: &RequestCtx) -> Vec<u8> {
        let req = session.req_header();
        match key {
            HashKey::ClientIp => ctx
                .client_ip
                .map(|ip| ip.to_string())
                .unwrap_or_default()
                .into_bytes(),
            HashKey::Path => req.uri.path().as_bytes().to_vec(),
            HashKey::Header(name) => req
                .headers
                .get(name)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default(),
            HashKey::Cookie(name) => cookie(req, name).unwrap_or_default().into_bytes(),
            HashKey::Claim(name) => ctx
                .plugin_cx
                .as_ref()
                .and_then(|cx| cx.claim(name))
                .unwrap_or_default()
                .as_bytes()
                .to_vec(),
        }
    }
}

fn cookie(req: &RequestHeader, name: &str) -> Option<String> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Milliseconds with microsecond precision, for the access log.
fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Time left before `deadline` (all the time in the world without one).
fn remaining(deadline: Option<Instant>) -> Duration {
    deadline.map_or(Duration::MAX, |d| {
        d.saturating_duration_since(Instant::now())
    })
}

/// An error Pingora must not retry.
fn not_retried(etype: ErrorType, why: impl Into<String>) -> Box<Error> {
    let mut e = Error::explain(etype, why.into());
    e.set_retry(false);
    e
}

/// The headers every request going upstream gets from the gateway: X-Forwarded-*, the
/// request id and the trace context.
fn gateway_request_headers(
    headers: &mut http::HeaderMap,
    session: &Session,
    ctx: &RequestCtx,
) -> Result<()> {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let host = session.req_header().headers.get(http::header::HOST);
    set_forwarded(headers, peer, host, ctx.peer_trusted)?;
    headers.insert(X_REQUEST_ID, ctx.request_id.clone());
    headers.insert(TRACEPARENT, ctx.traceparent.clone());
    Ok(())
}

/// The route `req` takes, matched on `path` (its target after `target::check`).
fn match_route<'s>(
    snapshot: &'s Snapshot,
    req: &RequestHeader,
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

fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

#[async_trait]
impl ProxyHttp for Portico {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Box::new(RequestCtx::new(&self.state.active_requests))
    }

    /// No downstream modules. Pingora's default registers a response-compression module,
    /// switched off, that Portico never turns on: it still cost every request a boxed context,
    /// allocations and four filter calls.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    /// Identify the request (id, client, trace), check its path and size, route it, and run
    /// the route's plugins. `Ok(true)` means an answer was already sent.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snapshot = self.state.current();
        // Interim answers the client did not ask for (anything but a 100 to its own
        // `Expect: 100-continue`) are not passed on.
        session.downstream_session.set_ignore_info_resp(true);
        let req = session.req_header();

        ctx.request_id = match req.headers.get(X_REQUEST_ID) {
            Some(v) if sane_request_id(v.as_bytes()) => v.clone(),
            _ => new_request_id(),
        };
        ctx.traceparent = match req.headers.get(TRACEPARENT) {
            Some(v) if trace_id_of(v.as_bytes()).is_some() => v.clone(),
            _ => new_traceparent(),
        };
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let trusted = &snapshot.server.trusted_proxies;
        ctx.peer_trusted = is_trusted(peer, trusted);
        let client_ip = client_ip(peer, &req.headers, trusted);
        ctx.client_ip = Some(client_ip);

        // From here on the request header's URI is the one target that is routed, shown to
        // plugins, cached under, logged and forwarded (see `target`).
        match target::check(req) {
            Ok(None) => {}
            Ok(Some(uri)) => session.req_header_mut().set_uri(uri),
            Err(rejection) => {
                ctx.snapshot = Some(snapshot);
                return self
                    .reject(session, ctx, ErrorCode::BadRequest, rejection.detail(), &[])
                    .await;
            }
        }
        let req = session.req_header();

        let declared_length = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared_length.is_some_and(|n| n > snapshot.server.max_request_body) {
            let detail = format!(
                "the request body is larger than {} bytes",
                snapshot.server.max_request_body
            );
            ctx.snapshot = Some(snapshot);
            return self
                .reject(session, ctx, ErrorCode::PayloadTooLarge, &detail, &[])
                .await;
        }

        let route = match match_route(&snapshot, req, req.uri.path()) {
            RouteMatch::Found(route) => Arc::clone(route),
            RouteMatch::NotFound => {
                ctx.snapshot = Some(snapshot);
                return self
                    .reject(
                        session,
                        ctx,
                        ErrorCode::NoRoute,
                        "no route matches this request",
                        &[],
                    )
                    .await;
            }
            RouteMatch::MethodNotAllowed(allowed) => {
                let allow = allowed
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let extra: Vec<_> = header_value(&allow)
                    .map(|v| (http::header::ALLOW, v))
                    .into_iter()
                    .collect();
                ctx.snapshot = Some(snapshot);
                let detail = format!("this route accepts {allow}");
                return self
                    .reject(session, ctx, ErrorCode::MethodNotAllowed, &detail, &extra)
                    .await;
            }
        };
        ctx.snapshot = Some(snapshot);
        ctx.retries_left = route
            .upstream
            .as_ref()
            .and_then(|u| u.retry)
            .map_or(0, |r| r.attempts);
        ctx.deadline = route.timeout.map(|t| ctx.started + t);

        let mut cx = PluginCtx::new(Arc::clone(&route.name), client_ip, ctx.id().to_owned());
        ctx.route = Some(Arc::clone(&route));
        for (name, plugin) in &route.plugins {
            match plugin.on_request(session, &mut cx).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Reject(rejection)) => {
                    ctx.plugin_cx = Some(cx);
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
                Err(e) => {
                    log::error!("plugin {name} failed on request {}: {e}", ctx.id());
                    ctx.plugin_cx = Some(cx);
                    return self
                        .reject(
                            session,
                            ctx,
                            ErrorCode::Internal,
                            "the gateway failed to process the request",
                            &[],
                        )
                        .await;
                }
            }
        }
        if let Some(composition) = route.compose.clone() {
            let answered = self
                .compose(session, ctx, &route, &composition, &mut cx)
                .await;
            ctx.plugin_cx = Some(cx);
            return answered;
        }
        ctx.plugin_cx = Some(cx);
        Ok(false)
    }

    /// Enforce `max_request_body` on bodies without a declared length as they stream.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            let limit = ctx
                .snapshot
                .as_ref()
                .map_or(u64::MAX, |s| s.server.max_request_body);
            if ctx.body_bytes > limit {
                ctx.decided = Some(ErrorCode::PayloadTooLarge);
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over max_request_body",
                );
            }
        }
        Ok(())
    }

    /// Turn the cache on when the route caches and the method is GET or HEAD. Runs after
    /// `request_filter`, so authentication and rate limits apply to cache hits too.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        cache::enable(session, ctx, self.state.cache, self.cache_lock);
        Ok(())
    }

    /// Method, scheme, host, path, query and the route's `key_headers`.
    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        cache::key(session, ctx)
    }

    /// A stored answer a request with credentials may not reuse is treated as a miss. A
    /// fresh hit answers without the request body, so the body is read and dropped first:
    /// left unread it would be parsed as the next request on the connection.
    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        if !cache::hit_usable(session, meta) {
            ctx.cache = Some(crate::cache::CacheResult::Bypass);
            return Ok(Some(ForcedFreshness::ForceMiss));
        }
        if is_fresh && !session.is_body_empty() {
            cache::drain_body(session).await;
        }
        Ok(None)
    }

    /// Whether the upstream's answer may be stored, and for how long (RFC 9111).
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        let Some(policy) = cache::policy(ctx) else {
            return Ok(RespCacheable::Uncacheable(
                pingora_cache::NoCacheReason::NeverEnabled,
            ));
        };
        let authorization = session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION);
        Ok(policy.response_cacheable(resp, authorization))
    }

    /// The variant a request asks for: its values of the headers the response's `Vary` names.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        crate::cache::policy::variance(meta, req)
    }

    /// Serve stale while revalidating, and on any failure to get a fresh answer (an upstream
    /// error, a 5xx, an open circuit, the route's timeout), within the windows the stored
    /// answer allows: pingora checks those before asking.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        _error: Option<&Error>,
    ) -> bool {
        cache::policy(ctx).is_some()
    }

    /// Choose the target: healthy, its circuit closed (or this request its half-open probe),
    /// and on a retry not one already tried. Runs again on each retry, after `backoff`.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let Some(pool) = &route.upstream else {
            return Error::e_explain(
                ErrorType::InternalError,
                "upstream_peer on a composition route",
            );
        };
        if ctx.retrying {
            ctx.retrying = false;
            let backoff = pool.retry.map_or(Duration::ZERO, |r| r.backoff);
            tokio::time::sleep(backoff.min(remaining(ctx.deadline))).await;
        } else if ctx.tried.is_empty() {
            pool.budget.record_request(Instant::now());
        }
        if ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            ctx.decided = Some(ErrorCode::UpstreamTimeout);
            return Err(not_retried(
                ErrorType::HTTPStatus(504),
                "the route's timeout passed",
            ));
        }
        let hash_input = match &pool.hash_key {
            Some(key) => Self::hash_input(key, session, ctx),
            None => Vec::new(),
        };
        let chosen = match pool.select(&hash_input, &ctx.tried) {
            Ok(chosen) => chosen,
            Err(unavailable) => {
                ctx.decided = Some(ErrorCode::UpstreamUnavailable);
                ctx.retry_after = Some(unavailable.retry_after);
                let why = format!("upstream {} has no target that may take traffic", pool.name);
                return Err(not_retried(ErrorType::HTTPStatus(503), why));
            }
        };
        ctx.tried.push(chosen.index);
        let in_flight = pool.start_request(chosen);
        let mut peer = Box::new(in_flight.target().peer.clone());
        if let Some(deadline) = ctx.deadline {
            // No single connect or read may outlast the route's deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            let options = &mut peer.options;
            for timeout in [
                &mut options.connection_timeout,
                &mut options.total_connection_timeout,
                &mut options.read_timeout,
                &mut options.write_timeout,
            ] {
                *timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
        }
        ctx.last_target = Some((
            Arc::clone(&pool.name),
            Arc::clone(&in_flight.target().label),
        ));
        ctx.in_flight = Some(in_flight);
        ctx.upstream_started = Some(Instant::now());
        Ok(peer)
    }

    /// Shape the request the upstream sees: path rewrite, forwarding headers, identity and
    /// trace headers, then the route's plugins.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        // The target goes upstream as it was routed, never as the client's raw bytes.
        let routed = &session.req_header().uri;
        if route.strip_segments > 0 {
            let path = strip_segments(routed.path(), route.strip_segments);
            let uri = match routed.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            let uri: Uri = uri.parse().map_err(|e| {
                Error::because(ErrorType::InternalError, "rewriting the upstream path", e)
            })?;
            upstream.set_uri(uri);
        } else {
            upstream.set_uri(routed.clone());
        }

        // Room for the five headers the gateway sets, and a few for the route's plugins.
        edit_request_headers(upstream, 8, |headers| {
            drop_connection_headers(headers);
            gateway_request_headers(headers, session, ctx)
        })?;

        if let Some(cx) = ctx.plugin_cx.as_mut() {
            for (name, plugin) in &route.plugins {
                if let Err(e) = plugin.on_upstream_request(upstream, cx).await {
                    log::error!("plugin {name} failed shaping request {}: {e}", ctx.id());
                    ctx.decided = Some(ErrorCode::Internal);
                    return Error::e_explain(ErrorType::InternalError, "plugin failed");
                }
            }
        }
        Ok(())
    }

    /// The route's total deadline also covers a body that trickles in: each read may be
    /// quick, but the whole answer may not outlast the deadline.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            let mut e = Error::explain(
                ErrorType::ReadTimedout,
                "the route's timeout passed during the body",
            );
            e.esource = ErrorSource::Upstream;
            e.set_retry(false);
            return Err(e);
        }
        Ok(None)
    }

    /// An upstream that switches protocols on a request that did not ask it to has broken
    /// the exchange: the client gets a 502, not a connection in a protocol it never chose.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS
            && !asks_upgrade(session.req_header())
        {
            let mut e = Error::explain(
                ErrorType::InvalidHTTPHeader,
                "101 Switching Protocols to a request without an upgrade",
            );
            e.esource = ErrorSource::Upstream;
            e.set_retry(false);
            return Err(e);
        }
        Ok(())
    }

    /// Tell the client its request id, then the route's plugins in reverse order.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let request_id = ctx.request_id.clone();
        let cache_result = cache::result(session, ctx);
        ctx.cache = cache_result.or(ctx.cache);
        // Room for X-Request-Id, X-Cache and the plugins' headers (RateLimit-* are three).
        edit_response_headers(resp, 6, |headers| {
            headers.insert(X_REQUEST_ID, request_id);
            if let Some(result) = cache_result {
                headers.insert(cache::X_CACHE, HeaderValue::from_static(result.as_str()));
            }
        });
        if let (Some(route), Some(cx)) = (ctx.route.clone(), ctx.plugin_cx.as_mut()) {
            for (name, plugin) in route.plugins.iter().rev() {
                if let Err(e) = plugin.on_response(resp, cx).await {
                    log::error!("plugin {name} failed on response {}: {e}", cx.request_id);
                }
            }
        }
        Ok(())
    }

    /// The attempt failed before the request was sent: record it, and retry on another
    /// target, whatever the method, while attempts and the retry budget allow.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let outcome = failure::attempt_outcome(&e).unwrap_or(Outcome::Connect);
        self.finish_attempt(ctx, Some(outcome));
        let retry = self.may_retry(ctx);
        e.set_retry(retry);
        e
    }

    /// The attempt failed after the connection was made. A reused pooled connection that the
    /// upstream had closed failed before the request went out: that is retried at once and
    /// is not the target's fault. Otherwise the request may have reached the upstream, so only
    /// an idempotent request whose body can be replayed is retried.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer {}", peer._address));
        if session.response_written().is_some() {
            // The client already has part of an answer: nothing can be sent again.
            self.finish_attempt(ctx, failure::attempt_outcome(&e));
            e.set_retry(false);
            return e;
        }
        if matches!(e.retry, RetryType::ReusedOnly) && client_reused {
            // A stale pooled connection: drop the attempt without blaming the target.
            ctx.in_flight = None;
            ctx.tried.pop();
            e.set_retry(true);
            return e;
        }
        self.finish_attempt(ctx, failure::attempt_outcome(&e));
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let retry = replayable && e.esource() == &ErrorSource::Upstream && self.may_retry(ctx);
        e.set_retry(retry);
        e
    }

    /// The one place a failed request becomes a problem+json answer.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = failure::classify(e, ctx.decided);
        let Some(code) = code else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.decided = Some(code);
        if session.response_written().is_none() {
            let detail = match code {
                ErrorCode::BadGateway => "the upstream failed to answer",
                ErrorCode::UpstreamTimeout => "the upstream did not answer in time",
                ErrorCode::UpstreamUnavailable => "no healthy upstream target is available",
                ErrorCode::PayloadTooLarge => "the request body is larger than the gateway accepts",
                ErrorCode::BadRequest => "the request is malformed",
                _ => "the gateway failed to process the request",
            };
            let extra: Vec<(HeaderName, HeaderValue)> = if code == ErrorCode::UpstreamUnavailable {
                let secs = ctx
                    .retry_after
                    .map_or(1, |d| d.as_secs_f64().ceil() as u64)
                    .max(1);
                vec![(http::header::RETRY_AFTER, HeaderValue::from(secs))]
            } else {
                Vec::new()
            };
            if let Err(write_error) =
                problem::respond(session, code, detail, ctx.id(), &extra).await
            {
                log::debug!("could not send the error answer: {write_error}");
            }
        }
        FailToProxy {
            error_code: code.status(),
            can_reuse_downstream: false,
        }
    }

    /// Outcomes are recorded here, once per request, however it ended.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.decided.map(ErrorCode::status))
            .unwrap_or(0);
        let route_name = ctx.route.as_ref().map(|r| Arc::clone(&r.name));
        let route_label = route_name.as_deref().unwrap_or("");
        let method = session.req_header().method.clone();
        let metrics = &self.state.metrics;
        let status_code = http::StatusCode::from_u16(status).ok();
        let status_label = status_code.as_ref().map_or("0", |s| s.as_str());
        metrics
            .http_requests
            .with_label_values(&[route_label, method_label(&method), status_label])
            .inc();
        metrics
            .http_request_duration
            .with_label_values(&[route_label])
            .observe(ctx.started.elapsed().as_secs_f64());

        let cache_result = cache::result(session, ctx);
        if let Some(result) = cache_result {
            metrics
                .cache_lookups
                .with_label_values(&[route_label, result.label()])
                .inc();
        }

        // The last attempt, if it is still open, ends with the request.
        if ctx.in_flight.is_some() {
            let outcome = match e {
                Some(e) => failure::attempt_outcome(e),
                None if status >= 500 => Some(Outcome::Status5xx),
                None => Some(Outcome::Success),
            };
            self.finish_attempt(ctx, outcome);
        }
        let (upstream, target) = ctx.last_target.take().unzip();
        let upstream_ms = ctx.upstream_started.map(|t| millis(t.elapsed()));

        if self.state.access_log.enabled() {
            let record = AccessRecord {
                ts: SystemTime::now(),
                request_id: std::mem::replace(&mut ctx.request_id, HeaderValue::from_static("")),
                client_ip: ctx.client_ip,
                method,
                path: session.req_header().uri.path().to_string(),
                status,
                route: route_name,
                upstream,
                target,
                duration_ms: millis(ctx.started.elapsed()),
                upstream_ms,
                bytes_sent: session.body_bytes_sent(),
                cache: cache_result.map(crate::cache::CacheResult::as_str),
                consumer: ctx
                    .plugin_cx
                    .as_ref()
                    .and_then(|cx| cx.identity.as_ref())
                    .map(|id| id.consumer.clone()),
                traceparent: std::mem::replace(&mut ctx.traceparent, HeaderValue::from_static("")),
                failed_parts: ctx.failed_parts.take(),
            };
            if !self.state.access_log.log(record) {
                metrics.access_log_dropped.inc();
            }
        }
    }
}
