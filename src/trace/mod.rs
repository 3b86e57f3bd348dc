//! Tracing (`[tracing]`): one server span per request and one client span per upstream
//! attempt, W3C Trace Context in and out, exported by OpenTelemetry's batch processor.
//!
//! The decision is made once, when the request is identified: a caller's valid
//! `traceparent` is followed (its sampled flag decides), and a trace Portico starts is kept
//! with `sample_ratio` by the SDK's trace-id ratio sampler. Only a sampled request carries a
//! [`ServerSpan`]; the others cost one random trace id, as they did before tracing existed.
//!
//! Spans are not built while the request runs: the pipeline keeps their ids and start times
//! (the server span in the request's context, each attempt's in its upstream exchange) and
//! writes each whole span once it ends, straight to the batch processor (`export`). Both
//! drivers and every composition call go through the same two places, so a span is written
//! in one way only.

mod export;
pub mod otlp;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use http::{HeaderValue, Method};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, ShouldSample, SpanData, SpanEvents, SpanLinks,
};

use crate::config::file::TracingSection;

/// `[tracing]` as validated: what decides whether a reload keeps the running exporter.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    pub endpoint: String,
    pub service_name: String,
    pub sample_ratio: f64,
    pub headers: BTreeMap<String, String>,
}

/// Check `[tracing]`: every problem as `(key, message)`.
pub fn compile(section: &TracingSection) -> Result<TracingSettings, Vec<(String, String)>> {
    let mut problems = Vec::new();
    match section.otlp_endpoint.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
        _ => problems.push((
            "otlp_endpoint".into(),
            format!(
                "\"{}\" is not an http:// or https:// URL (the collector's traces URL, e.g. http://127.0.0.1:4318/v1/traces)",
                section.otlp_endpoint
            ),
        )),
    }
    if section.service_name.is_empty() {
        problems.push(("service_name".into(), "must not be empty".into()));
    }
    if !(0.0..=1.0).contains(&section.sample_ratio) {
        problems.push((
            "sample_ratio".into(),
            format!("{} is not between 0 and 1", section.sample_ratio),
        ));
    }
    for (name, value) in &section.headers {
        if http::HeaderName::try_from(name.as_str()).is_err() {
            problems.push((format!("headers.{name}"), "is not a header name".into()));
        } else if HeaderValue::try_from(value.as_str()).is_err() {
            problems.push((
                format!("headers.{name}"),
                "is not a valid header value".into(),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(TracingSettings {
        endpoint: section.otlp_endpoint.clone(),
        service_name: section.service_name.clone(),
        sample_ratio: section.sample_ratio,
        headers: section.headers.clone(),
    })
}

/// The tracer of one `[tracing]` section, kept across reloads while the section is unchanged.
/// Its exporter starts with [`Tracer::start`], when the config is about to serve: a config
/// that is only validated starts nothing.
pub struct Tracer {
    pub settings: TracingSettings,
    ratio: Sampler,
    scope: InstrumentationScope,
    export: OnceLock<Option<export::Export>>,
}

impl Tracer {
    pub fn new(settings: TracingSettings) -> Tracer {
        Tracer {
            ratio: Sampler::TraceIdRatioBased(settings.sample_ratio),
            settings,
            scope: InstrumentationScope::builder("portico")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            export: OnceLock::new(),
        }
    }

    /// Start the exporter (once; a tracer kept by a reload is running already). Spans that
    /// cannot be queued or sent are counted in `dropped`.
    pub fn start(&self, dropped: &prometheus::IntCounter) {
        self.export.get_or_init(
            || match export::Export::start(&self.settings, dropped.clone()) {
                Ok(export) => Some(export),
                Err(e) => {
                    log::error!(
                        "tracing: cannot export to {}: {e}; spans are dropped",
                        self.settings.endpoint
                    );
                    None
                }
            },
        );
    }

    /// Where a request stands in its trace: the `traceparent` it carries on (the caller's,
    /// or a new one), and its server span when the trace is sampled.
    pub fn begin(
        self: &Arc<Self>,
        caller: Option<&HeaderValue>,
        method: &Method,
    ) -> (HeaderValue, Option<Box<ServerSpan>>) {
        let parsed = caller.and_then(|v| Traceparent::parse(v.as_bytes()));
        let (trace_id, caller_span, flags) = match parsed {
            Some(tp) => (tp.trace_id, tp.span_id, tp.flags),
            None => {
                let trace_id = TraceId::from(fastrand::u128(1..));
                let decision = self
                    .ratio
                    .should_sample(None, trace_id, "", &SpanKind::Server, &[], &[])
                    .decision;
                let sampled = decision == SamplingDecision::RecordAndSample;
                let flags = if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                };
                (trace_id, SpanId::INVALID, flags)
            }
        };
        if !flags.is_sampled() {
            // Not recorded: the caller's context goes on as it came, or a new unsampled one.
            let header = match (caller, parsed) {
                (Some(v), Some(_)) => v.clone(),
                _ => header(trace_id, new_span_id(), flags),
            };
            return (header, None);
        }
        let parent = SpanParent {
            tracer: Arc::clone(self),
            trace_id,
            span_id: new_span_id(),
            flags,
            method: method.clone(),
        };
        let span = ServerSpan {
            caller: caller_span,
            start: SystemTime::now(),
            parent,
        };
        // Upstream, a proxied request carries its attempt's span id (`SpanParent::header`);
        // this one, the server span's, is what the client is told.
        (
            span.parent.header(span.parent.span_id),
            Some(Box::new(span)),
        )
    }

    /// Send what is queued now, waiting for the export (at most its timeout): for a process
    /// about to exit.
    pub fn flush(&self) {
        if let Some(Some(export)) = self.export.get() {
            export.flush();
        }
    }

    fn emit(&self, span: SpanData) {
        // Not started (a config being validated) or could not start: nothing to send to.
        if let Some(Some(export)) = self.export.get() {
            export.send(span);
        }
    }
}

/// `http.request.method`: the method, or `_OTHER` for one HTTP does not define (semantic
/// conventions), without an allocation.
fn method(method: &Method) -> &'static str {
    match crate::metrics::method_label(method) {
        "OTHER" => "_OTHER",
        known => known,
    }
}

/// A new span id (never the invalid all-zero one).
fn new_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}

