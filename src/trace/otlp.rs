//! A batch of spans as an OTLP/HTTP protobuf request (`ExportTraceServiceRequest`), written
//! straight from the SDK's `SpanData` into one buffer.
//!
//! Why not opentelemetry-otlp's exporter: it first turns every span into opentelemetry-proto's
//! message structs (a `String` per attribute key and value, a `Vec` per id, a struct per
//! attribute) and then has prost encode those, which at `sample_ratio = 1.0` made the export
//! thread about a tenth of the gateway's CPU (loadtest/RESULTS.md, issue 24). Here each span is
//! measured once and written once; the protobuf wire format is small (varints, lengths,
//! fixed64) and the test below decodes what this writes with opentelemetry-proto's own types
//! and compares it, message by message, with what the SDK's transform makes of the same spans.
//! `benches/otlp.rs` measures both.

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

/// Length-delimited, varint and 64-bit wire types.
const LEN: u8 = 2;
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const FIXED32: u8 = 5;

/// `SpanFlags`: the flags say whether the parent's remoteness is known, and whether it is.
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// The request for `spans`, all from one resource.
pub fn encode(spans: &[SpanData], resource: &Resource) -> Vec<u8> {
    let resource_attrs: Vec<KeyValue> = resource
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    // Spans grouped by their instrumentation scope, in order of first appearance (one scope
    // in Portico: its tracer's).
    let mut scopes: Vec<(&InstrumentationScope, Vec<&SpanData>)> = Vec::new();
    for span in spans {
        match scopes
            .iter_mut()
            .find(|(s, _)| *s == &span.instrumentation_scope)
        {
            Some((_, list)) => list.push(span),
            None => scopes.push((&span.instrumentation_scope, vec![span])),
        }
    }
    let resource_len = attributes_len(1, &resource_attrs);
    let scope_lens: Vec<(usize, Vec<usize>, usize)> = scopes
        .iter()
        .map(|(scope, spans)| {
            let span_lens: Vec<usize> = spans.iter().map(|s| span_len(s)).collect();
            let scope_len = scope_len(scope);
            let total = nested_len(1, scope_len)
                + span_lens.iter().map(|l| nested_len(2, *l)).sum::<usize>()
                + string_len(3, scope.schema_url().unwrap_or_default());
            (scope_len, span_lens, total)
        })
        .collect();
    let resource_spans_len = nested_len(1, resource_len)
        + scope_lens
            .iter()
            .map(|(_, _, t)| nested_len(2, *t))
            .sum::<usize>()
        + string_len(3, resource.schema_url().unwrap_or_default());

    let mut out = Vec::with_capacity(nested_len(1, resource_spans_len));
    key(&mut out, 1, LEN);
    varint(&mut out, resource_spans_len as u64);
    key(&mut out, 1, LEN);
    varint(&mut out, resource_len as u64);
    write_attributes(&mut out, 1, &resource_attrs);
    for ((scope, spans), (scope_len, span_lens, total)) in scopes.iter().zip(&scope_lens) {
        key(&mut out, 2, LEN);
        varint(&mut out, *total as u64);
        key(&mut out, 1, LEN);
        varint(&mut out, *scope_len as u64);
        write_scope(&mut out, scope);
        for (span, len) in spans.iter().zip(span_lens) {
            key(&mut out, 2, LEN);
            varint(&mut out, *len as u64);
            write_span(&mut out, span);
        }
        write_string(&mut out, 3, scope.schema_url().unwrap_or_default());
    }
    write_string(&mut out, 3, resource.schema_url().unwrap_or_default());
    out
}

fn scope_len(scope: &InstrumentationScope) -> usize {
    string_len(1, scope.name())
        + string_len(2, scope.version().unwrap_or_default())
        + scope
            .attributes()
            .map(|kv| nested_len(3, key_value_len(kv)))
            .sum::<usize>()
}

