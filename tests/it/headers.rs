//! What the upstream and the client learn from the headers the gateway sets.

use crate::common::wire::gateway_to_wire;
use crate::common::{raw_request, upstream::spawn_ok, Gateway, Upstream};

async fn echo_gateway(trusted: &str) -> (Gateway, Upstream) {
    let up = spawn_ok("app").await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\naccess_log = \"off\"\ntrusted_proxies = [{trusted}]\n\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"app\"\n",
        up.addr
    ))
    .await;
    (gw, up)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_is_kept_when_sane_and_made_otherwise() {
    let (gw, up) = echo_gateway("").await;
    let kept = gw
        .client
        .get(gw.url("/a"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "req-123");
    let replaced = gw
        .client
        .get(gw.url("/b"))
        .header("x-request-id", "bad id\"")
        .send()
        .await
        .unwrap();
    let made = replaced.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(made.len(), 32);
    let seen = up.seen();
    assert_eq!(seen[0].header("x-request-id"), Some("req-123"));
    assert_eq!(seen[1].header("x-request-id"), Some(made.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_from_an_untrusted_client_are_replaced() {
    let (gw, up) = echo_gateway("").await;
    gw.client
        .get(gw.url("/a"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.test")
        .header("host", "api.test")
        .send()
        .await
        .unwrap();
    let seen = &up.seen()[0];
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.test"));
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_from_a_trusted_proxy_are_extended() {
    let (gw, up) = echo_gateway("\"127.0.0.0/8\"").await;
    gw.client
        .get(gw.url("/a"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let seen = &up.seen()[0];
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_named_in_connection_do_not_cross_the_gateway() {
    let (gw, up) = echo_gateway("").await;
    let resp = raw_request(
        gw.addr,
        "GET /a HTTP/1.1\r\nHost: t\r\nX-Internal-Token: secret\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nConnection: close, X-Internal-Token",
        b"",
    )
    .await;
    assert_eq!(resp.status, 200);
    let seen = &up.seen()[0];
    assert_eq!(seen.header("x-internal-token"), None);
    assert_eq!(seen.header("keep-alive"), None);
    assert_eq!(seen.header("x-kept"), Some("yes"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_is_propagated_or_started() {
    let (gw, up) = echo_gateway("").await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    gw.client
        .get(gw.url("/a"))
        .header("traceparent", parent)
        .send()
        .await
        .unwrap();
    gw.client.get(gw.url("/b")).send().await.unwrap();
    let seen = up.seen();
    assert_eq!(seen[0].header("traceparent"), Some(parent));
    let started = seen[1].header("traceparent").unwrap();
    assert!(
        started.starts_with("00-") && started.len() == 55,
        "{started}"
    );
}

const SPOOFED: &str = "X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\n\
    X-Forwarded-Port: 443\r\nX-Forwarded-Prefix: /admin\r\nX-Forwarded-Scheme: https\r\n\
    X-Forwarded-Server: internal\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n\
    True-Client-IP: 6.6.6.6";

#[tokio::test(flavor = "multi_thread")]
async fn identity_and_url_override_headers_from_an_untrusted_client_never_reach_the_upstream() {
    let (gw, up) = gateway_to_wire("").await;
    // A plain GET (the fast driver) and a POST with a body (Pingora's proxy).
    for (head, body) in [
        (
            format!("GET /a HTTP/1.1\r\nHost: api.test\r\n{SPOOFED}"),
            &b""[..],
        ),
        (
            format!("POST /a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2\r\n{SPOOFED}"),
            &b"hi"[..],
        ),
    ] {
        assert_eq!(raw_request(gw.addr, &head, body).await.status, 200);
    }
    for seen in up.seen() {
        assert_eq!(seen.header_values("x-real-ip"), ["127.0.0.1"]);
        for dropped in [
            "forwarded",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-scheme",
            "x-forwarded-server",
            "x-original-url",
            "x-rewrite-url",
            "true-client-ip",
        ] {
            assert!(
                seen.header_values(dropped).is_empty(),
                "{dropped}: {}",
                seen.head
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxys_forwarding_headers_are_kept() {
    let (gw, up) = gateway_to_wire("trusted_proxies = [\"127.0.0.1\"]").await;
    let head =
        format!("GET /a HTTP/1.1\r\nHost: api.test\r\nX-Forwarded-For: 198.51.100.4\r\n{SPOOFED}");
    assert_eq!(raw_request(gw.addr, &head, b"").await.status, 200);
    let seen = &up.seen()[0];
    assert_eq!(seen.header_values("x-real-ip"), ["198.51.100.4"]);
    assert_eq!(seen.header_values("forwarded"), ["for=6.6.6.6;proto=https"]);
    assert_eq!(seen.header_values("x-forwarded-prefix"), ["/admin"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn header_names_with_underscores_are_dropped_by_default() {
    let (gw, up) = gateway_to_wire("").await;
    let head = "POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nTransfer_Encoding: chunked\r\nContent_Length: 100\r\nX_Api_Key: stolen";
    assert_eq!(raw_request(gw.addr, head, b"hi").await.status, 200);
    let plain = "GET /b HTTP/1.1\r\nHost: t\r\nX_Forwarded_For: 6.6.6.6";
    assert_eq!(raw_request(gw.addr, plain, b"").await.status, 200);
    for seen in up.seen() {
        assert!(
            seen.header_names().iter().all(|n| !n.contains('_')),
            "{}",
            seen.head
        );
    }
    assert_eq!(up.seen()[0].body, b"hi");
}

#[tokio::test(flavor = "multi_thread")]
async fn header_names_with_underscores_can_be_refused_or_allowed() {
    let (gw, up) = gateway_to_wire("underscore_headers = \"reject\"").await;
    let resp = raw_request(
        gw.addr,
        "GET /a HTTP/1.1\r\nHost: t\r\nContent_Length: 5",
        b"",
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["code"], "bad_request");
    assert_eq!(up.hits(), 0);

    let (gw, up) = gateway_to_wire("underscore_headers = \"allow\"").await;
    let resp = raw_request(gw.addr, "GET /a HTTP/1.1\r\nHost: t\r\nX_Legacy: 1", b"").await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.seen()[0].header_values("x_legacy"), ["1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_authorization_headers_are_refused() {
    let (gw, up) = gateway_to_wire("").await;
    for head in [
        "GET /a HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b",
        "POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nAuthorization: Bearer a\r\nauthorization: Basic b",
    ] {
        let resp = raw_request(gw.addr, head, b"").await;
        assert_eq!(resp.status, 400, "{head}");
        assert_eq!(resp.json()["code"], "bad_request");
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_a_client_names_in_connection_are_dropped_and_the_gateways_own_still_set() {
    let (gw, up) = gateway_to_wire("").await;
    // A client may name any header hop-by-hop, even ones the gateway sets itself. They are
    // removed before the request goes on, and then the gateway sets its own.
    let named = "Connection: close, Authorization, X-Forwarded-For, X-Request-Id, X-Private\r\n\
                 Authorization: Bearer t\r\nX-Forwarded-For: 6.6.6.6\r\nX-Private: 1\r\nX-Request-Id: req-1";
    for head in [
        format!("GET /a HTTP/1.1\r\nHost: t\r\n{named}"),
        format!("POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n{named}"),
    ] {
        let body = if head.starts_with("POST") {
            &b"hi"[..]
        } else {
            &b""[..]
        };
        let resp = raw_request(gw.addr, &head, body).await;
        assert_eq!(resp.status, 200, "{head}");
    }
    for seen in up.seen() {
        assert!(
            seen.header_values("authorization").is_empty(),
            "{}",
            seen.head
        );
        assert!(seen.header_values("x-private").is_empty(), "{}", seen.head);
        assert_eq!(seen.header_values("x-forwarded-for"), ["127.0.0.1"]);
        let ids = seen.header_values("x-request-id");
        assert_eq!(ids.len(), 1, "{}", seen.head);
        assert!(seen
            .header_values("connection")
            .iter()
            .all(|v| !v.contains("Authorization")));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_header_listing_what_cannot_be_hop_by_hop_is_refused() {
    let (gw, up) = gateway_to_wire("").await;
    for connection in [
        "Host",
        "close, Content-Length",
        "Transfer-Encoding",
        "\"quoted\"",
    ] {
        let head = format!("GET /a HTTP/1.1\r\nHost: t\r\nConnection: {connection}");
        let resp = raw_request(gw.addr, &head, b"").await;
        assert_eq!(resp.status, 400, "{connection}");
        assert_eq!(resp.json()["code"], "bad_request");
    }
    assert_eq!(up.hits(), 0);
}
