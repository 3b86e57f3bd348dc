//! One client call fans out to several services and comes back as one JSON answer, with a
//! clear account of any part that failed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{spawn_upstream, Gateway, Reply, Upstream};

/// A fake service landscape: users, orders, prefs, plus slow, broken and non-JSON paths.
async fn services() -> Upstream {
    spawn_upstream("svc", |s| {
        let path = s.uri.split('?').next().unwrap_or_default().to_string();
        let json = |v: Value| Reply::Body(200, v.to_string());
        match path.split('/').collect::<Vec<_>>()[1..] {
            ["users", id] => json(
                json!({ "id": id, "name": format!("User {id}"), "orderIds": [11, 12, 13, 14, 15] }),
            ),
            ["orders", id] => json(json!({ "id": id.parse::<u64>().unwrap_or(0), "total": 9.5 })),
            ["orders", "user", id] => {
                json(json!([{ "id": 11, "user": id }, { "id": 12, "user": id }]))
            }
            ["slow", ms] => Reply::DelayBody(
                Duration::from_millis(ms.parse().unwrap_or(0)),
                200,
                json!({ "slept": ms }).to_string(),
            ),
            ["echo-query"] => {
                json(json!({ "query": s.uri.split_once('?').map(|(_, q)| q).unwrap_or("") }))
            }
            ["echo-headers"] => json(json!({
                "user": s.header("x-user-id"),
                "request_id": s.header("x-request-id"),
                "traceparent": s.header("traceparent").is_some(),
            })),
            ["html"] => Reply::Body(200, "<html>not json</html>".into()),
            ["down"] => Reply::Status(503, "busy"),
            _ => Reply::Status(404, "nope"),
        }
    })
    .await
}

