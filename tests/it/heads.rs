//! What a client sends before its request is routed: a head that trickles in, one that is
//! too large, one that is not HTTP, framing two readers could read two ways, a CONNECT. Each
//! gets a problem+json answer of its own and the connection is closed; the upstream never
//! sees any of it. Sent as raw bytes, because an HTTP client would not send them.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::http::RawResponse;
use crate::common::raw_request;
use crate::common::wire::gateway_to_wire;

/// Read until the gateway closes the connection, and parse what it sent.
async fn answer(stream: &mut TcpStream) -> RawResponse {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("the gateway answered and closed")
        .ok();
    crate::common::http::parse(&raw)
}

fn assert_problem(resp: &RawResponse, status: u16, code: &str, what: &str) {
    assert_eq!(resp.status, status, "{what}");
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    assert_eq!(resp.json()["code"], code, "{what}");
    assert_eq!(resp.header("connection"), Some("close"), "{what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_that_trickles_in_is_cut_off_by_the_header_timeout() {
    let (gw, up) = gateway_to_wire("header_timeout = \"1s\"").await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    // A byte every 200 ms: every read is quick, the head never completes in time.
    for byte in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ".iter() {
        if slow.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let resp = answer(&mut slow).await;
    assert_problem(&resp, 408, "request_timeout", "slow head");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(up.hits(), 0);

    // A client that connects and sends nothing is closed without an answer.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut raw))
        .await
        .expect("closed after the header timeout")
        .ok();
    assert!(raw.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn heads_and_lines_past_their_limits_are_refused() {
    let (gw, up) = gateway_to_wire("max_header_size = \"8KiB\"\nmax_header_line = \"2KiB\"").await;
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: t", "a".repeat(3000));
    assert_problem(
        &raw_request(gw.addr, &long_target, b"").await,
        414,
        "uri_too_long",
        "a long target",
    );
    let long_line = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}", "b".repeat(3000));
    assert_problem(
        &raw_request(gw.addr, &long_line, b"").await,
        431,
        "header_too_large",
        "a long header line",
    );
    let many: String = (0..10)
        .map(|i| format!("\r\nX-Filler-{i}: {}", "c".repeat(1000)))
        .collect();
    assert_problem(
        &raw_request(gw.addr, &format!("GET / HTTP/1.1\r\nHost: t{many}"), b"").await,
        431,
        "header_too_large",
        "a head over max_header_size",
    );
    let fields: String = (0..120).map(|i| format!("\r\nX-{i}: 1")).collect();
    assert_problem(
        &raw_request(gw.addr, &format!("GET / HTTP/1.1\r\nHost: t{fields}"), b"").await,
        431,
        "header_too_large",
        "too many fields",
    );
    assert_eq!(up.hits(), 0);
    // Just under the limits passes.
    let fits = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}", "b".repeat(1900));
    assert_eq!(raw_request(gw.addr, &fits, b"").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_that_is_not_http_gets_a_problem() {
    let (gw, up) = gateway_to_wire("").await;
    for head in [
        "GET / HTTP/1.1\r\nHost : t",
        "GET / HTTP/1.1\r\nHost: t\r\n folded: on",
        "GET / HTTP/9.9\r\nHost: t",
        "GET  / HTTP/1.1\r\nHost: t",
        "G\0T / HTTP/1.1\r\nHost: t",
        "GET / HTTP/1.1\r\nHost: t\r\nX-Nul: a\0b",
        "GET / HTTP/1.1\r\nHost: t\r\n: empty-name",
    ] {
        assert_problem(
            &raw_request(gw.addr, head, b"").await,
            400,
            "bad_request",
            head,
        );
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_is_refused_with_a_problem() {
    let (gw, up) = gateway_to_wire("").await;
    let resp = raw_request(
        gw.addr,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443",
        b"",
    )
    .await;
    assert_problem(&resp, 405, "method_not_allowed", "CONNECT");
    assert!(resp.header("server").is_none_or(|s| !s.contains("Pingora")));
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn framing_the_upstream_could_read_another_way_is_refused() {
    let (gw, up) = gateway_to_wire("").await;
    let refused = [
        ("Content-Length: 3\r\nContent-Length: 4", "abcd"),
        ("Content-Length: 3, 4", "abcd"),
        ("Content-Length: +3", "abc"),
        (
            "Content-Length: 3\r\nTransfer-Encoding: chunked",
            "0\r\n\r\n",
        ),
        ("Transfer-Encoding: chunked, chunked", "0\r\n\r\n"),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "0\r\n\r\n",
        ),
        ("Transfer-Encoding: gzip, chunked", "0\r\n\r\n"),
        ("Transfer-Encoding: chunked, identity", "0\r\n\r\n"),
    ];
    for (framing, body) in refused {
        let head = format!("POST /upload HTTP/1.1\r\nHost: t\r\n{framing}");
        let resp = raw_request(gw.addr, &head, body.as_bytes()).await;
        assert_problem(&resp, 400, "bad_request", framing);
    }
    let http10 = raw_request(
        gw.addr,
        "POST /upload HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked",
        b"0\r\n\r\n",
    )
    .await;
    assert_problem(&http10, 400, "bad_request", "HTTP/1.0 with chunked");
    assert_eq!(up.hits(), 0, "{:?}", up.seen());

    // A list of equal lengths is one length, and the upstream gets exactly one.
    let resp = raw_request(
        gw.addr,
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\nContent-Length: 3",
        b"abc",
    )
    .await;
    assert_eq!(resp.status, 200);
    let seen = up.seen();
    assert_eq!(seen[0].header_values("content-length"), ["3"]);
    assert_eq!(seen[0].body, b"abc");
}
