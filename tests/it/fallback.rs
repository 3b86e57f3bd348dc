//! A route's fallback: what it answers when its upstream cannot (down, circuit open, too
//! slow), in place of the gateway's 502/503/504.

use crate::common::faults::{Fault, FaultyUpstream};
use crate::common::Gateway;

async fn gateway(target: std::net::SocketAddr, route_extra: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("posts.json");
    std::fs::write(&body, r#"{"posts":[],"degraded":true}"#).unwrap();
    let gw = Gateway::start(&format!(
        r#"
[upstreams.posts]
targets = ["{target}"]
connect_timeout = "500ms"

[[routes]]
name = "posts"
path = "/api/posts"
upstream = "posts"
fallback = {{ status = 200, body_file = "{}", content_type = "application/json" }}
{route_extra}
"#,
        body.display()
    ))
    .await;
    // The file was read when the config was loaded.
    drop(dir);
    gw
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_upstream_gets_the_client_the_fallback_marked_as_such() {
    let up = FaultyUpstream::start("posts", Fault::ResetOnAccept).await;
    let gw = gateway(up.addr, "").await;
    let resp = gw.get("/api/posts").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["portico-fallback"], "1");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert!(resp.headers().get("x-request-id").is_some());
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"posts":[],"degraded":true}"#
    );
    let metrics = gw.metrics().await;
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("portico_fallback_responses_total{") && l.contains("route=\"posts\"")
        })
        .collect();
    assert_eq!(counted.len(), 1, "{metrics}");
    assert!(counted[0].ends_with(" 1"), "{}", counted[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upstream_past_the_route_timeout_gets_the_fallback() {
    let up = FaultyUpstream::start("posts", Fault::Hang).await;
    let gw = gateway(up.addr, r#"timeout = "300ms""#).await;
    let resp = gw.get("/api/posts").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["portico-fallback"], "1");
    gw.metrics_showing(&[
        "portico_fallback_responses_total{code=\"upstream_timeout\",route=\"posts\"} 1",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstreams_own_errors_and_answers_pass_unchanged() {
    let up = FaultyUpstream::start("posts", Fault::Status503).await;
    let gw = gateway(up.addr, "").await;
    let resp = gw.get("/api/posts").await;
    assert_eq!(
        resp.status(),
        503,
        "the upstream's own 503 is its answer, not the gateway's"
    );
    assert!(resp.headers().get("portico-fallback").is_none());
    up.set(Fault::Healthy);
    let resp = gw.get("/api/posts").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("portico-fallback").is_none());
    // A request no route matches is still a 404 problem, not a fallback.
    assert_eq!(gw.get("/elsewhere").await.status(), 404);
}

#[test]
fn a_fallback_whose_file_cannot_be_read_is_a_config_error() {
    let (code, out) = crate::common::gateway::validate_text(
            "[upstreams.app]\ntargets = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"a\"\npath = \"/a\"\nupstream = \"app\"\nfallback = { status = 700, body_file = \"x.json\" }\n\n[[routes]]\nname = \"b\"\npath = \"/b\"\nupstream = \"app\"\nfallback = { body_file = \"missing.json\" }\n",
    );
    assert_ne!(code, 0);
    assert!(out.contains("routes[0].fallback.status"), "{out}");
    assert!(
        out.contains("routes[1].fallback.body_file") && out.contains("missing.json"),
        "{out}"
    );
}