fn write_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    write_string(out, 1, scope.name());
    write_string(out, 2, scope.version().unwrap_or_default());
    for kv in scope.attributes() {
        write_key_value(out, 3, kv);
    }
}

/// Span fields (opentelemetry/proto/trace/v1/trace.proto): the SDK transform's choices, kept:
/// no parent id for a root, the status always present, the flags with "remoteness known".
fn span_len(span: &SpanData) -> usize {
    let context = &span.span_context;
    let mut len = bytes_len(1, 16) + bytes_len(2, 8);
    len += string_len(3, &context.trace_state().header());
    if span.parent_span_id != SpanId::INVALID {
        len += bytes_len(4, 8);
    }
    len += string_len(5, &span.name);
    len += varint_field_len(6, kind(&span.span_kind));
    len += fixed64_len(7, nanos(span.start_time)) + fixed64_len(8, nanos(span.end_time));
    len += attributes_len(9, &span.attributes);
    len += varint_field_len(10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        len += nested_len(11, event_len(event));
    }
    len += varint_field_len(12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        len += nested_len(13, link_len(link));
    }
    len += varint_field_len(14, u64::from(span.links.dropped_count));
    len += nested_len(15, status_len(&span.status));
    len + fixed32_len(
        16,
        flags(span.parent_span_is_remote, context.trace_flags().to_u8()),
    )
}

fn write_span(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    write_bytes(out, 1, &context.trace_id().to_bytes());
    write_bytes(out, 2, &context.span_id().to_bytes());
    write_string(out, 3, &context.trace_state().header());
    if span.parent_span_id != SpanId::INVALID {
        write_bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    write_string(out, 5, &span.name);
    write_varint_field(out, 6, kind(&span.span_kind));
    write_fixed64(out, 7, nanos(span.start_time));
    write_fixed64(out, 8, nanos(span.end_time));
    write_attributes(out, 9, &span.attributes);
    write_varint_field(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        key(out, 11, LEN);
        varint(out, event_len(event) as u64);
        write_fixed64(out, 1, nanos(event.timestamp));
        write_string(out, 2, &event.name);
        write_attributes(out, 3, &event.attributes);
        write_varint_field(out, 4, u64::from(event.dropped_attributes_count));
    }
    write_varint_field(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        key(out, 13, LEN);
        varint(out, link_len(link) as u64);
        let c = &link.span_context;
        write_bytes(out, 1, &c.trace_id().to_bytes());
        write_bytes(out, 2, &c.span_id().to_bytes());
        write_string(out, 3, &c.trace_state().header());
        write_attributes(out, 4, &link.attributes);
        write_varint_field(out, 5, u64::from(link.dropped_attributes_count));
        write_fixed32(out, 6, flags(c.is_remote(), c.trace_flags().to_u8()));
    }
    write_varint_field(out, 14, u64::from(span.links.dropped_count));
    key(out, 15, LEN);
    varint(out, status_len(&span.status) as u64);
    let (code, message) = status(&span.status);
    write_string(out, 2, message);
    write_varint_field(out, 3, code);
    write_fixed32(
        out,
        16,
        flags(span.parent_span_is_remote, context.trace_flags().to_u8()),
    );
}

fn event_len(event: &opentelemetry::trace::Event) -> usize {
    fixed64_len(1, nanos(event.timestamp))
        + string_len(2, &event.name)
        + attributes_len(3, &event.attributes)
        + varint_field_len(4, u64::from(event.dropped_attributes_count))
}

fn link_len(link: &opentelemetry::trace::Link) -> usize {
    let c = &link.span_context;
    bytes_len(1, 16)
        + bytes_len(2, 8)
        + string_len(3, &c.trace_state().header())
        + attributes_len(4, &link.attributes)
        + varint_field_len(5, u64::from(link.dropped_attributes_count))
        + fixed32_len(6, flags(c.is_remote(), c.trace_flags().to_u8()))
}

fn status(status: &Status) -> (u64, &str) {
    match status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description),
    }
}

