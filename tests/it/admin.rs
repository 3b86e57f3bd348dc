//! An operator watches the gateway through its admin listener.

use crate::common::{one_route, upstream::spawn_ok, Gateway};

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_status_and_metrics_answer() {
    let up = spawn_ok("users").await;
    let gw = Gateway::start(&one_route("users", up.addr, "", "/users")).await;
    assert_eq!(gw.admin_json("/healthz").await["status"], "ok");
    assert_eq!(gw.admin_json("/readyz").await["status"], "ready");

    assert_eq!(gw.get("/users/1").await.status(), 200);
    assert_eq!(gw.get("/nowhere").await.status(), 404);

    let status = gw.admin_json("/status").await;
    assert_eq!(status["generation"], 1);
    assert_eq!(status["last_reload"]["result"], "ok");
    assert_eq!(status["routes"][0]["name"], "users");
    assert_eq!(status["routes"][0]["upstream"], "users");
    let target = &status["upstreams"]["users"]["targets"][0];
    assert_eq!(target["target"], up.addr.to_string());
    assert_eq!(target["healthy"], true);
    assert_eq!(target["in_flight"], 0);

    let metrics = gw
        .metrics_showing(&[
            "portico_http_requests_total{method=\"GET\",route=\"users\",status=\"200\"} 1",
            "portico_http_requests_total{method=\"GET\",route=\"\",status=\"404\"} 1",
            "portico_http_request_duration_seconds_count{route=\"users\"} 1",
            &format!("portico_upstream_requests_total{{outcome=\"success\",target=\"{}\",upstream=\"users\"}} 1", up.addr),
            "portico_config_generation 1",
        ])
        .await;
    assert!(
        !metrics.contains("/users/1") && !metrics.contains("/nowhere"),
        "no raw paths in labels"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_is_not_reachable_on_the_public_listener_and_answers_problems() {
    let up = spawn_ok("users").await;
    let gw = Gateway::start(&one_route("users", up.addr, "", "/users")).await;
    assert_eq!(gw.get("/status").await.status(), 404);
    let resp = gw.client.get(gw.admin_url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = gw.client.get(gw.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn post_reload_applies_a_valid_config_and_refuses_a_broken_one() {
    let (a, b) = (spawn_ok("a").await, spawn_ok("b").await);
    let config = |target: std::net::SocketAddr| {
        format!("[upstreams.app]\ntargets = [\"{target}\"]\n\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"app\"\n")
    };
    let gw = Gateway::start(&config(a.addr)).await;
    assert_eq!(gw.get("/x").await.headers()["x-upstream"], "a");

    let current = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        current.replace(&a.addr.to_string(), &b.addr.to_string()),
    )
    .unwrap();
    let resp = gw.reload().await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["generation"],
        2
    );
    assert_eq!(gw.get("/x").await.headers()["x-upstream"], "b");

    std::fs::write(
        &gw.config_path,
        "[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"missing\"\n",
    )
    .unwrap();
    let resp = gw.reload().await;
    assert_eq!(resp.status(), 422);
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_config");
    let errors = problem["errors"].to_string();
    assert!(
        errors.contains("routes[0].upstream: no upstream named \\\"missing\\\""),
        "{errors}"
    );
    // The old config keeps serving.
    assert_eq!(gw.get("/x").await.headers()["x-upstream"], "b");
    let status = gw.admin_json("/status").await;
    assert_eq!(status["generation"], 2);
    assert_eq!(status["last_reload"]["result"], "error");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config_file() {
    let (a, b) = (spawn_ok("a").await, spawn_ok("b").await);
    let gw = Gateway::start(&one_route("app", a.addr, "", "/")).await;
    assert_eq!(gw.get("/x").await.headers()["x-upstream"], "a");
    let current = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        current.replace(&a.addr.to_string(), &b.addr.to_string()),
    )
    .unwrap();
    gw.signal("HUP");
    crate::common::eventually(
        "generation 2 is serving",
        std::time::Duration::from_secs(10),
        async || gw.admin_json("/status").await["generation"] == 2,
    )
    .await;
    assert_eq!(gw.get("/x").await.headers()["x-upstream"], "b");
}
