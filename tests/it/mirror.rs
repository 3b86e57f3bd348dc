//! Shadow traffic: a route copies a share of its requests, bodies included, to another
//! upstream, and nothing the mirror does reaches the client.

use std::time::Duration;

use crate::common::gateway::validate_text;
use crate::common::upstream::spawn_ok;
use crate::common::{eventually, refused_port, spawn_upstream, Gateway, Reply, Upstream};

/// Upstream `app`, a `shadow` at `shadow`, and a route `/api` mirroring `percent` to it.
async fn mirror_gateway(app: &Upstream, shadow: &str, percent: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[upstreams.app]
targets = ["{}"]

[upstreams.shadow]
targets = ["{shadow}"]
retry = {{ attempts = 0 }}

[[routes]]
name = "posts"
path = "/api"
upstream = "app"
mirror = {{ upstream = "shadow", percent = {percent} }}
"#,
        app.addr
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mirror_gets_a_copy_of_each_request_with_its_body() {
    let app = spawn_upstream("app", |seen| {
        Reply::Body(201, format!("app saw {}", seen.body_len))
    })
    .await;
    let shadow = spawn_upstream("shadow", |_| Reply::Status(500, "the mirror is broken")).await;
    let gw = mirror_gateway(&app, &shadow.addr.to_string(), "100").await;
    let body = "x".repeat(100_000);
    for i in 0..5 {
        let resp = gw
            .client
            .post(gw.url(&format!("/api/posts/{i}?draft=1")))
            .header("x-request-id", format!("copy-{i}"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        // The client gets the app's answer, never the mirror's 500.
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.text().await.unwrap(), "app saw 100000");
    }
    eventually("five copies", Duration::from_secs(10), async || {
        shadow.hits() == 5
    })
    .await;
    let mut copies = shadow.seen();
    copies.sort_by(|a, b| a.uri.cmp(&b.uri));
    for (i, copy) in copies.iter().enumerate() {
        assert_eq!(copy.method, "POST");
        assert_eq!(copy.uri, format!("/api/posts/{i}?draft=1"));
        assert_eq!(copy.body_len, 100_000);
        assert_eq!(
            copy.header("x-request-id"),
            Some(format!("copy-{i}").as_str())
        );
    }
    gw.metrics_showing(&["portico_mirror_requests_total{result=\"sent\",route=\"posts\"} 5"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn percent_copies_a_share_of_the_requests() {
    let app = spawn_ok("app").await;
    let shadow = spawn_ok("shadow").await;
    let gw = mirror_gateway(&app, &shadow.addr.to_string(), "25").await;
    for _ in 0..800 {
        assert_eq!(gw.get("/api/x").await.status(), 200);
    }
    let mut copies = 0;
    eventually("the copies are in", Duration::from_secs(10), async || {
        let metrics = gw.metrics().await;
        copies = metrics
            .lines()
            .find(|l| l.starts_with("portico_mirror_requests_total{result=\"sent\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
            .unwrap_or(0);
        copies > 0 && shadow.hits() == copies
    })
    .await;
    // binomial(800, 0.25): mean 200, sd 12.2; five sd either way.
    assert!((139..=261).contains(&copies), "{copies} copies of 800");
    assert_eq!(app.hits(), 800);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_mirror_holds_no_client_and_its_copies_are_bounded() {
    let app = spawn_ok("app").await;
    let shadow = spawn_upstream("shadow", |_| Reply::Hang).await;
    let gw = mirror_gateway(&app, &shadow.addr.to_string(), "100").await;
    // Each answer comes while every copy so far hangs at the mirror (a hang would time out
    // the kit's client, not just be slow).
    for _ in 0..100 {
        assert_eq!(gw.get("/api/x").await.status(), 200);
    }
    // 64 copies wait at the mirror; the other 36 were dropped, not queued.
    gw.metrics_showing(&["portico_mirror_requests_total{result=\"dropped\",route=\"posts\"} 36"])
        .await;
    eventually(
        "64 copies reached the mirror",
        Duration::from_secs(10),
        async || shadow.hits() == 64,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_that_refuses_costs_the_client_nothing() {
    let app = spawn_ok("app").await;
    let dead = refused_port();
    let gw = mirror_gateway(&app, &format!("127.0.0.1:{}", dead.port), "100").await;
    for _ in 0..10 {
        assert_eq!(gw.get("/api/x").await.status(), 200);
    }
    gw.metrics_showing(&["portico_mirror_requests_total{result=\"failed\",route=\"posts\"} 10"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_requests_the_plugins_let_through_are_copied() {
    let app = spawn_ok("app").await;
    let shadow = spawn_ok("shadow").await;
    let gw = Gateway::start(&format!(
        r#"
[consumers.acme]
api_keys = ["acme-key-12345"]

[plugins.keys]
kind = "api_key"

[upstreams.app]
targets = ["{}"]

[upstreams.shadow]
targets = ["{}"]

[[routes]]
name = "posts"
path = "/api"
upstream = "app"
plugins = ["keys"]
mirror = {{ upstream = "shadow" }}
"#,
        app.addr, shadow.addr
    ))
    .await;
    assert_eq!(gw.get("/api/x").await.status(), 401);
    let resp = gw
        .client
        .get(gw.url("/api/y"))
        .header("x-api-key", "acme-key-12345")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    eventually("one copy", Duration::from_secs(10), async || {
        shadow.hits() == 1
    })
    .await;
    let copy = &shadow.seen()[0];
    assert_eq!(copy.uri, "/api/y");
    assert_eq!(
        copy.header("x-api-key"),
        None,
        "the key stops at the edge, copies too"
    );
    assert_eq!(copy.header("x-consumer"), Some("acme"));
}

#[test]
fn bad_mirrors_are_config_errors() {
    let (code, out) = validate_text(
        r#"
[upstreams.a]
targets = ["127.0.0.1:1"]

[upstreams.h2]
targets = ["127.0.0.1:1"]
protocol = "h2c"

[[routes]]
name = "r0"
path = "/r0"
upstream = "a"
mirror = { upstream = "nope", percent = 0 }

[[routes]]
name = "r1"
path = "/r1"
upstream = "a"
mirror = { upstream = "h2", percent = 101 }
"#,
    );
    assert_eq!(code, 1, "{out}");
    for expected in [
        "routes[0].mirror.upstream: no upstream named \"nope\"",
        "routes[0].mirror.percent: must be above 0 and at most 100",
        "routes[1].mirror.percent: must be above 0 and at most 100",
        "routes[1].mirror.upstream: a mirror upstream speaks HTTP/1",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_http2_is_copied_as_http1_with_its_host() {
    let app = spawn_ok("app").await;
    let shadow = spawn_upstream("shadow", |_| Reply::Status(200, "ok")).await;
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = ["${{PORTICO_LISTEN}}"]
access_log = "off"
http2 = true

[upstreams.app]
targets = ["{}"]

[upstreams.shadow]
targets = ["{}"]

[[routes]]
name = "posts"
path = "/api"
upstream = "app"
mirror = {{ upstream = "shadow" }}
"#,
        app.addr, shadow.addr
    ))
    .await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client
        .put(gw.url("/api/posts/1"))
        .body("a body of 20 bytes..")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    eventually("one copy", Duration::from_secs(10), async || {
        shadow.hits() == 1
    })
    .await;
    let copy = &shadow.seen()[0];
    assert_eq!(
        (copy.method.as_str(), copy.uri.as_str()),
        ("PUT", "/api/posts/1")
    );
    assert_eq!(copy.body_len, 20);
    assert_eq!(copy.header("host"), Some(gw.addr.to_string().as_str()));
}
