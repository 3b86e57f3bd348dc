//! The fast driver: the common requests of an API (HTTP/1.1, with or without a body), on a
//! route that does not cache, forwarded by Portico itself over Pingora's HTTP/1 sessions and
//! the upstream exchange's pool.
//!
//! Pingora's proxy runs every request through machinery built for the general case: two
//! futures joined over a pair of task channels (so a body can stream both ways at once), the
//! cache state machine, subrequests, upgrades, custom protocols. For the commonest request at
//! a gateway, a GET with no body, none of it is needed, and it cost about a third of a bare
//! Pingora proxy's CPU per request (loadtest/RESULTS.md). Here the same request goes straight
//! through: send the head, read the answer's head, write it down, copy the body.
//!
//! It runs the same phases as Pingora's proxy (`proxy::phases`), and its attempts go through
//! the same exchange (`upstream::exchange`), so routing, plugins, retries, breakers, errors,
//! logs and metrics are one code whichever driver serves a request. `connection::head`
//! decides which requests come here; everything else goes through Pingora's proxy, and so
//! does a request to a route that caches, handed over unread once its route is known.

use std::time::Duration;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, StatusCode, Version};
use pingora_core::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora_core::protocols::http::v1::client::HttpSession as UpstreamH1;
use pingora_core::protocols::http::{HttpTask, ServerSession};
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};

use super::failure::GatewayError;
use super::{Ctx, Portico};
use crate::upstream::exchange::{ConnectFailure, Stage};

/// What became of a request given to the direct path.
pub enum Handled {
    /// Served; the client connection comes back when it may carry another request.
    Served(Option<ReusedHttpStream>),
    /// Its route is Pingora's proxy's alone (`Route::needs_proxy`): the same request, unread
    /// again, for Pingora's proxy to serve.
    ToProxy(Box<ServerSession>),
}

/// How an attempt ended: whether the client connection may carry another request, whether
/// the upstream connection may go back to the pool, and the error if it failed.
struct Attempt {
    client_reusable: bool,
    upstream_reusable: bool,
    error: Option<Box<Error>>,
}

impl Attempt {
    fn failed(upstream_reusable: bool, error: Box<Error>) -> Self {
        Attempt {
            client_reusable: false,
            upstream_reusable,
            error: Some(error),
        }
    }
}

/// A request served and recorded, and whether its client connection may carry another.
struct Served {
    session: Session,
    reusable: bool,
}

/// The HTTP/1 client connection back, its answer flushed, if it may carry another request.
async fn reuse(served: Served) -> Option<ReusedHttpStream> {
    if !served.reusable {
        return None;
    }
    let settings = HttpPersistentSettings::for_session(&served.session.downstream_session);
    let downstream = served.session.downstream_session;
    let reusable = downstream.finish().await.ok().flatten()?;
    Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
}

#[derive(Clone)]
pub struct Direct {
    portico: Portico,
    /// Pingora's `max_retries`: attempts per request at most, whatever the route allows.
    max_attempts: usize,
}

impl Direct {
    pub fn new(portico: Portico, conf: &ServerConf) -> Self {
        Direct {
            portico,
            max_attempts: conf.max_retries.max(1),
        }
    }

    /// Whether the config now serving lets plain requests come here (`server.fast_path`).
    pub fn enabled(&self) -> bool {
        self.portico.state.fast_path()
    }

    /// Serve one request on `session` (its head not yet parsed), or hand it to Pingora's
    /// proxy when its route is that proxy's alone.
    pub async fn serve(&self, mut session: Session, shutting_down: bool) -> Handled {
        match session.downstream_session.read_request().await {
            Ok(true) => {}
            Ok(false) => return Handled::Served(None),
            Err(mut e) => {
                // As Pingora's proxy: a malformed head gets a 400, a broken connection nothing.
                e.as_down();
                if matches!(e.etype, ErrorType::InvalidHTTPHeader) {
                    if let Err(write) = session.downstream_session.respond_error(400).await {
                        log::debug!("could not answer a malformed request: {write}");
                    }
                }
                session.downstream_session.shutdown().await;
                return Handled::Served(None);
            }
        }
        if shutting_down {
            session.set_keepalive(None);
        }
        // Caching routes and HTTP/2 upstreams are Pingora's proxy's. The flag spares configs
        // without such a route the second route lookup.
        if self.portico.state.proxy_routes() && self.portico.route_needs_proxy(&session) {
            return match unread(session) {
                Some(again) => Handled::ToProxy(Box::new(again)),
                None => Handled::Served(None),
            };
        }
        let served = self.proxy(session).await;
        Handled::Served(reuse(served).await)
    }

