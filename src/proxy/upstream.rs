//! The phases that face the upstream: choose the target (through the exchange) and shape
//! the request it gets.

use http::Uri;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use portico_plugins::ErrorCode;

use super::ctx::RequestCtx;
use super::failure::GatewayError;
use super::forwarding::{
    drop_connection_headers, edit_request_headers, gateway_request_headers, one_content_length,
};
use super::phases::Phase;
use super::Portico;
use crate::snapshot::strip_segments;
use crate::upstream::HashKey;

impl Portico {
    /// Choose the next attempt's target: the peer to send to, its timeouts clamped to the
    /// route's deadline. Runs again on each retry.
    pub(crate) async fn choose_target(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let hash_input = hash_input(session, ctx);
        let Some(exchange) = ctx.exchange() else {
            return Error::e_explain(ErrorType::InternalError, "no upstream for this request");
        };
        let peer = exchange
            .next_attempt(&hash_input)
            .await
            .map_err(|refused| {
                let why = format!("upstream {}: {refused:?}", exchange.pool().name);
                GatewayError::from(refused).into_error(why)
            })?;
        ctx.phases.mark(Phase::ChooseTarget);
        Ok(Box::new(peer))
    }

    /// Shape the request the upstream sees: the routed target (after `strip_prefix`),
    /// forwarding, identity and trace headers, then the route's plugins.
    pub(crate) async fn shape_upstream_request(
        &self,
        session: &Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.phases.mark(Phase::UpstreamRequest);
        let Some(route) = ctx.route().cloned() else {
            return Ok(());
        };
        // The target goes upstream as it was routed, never as the client's raw bytes.
        let routed = &session.req_header().uri;
        let rewritten = match &route.rewrite {
            Some(rewrite) => rewrite
                .apply(routed.path(), routed.query())
                .map_err(|why| {
                    GatewayError::new(ErrorCode::BadRequest)
                        .into_error(format!("the rewritten path is refused: {}", why.detail()))
                })?,
            None => None,
        };
        if let Some(target) = rewritten {
            let uri: Uri = target.parse().map_err(|e| {
                Error::because(ErrorType::InternalError, "rewriting the upstream path", e)
            })?;
            upstream.set_uri(uri);
        } else if route.strip_segments > 0 {
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

        // Room for the seven headers the gateway sets, and a few for the route's plugins.
        edit_request_headers(upstream, 10, |headers| {
            drop_connection_headers(headers, &session.req_header().headers);
            one_content_length(headers);
            gateway_request_headers(headers, session, ctx)
        })?;

        let id = ctx.id().to_owned();
        if let Some(routed) = ctx.routed.as_mut() {
            for (name, plugin) in &route.plugins {
                if let Err(e) = plugin
                    .on_upstream_request(upstream, &mut routed.plugin_cx)
                    .await
                {
                    log::error!("plugin {name} failed shaping request {id}: {e}");
                    return Err(GatewayError::new(ErrorCode::Internal).into_error("plugin failed"));
                }
            }
        }
        // A copy goes to the mirror as the upstream got it (rewritten, forwarded, shaped by
        // the plugins); a retry shapes it again, and the last one stands.
        if let Some(copy) = ctx.routed.as_mut().and_then(|r| r.mirror.as_mut()) {
            copy.head = Some(upstream.clone());
        }
        Ok(())
    }
}

/// The bytes consistent hashing hashes for this request (nothing for other balancers).
fn hash_input(session: &Session, ctx: &RequestCtx) -> Vec<u8> {
    let Some(routed) = ctx.routed.as_ref() else {
        return Vec::new();
    };
    let Some(key) = routed.upstream().and_then(|u| u.hash_key.as_ref()) else {
        return Vec::new();
    };
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
        HashKey::Claim(name) => routed
            .plugin_cx
            .claim(name)
            .unwrap_or_default()
            .as_bytes()
            .to_vec(),
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
