//! One export batch (512 spans: a server span and a client span per request, with the
//! attributes Portico sets) encoded as an OTLP/HTTP protobuf request: by `trace::otlp`, and
//! as opentelemetry-otlp's exporter does it (opentelemetry-proto's transform into message
//! structs, then prost). Run with `cargo bench --bench otlp`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may fail loudly on bad setup

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use opentelemetry_sdk::Resource;
use prost_otlp::Message;

fn batch() -> Vec<SpanData> {
    let scope = InstrumentationScope::builder("portico")
        .with_version("0.1.0")
        .build();
    let at = |us: u64| UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_000 + us);
    let mut spans = Vec::with_capacity(512);
    for i in 0..256u64 {
        let context = |span: u64| {
            SpanContext::new(
                TraceId::from(u128::from(i) << 64 | 0xfeed),
                SpanId::from(span),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            )
        };
        let server = SpanData {
            span_context: context(2 * i + 1),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("plain"),
            start_time: at(i * 50),
            end_time: at(i * 50 + 40),
            attributes: vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.path", "/"),
                KeyValue::new("url.scheme", "http"),
                KeyValue::new("http.route", "/"),
                KeyValue::new("http.response.status_code", 200i64),
                KeyValue::new("server.address", "127.0.0.1:8080"),
                KeyValue::new("client.address", "127.0.0.1"),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        };
        let client = SpanData {
            span_context: context(2 * i + 2),
            parent_span_id: SpanId::from(2 * i + 1),
            span_kind: SpanKind::Client,
            name: Cow::Borrowed("GET upstream"),
            attributes: vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("server.address", "127.0.0.1"),
                KeyValue::new("server.port", 3001i64),
                KeyValue::new("portico.upstream", "backend"),
                KeyValue::new("portico.target", "127.0.0.1:3001"),
                KeyValue::new("http.response.status_code", 200i64),
            ],
            ..server.clone()
        };
        spans.push(server);
        spans.push(client);
    }
    spans
}

fn bench(c: &mut Criterion) {
    let resource = Resource::builder().with_service_name("portico").build();
    let schema = ResourceAttributesWithSchema::from(&resource);
    let spans = batch();
    c.bench_function("otlp: 512 spans, written straight (trace::otlp)", |b| {
        b.iter_batched(
            || spans.clone(),
            |spans| portico::trace::otlp::encode(&spans, &resource),
            BatchSize::SmallInput,
        )
    });
    c.bench_function(
        "otlp: 512 spans, through opentelemetry-proto and prost",
        |b| {
            b.iter_batched(
                || spans.clone(),
                |spans| {
                    ExportTraceServiceRequest {
                        resource_spans: group_spans_by_resource_and_scope(spans, &schema),
                    }
                    .encode_to_vec()
                },
                BatchSize::SmallInput,
            )
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
