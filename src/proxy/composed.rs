//! Answering a composition route: run its calls through the upstream exchange and answer with
//! the merged JSON, or a 502 naming the required part that failed.

use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use portico_plugins::ErrorCode;

use super::ctx::RequestCtx;
use super::forwarding::{edit_request_headers, gateway_request_headers, TRACEPARENT, X_REQUEST_ID};
use super::Portico;
use crate::compose::{self, Composition, Merged};
use crate::snapshot::Route;

impl Portico {
    /// Run `composition` for the request and answer it. `Ok(true)`: answered.
    pub(super) async fn answer_composition(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        composition: &Composition,
    ) -> Result<bool> {
        let Some(mut routed) = ctx.routed.take() else {
            return Ok(false);
        };
        let answered = self
            .compose(session, ctx, route, composition, &mut routed.plugin_cx)
            .await;
        ctx.routed = Some(routed);
        answered
    }

    async fn compose(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        composition: &Composition,
        cx: &mut portico_plugins::PluginCtx,
    ) -> Result<bool> {
        let req = session.req_header();
        let captures = route.pattern.captures(req.uri.path()).unwrap_or_default();
        let query = req.uri.query().unwrap_or("").to_string();
        // Every part carries the headers a proxied request would: X-Forwarded-*, the request
        // id and the trace context, set once here.
        let mut base = req.clone();
        edit_request_headers(&mut base, 7, |headers| {
            gateway_request_headers(headers, session, ctx)
        })?;
        let inputs = compose::Inputs {
            captures: &captures,
            query: &query,
            cx: &*cx,
        };
        let sender = compose::client::Sender {
            transport: &self.state.transport,
            requests: &self.state.metrics.upstream_requests,
            trace: ctx.span_parent(),
        };
        let answer = composition
            .run(&inputs, &sender, &route.plugins, &base)
            .await;
        let metrics = &self.state.metrics;
        for (key, succeeded) in &answer.parts {
            let outcome = if *succeeded { "success" } else { "failed" };
            metrics
                .compose_calls
                .with_label_values(&[&route.name, key, outcome])
                .inc();
        }
        match answer.merged {
            Merged::Complete(body, failed) => {
                let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
                let mut resp = ResponseHeader::build(200, Some(4))?;
                resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
                resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
                resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
                if ctx.trace.is_some() {
                    resp.insert_header(TRACEPARENT, ctx.traceparent.clone())?;
                }
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
            Merged::RequiredFailed(key, error) => {
                ctx.failed_parts = Some(key.clone());
                let detail = format!("required part \"{key}\" failed ({})", error.code);
                self.reject(session, ctx, ErrorCode::BadGateway, &detail, &[])
                    .await
            }
        }
    }
}