/// A `traceparent` value: `00-<trace id>-<span id>-<flags>`.
fn header(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> HeaderValue {
    let mut value = crate::proxy::forwarding::traceparent(
        u128::from_be_bytes(trace_id.to_bytes()),
        u64::from_be_bytes(span_id.to_bytes()),
        flags.to_u8(),
    );
    // Unique to the request: kept out of HTTP/2 header tables (see `proxy::request::identify`).
    value.set_sensitive(true);
    value
}

/// A parsed W3C `traceparent`.
#[derive(Clone, Copy)]
struct Traceparent {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
}

impl Traceparent {
    /// The parts of a valid `traceparent` (`proxy::forwarding::trace_id_of` decides valid).
    fn parse(value: &[u8]) -> Option<Traceparent> {
        crate::proxy::forwarding::trace_id_of(value)?;
        let text = std::str::from_utf8(value).ok()?;
        let trace_id = TraceId::from_hex(text.get(3..35)?).ok()?;
        let span_id = SpanId::from_hex(text.get(36..52)?).ok()?;
        let flags = u8::from_str_radix(text.get(53..55)?, 16).ok()?;
        Some(Traceparent {
            trace_id,
            span_id,
            flags: TraceFlags::new(flags),
        })
    }
}

/// What a span's children need of it: the trace, its id, and the tracer to write them with.
#[derive(Clone)]
pub struct SpanParent {
    tracer: Arc<Tracer>,
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
    /// The method the children's requests are sent with.
    method: Method,
}

impl SpanParent {
    /// The same parent for calls sent with `method` (a composition's own calls).
    pub fn with_method(&self, method: &Method) -> SpanParent {
        SpanParent {
            method: method.clone(),
            ..self.clone()
        }
    }

    /// The `traceparent` of a child span `span_id`.
    fn header(&self, span_id: SpanId) -> HeaderValue {
        header(self.trace_id, span_id, self.flags)
    }

    /// Start a client span for an upstream attempt.
    pub fn attempt(&self) -> AttemptSpan {
        AttemptSpan {
            span_id: new_span_id(),
            start: SystemTime::now(),
            status: None,
            error: None,
        }
    }

    /// The `traceparent` an attempt's request carries: its own span as the parent.
    pub fn attempt_header(&self, attempt: &AttemptSpan) -> HeaderValue {
        self.header(attempt.span_id)
    }

    /// Write `attempt`'s client span, which ended now.
    pub fn end_attempt(&self, attempt: AttemptSpan, sent: &AttemptTarget<'_>) {
        let mut attributes = Vec::with_capacity(9);
        attributes.push(KeyValue::new("http.request.method", method(&self.method)));
        if let Some(address) = sent.address {
            attributes.push(KeyValue::new("server.address", address.ip().to_string()));
            attributes.push(KeyValue::new("server.port", i64::from(address.port())));
        }
        attributes.push(KeyValue::new("portico.upstream", Arc::clone(sent.upstream)));
        attributes.push(KeyValue::new("portico.target", Arc::clone(sent.target)));
        if sent.resend_count > 0 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(sent.resend_count),
            ));
        }
        if let Some(status) = attempt.status {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        // error.type: how the attempt failed, or an answer's 5xx status (semantic conventions).
        let error_type: Option<opentelemetry::Value> = match (attempt.error, attempt.status) {
            (Some(error), _) => Some(error.into()),
            (None, Some(status)) if status >= 500 => Some(status.to_string().into()),
            _ => None,
        };
        let status = match error_type {
            Some(error) => {
                attributes.push(KeyValue::new("error.type", error));
                Status::error("")
            }
            None => Status::Unset,
        };
        let name = format!("{} {}", self.method, sent.upstream);
        self.tracer.emit(self.span_data(
            attempt.span_id,
            self.span_id,
            SpanKind::Client,
            name.into(),
            (attempt.start, SystemTime::now()),
            attributes,
            status,
        ));
    }

    #[allow(clippy::too_many_arguments)]
    fn span_data(
        &self,
        span_id: SpanId,
        parent: SpanId,
        kind: SpanKind,
        name: Cow<'static, str>,
        (start_time, end_time): (SystemTime, SystemTime),
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                span_id,
                self.flags,
                false,
                TraceState::NONE,
            ),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: kind,
            name,
            start_time,
            end_time,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.tracer.scope.clone(),
        }
    }
}

