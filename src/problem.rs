//! RFC 9457 problem+json: the one shape of every answer Portico makes itself.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use portico_plugins::ErrorCode;
use serde::Serialize;

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    instance: &'a str,
    code: &'a str,
    request_id: &'a str,
}

/// Echoed paths are cut short: an error body is no place for a megabyte of path.
const MAX_INSTANCE: usize = 256;

pub fn body(code: ErrorCode, detail: &str, instance: &str, request_id: &str) -> Bytes {
    let instance = match instance.char_indices().nth(MAX_INSTANCE) {
        Some((cut, _)) => &instance[..cut],
        None => instance,
    };
    let kind = format!("urn:portico:error:{}", code.as_str());
    let problem = Problem {
        kind: &kind,
        title: code.title(),
        status: code.status(),
        detail,
        instance,
        code: code.as_str(),
        request_id,
    };
    serde_json::to_vec(&problem).map_or_else(|_| Bytes::from_static(b"{}"), Bytes::from)
}

/// The response header of a problem answer, with any extra headers (Allow, Retry-After,
/// WWW-Authenticate).
pub fn header(
    code: ErrorCode,
    body_len: usize,
    request_id: &str,
    extra: &[(HeaderName, HeaderValue)],
) -> pingora_error::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(code.status(), Some(4 + extra.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/problem+json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body_len)?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    resp.insert_header("x-request-id", request_id)?;
    for (name, value) in extra {
        resp.insert_header(name.clone(), value.clone())?;
    }
    Ok(resp)
}

/// Answer the client with a problem, before or instead of proxying.
pub async fn respond(
    session: &mut Session,
    code: ErrorCode,
    detail: &str,
    request_id: &str,
    extra: &[(HeaderName, HeaderValue)],
) -> pingora_error::Result<()> {
    // A gRPC client reads its own error form, not problem+json (SPEC.md).
    if crate::proxy::grpc::is_grpc(session.req_header()) {
        return crate::proxy::grpc::respond(session, code, detail, request_id, extra).await;
    }
    let instance = session.req_header().uri.path().to_string();
    let body = body(code, detail, &instance, request_id);
    let resp = header(code, body.len(), request_id, extra)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_every_member_the_spec_names() {
        let b = body(
            ErrorCode::RateLimited,
            "limit of 100 per 1m reached",
            "/api/v1/users/42",
            "6f1c",
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "urn:portico:error:rate_limited");
        assert_eq!(v["title"], "Too Many Requests");
        assert_eq!(v["status"], 429);
        assert_eq!(v["detail"], "limit of 100 per 1m reached");
        assert_eq!(v["instance"], "/api/v1/users/42");
        assert_eq!(v["code"], "rate_limited");
        assert_eq!(v["request_id"], "6f1c");
    }

    #[test]
    fn long_paths_are_cut_short() {
        let long = "/a".repeat(1000);
        let v: serde_json::Value =
            serde_json::from_slice(&body(ErrorCode::NoRoute, "", &long, "x")).unwrap();
        assert_eq!(v["instance"].as_str().unwrap().len(), MAX_INSTANCE);
    }
}
