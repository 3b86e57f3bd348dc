//! Many instances, one cache: with `[cache] shared = "redis"`, instance B serves what instance A
//! fetched, by the same HTTP rules; a purge on any instance empties every instance; and a Redis
//! that stops answering turns the shared tier into a miss, never an error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::redis::RedisServer;
use crate::common::{eventually, spawn_upstream, Gateway, Reply, Upstream};

/// One config for every instance: a cached route on `upstream`, the cache's second tier in
/// `redis` (`timeout` for each Redis call).
fn shared(upstream: &Upstream, redis: &RedisServer, timeout: &str) -> String {
    format!(
        r#"
[redis]
url = "{redis}"
timeout = "{timeout}"

[cache]
max_size = "16MiB"
shared = "redis"

[plugins.cache]
kind = "cache"
ttl = "60s"

[upstreams.app]
targets = ["{app}"]
circuit_breaker = {{ failures = 1, open_for = "30s" }}

[[routes]]
name = "r"
path = "/"
upstream = "app"
plugins = ["cache"]
"#,
        redis = redis.url(),
        app = upstream.addr
    )
}

/// Answers "v1", "v2", ... with `cache_control`, varying by Accept-Language.
async fn counting(cache_control: &'static str) -> Upstream {
    let counter = AtomicUsize::new(0);
    spawn_upstream("app", move |seen| {
        let v = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let lang = seen.header("accept-language").unwrap_or("none").to_string();
        Reply::With(
            200,
            vec![
                ("cache-control", cache_control.to_string()),
                ("vary", "accept-language".to_string()),
            ],
            format!("v{v} {lang}"),
        )
    })
    .await
}

/// The public name every instance is reached by, behind the load balancer: part of the key.
const HOST: &str = "api.example.com";

/// GET `path` (with an Accept-Language when given); returns (status, X-Cache, body).
async fn fetch(gw: &Gateway, path: &str, lang: Option<&str>) -> (u16, String, String) {
    let mut req = gw.client.get(gw.url(path)).header("host", HOST);
    if let Some(lang) = lang {
        req = req.header("accept-language", lang);
    }
    let resp = req.send().await.expect("an answer");
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, cache, resp.text().await.unwrap_or_default())
}

/// How many responses the shared tier holds (the URL indexes aside).
async fn shared_entries(redis: &RedisServer) -> usize {
    let keys = redis
        .command(&["KEYS", "portico:cache:{*}:*"])
        .await
        .unwrap_or_default();
    keys.lines()
        .filter(|l| l.starts_with("portico:cache:") && !l.ends_with(":keys"))
        .count()
}

/// Writes to the shared tier happen off the request's path: wait until `n` have landed.
async fn wait_for_shared_entries(redis: &RedisServer, n: usize) {
    eventually(
        "the shared tier holds the fetched responses",
        Duration::from_secs(5),
        async || shared_entries(redis).await >= n,
    )
    .await;
}

