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

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_token_guards_every_endpoint_but_health_and_readiness() {
    let up = spawn_ok("users").await;
    let config = format!(
        "[admin]\nlisten = \"${{PORTICO_ADMIN}}\"\ntoken = \"${{ADMIN_TOKEN}}\"\n\n{}",
        one_route("users", up.addr, "", "/users")
    );
    let gw = Gateway::start_with_env(&config, &[("ADMIN_TOKEN", "open-sesame-4f9c")]).await;
    let admin = |path: &str| gw.client.get(gw.admin_url(path));

    // Load balancers and orchestrators probe without credentials.
    assert_eq!(admin("/healthz").send().await.unwrap().status(), 200);
    assert_eq!(admin("/readyz").send().await.unwrap().status(), 200);

    // Without the token: a 401 problem that asks a browser for it.
    let resp = admin("/status").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let challenges: Vec<_> = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic ")),
        "{challenges:?}"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    for path in ["/metrics", "/", "/openapi.json", "/nope"] {
        let status = admin(path).send().await.unwrap().status();
        assert_eq!(status, 401, "{path} without the token");
    }
    let reload = gw
        .client
        .post(gw.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 401, "a reload without the token");

    // A wrong token, as Bearer or as the Basic password.
    let wrong = admin("/status")
        .bearer_auth("open-sesame")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let wrong = admin("/status")
        .basic_auth("ops", Some("open-sesame-4f9d"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // The token, as a script sends it and as a browser does.
    let resp = admin("/status")
        .bearer_auth("open-sesame-4f9c")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status["routes"][0]["name"], "users");
    let resp = admin("/metrics")
        .basic_auth("anyone", Some("open-sesame-4f9c"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("portico_config_generation 1"));
    let reload = gw
        .client
        .post(gw.admin_url("/reload"))
        .bearer_auth("open-sesame-4f9c")
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);

    // The public listener knows nothing of it.
    assert_eq!(gw.get("/users/1").await.status(), 200);
}

#[test]
fn an_empty_admin_token_is_a_config_error() {
    let (code, out) = crate::common::gateway::validate_text(
        "[admin]\nlisten = \"127.0.0.1:9901\"\ntoken = \"\"\n\n[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"a\"\n",
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("admin.token"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_and_the_last_minute_of_traffic_per_route() {
    let up = spawn_ok("users").await;
    let gw = Gateway::start(&one_route("users", up.addr, "", "/users")).await;

    // The page: one self-contained HTML document that reads /status.
    let page = gw.client.get(gw.admin_url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("fetch(\"/status\""), "the page reads /status");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );

    // What it draws: requests per second, 5xx per second and p99 of each route.
    for _ in 0..10 {
        assert_eq!(gw.get("/users/1").await.status(), 200);
    }
    let mut traffic = serde_json::Value::Null;
    crate::common::eventually(
        "the route's traffic in /status",
        std::time::Duration::from_secs(10),
        async || {
            traffic = gw.admin_json("/status").await["traffic"]["users"].clone();
            traffic["requests_per_s"].as_f64().is_some_and(|r| r > 0.0)
        },
    )
    .await;
    assert_eq!(traffic["errors_per_s"], 0.0);
    let p99 = traffic["p99_ms"]
        .as_f64()
        .expect("a p99 once there were requests");
    assert!(p99 > 0.0, "{traffic}");
    assert!(traffic["seconds"].as_f64().unwrap() <= 65.0, "{traffic}");
}