    /// Serve one HTTP/2 stream (its head already read by the HTTP/2 loop), or give it back
    /// for Pingora's proxy when its route is that proxy's alone, or when it expects a 100
    /// Continue (which this driver does not send).
    pub async fn serve_stream(&self, stream: ServerSession) -> Option<ServerSession> {
        let mut session = crate::connection::h2::session_for(stream);
        // `:authority` as `Host`, for the route lookup (the request phases check it again).
        let _ = super::target::apply(session.req_header_mut());
        let expects = session
            .req_header()
            .headers
            .contains_key(http::header::EXPECT);
        if expects
            || (self.portico.state.proxy_routes() && self.portico.route_needs_proxy(&session))
        {
            return Some(*session.downstream_session);
        }
        let mut served = self.proxy(session).await;
        if served.reusable {
            if let ServerSession::H2(stream) = served.session.downstream_session.as_mut() {
                // The end of the stream, if the answer's last write did not carry it. The
                // stream is not reused: HTTP/2 opens a new one for the next request.
                if let Err(e) = stream.finish() {
                    log::debug!("could not end an HTTP/2 stream: {e}");
                }
            }
        }
        None
    }

    /// Everything after the request head: the request phases, the attempts, the answer,
    /// the record of it. What is left, ending the client's side, differs by protocol (and
    /// for HTTP/2 needs no await: kept out of here, HTTP/1's reuse future does not size
    /// every HTTP/2 stream's task).
    async fn proxy(&self, mut session: Session) -> Served {
        let mut ctx = self.portico.new_ctx();
        match self.portico.request_phases(&mut session, &mut ctx).await {
            Ok(true) => return self.finish(session, &mut ctx, true, None),
            Ok(false) => {}
            Err(e) => {
                let code = self.portico.answer_failure(&mut session, &e, &ctx).await;
                log::error!(
                    "Fail to filter request: {e}, status: {}, {}",
                    code.map_or(0, |c| c.status()),
                    self.portico.request_summary(&session, &ctx)
                );
                return self.finish(session, &mut ctx, false, Some(e));
            }
        }

        let mut client_reusable = false;
        let mut error = None;
        for tries in 1..=self.max_attempts {
            let attempt = self.attempt(&mut session, &mut ctx).await;
            client_reusable = attempt.client_reusable;
            error = attempt.error;
            match &error {
                Some(e) if e.retry() => log::warn!(
                    "Fail to proxy: {e}, tries: {tries}, retry: true, {}",
                    self.portico.request_summary(&session, &ctx)
                ),
                _ => break,
            }
        }
        if let Some(e) = error.as_deref() {
            let code = self.portico.answer_failure(&mut session, e, &ctx).await;
            log::error!(
                "Fail to proxy: {e}, status: {}, {}",
                code.map_or(0, |c| c.status()),
                self.portico.request_summary(&session, &ctx)
            );
        }
        self.finish(session, &mut ctx, client_reusable, error)
    }

    /// Record the request.
    fn finish(
        &self,
        mut session: Session,
        ctx: &mut Ctx,
        reusable: bool,
        error: Option<Box<Error>>,
    ) -> Served {
        self.portico
            .record_phase(&mut session, error.as_deref(), ctx);
        if let Some(e) = error {
            session.downstream_session.on_proxy_failure(e);
        }
        Served { session, reusable }
    }

