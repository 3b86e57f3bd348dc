//! Callers are held to their limits: exactly, under concurrency, across instances that share
//! one Redis, and safely when that Redis fails.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::redis::RedisServer;
use crate::common::{eventually, upstream::spawn_ok, Gateway, Upstream};

pub(crate) fn limited_route(plugin: &str, upstream: &Upstream, extra: &str) -> String {
    format!(
        r#"{extra}
[plugins.limit]
kind = "rate_limit"
{plugin}

[upstreams.app]
targets = ["{}"]

[[routes]]
name = "api"
path = "/api"
upstream = "app"
plugins = ["limit"]
"#,
        upstream.addr
    )
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Fire `n` requests at once; returns how many got 200 and how many 429.
async fn burst(gw: &Gateway, n: usize, headers: &[(&str, &str)]) -> (usize, usize) {
    let requests: Vec<_> = (0..n)
        .map(|_| {
            let mut req = gw.client.get(gw.url("/api/x"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut counts = (0, 0);
    for r in requests {
        match r.await.unwrap() {
            200 => counts.0 += 1,
            429 => counts.1 += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn the_limit_is_exact_and_every_answer_says_where_the_caller_stands() {
    let app = spawn_ok("app").await;
    let gw = Gateway::start(&limited_route("limit = 5\nwindow = \"1m\"", &app, "")).await;
    for i in 0..5 {
        let resp = gw.get("/api/x").await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(header(&resp, "ratelimit-limit"), "5");
        assert_eq!(header(&resp, "ratelimit-remaining"), (4 - i).to_string());
        let reset: u64 = header(&resp, "ratelimit-reset").parse().unwrap();
        assert!((1..=60).contains(&reset), "{reset}");
    }
    let refused = gw.get("/api/x").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "ratelimit-remaining"), "0");
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((1..=120).contains(&retry), "{retry}");
    assert_eq!(header(&refused, "content-type"), "application/problem+json");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["detail"], "limit of 5 per 1m reached");
    assert_eq!(app.hits(), 5);

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "portico_rate_limit_decisions_total{decision=\"allowed\",plugin=\"limit\"} 5"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "portico_rate_limit_decisions_total{decision=\"limited\",plugin=\"limit\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_burst_gets_exactly_the_limit() {
    let app = spawn_ok("app").await;
    let gw = Gateway::start(&limited_route("limit = 5\nwindow = \"1m\"", &app, "")).await;
    assert_eq!(burst(&gw, 50, &[]).await, (5, 45));
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_x_forwarded_for_from_an_untrusted_peer_does_not_evade() {
    let app = spawn_ok("app").await;
    let gw = Gateway::start(&limited_route(
        "limit = 3\nwindow = \"1m\"\nkey = \"ip\"",
        &app,
        "",
    ))
    .await;
    let mut admitted = 0;
    for i in 0..10 {
        let resp = gw
            .client
            .get(gw.url("/api/x"))
            .header("x-forwarded-for", format!("10.0.0.{i}"))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_have_their_own_limits_and_tiers_raise_them() {
    let app = spawn_ok("app").await;
    let gw = Gateway::start(&format!(
        r#"
[consumers.acme]
api_keys = ["acme-key-0123456789"]
tier = "premium"

[consumers.globex]
api_keys = ["globex-key-0123456789"]

[plugins.keys]
kind = "api_key"

[plugins.per-consumer]
kind = "rate_limit"
limit = 2
window = "1m"
key = "consumer"
limits_by_tier = {{ premium = 4 }}

[upstreams.app]
targets = ["{}"]

[[routes]]
name = "api"
path = "/api"
upstream = "app"
plugins = ["keys", "per-consumer"]
"#,
        app.addr
    ))
    .await;
    let acme = burst(&gw, 10, &[("x-api-key", "acme-key-0123456789")]).await;
    let globex = burst(&gw, 10, &[("x-api-key", "globex-key-0123456789")]).await;
    assert_eq!(acme, (4, 6), "premium tier: 4");
    assert_eq!(globex, (2, 8), "no tier: the plugin's limit");
    let resp = gw
        .client
        .get(gw.url("/api/x"))
        .header("x-api-key", "acme-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "ratelimit-limit"), "4");
}

fn redis_section(redis: &RedisServer) -> String {
    format!("[redis]\nurl = \"{}\"\ntimeout = \"50ms\"\n", redis.url())
}

/// Two gateways sharing one Redis (`timeout` for each Redis call; generous, because these
/// tests measure the shared count, and a call that timed out would count locally), with a
/// limit of `limit` an hour per route, and 16 callers on each sending `each` requests one
/// after another. Returns the gateways' upstream, how many requests were admitted, and the
/// most the sliding window may admit meanwhile: the limit, plus what slides out of it while
/// the callers run (a run that spans the hour's turn on Redis's clock sees the previous hour's
/// count start to fade), plus `slack`.
async fn admitted_by_two_instances(
    redis: &RedisServer,
    timeout: &str,
    limit: u64,
    each: usize,
    slack: u64,
) -> (Upstream, usize, usize) {
    let app = spawn_ok("app").await;
    let generous = redis_section(redis).replace("50ms", timeout);
    let config = limited_route(
        &format!("limit = {limit}\nwindow = \"1h\"\nkey = \"route\"\nstore = \"redis\""),
        &app,
        &generous,
    );
    let (a, b) = (Gateway::start(&config).await, Gateway::start(&config).await);
    let started = std::time::Instant::now();
    let callers: Vec<_> = [&a, &b]
        .into_iter()
        .flat_map(|gw| {
            (0..16).map(move |_| {
                let (client, url) = (gw.client.clone(), gw.url("/api/x"));
                tokio::spawn(async move {
                    let mut admitted = 0;
                    for _ in 0..each {
                        if client.get(&url).send().await.unwrap().status() == 200 {
                            admitted += 1;
                        }
                    }
                    admitted
                })
            })
        })
        .collect();
    let mut admitted = 0;
    for c in callers {
        admitted += c.await.unwrap();
    }
    let slid_out = (limit as f64 * started.elapsed().as_secs_f64() / 3600.0).ceil() as u64;
    (app, admitted, (limit + slid_out + slack) as usize)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_sharing_one_redis_enforce_one_limit() {
    let redis = RedisServer::start().await;
    // Demand well above the limit, from both instances at once.
    let (app, admitted, most) = admitted_by_two_instances(&redis, "1s", 100, 20, 2).await;
    assert!(
        (95..=most).contains(&admitted),
        "640 requests for a limit of 100 admitted {admitted}"
    );
    assert_eq!(app.hits(), admitted);
}

/// A large limit reserves in batches and refills in the background before a batch runs out:
/// still one limit for both instances, and a handful of Redis round trips, not one per request.
#[tokio::test(flavor = "multi_thread")]
async fn batched_reservations_with_background_refills_stay_within_the_limit() {
    let redis = RedisServer::start().await;
    let (app, admitted, most) = admitted_by_two_instances(&redis, "5s", 2000, 80, 2).await;
    // Unspent at the end, per instance: at most one reservation (a batch of 20, 1% of the
    // limit, plus the 16 callers waiting) and one background batch of 20.
    assert!(
        (2000 - 2 * 57..=most).contains(&admitted),
        "2,560 requests for a limit of 2,000 admitted {admitted}"
    );
    assert_eq!(app.hits(), admitted);
    let stats = redis.command(&["INFO", "commandstats"]).await.unwrap();
    let round_trips: u64 = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_eval"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        (50..=400).contains(&round_trips),
        "{round_trips} reservations for 2,000 admissions:\n{stats}"
    );
}

/// Until a request is admitted and its count shows up in Redis.
async fn counted_in_redis(gw: &Gateway, redis: &RedisServer, what: &str) {
    eventually(what, Duration::from_secs(10), async || {
        gw.get("/api/x").await.status() == 200
            && redis
                .command(&["KEYS", "portico:rl:*"])
                .await
                .is_some_and(|r| r.contains("portico:rl:{limit:"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn when_redis_dies_requests_fall_back_and_when_it_returns_sharing_resumes() {
    let mut redis = RedisServer::start().await;
    let app = spawn_ok("app").await;
    let gw = Gateway::start(&limited_route(
        "limit = 1000\nwindow = \"1m\"\nkey = \"route\"\nstore = \"redis\"",
        &app,
        &redis_section(&redis),
    ))
    .await;
    // Counted in Redis (a first call that timed out on a loaded machine counts locally, and
    // the next ones go to Redis again once it answers).
    counted_in_redis(&gw, &redis, "requests are counted in Redis").await;

    redis.kill();
    for _ in 0..30 {
        let started = Instant::now();
        let resp = gw.get("/api/x").await;
        assert_eq!(resp.status(), 200, "the local fallback admits");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a request waited {:?} on a dead Redis",
            started.elapsed()
        );
    }
    let metrics = gw.metrics().await;
    assert!(metrics.contains("decision=\"store_error\""), "{metrics}");

    redis.restart().await;
    counted_in_redis(&gw, &redis, "requests are counted in Redis again").await;
    assert!(
        gw.stderr()
            .contains("is back; shared rate limits and the shared cache resume"),
        "the recovery is logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_store_error_deny_refuses_while_redis_is_down() {
    let mut redis = RedisServer::start().await;
    let app = spawn_ok("app").await;
    let gw = Gateway::start(&limited_route(
        "limit = 1000\nwindow = \"1m\"\nstore = \"redis\"\non_store_error = \"deny\"",
        &app,
        &redis_section(&redis),
    ))
    .await;
    assert_eq!(gw.get("/api/x").await.status(), 200);
    redis.kill();
    // Admissions already reserved from Redis were counted there and may still be spent; the
    // reservation is small (1% of the limit plus waiting requests), then `deny` applies.
    let mut spent = 0;
    loop {
        let resp = gw.get("/api/x").await;
        if resp.status() == 429 {
            assert_eq!(header(&resp, "retry-after"), "1");
            break;
        }
        spent += 1;
        assert!(spent <= 20, "the reservation should be about 11 admissions");
    }
    for _ in 0..5 {
        assert_eq!(
            gw.get("/api/x").await.status(),
            429,
            "every request is refused while Redis is down"
        );
    }
}

#[test]
fn store_redis_without_a_redis_section_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[plugins.l]\nkind = \"rate_limit\"\nlimit = 5\nwindow = \"1m\"\nstore = \"redis\"\n",
    )
    .unwrap();
    let (code, out) = crate::common::gateway::validate(&path);
    assert_eq!(code, 1);
    assert!(
        out.contains("plugins.l: store = \"redis\" needs a [redis] section with a valid url"),
        "{out}"
    );
}
