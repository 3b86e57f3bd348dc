//! The request pipeline. [`phases`] lists the phases and which driver runs which request;
//! the phases themselves live in `request` (identify, route, plugins), `upstream` (choose
//! the target, shape the upstream request), `response` and `record`. This file is the
//! Pingora driver: the `ProxyHttp` implementation, each hook in the order Pingora calls it,
//! handing over to a phase. The fast driver (`direct`) calls the same phases.

pub mod cache;
mod composed;
pub mod compress;
pub mod ctx;
pub mod direct;
pub mod failure;
pub mod forwarding;
mod graphql;
pub mod grpc;
pub mod mirror;
pub mod phases;
mod record;
mod request;
pub mod request_headers;
mod response;
pub mod rewrite;
pub mod split;
pub mod target;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_cache::key::HashBinary;
use pingora_cache::lock::CacheKeyLockImpl;
use pingora_cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora_core::protocols::Digest;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use portico_plugins::ErrorCode;

use crate::config::UpstreamProtocol;
use crate::problem;
use crate::router::RouteMatch;
use crate::state::GatewayState;
use crate::upstream::deadline::DeadlineConnect;
use crate::upstream::exchange::Stage;
use crate::upstream::tunnel::TunnelConnect;
pub use ctx::RequestCtx;
use failure::GatewayError;

/// The request context, boxed: Pingora keeps it inside each connection's request future,
/// which is allocated whole (for the largest state) even while a keep-alive connection waits
/// idle, so inline it would cost every idle connection its size.
pub type Ctx = Box<RequestCtx>;

