//! A route's path rewritten by a regular expression before it goes upstream, and a route's
//! own limit on request bodies.

use crate::common::{raw_request, spawn_upstream, Reply};

fn config(upstream: std::net::SocketAddr, route_extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["${{PORTICO_LISTEN}}"]
access_log = "off"
max_request_body = "1KiB"

[upstreams.app]
targets = ["{upstream}"]

[[routes]]
name = "api"
path = "/api"
upstream = "app"
{route_extra}

[[routes]]
name = "rest"
path = "/"
upstream = "app"
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewrite_sends_the_captures_where_to_puts_them() {
    let up = spawn_upstream("app", |_| Reply::Status(200, "ok")).await;
    let gw = crate::common::Gateway::start(&config(
        up.addr,
        r#"rewrite = { pattern = "^/api/v1/(?P<kind>[a-z]+)/([0-9]+)$", to = "/internal/$kind?id=$2" }"#,
    ))
    .await;
    assert_eq!(gw.get("/api/v1/users/42?x=1").await.status(), 200);
    assert_eq!(gw.get("/api/other").await.status(), 200);
    let seen: Vec<String> = up.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(seen, ["/internal/users?id=42&x=1", "/api/other"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewritten_path_is_checked_like_a_clients() {
    let up = spawn_upstream("app", |_| Reply::Status(200, "ok")).await;
    let gw = crate::common::Gateway::start(&config(
        up.addr,
        r#"rewrite = { pattern = "^/api/(.*)$", to = "/$1/.." }"#,
    ))
    .await;
    let resp = gw.get("/api/admin").await;
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "bad_request");
    assert_eq!(up.hits(), 0, "nothing went upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_takes_bodies_up_to_its_own_limit() {
    let up = spawn_upstream("app", |_| Reply::Status(200, "ok")).await;
    let gw = crate::common::Gateway::start(&config(up.addr, r#"max_request_body = "8KiB""#)).await;
    let body = vec![b'x'; 4096];
    let post = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {}",
            body.len()
        )
    };
    // 4 KiB: over the server's 1 KiB, under the route's 8 KiB.
    assert_eq!(
        raw_request(gw.addr, &post("/api/upload"), &body)
            .await
            .status,
        200
    );
    assert_eq!(
        raw_request(gw.addr, &post("/elsewhere"), &body)
            .await
            .status,
        413
    );
    let big = vec![b'x'; 9000];
    let head = format!(
        "POST /api/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: {}",
        big.len()
    );
    assert_eq!(raw_request(gw.addr, &head, &big).await.status, 413);
    // Chunked, no length declared: counted as it arrives.
    let chunked = "POST /api/upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked";
    let body = format!("{:x}\r\n{}\r\n0\r\n\r\n", big.len(), "x".repeat(big.len()));
    assert_eq!(
        raw_request(gw.addr, chunked, body.as_bytes()).await.status,
        413
    );
}

#[test]
fn rewrite_mistakes_are_config_errors() {
    let (code, out) = crate::common::gateway::validate_text(
            "[upstreams.app]\ntargets = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"a\"\npath = \"/a\"\nupstream = \"app\"\nrewrite = { pattern = \"^/a/(.*)$\", to = \"/b/$2\" }\n\n[[routes]]\nname = \"b\"\npath = \"/b\"\nupstream = \"app\"\nstrip_prefix = \"/b\"\nrewrite = { pattern = \"^/b\", to = \"/\" }\n",
    );
    assert_ne!(code, 0);
    assert!(
        out.contains("routes[0].rewrite") && out.contains("$2"),
        "{out}"
    );
    assert!(
        out.contains("routes[1].rewrite") && out.contains("strip_prefix"),
        "{out}"
    );
}
