//! A request head as it arrives: read whole within its deadline and size limits, checked
//! for what no driver may be handed, and sorted to the driver that serves it.
//!
//! The connection loop reads every request head itself, so a client that trickles its head
//! is cut off by one deadline for the whole head (`server.header_timeout`, 408), not just a
//! timeout per read; a head past `server.max_header_size` or with a line past
//! `server.max_header_line` is refused before any of it is kept (431; 414 for the request
//! line). A head that Pingora's parser would refuse with a bare 400 of its own (framing it
//! cannot trust, an authority that contradicts `Host`) is refused here with a problem+json
//! answer instead, so every error Portico makes is one of its problems.
//!
//! The fast driver takes an HTTP/1.1 request with an origin-form target and one valid
//! `Host`, with or without a body (framed by one `Content-Length` or chunked, checked
//! below): the common requests of an API. Anything else (an upgrade, `Expect`, `TE` or
//! `Trailer`, HTTP/1.0, an absolute-form target, bytes after a bodiless head, which would be
//! a pipelined request) goes through Pingora's full proxy, which reconciles such requests.

use std::time::Duration;

use portico_plugins::ErrorCode;

use crate::proxy::target;

/// What a request head may be (`[server]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// The whole head must arrive within this.
    pub timeout: Duration,
    /// The whole head, request line and header lines with their line ends.
    pub max_size: usize,
    /// One line: the request line, or one header field.
    pub max_line: usize,
}

/// The most header fields in one head, as Envoy allows by default.
const MAX_HEADERS: usize = 100;

/// Headers whose presence sends a request to the full proxy: an upgrade, an expectation,
/// trailers, or hop-by-hop headers the full proxy knows how to handle.
const FULL_PROXY_HEADERS: [&str; 7] = [
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
];

/// Why a head is refused: the problem the client gets before the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub detail: &'static str,
}

impl Refusal {
    fn new(code: ErrorCode, detail: &'static str) -> Self {
        Refusal { code, detail }
    }
}

/// What the bytes read so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Not the whole head yet, and nothing wrong so far.
    Partial,
    /// A whole head of `len` bytes, and which driver may serve it.
    Complete {
        len: usize,
        driver: Fit,
    },
    Refused(Refusal),
}

/// Which driver a whole head may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The fast driver: no body.
    Fast,
    /// The fast driver, with a body (which a route that caches must leave to Pingora's
    /// proxy, where the cache is: the fast driver cannot hand a request over once its body
    /// has started to be read).
    FastWithBody,
    /// Pingora's proxy.
    Full,
}

/// Check `buf`, the bytes a client has sent of its next request so far.
pub fn check(buf: &[u8], limits: &HeadLimits) -> Head {
    // No line can be longer than everything read (the common case: a head of a few hundred
    // bytes), so only a longer read is scanned.
    if buf.len() > limits.max_line {
        if let Some(refusal) = overlong_line(buf, limits.max_line) {
            return Head::Refused(refusal);
        }
    }
    // Left uninitialised: httparse fills only what it parses (3 KiB not written per request).
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_size => {
            return Head::Refused(too_large())
        }
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Head::Refused(Refusal::new(
                ErrorCode::HeaderTooLarge,
                "the request has more than 100 header fields",
            ))
        }
        Err(_) => {
            return Head::Refused(Refusal::new(
                ErrorCode::BadRequest,
                "the request head is not valid HTTP/1.1",
            ))
        }
    };
    if len > limits.max_size {
        return Head::Refused(too_large());
    }
    if req.method == Some("CONNECT") {
        return Head::Refused(Refusal::new(
            ErrorCode::MethodNotAllowed,
            "CONNECT is not served: Portico is not a forward proxy",
        ));
    }
    if let Some(driver) = fast(&req, len == buf.len()) {
        return Head::Complete { len, driver };
    }
    match framing_and_authority(&req) {
        Ok(()) => Head::Complete {
            len,
            driver: Fit::Full,
        },
        Err(refusal) => Head::Refused(refusal),
    }
}

fn too_large() -> Refusal {
    Refusal::new(
        ErrorCode::HeaderTooLarge,
        "the request head is larger than the gateway accepts",
    )
}

/// A line of the head longer than `max`, counting the unfinished last one: the request line
/// gets a 414, a header line a 431. Bytes after the head (a body) are not looked at.
fn overlong_line(buf: &[u8], max: usize) -> Option<Refusal> {
    let mut start = 0;
    let mut first = true;
    let refusal = |first: bool| {
        Some(if first {
            Refusal::new(
                ErrorCode::UriTooLong,
                "the request line is longer than the gateway accepts",
            )
        } else {
            Refusal::new(
                ErrorCode::HeaderTooLarge,
                "a header line is longer than the gateway accepts",
            )
        })
    };
    for (i, &b) in buf.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let line = &buf[start..i];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > max {
            return refusal(first);
        }
        if line.is_empty() && !first {
            return None;
        }
        start = i + 1;
        first = false;
    }
    (buf.len() - start > max).then(|| refusal(first)).flatten()
}

