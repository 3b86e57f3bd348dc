//! Traffic policy plugins a browser and an operator rely on: CORS answered at the edge, and
//! clients refused by address.

use crate::common::{raw_request, upstream::spawn_ok, Gateway, Upstream};

async fn cors_gateway(cors: &str, extra_plugins: &str, route_plugins: &str) -> (Gateway, Upstream) {
    let up = spawn_ok("app").await;
    let gw = Gateway::start(&format!(
        r#"
[consumers.acme]
api_keys = ["acme-key-12345"]

[upstreams.app]
targets = ["{}"]

[plugins.web]
kind = "cors"
{cors}

{extra_plugins}

[[routes]]
name = "api"
path = "/"
upstream = "app"
plugins = [{route_plugins}]
"#,
        up.addr
    ))
    .await;
    (gw, up)
}

const APP: &str = r#"allow_origins = ["https://app.example.com"]
allow_methods = ["GET", "POST", "DELETE"]
allow_headers = ["authorization", "content-type"]
expose_headers = ["x-request-id"]
allow_credentials = true
max_age = "10m""#;

async fn get_from(gw: &Gateway, path: &str, origin: &str) -> reqwest::Response {
    gw.client
        .get(gw.url(path))
        .header("origin", origin)
        .send()
        .await
        .expect("an answer")
}

async fn preflight(gw: &Gateway, origin: &str, method: &str, headers: &str) -> reqwest::Response {
    gw.client
        .request(reqwest::Method::OPTIONS, gw.url("/items"))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
        .send()
        .await
        .expect("an answer")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_preflight_is_answered_at_the_edge_and_never_reaches_the_upstream() {
    let (gw, up) = cors_gateway(APP, "", r#""web""#).await;
    let resp = preflight(
        &gw,
        "https://app.example.com",
        "DELETE",
        "Authorization, Content-Type",
    )
    .await;
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, POST, DELETE");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h["vary"].to_str().unwrap().contains("Origin"));
    assert!(
        h.get("content-length").is_none(),
        "a 204 has no Content-Length"
    );
    assert_eq!(up.hits(), 0, "preflights are never sent upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_preflight_gets_no_cors_header() {
    let (gw, up) = cors_gateway(APP, "", r#""web""#).await;
    for (origin, method, headers) in [
        // A look-alike origin: exact match only, never a prefix or suffix.
        ("https://app.example.com.evil.net", "GET", "content-type"),
        ("http://app.example.com", "GET", "content-type"),
        ("https://app.example.com", "PATCH", "content-type"),
        ("https://app.example.com", "GET", "x-secret"),
    ] {
        let resp = preflight(&gw, origin, method, headers).await;
        assert_eq!(resp.status(), 204, "{origin} {method} {headers}");
        let cors: Vec<_> = resp
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{origin} {method} {headers}: {cors:?}");
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_to_an_allowed_origin_carry_cors_headers_and_others_none() {
    let (gw, up) = cors_gateway(APP, "", r#""web""#).await;
    let allowed = get_from(&gw, "/items", "https://app.example.com").await;
    assert_eq!(allowed.status(), 200);
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-expose-headers"], "x-request-id");
    assert!(h
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("Origin")));

    let other = get_from(&gw, "/items", "https://evil.example").await;
    assert_eq!(
        other.status(),
        200,
        "not a CORS matter for the gateway: the browser refuses"
    );
    assert!(other.headers().get("access-control-allow-origin").is_none());
    assert!(
        other
            .headers()
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap().contains("Origin")),
        "a cache must not give one origin's answer to another"
    );
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateways_own_refusals_carry_cors_headers_so_the_page_can_read_them() {
    let (gw, _up) = cors_gateway(
        APP,
        "[plugins.keys]\nkind = \"api_key\"",
        r#""keys", "web""#,
    )
    .await;
    let resp = get_from(&gw, "/items", "https://app.example.com").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    // Plugins run in the route's order: with keys first, a preflight (which never carries
    // credentials) is refused too. The README says to list cors first, as the next test does.
    let pre = preflight(&gw, "https://app.example.com", "GET", "authorization").await;
    assert_eq!(pre.status(), 401);

    let (gw, up) = cors_gateway(
        APP,
        "[plugins.keys]\nkind = \"api_key\"",
        r#""web", "keys""#,
    )
    .await;
    let pre = preflight(&gw, "https://app.example.com", "GET", "authorization").await;
    assert_eq!(pre.status(), 204);
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let refused = get_from(&gw, "/items", "https://app.example.com").await;
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn any_origin_gets_a_star_and_credentials_with_a_star_are_a_config_error() {
    let (gw, _up) = cors_gateway(r#"allow_origins = ["*"]"#, "", r#""web""#).await;
    let resp = get_from(&gw, "/", "https://anyone.example").await;
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(resp
        .headers()
        .get("access-control-allow-credentials")
        .is_none());

    let (code, out) = crate::common::gateway::validate_text(
            "[plugins.web]\nkind = \"cors\"\nallow_origins = [\"*\"]\nallow_credentials = true\n\n[plugins.bad]\nkind = \"cors\"\nallow_origins = [\"https://app.example.com/path\"]\n",
    );
    assert_ne!(code, 0);
    assert!(
        out.contains("plugins.web") && out.contains("allow_credentials"),
        "{out}"
    );
    assert!(
        out.contains("plugins.bad") && out.contains("is not an origin"),
        "{out}"
    );
}

async fn filter_gateway(filter: &str, trusted: &str) -> (Gateway, Upstream) {
    let up = spawn_ok("app").await;
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = ["${{PORTICO_LISTEN}}"]
access_log = "off"
trusted_proxies = [{trusted}]

[upstreams.app]
targets = ["{}"]

[plugins.office]
kind = "ip_filter"
{filter}

[[routes]]
name = "api"
path = "/"
upstream = "app"
plugins = ["office"]
"#,
        up.addr
    ))
    .await;
    (gw, up)
}

async fn status_from(gw: &Gateway, forwarded_for: Option<&str>) -> u16 {
    let xff = forwarded_for.map_or(String::new(), |ip| format!("X-Forwarded-For: {ip}\r\n"));
    let head = format!("GET / HTTP/1.1\r\nHost: gw\r\n{xff}Connection: close\r\n\r\n");
    raw_request(gw.addr, &head, b"").await.status
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_list_admits_its_addresses_and_refuses_the_rest_with_403() {
    let (gw, up) = filter_gateway(r#"allow = ["127.0.0.0/8"]"#, "").await;
    assert_eq!(status_from(&gw, None).await, 200);
    let (gw2, _up2) = filter_gateway(r#"allow = ["10.0.0.0/8"]"#, "").await;
    let resp = gw2.get("/").await;
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "forbidden");
    // A client cannot talk its way onto the list: its own X-Forwarded-For is not believed.
    assert_eq!(status_from(&gw2, Some("10.1.2.3")).await, 403);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_wins_and_a_trusted_proxy_names_the_client() {
    // Behind a trusted proxy (127.0.0.1), the client is the address it forwards.
    let (gw, up) = filter_gateway(
        r#"allow = ["10.0.0.0/8"]
deny = ["10.9.0.0/16"]"#,
        r#""127.0.0.1""#,
    )
    .await;
    assert_eq!(status_from(&gw, Some("10.1.2.3")).await, 200);
    assert_eq!(status_from(&gw, Some("10.9.1.1")).await, 403);
    assert_eq!(status_from(&gw, Some("192.0.2.1")).await, 403);
    assert_eq!(
        status_from(&gw, None).await,
        403,
        "the proxy itself is not on the list"
    );
    assert_eq!(up.hits(), 1);
}