    /// One attempt: the exchange chooses a target and gives a connection to it, then the
    /// request is forwarded. A failure goes back to the exchange, which decides a retry.
    async fn attempt(&self, session: &mut Session, ctx: &mut Ctx) -> Attempt {
        let peer = match self.portico.choose_target(session, ctx).await {
            Ok(peer) => peer,
            Err(e) => return Attempt::failed(false, e),
        };
        let Some(exchange) = ctx.exchange() else {
            let e = Error::explain(ErrorType::InternalError, "no upstream for this request");
            return Attempt::failed(false, e);
        };
        let stream = match exchange
            .connection(&self.portico.state.transport, &peer)
            .await
        {
            Ok((stream, _reused)) => stream,
            Err(ConnectFailure::Refused(refused)) => {
                let why = "the target is at max_connections";
                return Attempt::failed(false, GatewayError::from(refused).into_error(why));
            }
            Err(ConnectFailure::Failed(mut e)) => {
                e.as_up();
                let retry = exchange.retry_after(&e, Stage::Connect, true);
                e.set_retry(retry);
                return Attempt::failed(false, e);
            }
        };
        let mut upstream = UpstreamH1::new_with_options(stream, &*peer);
        let mut attempt = self.forward(session, &mut upstream, &peer, ctx).await;
        if attempt.upstream_reusable {
            upstream.respect_keepalive();
            if let Some(stream) = upstream.reuse().await {
                if let Some(exchange) = ctx.exchange() {
                    exchange.give_back(stream);
                }
            }
        }
        if let Some(e) = attempt.error.take() {
            let mut e = e.more_context(format!("peer {}", peer._address));
            // An idempotent request can be sent again while nothing of an answer reached the
            // client, and its body (if any) is still at hand whole.
            let replayable = session.response_written().is_none()
                && session.req_header().method.is_idempotent()
                && !session.retry_buffer_truncated();
            let retry = ctx
                .exchange()
                .is_some_and(|exchange| exchange.retry_after(&e, Stage::Sent, replayable));
            e.set_retry(retry);
            attempt.error = Some(e);
        }
        attempt
    }

    /// Send the request's head upstream, then copy the answer down: its head through the
    /// response phase, its body chunk by chunk as it arrives.
    async fn forward(
        &self,
        session: &mut Session,
        upstream: &mut UpstreamH1,
        peer: &HttpPeer,
        ctx: &mut Ctx,
    ) -> Attempt {
        upstream.read_timeout = peer.options.read_timeout;
        upstream.write_timeout = peer.options.write_timeout;

        let mut req = session.req_header().clone();
        if let Err(e) = self
            .portico
            .shape_upstream_request(session, &mut req, ctx)
            .await
        {
            return Attempt::failed(true, e);
        }
        // Shaping dropped what the client's `Connection` named; the upstream connection's
        // own persistence is this driver's to manage. The upstream speaks HTTP/1.1 whatever
        // the client spoke (an HTTP/2 stream comes here too).
        req.remove_header(&CONNECTION);
        req.set_version(Version::HTTP_11);
        if let Err(e) = upstream.write_request_header(Box::new(req)).await {
            return Attempt::failed(false, e.into_up());
        }
        if let Err(e) = self.send_body(session, upstream, ctx).await {
            return Attempt::failed(false, e);
        }

        // Each read has its timeout; the route's deadline bounds the whole head, so an
        // upstream that trickles it a byte at a time is cut off too.
        let time_left = ctx.exchange().map_or(Duration::MAX, |x| x.time_left());
        let head = match tokio::time::timeout(time_left, read_final_head(upstream)).await {
            Ok(head) => head,
            Err(_) => Error::e_explain(
                ErrorType::ReadTimedout,
                "the route's timeout passed before the answer's head",
            ),
        };
        let (mut resp, mut done) = match head {
            Ok(head) => head,
            Err(e) => return Attempt::failed(false, e.into_up()),
        };
        if let Err(e) = self.portico.check_upstream_head(session, &resp, ctx) {
            return Attempt::failed(false, e);
        }
        if let Err(e) = chunk_if_unframed(&mut resp, done, &session.req_header().method) {
            return Attempt::failed(false, e);
        }
        if let Err(e) = self.portico.response_phase(session, &mut resp, ctx).await {
            return Attempt::failed(false, e);
        }
        if let Err(e) = session.write_response_header(resp, done).await {
            return Attempt::failed(false, e.into_down());
        }
        while !done {
            let (body, end) = match upstream.read_response_task().await {
                Ok(HttpTask::Body(body, end)) => (body, end),
                Ok(HttpTask::Failed(e)) | Err(e) => return Attempt::failed(false, e.into_up()),
                // Done, or trailers (which HTTP/1 proxying drops, as Pingora's proxy does).
                Ok(_) => (None, true),
            };
            let mut body = body;
            if let Err(e) = self.portico.body_phase(&body, ctx) {
                return Attempt::failed(false, e);
            }
            if let Err(e) = self.portico.compress_phase(&mut body, end, ctx) {
                return Attempt::failed(false, e);
            }
            if let Err(e) = session.write_response_body(body, end).await {
                return Attempt::failed(false, e.into_down());
            }
            done = end;
        }
        Attempt {
            client_reusable: true,
            upstream_reusable: true,
            error: None,
        }
    }
}

