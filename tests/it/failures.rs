//! An upstream fails: the client gets a fast, honest 5xx, never a hang.

use std::time::{Duration, Instant};

use crate::common::{
    eventually, one_route, refused_port, spawn_upstream, upstream::spawn_ok, Gateway, Reply,
};

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_is_a_502() {
    let dead = refused_port();
    let gw = Gateway::start(&format!(
        "[upstreams.dead]\ntargets = [\"127.0.0.1:{}\"]\n\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"dead\"\n",
        dead.port
    ))
    .await;
    let resp = gw.get("/x").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "bad_gateway");
    let text = body.to_string();
    assert!(
        !text.contains(&dead.port.to_string()),
        "no internal address in the answer: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_upstream_is_a_504_within_the_read_timeout() {
    let hung = spawn_upstream("hung", |_| Reply::Hang).await;
    let gw = Gateway::start(&one_route(
        "hung",
        hung.addr,
        "read_timeout = \"300ms\"",
        "/",
    ))
    .await;
    let started = Instant::now();
    let resp = gw.get("/x").await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "upstream_timeout");
    // The configured bound, not a default of minutes: generous slack for a loaded CI machine.
    assert!(
        took >= Duration::from_millis(300),
        "answered before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the 300ms read timeout was not applied: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_healthy_target_is_a_503_at_once() {
    let up = spawn_ok("app").await;
    let gw = Gateway::start(&one_route(
        "app",
        up.addr,
        "health_check = { path = \"/health\", interval = \"50ms\", unhealthy = 1, healthy = 1 }",
        "/",
    ))
    .await;
    up.go_down();
    eventually(
        "the only target is marked unhealthy",
        Duration::from_secs(10),
        async || !gw.target_healthy("app", up.addr).await,
    )
    .await;
    let before = up.hits();
    let resp = gw.get("/x").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unavailable");
    assert_eq!(
        up.hits(),
        before,
        "no attempt is made on an unhealthy target"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_error_statuses_are_relayed_not_rewritten() {
    let up = spawn_upstream("app", |_| Reply::Status(503, "busy")).await;
    let gw = Gateway::start(&one_route("app", up.addr, "", "/")).await;
    let resp = gw.get("/x").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-upstream"], "app");
    assert_eq!(resp.text().await.unwrap(), "busy");
}