/// Whether the fast driver may serve this head, and with a body or not. `nothing_after`:
/// the read ended with the head.
fn fast(req: &httparse::Request<'_, '_>, nothing_after: bool) -> Option<Fit> {
    if req.version != Some(1) || !req.path.is_some_and(|p| p.starts_with('/')) {
        return None;
    }
    let mut hosts = 0;
    // A body is framed by exactly one plain Content-Length or one `chunked`, never both.
    let mut framings = 0;
    let mut has_body = false;
    for header in req.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            // One Pingora's parser would refuse (userinfo, say) is refused here instead.
            if !target::valid_host(header.value) {
                return None;
            }
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            let value = header.value;
            if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            framings += 1;
            has_body |= value.iter().any(|&d| d != b'0');
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !header.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return None;
            }
            framings += 1;
            has_body = true;
        } else if FULL_PROXY_HEADERS
            .iter()
            .any(|full| name.eq_ignore_ascii_case(full))
        {
            return None;
        }
    }
    if hosts != 1 || framings > 1 {
        return None;
    }
    match (has_body, nothing_after) {
        (false, true) => Some(Fit::Fast),
        // Bytes after a bodiless head are a pipelined request: the full proxy's.
        (false, false) => None,
        (true, _) => Some(Fit::FastWithBody),
    }
}

