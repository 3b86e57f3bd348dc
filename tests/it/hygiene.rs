//! A client tries to reach what a route's policy protects by spelling the path another way,
//! or sends a body too large: it gets a 400 or 413, and the upstream never sees the request.

use crate::common::wire::WireUpstream;
use crate::common::{raw_request, upstream::spawn_ok, Gateway};

async fn gateway_with_upstream(extra: &str) -> (Gateway, crate::common::Upstream) {
    let up = spawn_ok("app").await;
    let gw = Gateway::start(&format!(
        "{extra}[upstreams.app]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"all\"\npath = \"/\"\nupstream = \"app\"\n",
        up.addr
    ))
    .await;
    (gw, up)
}

#[tokio::test(flavor = "multi_thread")]
async fn traversal_and_encoded_paths_are_rejected_before_routing() {
    let (gw, up) = gateway_with_upstream("").await;
    let attempts = [
        "/public/../admin",
        "/public/./admin",
        "/public/..",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/public/%2e/admin",
        "/public%2fadmin",
        "/public%2Fadmin",
        "/public%5cadmin",
        "/public\\admin",
        "/public%00.json",
        "//admin",
        "/public//admin",
        "/admin;jsessionid=x/secret",
        "/bad%zzescape",
    ];
    for path in attempts {
        let resp = raw_request(gw.addr, &format!("GET {path} HTTP/1.1\r\nHost: t"), b"").await;
        assert_eq!(resp.status, 400, "{path} should be refused");
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json"),
            "{path}"
        );
        assert_eq!(resp.json()["code"], "bad_request", "{path}");
    }
    assert_eq!(up.hits(), 0, "no spelling of a path may reach the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_is_routed_is_what_is_sent_upstream() {
    let (gw, up) = gateway_with_upstream("").await;
    let resp = raw_request(
        gw.addr,
        "GET /%61dmin/%7euser/a%2bb?q=%2e%2e HTTP/1.1\r\nHost: t",
        b"",
    )
    .await;
    assert_eq!(resp.status, 200);
    // Unreserved escapes are decoded; reserved ones stay escaped (upper-cased); the query is
    // passed through untouched.
    assert_eq!(up.seen()[0].uri, "/admin/~user/a%2Bb?q=%2e%2e");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_is_refused_without_touching_the_upstream() {
    let (gw, up) = gateway_with_upstream(
        "[server]\nlisten = [\"${PORTICO_LISTEN}\"]\naccess_log = \"off\"\nmax_request_body = \"1KiB\"\n\n",
    )
    .await;
    let body = vec![b'x'; 2048];
    let resp = raw_request(
        gw.addr,
        &format!(
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}",
            body.len()
        ),
        &body,
    )
    .await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["code"], "payload_too_large");
    assert_eq!(up.hits(), 0);

    // A body exactly at the limit goes through.
    let ok = gw
        .client
        .post(gw.url("/upload"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(up.seen()[0].body_len, 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_over_the_limit_is_refused() {
    let (gw, up) = gateway_with_upstream(
        "[server]\nlisten = [\"${PORTICO_LISTEN}\"]\naccess_log = \"off\"\nmax_request_body = \"1KiB\"\n\n",
    )
    .await;
    let chunk = vec![b'x'; 800];
    let mut body = Vec::new();
    for _ in 0..3 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_request(
        gw.addr,
        "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked",
        &body,
    )
    .await;
    assert_eq!(resp.status, 413);
    assert!(
        up.seen().iter().all(|s| s.body_len <= 1024),
        "the upstream never gets more than the limit"
    );
}

/// A catch-all route in front of one upstream, and `/admin` on the same upstream behind an
/// API key: the shape every bypass through a differently spelled target aims at.
async fn protected_admin_gateway(up: &WireUpstream) -> Gateway {
    Gateway::start(&format!(
        r#"[consumers.ops]
api_keys = ["ops-key-0123456789"]

[plugins.keys]
kind = "api_key"

[upstreams.app]
targets = ["{}"]

[[routes]]
name = "all"
path = "/"
upstream = "app"

[[routes]]
name = "admin"
path = "/admin"
upstream = "app"
plugins = ["keys"]
"#,
        up.addr
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_not_in_origin_form_cannot_skip_the_protected_route() {
    let up = WireUpstream::start().await;
    let gw = protected_admin_gateway(&up).await;
    // Each would be routed as "/" (the catch-all) by the parser's reading, while its raw
    // bytes, forwarded, name the protected path.
    let refused = [
        ("admin", "t"),
        ("admin/secret", "t"),
        ("admin?x=1", "t"),
        ("t:80/admin", "t"),
        ("*", "t"),
        ("http://other.example/admin", "t"),
        ("http://t@other.example/admin", "t"),
        ("HTTP://other.example/admin", "t"),
        ("ftp://t/admin", "t"),
        ("foo:bar://t/admin", "t"),
        ("http:///admin", "t"),
    ];
    for (target, host) in refused {
        let resp = raw_request(
            gw.addr,
            &format!("GET {target} HTTP/1.1\r\nHost: {host}"),
            b"",
        )
        .await;
        assert_eq!(resp.status, 400, "{target} should be refused");
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json"),
            "{target}"
        );
        assert_eq!(resp.json()["code"], "bad_request", "{target}");
    }
    assert_eq!(
        up.hits(),
        0,
        "nothing reached the upstream: {:?}",
        up.seen()
    );

    // An absolute-form target naming this host is the same request as its origin form: it is
    // routed to the protected route, and what goes upstream is the path that was routed.
    let without_key = raw_request(gw.addr, "GET http://t/admin HTTP/1.1\r\nHost: t", b"").await;
    assert_eq!(without_key.status, 401);
    assert_eq!(up.hits(), 0);
    let with_key = raw_request(
        gw.addr,
        "GET http://t/admin/stats?x=1 HTTP/1.1\r\nHost: t\r\nX-Api-Key: ops-key-0123456789",
        b"",
    )
    .await;
    assert_eq!(with_key.status, 200);
    let catch_all = raw_request(gw.addr, "GET HTTP://t/%61bout HTTP/1.1\r\nHost: t", b"").await;
    assert_eq!(catch_all.status, 200);
    let targets: Vec<String> = up.seen().iter().map(|r| r.target().to_string()).collect();
    assert_eq!(targets, ["/admin/stats?x=1", "/about"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_one_valid_host_is_refused_before_routing() {
    let up = WireUpstream::start().await;
    let gw = protected_admin_gateway(&up).await;
    let refused = [
        "GET / HTTP/1.1",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: a",
        "GET / HTTP/1.1\r\nHost: a:80:80",
        "GET / HTTP/1.1\r\nHost: a/admin",
        "GET / HTTP/1.1\r\nHost: user@a",
        "GET / HTTP/1.1\r\nHost: a\tb",
        "GET / HTTP/1.1\r\nHost: a:8x",
        "GET / HTTP/1.1\r\nHost: [::1",
    ];
    for head in refused {
        let resp = raw_request(gw.addr, head, b"").await;
        assert_eq!(resp.status, 400, "{head:?} should be refused");
        assert_eq!(resp.json()["code"], "bad_request", "{head:?}");
    }
    assert_eq!(up.hits(), 0, "{:?}", up.seen());

    for head in [
        "GET / HTTP/1.1\r\nHost: t:8080",
        "GET / HTTP/1.1\r\nHost: [::1]:8080",
        "GET / HTTP/1.0",
    ] {
        let resp = raw_request(gw.addr, head, b"").await;
        assert_eq!(resp.status, 200, "{head:?}");
    }
}