async fn compose_gateway(svc: &Upstream, routes: &str) -> Gateway {
    Gateway::start(&format!(
        "[upstreams.svc]\ntargets = [\"{}\"]\n\n{routes}",
        svc.addr
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn independent_calls_run_in_parallel() {
    let svc = services().await;
    let gw = compose_gateway(
        &svc,
        r#"[[routes]]
name = "three"
path = "/three"
compose = { calls = [
  { key = "a", upstream = "svc", path = "/slow/200" },
  { key = "b", upstream = "svc", path = "/slow/200" },
  { key = "c", upstream = "svc", path = "/slow/200" },
] }"#,
    )
    .await;
    let started = Instant::now();
    let resp = gw.get("/three").await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("portico-incomplete").is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "a": {"slept": "200"}, "b": {"slept": "200"}, "c": {"slept": "200"} })
    );
    assert!(
        took < Duration::from_millis(550),
        "three 200 ms calls took {took:?}: not parallel"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_uses_a_field_of_another_and_for_each_respects_its_cap() {
    let svc = services().await;
    let gw = compose_gateway(
        &svc,
        r#"[[routes]]
name = "dashboard"
path = "/dashboard/{user_id}"
compose = { timeout = "2s", calls = [
  { key = "user", upstream = "svc", path = "/users/{user_id}", required = true },
  { key = "recentOrders", upstream = "svc", path = "/orders/user/{user.id}" },
  { key = "first", upstream = "svc", path = "/orders/{recentOrders[0].id}" },
  { key = "orders", upstream = "svc", path = "/orders/{item}", for_each = "user.orderIds", max_fan_out = 3 },
  { key = "search", upstream = "svc", path = "/echo-query", query = { page = "{query.page}", who = "{user.name}" } },
] }"#,
    )
    .await;
    let body: Value = gw.get("/dashboard/42?page=3").await.json().await.unwrap();
    assert_eq!(body["user"]["name"], "User 42");
    assert_eq!(body["recentOrders"][1], json!({ "id": 12, "user": "42" }));
    assert_eq!(body["first"], json!({ "id": 11, "total": 9.5 }));
    assert_eq!(
        body["orders"].as_array().unwrap().len(),
        3,
        "capped at max_fan_out"
    );
    assert_eq!(body["orders"][2]["id"], 13);
    assert_eq!(body["search"]["query"], "page=3&who=User_42");
    assert!(body.get("_errors").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_optional_part_is_null_and_named() {
    let svc = services().await;
    let gw = compose_gateway(
        &svc,
        r#"[[routes]]
name = "partial"
path = "/partial"
compose = { calls = [
  { key = "user", upstream = "svc", path = "/users/1" },
  { key = "prefs", upstream = "svc", path = "/down" },
  { key = "page", upstream = "svc", path = "/html" },
  { key = "late", upstream = "svc", path = "/slow/1000", timeout = "100ms" },
] }"#,
    )
    .await;
    let started = Instant::now();
    let resp = gw.get("/partial").await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the part timeout applied"
    );
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["portico-incomplete"], "prefs, page, late");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["user"]["id"], "1");
    assert_eq!(body["prefs"], Value::Null);
    assert_eq!(
        body["_errors"]["prefs"],
        json!({ "status": 503, "code": "upstream_error" })
    );
    assert_eq!(
        body["_errors"]["page"],
        json!({ "status": null, "code": "not_json" })
    );
    assert_eq!(
        body["_errors"]["late"],
        json!({ "status": 504, "code": "upstream_timeout" })
    );

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "portico_compose_calls_total{key=\"prefs\",outcome=\"failed\",route=\"partial\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "portico_compose_calls_total{key=\"user\",outcome=\"success\",route=\"partial\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_required_part_is_a_502_naming_it() {
    let svc = services().await;
    let gw = compose_gateway(
        &svc,
        r#"[[routes]]
name = "needs-user"
path = "/needs-user"
compose = { calls = [
  { key = "user", upstream = "svc", path = "/down", required = true },
  { key = "orders", upstream = "svc", path = "/orders/1" },
] }"#,
    )
    .await;
    let resp = gw.get("/needs-user").await;
    assert_eq!(resp.status(), 502);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "bad_gateway");
    assert_eq!(
        problem["detail"],
        "required part \"user\" failed (upstream_error)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_composition_has_a_deadline() {
    let svc = services().await;
    let gw = compose_gateway(
        &svc,
        r#"[[routes]]
name = "slow"
path = "/slow-all"
compose = { timeout = "300ms", calls = [
  { key = "a", upstream = "svc", path = "/slow/2000" },
  { key = "b", upstream = "svc", path = "/slow/2000" },
] }"#,
    )
    .await;
    let started = Instant::now();
    let resp = gw.get("/slow-all").await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["portico-incomplete"], "a, b");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verified_identity_reaches_templates_and_every_part() {
    let svc = services().await;
    let secret = "compose-secret-0123456789-abcdefghijk";
    let gw = Gateway::start_with_env(
        &format!(
            r#"[plugins.auth]
kind = "jwt"
algorithms = ["HS256"]
secret = "${{SECRET}}"
forward_claims = {{ sub = "x-user-id" }}

[plugins.tag]
kind = "headers"
response_set = {{ "x-composed-for" = "{{consumer}}" }}

[upstreams.svc]
targets = ["{}"]

[[routes]]
name = "me"
path = "/me"
plugins = ["auth", "tag"]
compose = {{ calls = [
  {{ key = "profile", upstream = "svc", path = "/users/{{claim.sub}}" }},
  {{ key = "seen", upstream = "svc", path = "/echo-headers" }},
] }}
"#,
            svc.addr
        ),
        &[("SECRET", secret)],
    )
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "u-7", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let resp = gw
        .client
        .get(gw.url("/me"))
        .bearer_auth(token)
        .header("x-request-id", "trace-me")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["x-composed-for"],
        "u-7",
        "response plugins see the composed answer"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["profile"]["id"], "u-7");
    assert_eq!(
        body["seen"],
        json!({ "user": "u-7", "request_id": "trace-me", "traceparent": true })
    );
    assert_eq!(
        gw.get("/me").await.status(),
        401,
        "the route's plugins still guard it"
    );
}

#[test]
fn cycles_and_unknown_references_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"[upstreams.svc]
targets = ["127.0.0.1:1"]

[[routes]]
name = "loop"
path = "/loop"
compose = { calls = [
  { key = "a", upstream = "svc", path = "/x/{b.id}" },
  { key = "b", upstream = "svc", path = "/y/{a.id}" },
] }

[[routes]]
name = "unknown"
path = "/unknown"
compose = { calls = [
  { key = "a", upstream = "svc", path = "/x/{nobody.id}" },
  { key = "b", upstream = "nowhere", path = "/y", method = "POST" },
] }
"#,
    )
    .unwrap();
    let (code, out) = crate::common::gateway::validate(&path);
    assert_eq!(code, 1);
    for expected in [
        "routes[0].compose.calls: the calls depend on each other in a cycle: a -> b -> a",
        "routes[1].compose.calls[0].path: \"{nobody.id}\" is not a path capture",
        "routes[1].compose.calls[1].upstream: no upstream named \"nowhere\"",
        "routes[1].compose.calls[1].method: \"POST\": calls are GET",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_one_after_another_reuse_pooled_connections() {
    let svc = services().await;
    let gw = compose_gateway(
        &svc,
        r#"[[routes]]
name = "one"
path = "/one"
compose = { calls = [{ key = "user", upstream = "svc", path = "/users/1" }] }"#,
    )
    .await;
    for _ in 0..5 {
        assert_eq!(gw.get("/one").await.status(), 200);
    }
    let metrics = gw.metrics().await;
    let opened = format!(
        "portico_upstream_connections_opened_total{{target=\"{}\",upstream=\"svc\"}} 1\n",
        svc.addr
    );
    assert!(metrics.contains(&opened), "{opened} in\n{metrics}");
    assert_eq!(svc.hits(), 5);
}