/// What Pingora's parser would refuse on its own (with a bare 400): body framing that two
/// readers could read differently (RFC 9112 section 6), and a target or `Host` that names
/// something else than the request is routed by (`target`).
fn framing_and_authority(req: &httparse::Request<'_, '_>) -> Result<(), Refusal> {
    let bad = |detail| Err(Refusal::new(ErrorCode::BadRequest, detail));
    let values = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let mut lengths = values("content-length").peekable();
    let has_length = lengths.peek().is_some();
    let mut length = None;
    for value in lengths {
        for part in value.split(|b| *b == b',') {
            let part = part.trim_ascii();
            let parsed = (!part.is_empty() && part.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                .flatten();
            match (parsed, length) {
                (None, _) => return bad("the Content-Length is not a number"),
                (Some(n), Some(seen)) if n != seen => {
                    return bad("the request has Content-Length values that differ")
                }
                (Some(n), _) => length = Some(n),
            }
        }
    }
    let mut codings = 0;
    for value in values("transfer-encoding") {
        for coding in value.split(|b| *b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            if !coding.eq_ignore_ascii_case(b"chunked") {
                return bad("the only Transfer-Encoding accepted is chunked");
            }
            codings += 1;
        }
    }
    match codings {
        0 => {}
        1 if req.version == Some(0) => {
            return bad("an HTTP/1.0 request cannot have a Transfer-Encoding")
        }
        1 if has_length => return bad("the request has both Content-Length and Transfer-Encoding"),
        1 => {}
        _ => return bad("the request lists chunked more than once"),
    }
    let version_11 = req.version == Some(1);
    let hosts = values("host");
    let raw_target = req.path.unwrap_or("").as_bytes();
    target::check_raw(version_11, raw_target, hosts)
        .map(|_| ())
        .map_err(|rejection| Refusal::new(ErrorCode::BadRequest, rejection.detail()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        timeout: Duration::from_secs(10),
        max_size: 4096,
        max_line: 1024,
    };

    fn head(lines: &str) -> Vec<u8> {
        format!("{}\r\n\r\n", lines.replace('\n', "\r\n")).into_bytes()
    }

    fn refused(bytes: &[u8]) -> ErrorCode {
        match check(bytes, &LIMITS) {
            Head::Refused(r) => r.code,
            other => panic!("{:?} was {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn driver_of(request: &str) -> Fit {
        let bytes = head(request);
        match check(&bytes, &LIMITS) {
            Head::Complete { len, driver } if len == bytes.len() => driver,
            other => panic!("{request:?} was {other:?}"),
        }
    }

    #[test]
    fn common_requests_go_to_the_fast_driver() {
        for request in [
            "GET / HTTP/1.1\nHost: a",
            "GET /users/7?x=1 HTTP/1.1\nHost: api.example.com\nAccept: */*",
            "HEAD /x HTTP/1.1\nhost: a\nConnection: keep-alive",
            "DELETE /x HTTP/1.1\nHost: a\nContent-Length: 0\nConnection: Close",
            "GET / HTTP/1.1\nHost: a\nAuthorization: Bearer t\nX-Request-Id: abc",
            "GET / HTTP/1.1\nHost: a\nConnection: keep-alive, X-Secret\nX-Secret: 1",
            "GET / HTTP/1.1\nHost: a\nKeep-Alive: timeout=5",
        ] {
            assert_eq!(driver_of(request), Fit::Fast, "{request:?}");
        }
        for request in [
            "POST /x HTTP/1.1\nHost: a\nContent-Length: 5",
            "POST /x HTTP/1.1\nHost: a\nTransfer-Encoding: chunked",
            "PUT /x HTTP/1.1\nHost: a\nTransfer-Encoding: Chunked\nConnection: close",
        ] {
            assert_eq!(driver_of(request), Fit::FastWithBody, "{request:?}");
        }
        // The body's first bytes may come with the head.
        let mut with_body = head("POST /x HTTP/1.1\nHost: a\nContent-Length: 5");
        let len = with_body.len();
        with_body.extend_from_slice(b"hel");
        let want = Head::Complete {
            len,
            driver: Fit::FastWithBody,
        };
        assert_eq!(check(&with_body, &LIMITS), want);
    }

    #[test]
    fn anything_else_goes_to_the_full_proxy() {
        for request in [
            "GET /chat HTTP/1.1\nHost: a\nUpgrade: websocket\nConnection: Upgrade",
            "PUT /x HTTP/1.1\nHost: a\nContent-Length: 5\nExpect: 100-continue",
            "GET / HTTP/1.1\nHost: a\nProxy-Authorization: Basic x",
            "GET / HTTP/1.1\nHost: a\nTE: trailers",
            "GET / HTTP/1.0\nHost: a",
            "GET http://a/ HTTP/1.1\nHost: a",
            "POST /x HTTP/1.1\nHost: a\nContent-Length: 5\nContent-Length: 5",
            "POST /x HTTP/1.1\nHost: a\nContent-Length: 5, 5",
        ] {
            assert_eq!(driver_of(request), Fit::Full, "{request:?}");
        }
        let mut pipelined = head("GET /a HTTP/1.1\nHost: a");
        let first = pipelined.len();
        pipelined.extend_from_slice(&head("GET /b HTTP/1.1\nHost: a"));
        let want = Head::Complete {
            len: first,
            driver: Fit::Full,
        };
        assert_eq!(check(&pipelined, &LIMITS), want);
    }

    #[test]
    fn an_unfinished_head_waits_for_more_until_it_is_too_large() {
        assert_eq!(
            check(b"GET / HTTP/1.1\r\nHost: a\r\n", &LIMITS),
            Head::Partial
        );
        assert_eq!(check(b"GE", &LIMITS), Head::Partial);
        let mut long = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            long.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(40)).as_bytes());
        }
        assert_eq!(refused(&long), ErrorCode::HeaderTooLarge);
    }

    #[test]
    fn long_lines_and_too_many_fields_are_refused() {
        let target = format!("GET /{} HTTP/1.1\nHost: a", "a".repeat(2000));
        assert_eq!(refused(&head(&target)), ErrorCode::UriTooLong);
        // Even before the line ends.
        let unfinished = format!("GET /{}", "a".repeat(2000));
        assert_eq!(refused(unfinished.as_bytes()), ErrorCode::UriTooLong);
        let field = format!("GET / HTTP/1.1\nHost: a\nX-Big: {}", "b".repeat(2000));
        assert_eq!(refused(&head(&field)), ErrorCode::HeaderTooLarge);
        let many: String = (0..101).map(|i| format!("\nX-{i}: 1")).collect();
        assert_eq!(
            refused(&head(&format!("GET / HTTP/1.1\nHost: a{many}"))),
            ErrorCode::HeaderTooLarge
        );
        // A body after the head is not a line of it.
        let mut with_body = head("POST / HTTP/1.1\nHost: a\nContent-Length: 3000");
        with_body.extend_from_slice(&[b'x'; 3000]);
        assert!(matches!(check(&with_body, &LIMITS), Head::Complete { .. }));
    }

    #[test]
    fn framing_two_readers_could_read_differently_is_refused() {
        for request in [
            "POST / HTTP/1.1\nHost: a\nContent-Length: 5\nContent-Length: 6",
            "POST / HTTP/1.1\nHost: a\nContent-Length: 5, 6",
            "POST / HTTP/1.1\nHost: a\nContent-Length: +5",
            "POST / HTTP/1.1\nHost: a\nContent-Length: 0x5",
            "POST / HTTP/1.1\nHost: a\nContent-Length: ",
            "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked, chunked",
            "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nTransfer-Encoding: chunked",
            "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: gzip, chunked",
            "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked, identity",
            "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: xchunked",
            "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nContent-Length: 5",
            "POST / HTTP/1.0\nHost: a\nTransfer-Encoding: chunked",
            "GET http://b/ HTTP/1.1\nHost: a",
            "GET / HTTP/1.1\nHost: a\nHost: b",
            "GET admin HTTP/1.1\nHost: a",
            "GET / HTTP/1.1\nHost: user@a",
            "GET / HTTP/1.1",
            "GET / HTTP/1.1\nHost : a",
            "GET / HTTP/1.1\nHost: a\n folded: value",
            "GET /\0 HTTP/1.1\nHost: a",
        ] {
            assert_eq!(
                refused(&head(request)),
                ErrorCode::BadRequest,
                "{request:?}"
            );
        }
        // Equal duplicates are one length.
        let same = head("POST / HTTP/1.1\nHost: a\nContent-Length: 5\nContent-Length: 5");
        assert!(matches!(
            check(&same, &LIMITS),
            Head::Complete {
                driver: Fit::Full,
                ..
            }
        ));
        assert_eq!(
            refused(&head("CONNECT a:443 HTTP/1.1\nHost: a:443")),
            ErrorCode::MethodNotAllowed
        );
    }
}