fn status_len(s: &Status) -> usize {
    let (code, message) = status(s);
    string_len(2, message) + varint_field_len(3, code)
}

fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    let remote = if parent_is_remote {
        CONTEXT_IS_REMOTE
    } else {
        0
    };
    u32::from(trace_flags) | CONTEXT_HAS_IS_REMOTE | remote
}

fn nanos(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// --- attributes: KeyValue { key = 1; AnyValue value = 2 } ---------------------------------

fn attributes_len(field: u32, attributes: &[KeyValue]) -> usize {
    attributes
        .iter()
        .map(|kv| nested_len(field, key_value_len(kv)))
        .sum()
}

fn write_attributes(out: &mut Vec<u8>, field: u32, attributes: &[KeyValue]) {
    for kv in attributes {
        write_key_value(out, field, kv);
    }
}

fn key_value_len(kv: &KeyValue) -> usize {
    string_len(1, kv.key.as_str()) + nested_len(2, any_value_len(&kv.value))
}

fn write_key_value(out: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    key(out, field, LEN);
    varint(out, key_value_len(kv) as u64);
    write_string(out, 1, kv.key.as_str());
    key(out, 2, LEN);
    varint(out, any_value_len(&kv.value) as u64);
    write_any_value(out, &kv.value);
}

/// `AnyValue`'s oneof: written even when it holds its type's default (an empty string, a
/// zero), as prost writes a oneof.
fn any_value_len(value: &Value) -> usize {
    match value {
        Value::String(s) => always_string_len(1, s.as_str()),
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        Value::Array(array) => nested_len(5, array_len(array)),
        _ => 0,
    }
}

fn write_any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => {
            key(out, 1, LEN);
            varint(out, s.as_str().len() as u64);
            out.extend_from_slice(s.as_str().as_bytes());
        }
        Value::Bool(b) => {
            key(out, 2, VARINT);
            out.push(u8::from(*b));
        }
        Value::I64(i) => {
            key(out, 3, VARINT);
            varint(out, *i as u64);
        }
        Value::F64(f) => {
            key(out, 4, FIXED64);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Array(array) => {
            key(out, 5, LEN);
            varint(out, array_len(array) as u64);
            for_each_item(array, |item| {
                key(out, 1, LEN);
                varint(out, any_value_len(&item) as u64);
                write_any_value(out, &item);
            });
        }
        _ => {}
    }
}

/// `ArrayValue { repeated AnyValue values = 1 }`.
fn array_len(array: &Array) -> usize {
    let mut len = 0;
    for_each_item(array, |item| len += nested_len(1, any_value_len(&item)));
    len
}

fn for_each_item(array: &Array, mut f: impl FnMut(Value)) {
    match array {
        Array::Bool(v) => v.iter().for_each(|b| f(Value::Bool(*b))),
        Array::I64(v) => v.iter().for_each(|i| f(Value::I64(*i))),
        Array::F64(v) => v.iter().for_each(|x| f(Value::F64(*x))),
        Array::String(v) => v
            .iter()
            .for_each(|s| f(Value::String(StringValue::from(s.as_str().to_string())))),
        _ => {}
    }
}

// --- the wire format -------------------------------------------------------------------------

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire)));
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    // One byte per 7 bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn key_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

/// A length-delimited field of `len` bytes: its key, its length, itself.
fn nested_len(field: u32, len: usize) -> usize {
    key_len(field) + varint_len(len as u64) + len
}

/// A string field, left out when empty (proto3).
fn string_len(field: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        nested_len(field, s.len())
    }
}

fn always_string_len(field: u32, s: &str) -> usize {
    nested_len(field, s.len())
}

fn write_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        write_bytes(out, field, s.as_bytes());
    }
}

fn bytes_len(field: u32, len: usize) -> usize {
    nested_len(field, len)
}

fn write_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A varint field, left out when zero (proto3).
fn varint_field_len(field: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(field) + varint_len(value)
    }
}

