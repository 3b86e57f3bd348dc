//! A/B tests and canaries: a route shares its requests among upstreams by weight, keeps a
//! client on its variant by cookie, header, consumer or address, and moves a dead variant's
//! share to the others.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::gateway::validate_text;
use crate::common::upstream::spawn_ok;
use crate::common::{eventually, spawn_upstream, Gateway, Reply, Upstream};

/// Upstreams `a` and `b`, a route `/api` splitting between them with `split_extra` (a
/// `split_key`, say), and `extra` config (plugins, consumers, server settings).
async fn split_gateway(
    weights: (u32, u32),
    split_extra: &str,
    extra: &str,
) -> (Gateway, Upstream, Upstream) {
    let (a, b) = (spawn_ok("a").await, spawn_ok("b").await);
    let gw = Gateway::start(&format!(
        r#"{extra}

[upstreams.a]
targets = ["{}"]

[upstreams.b]
targets = ["{}"]

[[routes]]
name = "posts"
path = "/api"
split = [{{ upstream = "a", weight = {} }}, {{ upstream = "b", weight = {} }}]
{split_extra}
"#,
        a.addr, b.addr, weights.0, weights.1
    ))
    .await;
    (gw, a, b)
}

/// Which upstream answered (`x-upstream`).
fn variant(resp: &reqwest::Response) -> String {
    resp.headers()["x-upstream"].to_str().unwrap().to_string()
}

async fn variant_with(gw: &Gateway, header: (&str, &str)) -> String {
    let resp = gw
        .client
        .get(gw.url("/api/posts"))
        .header(header.0, header.1)
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status(), 200);
    variant(&resp)
}