/// An upstream attempt's client span while it runs.
pub struct AttemptSpan {
    span_id: SpanId,
    start: SystemTime,
    /// The upstream's answer, once it came.
    pub status: Option<u16>,
    /// How it failed (`portico_upstream_requests_total`'s outcome), when it did.
    pub error: Option<&'static str>,
}

/// Where an attempt went, for its span.
pub struct AttemptTarget<'a> {
    pub upstream: &'a Arc<str>,
    pub target: &'a Arc<str>,
    pub address: Option<std::net::SocketAddr>,
    /// How many attempts went before this one.
    pub resend_count: u32,
}

/// A sampled request's server span while it runs.
pub struct ServerSpan {
    /// The caller's span, or invalid when Portico started the trace.
    caller: SpanId,
    start: SystemTime,
    parent: SpanParent,
}

/// What a request's server span reports, gathered when it ends.
pub struct ServerEnd<'a> {
    pub route: Option<&'a crate::snapshot::Route>,
    pub path: &'a str,
    pub scheme: &'static str,
    pub host: Option<&'a str>,
    pub client: Option<std::net::IpAddr>,
    pub status: u16,
    pub consumer: Option<&'a str>,
    pub cache: Option<&'static str>,
}

impl ServerSpan {
    /// The parent of this request's upstream attempts.
    pub fn parent(&self) -> &SpanParent {
        &self.parent
    }

