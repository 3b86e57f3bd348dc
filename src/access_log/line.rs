//! One access-log record as one line of JSON, written by hand: the fields are fixed, most of
//! them cannot hold anything that needs escaping, and serde's derive spent more on each line
//! than the request path spends on the whole record.
//!
//! The line is the same as serde_json would write for the record (same field order, `null`
//! for what is missing, `failed_parts` only for compositions and `operation` only for
//! GraphQL); the tests check it parses back to the same values.

use std::io::Write;
use std::net::IpAddr;

use super::{push_rfc3339, AccessRecord};
use crate::proxy::forwarding::ipv4_text;

/// Appends `record` and a newline to `out`.
pub fn encode(out: &mut Vec<u8>, record: &AccessRecord) {
    out.extend_from_slice(b"{\"ts\":\"");
    push_rfc3339(out, record.ts);
    out.extend_from_slice(b"\",\"request_id\":");
    push_str(out, record.request_id.to_str().unwrap_or_default());
    out.extend_from_slice(b",\"client_ip\":\"");
    if let Some(ip) = record.client_ip {
        push_ip(out, ip);
    }
    out.extend_from_slice(b"\",\"method\":");
    push_str(out, record.method.as_str());
    out.extend_from_slice(b",\"path\":");
    push_str(out, &record.path);
    out.extend_from_slice(b",\"status\":");
    push_u64(out, u64::from(record.status));
    out.extend_from_slice(b",\"route\":");
    push_opt_str(out, record.route.as_deref());
    out.extend_from_slice(b",\"upstream\":");
    push_opt_str(out, record.upstream.as_deref());
    out.extend_from_slice(b",\"target\":");
    push_opt_str(out, record.target.as_deref());
    out.extend_from_slice(b",\"duration_ms\":");
    push_f64(out, record.duration_ms);
    out.extend_from_slice(b",\"upstream_ms\":");
    match record.upstream_ms {
        Some(ms) => push_f64(out, ms),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"bytes_sent\":");
    push_u64(out, record.bytes_sent as u64);
    out.extend_from_slice(b",\"cache\":");
    push_opt_str(out, record.cache);
    out.extend_from_slice(b",\"consumer\":");
    push_opt_str(out, record.consumer.as_deref());
    out.extend_from_slice(b",\"trace_id\":");
    push_opt_str(
        out,
        trace_id(record.traceparent.to_str().unwrap_or_default()),
    );
    if let Some(parts) = &record.failed_parts {
        out.extend_from_slice(b",\"failed_parts\":");
        push_str(out, parts);
    }
    if let Some(operation) = &record.operation {
        out.extend_from_slice(b",\"operation\":");
        push_str(out, operation);
    }
    if let Some(subject) = &record.client_cert {
        out.extend_from_slice(b",\"client_cert\":");
        push_str(out, subject);
    }
    out.extend_from_slice(b"}\n");
}

/// The trace id of a traceparent the gateway checked or made (`00-<32 hex>-...`).
fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.get(3..35)
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: quotes, and the escapes RFC 8259 requires (`"`, `\` and control
/// characters); everything else, UTF-8 included, is copied in runs.
fn push_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// As serde_json writes a float (shortest round-trip form; `null` when not finite).
fn push_f64(out: &mut Vec<u8>, v: f64) {
    if serde_json::to_writer(&mut *out, &v).is_err() {
        out.extend_from_slice(b"null");
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let (text, len) = ipv4_text(v4);
            out.extend_from_slice(&text[..len]);
        }
        // Rare at the edge, and the standard form (zero compression) is easy to get wrong.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::{json, Value};

    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            ts: UNIX_EPOCH + Duration::from_millis(1_795_322_460_123),
            request_id: http::HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"),
            client_ip: Some("203.0.113.7".parse().unwrap()),
            method: http::Method::GET,
            path: "/api/v1/users/42".into(),
            status: 200,
            route: Some(Arc::from("users")),
            upstream: Some(Arc::from("users-svc")),
            target: Some(Arc::from("127.0.0.1:9001")),
            duration_ms: 1.25,
            upstream_ms: Some(0.875),
            bytes_sent: 1234,
            cache: Some("MISS"),
            consumer: Some("acme".into()),
            traceparent: http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            failed_parts: None,
            operation: None,
            client_cert: None,
        }
    }

    fn parsed(record: &AccessRecord) -> Value {
        let mut out = Vec::new();
        encode(&mut out, record);
        assert_eq!(out.last(), Some(&b'\n'), "one line");
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn a_proxied_request_has_every_field() {
        assert_eq!(
            parsed(&record()),
            json!({
                "ts": "2026-11-22T04:41:00.123Z",
                "request_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "client_ip": "203.0.113.7",
                "method": "GET",
                "path": "/api/v1/users/42",
                "status": 200,
                "route": "users",
                "upstream": "users-svc",
                "target": "127.0.0.1:9001",
                "duration_ms": 1.25,
                "upstream_ms": 0.875,
                "bytes_sent": 1234,
                "cache": "MISS",
                "consumer": "acme",
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            })
        );
    }

    #[test]
    fn what_is_missing_is_null_and_failed_parts_and_operation_only_when_there_are_some() {
        let mut r = record();
        r.client_ip = None;
        r.route = None;
        r.upstream = None;
        r.target = None;
        r.upstream_ms = None;
        r.cache = None;
        r.consumer = None;
        r.traceparent = http::HeaderValue::from_static("");
        let v = parsed(&r);
        assert_eq!(v["client_ip"], "");
        for field in [
            "route",
            "upstream",
            "target",
            "upstream_ms",
            "cache",
            "consumer",
            "trace_id",
        ] {
            assert_eq!(v[field], Value::Null, "{field}");
        }
        assert!(v.get("failed_parts").is_none());

        assert!(v.get("operation").is_none());

        r.failed_parts = Some("orders,reviews".into());
        assert_eq!(parsed(&r)["failed_parts"], "orders,reviews");
        r.operation = Some(Arc::from("UserOrders"));
        assert_eq!(parsed(&r)["operation"], "UserOrders");
    }

    #[test]
    fn strings_are_escaped_as_json_requires() {
        let mut r = record();
        r.path = "/a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{1}i\u{1f}j/é/日本".into();
        r.consumer = Some("quote\"d".into());
        let v = parsed(&r);
        assert_eq!(v["path"], r.path.as_str());
        assert_eq!(v["consumer"], "quote\"d");
    }

    #[test]
    fn numbers_and_addresses_read_back_exactly() {
        let mut r = record();
        for (status, bytes) in [(0u16, 0usize), (7, 9), (404, 10), (599, usize::MAX)] {
            r.status = status;
            r.bytes_sent = bytes;
            let v = parsed(&r);
            assert_eq!(v["status"], status);
            assert_eq!(v["bytes_sent"], bytes as u64);
        }
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "255.255.255.255",
            "2001:db8::1",
            "::1",
        ] {
            r.client_ip = Some(ip.parse().unwrap());
            assert_eq!(parsed(&r)["client_ip"], ip);
        }
        r.duration_ms = 0.001;
        r.upstream_ms = Some(12345.678);
        let v = parsed(&r);
        assert_eq!(v["duration_ms"], 0.001);
        assert_eq!(v["upstream_ms"], 12345.678);
    }
}
