//! A user routes requests by host, path and method to named upstreams.

use crate::common::{upstream::spawn_ok, Gateway};

async fn routed_to(gw: &Gateway, host: &str, method: &str, path: &str) -> String {
    let resp = gw
        .client
        .request(method.parse().unwrap(), gw.url(path))
        .header("host", host)
        .send()
        .await
        .unwrap();
    match resp.headers().get("x-upstream") {
        Some(name) => name.to_str().unwrap().to_string(),
        None => resp.status().as_str().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_most_specific_route_takes_the_request() {
    let names = [
        "catch-all",
        "api",
        "users",
        "user",
        "me",
        "create",
        "wild",
        "admin",
    ];
    let mut ups = Vec::new();
    let mut config = String::new();
    for name in names {
        let up = spawn_ok(name).await;
        config.push_str(&format!(
            "[upstreams.{name}]\ntargets = [\"{}\"]\n\n",
            up.addr
        ));
        ups.push(up);
    }
    config.push_str(
        r#"
[[routes]]
name = "catch-all"
path = "/"
upstream = "catch-all"

[[routes]]
name = "api"
path = "/api"
upstream = "api"

[[routes]]
name = "users"
path = "/api/users"
upstream = "users"

[[routes]]
name = "user"
path = "/api/users/{id}"
upstream = "user"

[[routes]]
name = "me"
path = "/api/users/me"
upstream = "me"

[[routes]]
name = "create"
path = "/api/users"
methods = ["POST"]
upstream = "create"

[[routes]]
name = "wild"
host = "*.example.com"
path = "/"
upstream = "wild"

[[routes]]
name = "admin"
host = "admin.example.com"
path = "/"
upstream = "admin"
"#,
    );
    let gw = Gateway::start(&config).await;
    let cases = [
        ("other.test", "GET", "/", "catch-all"),
        ("other.test", "GET", "/apix", "catch-all"),
        ("other.test", "GET", "/api/orders", "api"),
        ("other.test", "GET", "/api/users", "users"),
        ("other.test", "POST", "/api/users", "create"),
        ("other.test", "GET", "/api/users/42", "user"),
        ("other.test", "GET", "/api/users/me", "me"),
        ("shop.example.com", "GET", "/api/users", "wild"),
        ("Admin.Example.com:8080", "GET", "/api/users/me", "admin"),
        ("example.com", "GET", "/api", "api"),
    ];
    for (host, method, path, want) in cases {
        assert_eq!(
            routed_to(&gw, host, method, path).await,
            want,
            "{method} {host}{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn strip_prefix_rewrites_the_path_and_keeps_the_query() {
    let users = spawn_ok("users").await;
    let gw = Gateway::start(&format!(
        r#"
[upstreams.users]
targets = ["{}"]

[[routes]]
name = "users"
path = "/api/v1/users"
upstream = "users"
strip_prefix = "/api/v1"

[[routes]]
name = "versioned"
path = "/api/{{version}}/accounts"
upstream = "users"
strip_prefix = "/api/{{version}}"
"#,
        users.addr
    ))
    .await;
    assert_eq!(
        gw.get("/api/v1/users/42?expand=orders&x=%20y")
            .await
            .status(),
        200
    );
    assert_eq!(gw.get("/api/v1/users").await.status(), 200);
    assert_eq!(gw.get("/api/v7/accounts/9").await.status(), 200);
    let seen: Vec<String> = users.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        seen,
        ["/users/42?expand=orders&x=%20y", "/users", "/accounts/9"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_is_a_404_and_a_wrong_method_a_405_both_problem_json() {
    let up = spawn_ok("users").await;
    let gw = Gateway::start(&format!(
        "[upstreams.users]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"users\"\npath = \"/users\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"users\"\n",
        up.addr
    ))
    .await;

    let resp = gw.get("/orders").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "no_route");
    assert_eq!(body["status"], 404);
    assert_eq!(body["title"], "Not Found");
    assert_eq!(body["instance"], "/orders");
    assert_eq!(body["request_id"], request_id.as_str());

    let resp = gw.client.delete(gw.url("/users/1")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, POST");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
    assert_eq!(up.hits(), 0, "neither request may reach the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_select_among_otherwise_equal_routes() {
    let (v1, v2) = (spawn_ok("v1").await, spawn_ok("v2").await);
    let gw = Gateway::start(&format!(
        r#"
[upstreams.v1]
targets = ["{}"]
[upstreams.v2]
targets = ["{}"]

[[routes]]
name = "v1"
path = "/api"
upstream = "v1"

[[routes]]
name = "v2"
path = "/api"
headers = {{ "x-api-version" = "2" }}
upstream = "v2"
"#,
        v1.addr, v2.addr
    ))
    .await;
    let plain = gw.get("/api/x").await;
    assert_eq!(plain.headers()["x-upstream"], "v1");
    let versioned = gw
        .client
        .get(gw.url("/api/x"))
        .header("x-api-version", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(versioned.headers()["x-upstream"], "v2");
}