    /// Write the server span: the request ended now.
    pub fn end(self, end: ServerEnd<'_>) {
        let parent = &self.parent;
        let mut attributes = Vec::with_capacity(16);
        let mut put = |key: &'static str, value: opentelemetry::Value| {
            attributes.push(KeyValue::new(key, value));
        };
        put("http.request.method", method(&parent.method).into());
        put("url.path", end.path.to_string().into());
        put("url.scheme", end.scheme.into());
        if let Some(route) = end.route {
            put("http.route", Arc::clone(&route.path).into());
        }
        if let Some(host) = end.host {
            put("server.address", host.to_string().into());
        }
        if let Some(ip) = end.client {
            put("client.address", ip.to_string().into());
        }
        if end.status > 0 {
            put("http.response.status_code", i64::from(end.status).into());
        }
        let failed = end.status >= 500 || end.status == 0;
        if failed {
            let error = match end.status {
                0 => "no_response".to_string(),
                status => status.to_string(),
            };
            put("error.type", error.into());
        }
        if let Some(consumer) = end.consumer {
            put("portico.consumer", consumer.to_string().into());
        }
        if let Some(cache) = end.cache {
            put("portico.cache", cache.into());
        }
        // Named after the route (SPEC.md); a request no route took, after its method.
        let name: Cow<'static, str> = match end.route {
            Some(route) => route.name.to_string().into(),
            None => method(&parent.method).into(),
        };
        let status = if failed {
            Status::error("")
        } else {
            Status::Unset
        };
        let mut span = parent.span_data(
            parent.span_id,
            self.caller,
            SpanKind::Server,
            name,
            (self.start, SystemTime::now()),
            attributes,
            status,
        );
        span.parent_span_is_remote = self.caller != SpanId::INVALID;
        parent.tracer.emit(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(ratio: f64) -> Arc<Tracer> {
        Arc::new(Tracer::new(TracingSettings {
            endpoint: "http://127.0.0.1:1/v1/traces".into(),
            service_name: "portico".into(),
            sample_ratio: ratio,
            headers: BTreeMap::new(),
        }))
    }

    #[test]
    fn a_sampled_caller_is_followed_with_a_new_span_of_the_same_trace() {
        let caller =
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let (header, span) = tracer(0.0).begin(Some(&caller), &Method::GET);
        let span = span.expect("a sampled caller is recorded at any ratio");
        let text = header.to_str().unwrap();
        assert!(text.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(text.ends_with("-01"));
        assert_ne!(
            &text[36..52],
            "b7ad6b7169203331",
            "the client is told Portico's span"
        );
        assert_eq!(span.caller, SpanId::from_hex("b7ad6b7169203331").unwrap());
    }

    #[test]
    fn an_unsampled_caller_goes_on_unchanged_and_unrecorded() {
        let caller =
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        let (header, span) = tracer(1.0).begin(Some(&caller), &Method::GET);
        assert!(span.is_none());
        assert_eq!(header, caller);
    }

    #[test]
    fn traces_portico_starts_follow_the_ratio() {
        let (header, span) = tracer(0.0).begin(None, &Method::GET);
        assert!(span.is_none());
        assert!(header.to_str().unwrap().ends_with("-00"));
        let (header, span) = tracer(1.0).begin(None, &Method::GET);
        assert!(span.is_some());
        assert!(crate::proxy::forwarding::trace_id_of(header.as_bytes()).is_some());
        assert!(header.to_str().unwrap().ends_with("-01"));
    }

    #[test]
    fn bad_settings_are_named() {
        let section = TracingSection {
            otlp_endpoint: "collector:4318".into(),
            service_name: String::new(),
            sample_ratio: 1.5,
            headers: BTreeMap::from([("bad name".to_string(), "x".to_string())]),
        };
        let keys: Vec<String> = compile(&section)
            .unwrap_err()
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(
            keys,
            [
                "otlp_endpoint",
                "service_name",
                "sample_ratio",
                "headers.bad name"
            ]
        );
    }
}
