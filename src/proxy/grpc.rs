//! gRPC through the pipeline: a request whose content-type is `application/grpc*` that the
//! gateway answers itself gets a trailers-only gRPC answer (HTTP 200, `grpc-status` and
//! `grpc-message` in the one HEADERS frame) instead of problem+json, as SPEC.md maps the
//! codes; its `grpc-timeout` shortens the request's deadline; and the outcome is counted by
//! its `grpc-status`, from the answer's headers, its trailers, or the gateway's own answer.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use portico_plugins::ErrorCode;

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether `req` is a gRPC call (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            let v = v.as_bytes();
            v.len() >= 16
                && v[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(v.get(16), None | Some(b'+' | b';'))
        })
}

/// The gRPC status code for one of the gateway's own answers (SPEC.md).
pub fn status_for(code: ErrorCode) -> u32 {
    match code {
        ErrorCode::Unauthorized => 16,
        ErrorCode::Forbidden => 7,
        ErrorCode::RateLimited => 8,
        ErrorCode::NoRoute => 12,
        ErrorCode::UpstreamUnavailable | ErrorCode::BadGateway => 14,
        ErrorCode::UpstreamTimeout => 4,
        _ => 13,
    }
}

/// The label a `grpc-status` value is counted under: its canonical name, or `"UNKNOWN"`
/// for anything else a server sent (bounded, whatever it sends).
pub fn status_label(code: Option<u32>) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    match code {
        None => "",
        Some(n) => NAMES.get(n as usize).copied().unwrap_or("UNKNOWN"),
    }
}

/// The `grpc-status` in a header map (an answer's headers, or its trailers).
pub fn status_in(headers: &http::HeaderMap) -> Option<u32> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The call's `grpc-timeout` (gRPC over HTTP/2: 1 to 8 digits and a unit, H M S m u n). A
/// malformed one is ignored, as gRPC servers do.
pub fn timeout(req: &RequestHeader) -> Option<Duration> {
    let text = req.headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Answer a gRPC call with the gateway's own error: trailers-only, the status for `code` and
/// `detail` as `grpc-message` (percent-encoded, as the protocol wants).
pub async fn respond(
    session: &mut Session,
    code: ErrorCode,
    detail: &str,
    request_id: &str,
    extra: &[(HeaderName, HeaderValue)],
) -> pingora_error::Result<()> {
    let mut resp = ResponseHeader::build(200, Some(6))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header(GRPC_STATUS, status_for(code).to_string())?;
    resp.insert_header(GRPC_MESSAGE, percent_encode(detail))?;
    if !request_id.is_empty() {
        resp.insert_header(super::forwarding::X_REQUEST_ID, request_id)?;
    }
    for (name, value) in extra {
        resp.append_header(name.clone(), value.clone())?;
    }
    // Pingora's session writes a response head without ending the stream, and a stream
    // dropped unended (as on a failed proxy attempt) is reset: over HTTP/2 the one HEADERS
    // frame ends it here, as trailers-only means.
    if let pingora_core::protocols::http::ServerSession::H2(h2) = &mut *session.downstream_session {
        return h2.write_response_header(Box::new(resp), true);
    }
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(None, true).await
}

/// gRPC's percent-encoding of `grpc-message`: every byte outside printable ASCII, and `%`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/pkg.Svc/Call", None).unwrap();
        for (n, v) in headers {
            r.insert_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        assert!(is_grpc(&req(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&req(&[("content-type", "application/grpc+proto")])));
        assert!(is_grpc(&req(&[("content-type", "Application/GRPC;x=1")])));
        assert!(!is_grpc(&req(&[("content-type", "application/grpcx")])));
        assert!(!is_grpc(&req(&[("content-type", "application/json")])));
        assert!(!is_grpc(&req(&[])));
    }

    #[test]
    fn gateway_errors_map_to_the_spec_codes() {
        assert_eq!(status_for(ErrorCode::Unauthorized), 16);
        assert_eq!(status_for(ErrorCode::Forbidden), 7);
        assert_eq!(status_for(ErrorCode::RateLimited), 8);
        assert_eq!(status_for(ErrorCode::NoRoute), 12);
        assert_eq!(status_for(ErrorCode::UpstreamUnavailable), 14);
        assert_eq!(status_for(ErrorCode::BadGateway), 14);
        assert_eq!(status_for(ErrorCode::UpstreamTimeout), 4);
        assert_eq!(status_for(ErrorCode::PayloadTooLarge), 13);
    }

    #[test]
    fn grpc_timeout_units() {
        let t = |v: &str| timeout(&req(&[("grpc-timeout", v)]));
        assert_eq!(t("5S"), Some(Duration::from_secs(5)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("100u"), Some(Duration::from_micros(100)));
        assert_eq!(t("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "5", "5s", "123456789S", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("limit 100% reached"), "limit 100%25 reached");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(status_label(Some(14)), "UNAVAILABLE");
        assert_eq!(status_label(Some(99)), "UNKNOWN");
    }
}