/// For each value of `header`, the variant its first request landed on, asserting its next
/// `again` requests landed there too: how many values each variant got.
async fn stuck_to(
    gw: &Gateway,
    header: &str,
    values: &[String],
    again: usize,
) -> BTreeMap<String, usize> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for value in values {
        let first = variant_with(gw, (header, value)).await;
        for _ in 0..again {
            assert_eq!(
                variant_with(gw, (header, value)).await,
                first,
                "{header}: {value} moved"
            );
        }
        *seen.entry(first).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_shared_by_weight_and_counted_per_variant() {
    let (gw, _a, _b) = split_gateway((90, 10), "", "").await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..2000 {
        let resp = gw.get("/api/posts").await;
        assert_eq!(resp.status(), 200);
        *counts.entry(variant(&resp)).or_default() += 1;
    }
    // b's share is binomial(2000, 0.1): mean 200, sd 13.4; five sd either way.
    let b = counts.get("b").copied().unwrap_or(0);
    assert!((133..=267).contains(&b), "b got {b} of 2000: {counts:?}");
    assert_eq!(counts["a"] + b, 2000);
    gw.metrics_showing(&[
        &format!(
            "portico_split_requests_total{{route=\"posts\",upstream=\"a\"}} {}",
            counts["a"]
        ),
        &format!("portico_split_requests_total{{route=\"posts\",upstream=\"b\"}} {b}"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_the_cookie_gets_one_and_stays_on_its_variant() {
    let (gw, _a, _b) = split_gateway((50, 50), "split_key = \"cookie:portico_variant\"", "").await;
    let first = gw.get("/api/posts").await;
    let chosen = variant(&first);
    let set = first.headers()["set-cookie"].to_str().unwrap().to_string();
    assert_eq!(
        set,
        format!("portico_variant={chosen}; Path=/api; HttpOnly; SameSite=Lax")
    );
    let cookie = format!("other=1; portico_variant={chosen}");
    for _ in 0..30 {
        let resp = gw
            .client
            .get(gw.url("/api/posts/7"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(variant(&resp), chosen);
        assert!(resp.headers().get("set-cookie").is_none(), "set once only");
    }
    // A cookie naming the other variant is honoured whatever the weights.
    let other = if chosen == "a" { "b" } else { "a" };
    for _ in 0..10 {
        let picked = variant_with(&gw, ("cookie", &format!("portico_variant={other}"))).await;
        assert_eq!(picked, other);
    }
    // One naming no variant (an upstream since removed) is replaced.
    let resp = gw
        .client
        .get(gw.url("/api/posts"))
        .header("cookie", "portico_variant=gone")
        .send()
        .await
        .unwrap();
    let set = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(
        set.starts_with(&format!("portico_variant={}", variant(&resp))),
        "{set}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_header_value_always_lands_on_the_same_variant_and_the_log_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let server = format!(
        "[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\naccess_log = \"{}\"\n",
        log.display()
    );
    let (gw, _a, _b) = split_gateway((50, 50), "split_key = \"header:x-user\"", &server).await;
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let seen = stuck_to(&gw, "x-user", &users, 4).await;
    // 60 users at 50/50: both variants have some (all on one: odds 2 in 10^18).
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|&n| n >= 15), "{seen:?}");

    // The access log's `upstream` is the variant that served each request.
    let mut lines = String::new();
    eventually("300 access log lines", Duration::from_secs(5), async || {
        lines = std::fs::read_to_string(&log).unwrap_or_default();
        lines.lines().count() == 300
    })
    .await;
    let mut logged: BTreeMap<String, usize> = BTreeMap::new();
    for line in lines.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        *logged
            .entry(record["upstream"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let served: BTreeMap<String, usize> = seen.into_iter().map(|(v, n)| (v, n * 5)).collect();
    assert_eq!(logged, served);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_consumer_stays_on_its_variant() {
    let consumers: String = (0..40)
        .map(|i| format!("[consumers.c{i}]\napi_keys = [\"key-of-consumer-{i}\"]\n"))
        .collect();
    let (gw, _a, _b) = split_gateway(
        (50, 50),
        "split_key = \"consumer\"\nplugins = [\"keys\"]",
        &format!("{consumers}\n[plugins.keys]\nkind = \"api_key\"\nheader = \"x-api-key\"\n"),
    )
    .await;
    let keys: Vec<String> = (0..40).map(|i| format!("key-of-consumer-{i}")).collect();
    let seen = stuck_to(&gw, "x-api-key", &keys, 3).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_client_address_stays_on_its_variant_through_a_trusted_proxy() {
    let (gw, _a, _b) = split_gateway(
        (50, 50),
        "split_key = \"ip\"",
        "[server]\nlisten = [\"${PORTICO_LISTEN}\"]\naccess_log = \"off\"\ntrusted_proxies = [\"127.0.0.1\"]\n",
    )
    .await;
    let clients: Vec<String> = (0..40).map(|i| format!("203.0.113.{i}")).collect();
    let seen = stuck_to(&gw, "x-forwarded-for", &clients, 3).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_variant_with_no_healthy_target_sends_its_share_to_the_others() {
    let a = spawn_ok("a").await;
    let b = spawn_upstream("b", |seen| match seen.uri.as_str() {
        "/health" => Reply::Status(503, "sick"),
        _ => Reply::Status(200, "ok"),
    })
    .await;
    let check =
        r#"health_check = { path = "/health", interval = "50ms", unhealthy = 1, healthy = 1 }"#;
    let gw = Gateway::start(&format!(
        r#"
[upstreams.a]
targets = ["{}"]
{check}

[upstreams.b]
targets = ["{}"]
{check}

[[routes]]
name = "posts"
path = "/api"
split = [{{ upstream = "a", weight = 10 }}, {{ upstream = "b", weight = 90 }}]

[[routes]]
name = "sticky"
path = "/sticky"
split = [{{ upstream = "a", weight = 10 }}, {{ upstream = "b", weight = 90 }}]
split_key = "header:x-user"
"#,
        a.addr, b.addr
    ))
    .await;
    eventually("b is out", Duration::from_secs(10), async || {
        !gw.target_healthy("b", b.addr).await
    })
    .await;
    for _ in 0..100 {
        assert_eq!(variant(&gw.get("/api/x").await), "a");
    }
    for user in 0..30 {
        let resp = gw
            .client
            .get(gw.url("/sticky"))
            .header("x-user", format!("user-{user}"))
            .send()
            .await
            .unwrap();
        assert_eq!(variant(&resp), "a", "user-{user}");
    }
    let served_by_b = b.seen().iter().filter(|s| s.uri != "/health").count();
    assert_eq!(served_by_b, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_answer_is_never_served_to_the_other_variant() {
    let versioned = |name: &'static str| {
        spawn_upstream(name, move |_| {
            Reply::With(
                200,
                vec![("cache-control", "max-age=60".to_string())],
                name.to_string(),
            )
        })
    };
    let (a, b) = (versioned("a").await, versioned("b").await);
    let gw = Gateway::start(&format!(
        r#"
[cache]
max_size = "1MiB"

[plugins.cached]
kind = "cache"
ttl = "60s"

[upstreams.a]
targets = ["{}"]

[upstreams.b]
targets = ["{}"]

[[routes]]
name = "posts"
path = "/api"
split = [{{ upstream = "a", weight = 50 }}, {{ upstream = "b", weight = 50 }}]
split_key = "header:x-user"
plugins = ["cached"]
"#,
        a.addr, b.addr
    ))
    .await;
    // Two users, one on each variant, ask for the same URL twice each.
    let mut users: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..200 {
        let user = format!("user-{i}");
        let v = variant_with(&gw, ("x-user", &user)).await;
        users.entry(v).or_insert(user);
        if users.len() == 2 {
            break;
        }
    }
    assert_eq!(users.len(), 2, "200 users, and all answered by one variant");
    for (want, user) in &users {
        for _ in 0..2 {
            let resp = gw
                .client
                .get(gw.url("/api/posts"))
                .header("x-user", user)
                .send()
                .await
                .unwrap();
            assert_eq!(&resp.text().await.unwrap(), want);
        }
    }
}

#[test]
fn bad_splits_are_config_errors_with_every_problem_named() {
    let (code, out) = validate_text(
        r#"
[upstreams.a]
targets = ["127.0.0.1:1"]

[[routes]]
name = "both"
path = "/both"
upstream = "a"
split = [{ upstream = "a", weight = 1 }]

[[routes]]
name = "unknown"
path = "/unknown"
split = [{ upstream = "a", weight = 1 }, { upstream = "nope", weight = 1 }]
split_key = "cookie:"

[[routes]]
name = "weightless"
path = "/weightless"
split = [{ upstream = "a", weight = 0 }]

[[routes]]
name = "keyed"
path = "/keyed"
upstream = "a"
split_key = "ip"
"#,
    );
    assert_eq!(code, 1, "{out}");
    for expected in [
        "routes[0].split: a route has one of upstream, split or compose",
        "routes[1].split[1].upstream: no upstream named \"nope\"",
        "routes[1].split_key: \"cookie:\" is not one of cookie:NAME, header:NAME, consumer, ip",
        "routes[2].split: at least one variant needs a weight above zero",
        "routes[3].split_key: needs a split",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}