/// Cloned for the fast driver, so both drivers share one state and one cache lock.
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

    /// Whether the request in `session` goes to a route only Pingora's proxy can serve
    /// (`Route::needs_proxy`). A target that fails its checks, or matches no route, does not.
    pub fn route_needs_proxy(&self, session: &Session) -> bool {
        let snapshot = self.state.current();
        let req = session.req_header();
        let routed = match target::check(req) {
            Ok(None) => None,
            Ok(Some(uri)) => Some(uri),
            Err(_) => return false,
        };
        let path = routed.as_ref().unwrap_or(&req.uri).path();
        match request::match_route(&snapshot, req, path) {
            RouteMatch::Found(route) => route.needs_proxy(),
            _ => false,
        }
    }

    /// The one place a failed request becomes a problem+json answer, on both drivers.
    /// `None` when the client is gone and nothing can be sent.
    pub(crate) async fn answer_failure(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &RequestCtx,
    ) -> Option<ErrorCode> {
        let mut code = failure::classify(e)?;
        // An upstream failure once the route's deadline has passed is the deadline's doing
        // (a connection `upstream::deadline` cut, say): the client is told it timed out.
        let late = ctx
            .routed
            .as_ref()
            .and_then(|r| r.exchange.as_ref())
            .is_some_and(|x| x.deadline_passed());
        if late && code == ErrorCode::BadGateway {
            code = ErrorCode::UpstreamTimeout;
        }
        if session.response_written().is_none() {
            let mut extra: Vec<(HeaderName, HeaderValue)> =
                if code == ErrorCode::UpstreamUnavailable {
                    let secs = failure::decision(e)
                        .and_then(|d| d.retry_after)
                        .map_or(1, |d| d.as_secs_f64().ceil() as u64)
                        .max(1);
                    vec![(http::header::RETRY_AFTER, HeaderValue::from(secs))]
                } else {
                    Vec::new()
                };
            let plugin_headers = request::answer_headers(session, ctx);
            let fallback = ctx.route().and_then(|r| {
                r.fallback
                    .as_ref()
                    .map(|f| (Arc::clone(&r.name), Arc::clone(f)))
            });
            let stands_in = matches!(
                code,
                ErrorCode::BadGateway | ErrorCode::UpstreamUnavailable | ErrorCode::UpstreamTimeout
            );
            if let (Some((route, fallback)), true, false) = (fallback, stands_in, ctx.grpc) {
                match request::respond_fallback(session, ctx, &fallback, plugin_headers).await {
                    Ok(()) => self
                        .state
                        .metrics
                        .fallback_responses
                        .with_label_values(&[&route, code.as_str()])
                        .inc(),
                    Err(write_error) => log::debug!("could not send the fallback: {write_error}"),
                }
                return Some(code);
            }
            extra.extend(plugin_headers);
            let detail = failure::detail(code);
            if let Err(write_error) =
                problem::respond(session, code, detail, ctx.id(), &extra).await
            {
                log::debug!("could not send the error answer: {write_error}");
            }
        }
        Some(code)
    }
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

    /// Identify, route, plugins. `Ok(true)` means an answer was already sent.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.request_phases(session, ctx).await
    }

    /// The request body's size and deadline, as it streams.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.request_body_phase(session, body.as_ref(), ctx)
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

    /// Choose the target through the exchange, and take a slot under its `max_connections`
    /// for the connection Pingora is about to make (Pingora's proxy keeps no idle upstream
    /// connections: the one pool is the exchange's). Runs again on each retry.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut peer = self.choose_target(session, ctx).await?;
        let tunnel = ctx.tunnel;
        if let Some(exchange) = ctx.exchange() {
            exchange.admit_connection().await.map_err(|refused| {
                GatewayError::from(refused).into_error("the target is at max_connections")
            })?;
            // Pingora times each read, not the answer: the connection itself stops at the
            // route's deadline (`upstream::deadline`). An HTTP/2 connection carries other
            // requests' streams too; there the deadline bounds each read and write.
            let multiplexed = exchange.pool().spec.protocol != UpstreamProtocol::H1;
            if let Some(idle) = tunnel {
                // A WebSocket upgrade: cut only when idle both ways (`upstream::tunnel`).
                let options = &mut peer.options;
                let head = options.read_timeout.unwrap_or(idle);
                options.read_timeout = None;
                options.write_timeout = None;
                options.custom_l4 = Some(Arc::new(TunnelConnect {
                    idle,
                    head,
                    connect_timeout: exchange.pool().spec.connect_timeout.0,
                }));
            } else if let Some(deadline) = exchange.deadline().filter(|_| !multiplexed) {
                let connect_timeout = exchange.pool().spec.connect_timeout.0;
                peer.options.custom_l4 = Some(Arc::new(DeadlineConnect {
                    deadline: tokio::time::Instant::from_std(deadline),
                    connect_timeout,
                }));
            }
        }
        Ok(peer)
    }

    /// The connection the exchange admitted is open (or, to an HTTP/2 target, a stream on a
    /// connection already open).
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(exchange) = ctx.exchange().filter(|_| !reused) {
            exchange.connection_opened();
        }
        Ok(())
    }

    /// Shape the upstream request; and say it is the connection's last, since Pingora's
    /// proxy keeps no idle upstream connections (the exchange's pool is the only one).
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.shape_upstream_request(session, upstream, ctx).await?;
        let multiplexed = ctx
            .exchange()
            .is_some_and(|x| x.pool().spec.protocol != UpstreamProtocol::H1);
        if multiplexed || ctx.tunnel.is_some() {
            // HTTP/2 has no Connection header, its connections are Pingora's to share; and a
            // WebSocket upgrade keeps the `Connection: Upgrade` Pingora gave it.
            return Ok(());
        }
        upstream.insert_header(http::header::CONNECTION, "close")
    }

    /// See `check_upstream_head`.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.check_upstream_head(session, resp, ctx)
    }

    /// The route's deadline over the whole body.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        self.body_phase(body, ctx)?;
        Ok(None)
    }

    /// On the way to the client (a cache hit's body too): compressed if the head said so.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        self.compress_phase(body, end_of_stream, ctx)?;
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.grpc {
            // A trailers-only answer carries its status here.
            ctx.grpc_status = grpc::status_in(&resp.headers);
        }
        self.response_phase(session, resp, ctx).await
    }

    /// A gRPC answer's status is in its trailers.
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<Bytes>> {
        if ctx.grpc {
            if let Some(status) = grpc::status_in(trailers) {
                ctx.grpc_status = Some(status);
            }
        }
        Ok(None)
    }

    /// Nothing reached the upstream: the exchange records it and decides a retry.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = ctx.exchange().is_some_and(|exchange| {
            exchange.connection_failed();
            exchange.retry_after(&e, Stage::Connect, true)
        });
        e.set_retry(retry);
        e
    }

    /// The request may have reached the upstream: the exchange records it and decides a
    /// retry, which only a request that can be sent again whole may get.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer {}", peer._address));
        let replayable = session.response_written().is_none()
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let retry = ctx
            .exchange()
            .is_some_and(|exchange| exchange.retry_after(&e, Stage::Sent, replayable));
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = self.answer_failure(session, e, ctx).await;
        FailToProxy {
            error_code: code.map_or(0, ErrorCode::status),
            can_reuse_downstream: false,
        }
    }

    /// Outcomes are recorded here, once per request, however it ended.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        self.record_phase(session, e, ctx);
    }
}
