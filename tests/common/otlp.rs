//! A trace collector for tests: an HTTP server on 127.0.0.1:0 that takes OTLP/HTTP exports
//! (`POST /v1/traces`, `application/x-protobuf`), decodes them with the OpenTelemetry
//! protocol's own generated types, as a collector or Jaeger would, and keeps every span.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost_otlp::Message;
use tokio::net::TcpListener;

/// One span as the collector received it.
#[derive(Debug, Clone)]
pub struct Span {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    /// Lower-case hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// `SPAN_KIND_SERVER`, `SPAN_KIND_CLIENT`, ...
    pub kind: String,
    /// Every attribute, its value as text.
    pub attributes: BTreeMap<String, String>,
    /// `STATUS_CODE_UNSET`, `STATUS_CODE_ERROR`, ...
    pub status: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    /// The headers of each export.
    exports: Vec<http::HeaderMap>,
    /// A collector that takes exports and never answers them (one that hangs).
    hang: bool,
    /// Exports read and held unanswered.
    held: usize,
}

pub struct Collector {
    pub addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Collector {
        Self::start_with(false).await
    }

    /// A collector that reads every export and never answers: each export waits out its
    /// timeout, and spans pile up in the gateway's queue.
    pub async fn start_hanging() -> Collector {
        Self::start_with(true).await
    }

    async fn start_with(hang: bool) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("the collector's address");
        let received = Arc::new(Mutex::new(Received {
            hang,
            ..Received::default()
        }));
        let shared = Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| export(Arc::clone(&shared), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector {
            addr,
            received,
            task,
        }
    }

    /// The URL to put in `tracing.otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.received.lock().expect("the spans").spans.clone()
    }

    /// Exports a hanging collector holds unanswered now.
    pub fn held(&self) -> usize {
        self.received.lock().expect("the exports").held
    }

    /// The headers each export came with.
    pub fn export_headers(&self) -> Vec<http::HeaderMap> {
        self.received.lock().expect("the exports").exports.clone()
    }

    /// The spans of trace `trace_id` once `count` of them arrived (waits up to 20 s).
    pub async fn trace(&self, trace_id: &str, count: usize) -> Vec<Span> {
        let mut spans = Vec::new();
        super::eventually(
            &format!("{count} spans of trace {trace_id}"),
            Duration::from_secs(20),
            async || {
                spans = self
                    .spans()
                    .into_iter()
                    .filter(|s| s.trace_id == trace_id)
                    .collect();
                spans.len() >= count
            },
        )
        .await;
        spans
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn export(
    shared: Arc<Mutex<Received>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: u16, body: Bytes| {
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = http::StatusCode::from_u16(status).expect("a status");
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(resp)
    };
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if req.method() != http::Method::POST
        || req.uri().path() != "/v1/traces"
        || content_type != "application/x-protobuf"
    {
        return reply(
            400,
            Bytes::from_static(b"expected a protobuf POST to /v1/traces"),
        );
    }
    let headers = req.headers().clone();
    let Ok(body) = req.into_body().collect().await else {
        return reply(400, Bytes::new());
    };
    let Ok(request) = ExportTraceServiceRequest::decode(body.to_bytes()) else {
        return reply(400, Bytes::from_static(b"not an ExportTraceServiceRequest"));
    };
    let hang = {
        let mut received = shared.lock().expect("the spans");
        received.held += usize::from(received.hang);
        received.hang
    };
    if hang {
        std::future::pending::<()>().await;
    }
    let mut received = shared.lock().expect("the spans");
    received.exports.push(headers);
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                received.spans.push(Span {
                    service: service.clone(),
                    kind: span.kind().as_str_name().to_string(),
                    status: span
                        .status
                        .as_ref()
                        .map(|s| s.code().as_str_name().to_string())
                        .unwrap_or_default(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
                            (kv.key.clone(), text(value))
                        })
                        .collect(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                });
            }
        }
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    reply(200, Bytes::from(answer))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(n)) => n.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