/// Every instance listens for purges from the start; wait until `n` are subscribed.
async fn wait_for_listeners(redis: &RedisServer, n: usize) {
    eventually(
        "every instance listens for purges",
        Duration::from_secs(5),
        async || {
            let reply = redis
                .command(&["PUBSUB", "NUMSUB", "portico:cache:purge"])
                .await
                .unwrap_or_default();
            reply
                .lines()
                .filter_map(|l| l.trim_start_matches(':').parse::<usize>().ok())
                .any(|count| count >= n)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_b_serves_what_instance_a_fetched_variants_included() {
    let redis = RedisServer::start().await;
    let upstream = counting("max-age=300").await;
    let config = shared(&upstream, &redis, "250ms");
    let a = Gateway::start(&config).await;
    let b = Gateway::start(&config).await;

    assert_eq!(
        fetch(&a, "/item", Some("en")).await,
        (200, "MISS".into(), "v1 en".into())
    );
    assert_eq!(
        fetch(&a, "/item", Some("de")).await,
        (200, "MISS".into(), "v2 de".into())
    );
    wait_for_shared_entries(&redis, 2).await;

    // B never asked the upstream: both variants come from the shared tier, each its own.
    assert_eq!(
        fetch(&b, "/item", Some("de")).await,
        (200, "HIT".into(), "v2 de".into())
    );
    assert_eq!(
        fetch(&b, "/item", Some("en")).await,
        (200, "HIT".into(), "v1 en".into())
    );
    assert_eq!(upstream.hits(), 2);
    // A variant nobody fetched is a miss on B, and then shared in turn.
    assert_eq!(
        fetch(&b, "/item", Some("fr")).await,
        (200, "MISS".into(), "v3 fr".into())
    );
    assert_eq!(upstream.hits(), 3);
    // What B took from Redis stays in its memory: Redis is asked once per variant.
    assert_eq!(fetch(&b, "/item", Some("en")).await.1, "HIT");
    b.metrics_showing(&[
        r#"portico_cache_shared_operations_total{result="hit"} 2"#,
        r#"portico_cache_lookups_total{result="hit",route="r"} 3"#,
    ])
    .await;
    let status = b.admin_json("/status").await;
    assert_eq!(status["cache"]["shared"], true);
    assert_eq!(status["redis"]["topology"], "server");
    assert_eq!(status["redis"]["up"], true);
    // The shared copy keeps its age: B's Age counts from when A fetched it.
    let resp = b
        .client
        .get(b.url("/item"))
        .header("host", HOST)
        .header("accept-language", "de")
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers().get("age").is_some(),
        "a shared hit says its Age"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_on_one_instance_empties_every_instance() {
    let redis = RedisServer::start().await;
    let upstream = counting("max-age=300").await;
    let config = shared(&upstream, &redis, "250ms");
    let a = Gateway::start(&config).await;
    let b = Gateway::start(&config).await;
    wait_for_listeners(&redis, 2).await;

    assert_eq!(fetch(&a, "/item", None).await.1, "MISS");
    wait_for_shared_entries(&redis, 1).await;
    assert_eq!(fetch(&b, "/item", None).await.1, "HIT");
    // Both instances now hold it in memory, and Redis holds it too.
    assert_eq!(fetch(&a, "/item", None).await.1, "HIT");

    let resp = b
        .client
        .post(b.admin_url("/cache/purge"))
        .body(format!(r#"{{"url": "http://{HOST}/item"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["purged"], 1, "{answer}");
    assert_eq!(answer["shared"]["purged"], 1, "{answer}");
    assert_eq!(shared_entries(&redis).await, 0);

    // The purge reaches A's memory through Redis within a second.
    let purged = Instant::now();
    eventually("A's copy is purged", Duration::from_secs(1), async || {
        fetch(&a, "/item", None).await.1 == "MISS"
    })
    .await;
    assert!(purged.elapsed() < Duration::from_secs(1));
    assert_eq!(upstream.hits(), 2, "A fetched it again, once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_redis_leaves_cached_routes_answered_from_the_upstream() {
    let redis = RedisServer::start().await;
    let upstream = counting("max-age=300").await;
    let a = Gateway::start(&shared(&upstream, &redis, "100ms")).await;
    assert_eq!(fetch(&a, "/warm", None).await.1, "MISS");
    wait_for_shared_entries(&redis, 1).await;

    // Redis stops answering (every client's commands wait) for longer than this test needs.
    redis
        .command(&["CLIENT", "PAUSE", "4000", "ALL"])
        .await
        .expect("Redis pauses");
    for i in 0..5 {
        let started = Instant::now();
        let (status, cache, body) = fetch(&a, &format!("/cold/{i}"), None).await;
        assert_eq!((status, cache.as_str()), (200, "MISS"), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a request waited {:?} on a paused Redis",
            started.elapsed()
        );
    }
    // What this instance holds in memory is still a hit.
    assert_eq!(fetch(&a, "/warm", None).await.1, "HIT");
    a.metrics_showing(&[r#"portico_cache_shared_operations_total{result="error"}"#])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_never_fetched_serves_stale_from_the_shared_tier_when_the_upstream_fails()
{
    let redis = RedisServer::start().await;
    let upstream = counting("max-age=1, stale-if-error=60").await;
    let config = shared(&upstream, &redis, "250ms");
    let a = Gateway::start(&config).await;
    assert_eq!(fetch(&a, "/e", None).await.2, "v1 none");
    wait_for_shared_entries(&redis, 1).await;
    upstream.go_down();

    // B starts with an empty memory; once the shared copy is stale, B's failed fetch is
    // answered with it, by the copy's own stale-if-error.
    let b = Gateway::start(&config).await;
    eventually(
        "the shared copy goes stale",
        Duration::from_secs(10),
        async || {
            let (status, cache, body) = fetch(&b, "/e", None).await;
            assert_eq!((status, body.as_str()), (200, "v1 none"), "never an error");
            cache == "STALE"
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_tier_too_small_for_an_answer_still_serves_it_from_the_shared_tier() {
    let redis = RedisServer::start().await;
    let upstream = counting("max-age=300").await;
    // Every entry counts 512 bytes of bookkeeping: this memory tier never keeps one.
    let config =
        shared(&upstream, &redis, "250ms").replace(r#"max_size = "16MiB""#, r#"max_size = "256B""#);
    let a = Gateway::start(&config).await;
    assert_eq!(
        fetch(&a, "/item", None).await,
        (200, "MISS".into(), "v1 none".into())
    );
    wait_for_shared_entries(&redis, 1).await;

    // Each request is a memory miss that the shared tier answers, without the upstream.
    for _ in 0..3 {
        assert_eq!(
            fetch(&a, "/item", None).await,
            (200, "HIT".into(), "v1 none".into())
        );
    }
    assert_eq!(
        upstream.hits(),
        1,
        "only the first request reached the upstream"
    );
    a.metrics_showing(&[
        r#"portico_cache_shared_operations_total{result="hit"} 3"#,
        "portico_cache_entries 0",
    ])
    .await;
}
