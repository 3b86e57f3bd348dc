//! Editing headers as plain `http::HeaderMap`s, with room made once.
//!
//! Pingora keeps a second map with each header name's original case, and every
//! `insert_header` parses the name again and updates (and, once full, regrows and rehashes)
//! both maps: for the few headers a gateway adds to each request and response, that was the
//! largest part of what Portico cost per request (callgrind). Header names are
//! case-insensitive, and what these helpers hand back keeps none: peers receive names in
//! lowercase, as Envoy and HAProxy send them.

use http::HeaderMap;
use pingora_http::{RequestHeader, ResponseHeader};

/// Edit a request's headers as a plain `HeaderMap`, with room for `extra` more. A target
/// that does not round-trip through the URI (absolute-form, or bytes that are not UTF-8) is
/// kept as it was.
pub fn edit_request_headers<T>(
    req: &mut RequestHeader,
    extra: usize,
    edit: impl FnOnce(&mut HeaderMap) -> T,
) -> T {
    let raw_target = (req.uri.path_and_query().map(|p| p.as_str().as_bytes())
        != Some(req.raw_path()))
    .then(|| req.raw_path().to_vec());
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(req, empty).into();
    parts.headers.reserve(extra);
    let out = edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    if let Some(raw) = raw_target {
        // It was valid when Pingora parsed it, so it is valid now.
        if let Err(e) = req.set_raw_path(&raw) {
            log::warn!("could not restore a request target: {e}");
        }
    }
    out
}

/// `edit_request_headers` for a response.
pub fn edit_response_headers<T>(
    resp: &mut ResponseHeader,
    extra: usize,
    edit: impl FnOnce(&mut HeaderMap) -> T,
) -> T {
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(resp, empty).into();
    parts.headers.reserve(extra);
    let out = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    #[test]
    fn editing_keeps_every_header_and_the_target() {
        for target in ["/a/b?x=1", "http://example.com/abs?q"] {
            let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
            req.insert_header("X-Mixed-Case", "1").unwrap();
            req.append_header("accept", "a").unwrap();
            req.append_header("accept", "b").unwrap();
            edit_request_headers(&mut req, 4, |h| {
                h.insert(
                    HeaderName::from_static("x-request-id"),
                    HeaderValue::from_static("id"),
                );
            });
            assert_eq!(req.raw_path(), target.as_bytes());
            assert_eq!(req.headers.get_all("accept").iter().count(), 2);
            assert_eq!(req.headers["x-mixed-case"], "1");
            assert_eq!(req.headers[HeaderName::from_static("x-request-id")], "id");
            let mut wire = Vec::new();
            req.header_to_h1_wire(&mut wire);
            assert!(String::from_utf8(wire).unwrap().contains("x-mixed-case: 1"));
        }
    }
}
