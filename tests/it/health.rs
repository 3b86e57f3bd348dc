//! A target dies: the active health check takes it out of rotation, and puts it back when
//! it recovers.

use std::time::Duration;

use crate::common::{eventually, upstream::spawn_ok, Gateway};

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_target_is_taken_out_and_comes_back_when_it_recovers() {
    let (a, b) = (spawn_ok("a").await, spawn_ok("b").await);
    let gw = Gateway::start(&format!(
        r#"
[upstreams.pool]
targets = ["{}", "{}"]
health_check = {{ path = "/health", interval = "50ms", timeout = "200ms", unhealthy = 2, healthy = 2 }}

[[routes]]
name = "r"
path = "/"
upstream = "pool"
"#,
        a.addr, b.addr
    ))
    .await;
    let health_checks_seen =
        |up: &crate::common::Upstream| up.seen().iter().filter(|s| s.uri == "/health").count();
    eventually(
        "both targets are probed on /health",
        Duration::from_secs(10),
        async || health_checks_seen(&a) > 0 && health_checks_seen(&b) > 0,
    )
    .await;

    a.go_down();
    eventually(
        "a is marked unhealthy",
        Duration::from_secs(10),
        async || !gw.target_healthy("pool", a.addr).await,
    )
    .await;
    for _ in 0..20 {
        let resp = gw.get("/work").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream"], "b");
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "portico_upstream_target_healthy{{target=\"{}\",upstream=\"pool\"}} 0",
            a.addr
        )),
        "{metrics}"
    );

    a.come_back();
    eventually("a is healthy again", Duration::from_secs(10), async || {
        gw.target_healthy("pool", a.addr).await
    })
    .await;
    let mut back_on_a = 0;
    for _ in 0..20 {
        if gw.get("/work").await.headers()["x-upstream"] == "a" {
            back_on_a += 1;
        }
    }
    assert_eq!(back_on_a, 10, "round robin over two healthy targets again");
    assert!(
        gw.stderr().contains("failed its health check"),
        "the change is logged"
    );
}
