//! Which requests the direct path takes, judged from the first bytes a client sent.
//!
//! Only a request whose head leaves nothing to interpret: HTTP/1.1, an origin-form target,
//! one `Host`, no body, nothing hop-by-hop but `Connection: keep-alive` or `close`, and no
//! bytes after the head. Anything else (a body, an upgrade, `Expect`, an absolute-form
//! target, a duplicated `Host`, a `Connection` header naming other headers, a pipelined
//! request, a head longer than one read) goes through Pingora's full proxy, which
//! reconciles and sanitises such requests. So the direct path never has to.

/// The most header lines looked at; a longer head takes the full path.
const MAX_HEADERS: usize = 64;

/// Headers whose presence sends a request to the full path: a body or its framing, an
/// upgrade, an expectation, or hop-by-hop headers the full path knows how to strip.
const FULL_PATH_HEADERS: [&str; 10] = [
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
];

/// Whether `first` (what one read of a client connection returned) is one complete request
/// head the direct path may serve.
pub fn takes(first: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = req.parse(first) else {
        return false;
    };
    if head_len != first.len() || req.version != Some(1) {
        return false;
    }
    if req.method.is_none_or(|m| m == "CONNECT") || !req.path.is_some_and(|p| p.starts_with('/')) {
        return false;
    }
    let mut hosts = 0;
    for header in req.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            if header.value != b"0" {
                return false;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            if !only_persistence(header.value) {
                return false;
            }
        } else if FULL_PATH_HEADERS
            .iter()
            .any(|full| name.eq_ignore_ascii_case(full))
        {
            return false;
        }
    }
    hosts == 1
}

/// A `Connection` value that only says whether to keep the connection open.
fn only_persistence(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .all(|token| {
            token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &str) -> Vec<u8> {
        format!("{}\r\n\r\n", lines.replace('\n', "\r\n")).into_bytes()
    }

    #[test]
    fn takes_plain_requests_without_a_body() {
        for request in [
            "GET / HTTP/1.1\nHost: a",
            "GET /users/7?x=1 HTTP/1.1\nHost: api.example.com\nAccept: */*",
            "HEAD /x HTTP/1.1\nhost: a\nConnection: keep-alive",
            "DELETE /x HTTP/1.1\nHost: a\nContent-Length: 0\nConnection: Close",
            "GET / HTTP/1.1\nHost: a\nAuthorization: Bearer t\nX-Request-Id: abc",
        ] {
            assert!(takes(&head(request)), "{request:?}");
        }
    }

    #[test]
    fn leaves_anything_to_interpret_to_the_full_proxy() {
        for request in [
            "POST /x HTTP/1.1\nHost: a\nContent-Length: 5",
            "POST /x HTTP/1.1\nHost: a\nTransfer-Encoding: chunked",
            "GET /chat HTTP/1.1\nHost: a\nUpgrade: websocket\nConnection: Upgrade",
            "PUT /x HTTP/1.1\nHost: a\nContent-Length: 0\nExpect: 100-continue",
            "GET / HTTP/1.1\nHost: a\nConnection: keep-alive, X-Secret",
            "GET / HTTP/1.1\nHost: a\nKeep-Alive: timeout=5",
            "GET / HTTP/1.1\nHost: a\nProxy-Authorization: Basic x",
            "GET / HTTP/1.1\nHost: a\nHost: b",
            "GET / HTTP/1.1",
            "GET / HTTP/1.0\nHost: a",
            "GET http://a/ HTTP/1.1\nHost: a",
            "CONNECT a:443 HTTP/1.1\nHost: a:443",
            "OPTIONS * HTTP/1.1\nHost: a",
        ] {
            assert!(!takes(&head(request)), "{request:?}");
        }
    }

    #[test]
    fn takes_only_a_whole_head_and_nothing_after_it() {
        let mut pipelined = head("GET /a HTTP/1.1\nHost: a");
        pipelined.extend_from_slice(&head("GET /b HTTP/1.1\nHost: a"));
        assert!(!takes(&pipelined));
        assert!(!takes(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!takes(b"not http at all\r\n\r\n"));
    }
}