fn write_varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(out, field, VARINT);
        varint(out, value);
    }
}

fn fixed64_len(field: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(field) + 8
    }
}

fn write_fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(out, field, FIXED64);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32_len(field: u32, value: u32) -> usize {
    if value == 0 {
        0
    } else {
        key_len(field) + 4
    }
}

fn write_fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        key(out, field, FIXED32);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost_otlp::Message;
    use std::borrow::Cow;
    use std::time::{Duration, UNIX_EPOCH};

    /// Spans of every shape: a server span with the attributes Portico sets, a client span
    /// under it with an error, one with a remote parent, events, links, arrays, empties.
    pub fn spans() -> Vec<SpanData> {
        let scope = InstrumentationScope::builder("portico")
            .with_version("0.1.0")
            .build();
        let context = |t: u128, s: u64, remote: bool| {
            SpanContext::new(
                TraceId::from(t),
                SpanId::from(s),
                TraceFlags::SAMPLED,
                remote,
                TraceState::from_key_value([("vendor", "x")]).unwrap(),
            )
        };
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms);
        let server = SpanData {
            span_context: context(0xabc, 0x1, false),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("GET /users/{id}"),
            start_time: at(0),
            end_time: at(3),
            attributes: vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.path", "/users/42"),
                KeyValue::new("http.response.status_code", 200i64),
                KeyValue::new("portico.cache", ""),
                KeyValue::new("flag", false),
                KeyValue::new("zero", 0i64),
                KeyValue::new("negative", -5i64),
                KeyValue::new("ratio", 0.25f64),
                KeyValue::new(
                    "list",
                    Value::Array(Array::String(vec!["a".into(), "".into()])),
                ),
                KeyValue::new("ints", Value::Array(Array::I64(vec![1, -1, 300]))),
            ],
            dropped_attributes_count: 2,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        };
        let mut client = server.clone();
        client.span_context = context(0xabc, 0x2, false);
        client.parent_span_id = SpanId::from(0x1);
        client.span_kind = SpanKind::Client;
        client.name = Cow::Owned("GET upstream".into());
        client.status = Status::error("connect_error");
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "retry",
            at(1),
            vec![KeyValue::new("attempt", 2i64)],
            1,
        ));
        events.dropped_count = 3;
        client.events = events;
        let mut remote = server.clone();
        remote.parent_span_id = SpanId::from(0x99);
        remote.parent_span_is_remote = true;
        remote.status = Status::Ok;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            context(0xdef, 0x7, true),
            vec![KeyValue::new("k", "v")],
            0,
        ));
        remote.links = links;
        let mut other_scope = server.clone();
        other_scope.instrumentation_scope = InstrumentationScope::builder("other")
            .with_attributes([KeyValue::new("a", 1i64)])
            .build();
        vec![server, client, remote, other_scope]
    }

    #[test]
    fn what_is_written_decodes_to_what_the_sdk_transform_makes_of_the_same_spans() {
        let resource = Resource::builder_empty()
            .with_service_name("portico")
            .with_attribute(KeyValue::new("host.name", "gw-1"))
            .build();
        let spans = spans();
        let ours = ExportTraceServiceRequest::decode(encode(&spans, &resource).as_slice())
            .expect("valid protobuf");
        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        // Attribute order within a resource is the SDK's own (a hash map): compare as sets.
        let sorted = |mut r: ExportTraceServiceRequest| {
            for rs in &mut r.resource_spans {
                if let Some(res) = &mut rs.resource {
                    res.attributes.sort_by(|a, b| a.key.cmp(&b.key));
                }
            }
            r
        };
        assert_eq!(sorted(ours), sorted(theirs));
    }

    #[test]
    fn varints_take_the_bytes_they_need() {
        for (value, len) in [
            (0u64, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(out.len(), len, "{value}");
            assert_eq!(varint_len(value), len, "{value}");
        }
    }
}
