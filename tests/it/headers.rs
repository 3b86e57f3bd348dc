//! What the upstream and the client learn from the headers the gateway sets.

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
