//! The response phase: what the upstream (or the cache) answered, on its way to the client.

use bytes::Bytes;
use http::HeaderValue;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::forwarding::{asks_upgrade, edit_response_headers, TRACEPARENT, X_REQUEST_ID};
use super::phases::Phase;
use super::{cache, Portico};

impl Portico {
    /// An upstream that switches protocols on a request that was not a WebSocket upgrade on
    /// a route that takes them has broken the exchange: the client gets a 502, not a
    /// connection in a protocol it never chose (or the route never allowed).
    pub(crate) fn check_upstream_head(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS
            && !(ctx.tunnel.is_some() && asks_upgrade(session.req_header()))
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

    /// Tell the client its request id (and how the cache took part), then the route's
    /// plugins in reverse order.
    pub(crate) async fn response_phase(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.phases.mark(Phase::Response);
        let request_id = ctx.request_id.clone();
        let traceparent = ctx.trace.is_some().then(|| ctx.traceparent.clone());
        let cache_result = cache::result(session, ctx);
        ctx.cache = cache_result.or(ctx.cache);
        // Room for X-Request-Id, X-Cache, traceparent and the plugins' headers (RateLimit-*
        // are three).
        edit_response_headers(resp, 7, |headers| {
            headers.insert(X_REQUEST_ID, request_id);
            // A sampled trace: the client learns the server span it can find its request by.
            if let Some(traceparent) = traceparent {
                headers.insert(TRACEPARENT, traceparent);
            }
            if let Some(result) = cache_result {
                headers.insert(cache::X_CACHE, HeaderValue::from_static(result.as_str()));
            }
        });
        if let Some(routed) = ctx.routed.as_mut() {
            if let Some(cookie) = routed.set_cookie.take() {
                resp.append_header(http::header::SET_COOKIE, cookie)?;
            }
            for (name, plugin) in routed.route.plugins.iter().rev() {
                if let Err(e) = plugin.on_response(resp, &mut routed.plugin_cx).await {
                    log::error!(
                        "plugin {name} failed on response {}: {e}",
                        routed.plugin_cx.request_id
                    );
                }
            }
            // Last: the plugins may have set what decides it (a Content-Type, say).
            if let Some(policy) = &routed.route.compress {
                ctx.encoder = policy.start(session.req_header(), resp);
            }
        }
        Ok(())
    }

    /// A piece of the answer's body on its way to the client: compressed when the response
    /// phase chose a coding for it (`compress`). Both drivers call this after every read.
    pub(crate) fn compress_phase(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        match ctx.encoder.as_deref_mut() {
            Some(encoder) => super::compress::body(encoder, body, end),
            None => Ok(()),
        }
    }

    /// The route's total deadline also covers a body that trickles in: each read may be
    /// quick, but the whole answer may not outlast the deadline.
    pub(crate) fn body_phase(&self, _body: &Option<Bytes>, ctx: &mut RequestCtx) -> Result<()> {
        // A tunnel is bounded by its idle timeout alone (`upstream::tunnel`).
        if ctx.tunnel.is_none() && ctx.exchange().is_some_and(|x| x.deadline_passed()) {
            let mut e = Error::explain(
                ErrorType::ReadTimedout,
                "the route's timeout passed during the body",
            );
            e.esource = ErrorSource::Upstream;
            e.set_retry(false);
            return Err(e);
        }
        Ok(())
    }
}
