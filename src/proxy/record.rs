//! The record phase: once per request, however it ended, the open attempt's outcome, the
//! request metrics and the access log line.

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;
use pingora_error::Error;
use pingora_proxy::Session;
use portico_plugins::ErrorCode;

use super::ctx::RequestCtx;
use super::phases::{Ending, Phase};
use super::{cache, failure, Portico};
use crate::access_log::AccessRecord;
use crate::metrics::method_label;

impl Portico {
    pub(crate) fn record_phase(
        &self,
        session: &mut Session,
        e: Option<&Error>,
        ctx: &mut RequestCtx,
    ) {
        ctx.phases.mark(Phase::Record);
        // The client's exchange is over: the copy leaves now, on its own.
        if let Some(routed) = ctx.routed.as_mut() {
            if let (Some(copy), Some(mirror)) = (routed.mirror.take(), &routed.route.mirror) {
                let body_whole = session.downstream_session.is_body_done();
                mirror.send(&self.state, &routed.route.name, *copy, body_whole);
            }
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| e.and_then(failure::classify).map(ErrorCode::status))
            .unwrap_or(0);
        let route_name = ctx.route().map(|r| Arc::clone(&r.name));
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
        if ctx.grpc {
            let grpc_status = ctx
                .grpc_status
                .or_else(|| e.and_then(failure::classify).map(super::grpc::status_for));
            metrics
                .grpc_requests
                .with_label_values(&[route_label, super::grpc::status_label(grpc_status)])
                .inc();
        }

        let cache_result = cache::result(session, ctx);
        if let Some(result) = cache_result {
            metrics
                .cache_lookups
                .with_label_values(&[route_label, result.label()])
                .inc();
        }
        let from_cache = matches!(
            cache_result,
            Some(crate::cache::CacheResult::Hit | crate::cache::CacheResult::Stale)
        );
        check_phases(ctx, e, from_cache);

        // The last attempt, if it is still open, ends with the request.
        let (upstream, target, upstream_ms) = match ctx.exchange() {
            Some(exchange) => {
                exchange.end(e, status);
                let (upstream, target) = exchange
                    .last_target()
                    .map(|(u, t)| (Arc::clone(u), Arc::clone(t)))
                    .unzip();
                (
                    upstream,
                    target,
                    exchange.started().map(|t| millis(t.elapsed())),
                )
            }
            None => (None, None, None),
        };

        if let Some(span) = ctx.trace.take() {
            let req = session.req_header();
            let header = |name: http::header::HeaderName| {
                req.headers.get(name).and_then(|v| v.to_str().ok())
            };
            let routed = ctx.routed.as_ref();
            span.end(crate::trace::ServerEnd {
                route: routed.map(|r| &*r.route),
                path: req.uri.path(),
                scheme: if ctx.tls { "https" } else { "http" },
                host: header(http::header::HOST).or_else(|| req.uri.host()),
                client: ctx.client_ip,
                status,
                consumer: routed
                    .and_then(|r| r.plugin_cx.identity.as_ref())
                    .map(|id| &*id.consumer),
                cache: cache_result.map(crate::cache::CacheResult::as_str),
            });
        }

        if self.state.access_log.enabled() {
            let consumer = ctx
                .routed
                .as_ref()
                .and_then(|r| r.plugin_cx.identity.as_ref())
                .map(|id| id.consumer.clone());
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
                consumer,
                traceparent: std::mem::replace(&mut ctx.traceparent, HeaderValue::from_static("")),
                failed_parts: ctx.failed_parts.take(),
                operation: ctx
                    .routed
                    .as_mut()
                    .and_then(|r| r.plugin_cx.graphql_operation.take()),
                client_cert: ctx.client_cert.clone(),
            };
            if !self.state.access_log.log(record) {
                metrics.access_log_dropped.inc();
            }
        }
    }
}

/// In debug builds (every test run), a request that ended whole but skipped a phase its
/// ending needs is a bug in the driver that served it: say which, loudly.
fn check_phases(ctx: &RequestCtx, e: Option<&Error>, from_cache: bool) {
    if !cfg!(debug_assertions) || e.is_some() {
        return;
    }
    let ending = match ctx.routed.as_ref() {
        None => Ending::BeforeRouting,
        Some(routed)
            if routed
                .exchange
                .as_ref()
                .is_some_and(|x| x.started().is_some())
                && !from_cache =>
        {
            Ending::UpstreamAnswered
        }
        Some(_) => Ending::Answered,
    };
    let missing = ctx.phases.missing(ending);
    assert!(
        missing.is_empty(),
        "request {} ended as {ending:?} without the phases {missing:?}",
        ctx.id()
    );
}

/// Milliseconds with microsecond precision, for the access log.
fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}