impl Direct {
    /// Send the request's body upstream as it arrives, through the request body phase (its
    /// size and deadline). What an earlier attempt read of it is sent first: the session
    /// keeps the first 64 KiB for a retry, and a body longer than that is not retried
    /// (`replayable` in `attempt`).
    async fn send_body(
        &self,
        session: &mut Session,
        upstream: &mut UpstreamH1,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.is_body_empty() {
            upstream.finish_body().await.map_err(|e| e.into_up())?;
            return Ok(());
        }
        session.enable_retry_buffering();
        if let Some(read_before) = session.get_retry_buffer().filter(|b| !b.is_empty()) {
            // Nothing went through the body phase yet: a plugin read the body before the
            // first attempt (`graphql_guard` holds it whole to check it). It goes through
            // once, as Pingora's proxy sends its retry buffer through the body filter, so
            // its size is held to the limit and a mirror copies it.
            if ctx.body_bytes == 0 {
                self.portico
                    .request_body_phase(session, Some(&read_before), ctx)?;
            }
            upstream
                .write_body(&read_before)
                .await
                .map_err(|e| e.into_up())?;
        }
        while !session.is_body_done() {
            let chunk = session
                .downstream_session
                .read_request_body()
                .await
                .map_err(|e| e.into_down())?;
            self.portico
                .request_body_phase(session, chunk.as_ref(), ctx)?;
            match chunk {
                Some(chunk) => {
                    upstream.write_body(&chunk).await.map_err(|e| e.into_up())?;
                }
                None => break,
            }
        }
        upstream.finish_body().await.map_err(|e| e.into_up())?;
        Ok(())
    }
}

/// A new session on the same connection whose parser starts again at the request `session`
/// has read. Nothing follows that request in the buffer: a head with a body comes here only
/// when no route caches, and a bodiless head only with nothing after it (`connection::head`).
fn unread(session: Session) -> Option<ServerSession> {
    let downstream = *session.downstream_session;
    let keepalive = downstream.get_keepalive();
    let reuses = downstream.get_keepalive_reuses_remaining();
    let ServerSession::H1(read) = downstream else {
        return None;
    };
    let head = BytesMut::from(&read.get_headers_raw_bytes()[..]);
    let mut again = ServerSession::new_http1(read.into_inner());
    again.set_keepalive(keepalive);
    again.set_keepalive_reuses_remaining(reuses);
    again.set_pipelined_prefix(head);
    Some(again)
}

/// The upstream's final answer head and whether it ends the response. Interim answers (100,
/// 103) are dropped, since the client asked for none; a 101 is final, and the response phase
/// decides whether it may pass.
pub(crate) async fn read_final_head(
    upstream: &mut UpstreamH1,
) -> Result<(Box<ResponseHeader>, bool)> {
    loop {
        match upstream.read_response_task().await? {
            HttpTask::Header(head, end) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                return Ok((head, end))
            }
            HttpTask::Header(head, _) if head.status.is_informational() => continue,
            HttpTask::Header(head, end) => return Ok((head, end)),
            HttpTask::Failed(e) => return Err(e),
            _ => {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "the upstream sent a body before a response head",
                )
            }
        }
    }
}

/// An answer whose body ends when the upstream closes (HTTP/1.0 style) goes to the client
/// chunked, so the client's connection stays usable, as Pingora's proxy does.
fn chunk_if_unframed(resp: &mut ResponseHeader, done: bool, method: &Method) -> Result<()> {
    let no_body = *method == Method::HEAD || matches!(resp.status.as_u16(), 204 | 304);
    if no_body
        || done
        || resp.headers.contains_key(TRANSFER_ENCODING)
        || resp.headers.contains_key(CONTENT_LENGTH)
    {
        return Ok(());
    }
    resp.set_version(Version::HTTP_11);
    resp.insert_header(TRANSFER_ENCODING, "chunked")
}
