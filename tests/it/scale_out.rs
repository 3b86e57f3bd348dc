//! Many instances on one Redis that can itself grow: a Redis Cluster, a Sentinel-managed
//! primary, TLS to either. Each story starts real redis-server processes (and sentinels), real
//! gateways, and breaks them the way production does: a primary killed, a slot moved, a
//! failover, a certificate from the wrong CA.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::gateway::validate_text;
use crate::common::redis::{RedisCluster, RedisSentinel, RedisServer, TlsMaterial};
use crate::common::tls::TestCa;
use crate::common::upstream::spawn_ok;
use crate::common::{eventually, spawn_upstream, Gateway, Reply, Upstream};

/// Listeners for a config that is only checked, never started.
const CHECKED_ONLY: &str =
    "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[admin]\nlisten = \"127.0.0.1:2\"\n\n";

#[test]
fn a_redis_section_is_checked_whole_before_anything_connects() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("redis CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (cert, key) = ca.client("portico").write(dir.path(), "client");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "this is not a certificate").unwrap();
    let (ca_file, cert, key, not_pem) = (
        ca_file.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
        not_pem.display().to_string(),
    );

    // A good one: TLS files that parse, with Redis nowhere; `-t` connects to nothing.
    let good = format!(
        "[redis]\ncluster = [\"rediss://127.0.0.1:1\", \"rediss://127.0.0.1:2\"]\n\
         tls = {{ ca = \"{ca_file}\", cert = \"{cert}\", key = \"{key}\" }}\n"
    );
    let (code, out) = validate_text(&format!("{CHECKED_ONLY}{good}"));
    assert_eq!(code, 0, "{out}");

    let cases = [
        (
            "[redis]\nurl = \"redis://127.0.0.1:6379\"\ncluster = [\"redis://127.0.0.1:7000\"]\n"
                .to_string(),
            "url, cluster and sentinel are alternatives",
        ),
        (
            "[redis]\ntimeout = \"10ms\"\n".to_string(),
            "one of url, cluster or sentinel",
        ),
        ("[redis]\ncluster = []\n".to_string(), "lists no seed nodes"),
        (
            "[redis]\nsentinel = { master = \"\", nodes = [\"redis://127.0.0.1:26379\"] }\n"
                .to_string(),
            "name the monitored primary",
        ),
        (
            "[redis]\ncluster = [\"redis://127.0.0.1:7000\", \"rediss://127.0.0.1:7001\"]\n"
                .to_string(),
            "mixes redis:// and rediss://",
        ),
        (
            "[redis]\nurl = \"http://127.0.0.1:6379\"\n".to_string(),
            "must start with redis://",
        ),
        (
            format!("[redis]\nurl = \"redis://127.0.0.1:6379\"\ntls = {{ ca = \"{ca_file}\" }}\n"),
            "no Redis URL is rediss://",
        ),
        (
            format!("[redis]\nurl = \"rediss://127.0.0.1:6379\"\ntls = {{ cert = \"{cert}\" }}\n"),
            "cert without key",
        ),
        (
            format!("[redis]\nurl = \"rediss://127.0.0.1:6379\"\ntls = {{ ca = \"{not_pem}\" }}\n"),
            "holds no PEM certificate",
        ),
        (
            "[redis]\nurl = \"rediss://127.0.0.1:6379\"\ntls = { ca = \"/nonexistent/ca.pem\" }\n"
                .to_string(),
            "cannot read /nonexistent/ca.pem",
        ),
        (
            "[cache]\nmax_size = \"1MiB\"\nshared = \"redis\"\n".to_string(),
            "no [redis] section",
        ),
    ];
    for (config, expected) in cases {
        let (code, out) = validate_text(&format!("{CHECKED_ONLY}{config}"));
        assert_eq!(code, 1, "{config}\n{out}");
        assert!(
            out.contains(expected),
            "{config}\nexpected {expected:?} in:\n{out}"
        );
    }
}

/// A route limited to `limit` an hour in all, counted in the Redis `redis` names (a `[redis]`
/// section), with `extra` plugin keys.
fn limited(redis: &str, app: &Upstream, limit: u64, extra: &str) -> String {
    crate::rate_limit::limited_route(
        &format!("limit = {limit}\nwindow = \"1h\"\nkey = \"route\"\nstore = \"redis\"\n{extra}"),
        app,
        redis,
    )
}

fn cluster_section(cluster: &RedisCluster, timeout: &str, tls: &str) -> String {
    let seeds: Vec<String> = cluster
        .seed_urls()
        .iter()
        .map(|u| format!("{u:?}"))
        .collect();
    format!(
        "[redis]\ncluster = [{}]\ntimeout = \"{timeout}\"\n{tls}\n",
        seeds.join(", ")
    )
}

fn sentinel_section(sentinel: &RedisSentinel, timeout: &str, tls: &str) -> String {
    let nodes: Vec<String> = sentinel
        .sentinel_urls()
        .iter()
        .map(|u| format!("{u:?}"))
        .collect();
    format!(
        "[redis]\nsentinel = {{ master = \"{}\", nodes = [{}] }}\ntimeout = \"{timeout}\"\n{tls}\n",
        sentinel.master_name(),
        nodes.join(", ")
    )
}

fn tls_line(ca: &std::path::Path, client: Option<&TlsMaterial>) -> String {
    match client {
        Some(t) => format!(
            "tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}",
            ca.display().to_string(),
            t.client_cert().display().to_string(),
            t.client_key().display().to_string()
        ),
        None => format!("tls = {{ ca = {:?} }}", ca.display().to_string()),
    }
}

/// The limiter's counter in the cluster (`portico:rl:{limit:DIGEST}:WINDOW`), once a request
/// has put it there: its name and the primary that holds it.
async fn counter_in_cluster(gw: &Gateway, cluster: &RedisCluster) -> (String, u16) {
    let mut found = None;
    eventually(
        "the limit is counted in the cluster",
        Duration::from_secs(10),
        async || {
            assert_eq!(gw.get("/api/x").await.status(), 200);
            for node in cluster.view().await.into_iter().filter(|n| n.is_master()) {
                let keys = cluster.command(node.port, &["KEYS", "portico:rl:*"]).await;
                if let Some(key) = keys.lines().find(|k| k.starts_with("portico:rl:{limit:")) {
                    found = Some((key.to_string(), node.port));
                    return true;
                }
            }
            false
        },
    )
    .await;
    found.unwrap()
}

/// The count Redis holds for `key` on `port` (0 when absent).
async fn count(command: impl AsyncFn(&[&str]) -> String, key: &str) -> u64 {
    command(&["GET", key]).await.parse().unwrap_or(0)
}

/// Requests go on being counted on `port`: a few more requests raise the count there.
async fn counting_resumes_on(
    gw: &Gateway,
    what: &str,
    key: &str,
    command: impl AsyncFn(&[&str]) -> String,
) {
    let before = count(&command, key).await;
    eventually(what, Duration::from_secs(10), async || {
        assert_eq!(
            gw.get("/api/x").await.status(),
            200,
            "never refused meanwhile"
        );
        count(&command, key).await > before
    })
    .await;
}

/// `n` requests one after another, each answered 200 within the Redis timeout's reach.
async fn every_request_answered_quickly(gw: &Gateway, n: usize, what: &str) {
    for _ in 0..n {
        let started = Instant::now();
        assert_eq!(gw.get("/api/x").await.status(), 200, "{what}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: a request waited {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_on_a_cluster_enforce_one_limit() {
    let cluster = RedisCluster::start(3, 0).await;
    let app = spawn_ok("app").await;
    let config = limited(&cluster_section(&cluster, "1s", ""), &app, 400, "");
    let gateways = [
        Gateway::start(&config).await,
        Gateway::start(&config).await,
        Gateway::start(&config).await,
    ];
    // 600 requests for a limit of 400, from 8 callers on each instance at once.
    let callers: Vec<_> = gateways
        .iter()
        .flat_map(|gw| {
            (0..8).map(move |_| {
                let (client, url) = (gw.client.clone(), gw.url("/api/x"));
                tokio::spawn(async move {
                    let mut admitted = 0;
                    for _ in 0..25 {
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
    for caller in callers {
        admitted += caller.await.unwrap();
    }
    assert!(
        (380..=420).contains(&admitted),
        "600 requests for one limit of 400 on three instances admitted {admitted}"
    );
    assert_eq!(app.hits(), admitted);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_primary_is_followed_to_its_promoted_replica() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let app = spawn_ok("app").await;
    let gw = Gateway::start(&limited(
        &cluster_section(&cluster, "100ms", ""),
        &app,
        10_000,
        "",
    ))
    .await;
    let (key, owner) = counter_in_cluster(&gw, &cluster).await;

    cluster.kill_primary(owner).await;
    // Until a replica takes over, requests take on_store_error's fallback, without waiting.
    every_request_answered_quickly(&gw, 20, "while the primary is dead").await;
    let promoted = cluster.wait_for_promotion(owner).await;
    every_request_answered_quickly(&gw, 20, "after the promotion").await;
    counting_resumes_on(
        &gw,
        "requests are counted on the promoted replica",
        &key,
        async |args| cluster.command(promoted, args).await,
    )
    .await;
    gw.metrics_showing(&[
        r#"portico_rate_limit_decisions_total{decision="store_error",plugin="limit"}"#,
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_migration_is_followed_without_a_failed_request() {
    let cluster = RedisCluster::start(3, 0).await;
    let app = spawn_ok("app").await;
    let gw = Gateway::start(&limited(
        &cluster_section(&cluster, "250ms", ""),
        &app,
        10_000,
        "",
    ))
    .await;
    let (key, owner) = counter_in_cluster(&gw, &cluster).await;
    let slot = cluster.slot_for_key(&key).await;
    let to = cluster
        .view()
        .await
        .into_iter()
        .find(|n| n.is_master() && n.port != owner)
        .unwrap()
        .port;

    // Requests go on while the slot moves (ASK while it is half-moved, MOVED after).
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (client, url, stop) = (gw.client.clone(), gw.url("/api/x"), Arc::clone(&stop));
        async move {
            let (mut sent, mut slowest) = (0, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) || sent < 20 {
                let started = Instant::now();
                let status = client.get(&url).send().await.unwrap().status();
                assert_eq!(status, 200, "request {sent} during the migration");
                slowest = slowest.max(started.elapsed());
                sent += 1;
            }
            (sent, slowest)
        }
    });
    cluster.migrate_slot(slot, to).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, slowest) = traffic.await.unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "a request took {slowest:?} of {sent}"
    );
    assert_eq!(cluster.primary_for_key(&key).await, to);
    counting_resumes_on(
        &gw,
        "requests are counted where the slot went",
        &key,
        async |args| cluster.command(to, args).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_failover_is_followed_and_the_limit_holds_again() {
    let mut sentinel = RedisSentinel::start().await;
    let app = spawn_ok("app").await;
    let config = limited(&sentinel_section(&sentinel, "100ms", ""), &app, 30, "")
        .replace("key = \"route\"", "key = \"header:x-client\"");
    let gw = Gateway::start(&config).await;
    let get = async |client: &str| {
        let resp = gw
            .client
            .get(gw.url("/api/x"))
            .header("x-client", client)
            .send()
            .await;
        resp.unwrap().status().as_u16()
    };
    // Enforced through the primary: 30 admitted, then refused.
    let mut admitted = 0;
    while get("first").await == 200 {
        admitted += 1;
        assert!(admitted <= 30, "the limit of 30 is not enforced");
    }
    assert_eq!(admitted, 30);
    let primary = sentinel.primary_port();
    let keys = sentinel.command(primary, &["KEYS", "portico:rl:*"]).await;
    assert!(
        keys.contains("portico:rl:{limit:"),
        "counted in the primary: {keys:?}"
    );

    sentinel.kill_primary();
    let promoted = sentinel.wait_for_failover().await;
    assert_ne!(promoted, primary);
    // Within a few seconds of the promotion, a new caller is counted on the new primary...
    eventually(
        "a new caller is counted on the promoted replica",
        Duration::from_secs(10),
        async || {
            assert_eq!(
                get("second").await,
                200,
                "admitted (by Redis, or by the fallback)"
            );
            let keys = sentinel.command(promoted, &["KEYS", "portico:rl:*"]).await;
            keys.lines()
                .filter(|k| k.starts_with("portico:rl:{limit:"))
                .count()
                >= 2
        },
    )
    .await;
    // ...and held to the limit there: what Redis counts from now on is at most 30.
    let mut admitted = 0;
    while get("second").await == 200 {
        admitted += 1;
        assert!(
            admitted <= 30,
            "the limit of 30 is not enforced after the failover"
        );
    }
    // The first caller stays refused throughout.
    assert_eq!(get("first").await, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_certificate_from_another_ca_is_reported_and_redis_counts_as_down() {
    let tls = TlsMaterial::generate();
    let redis = RedisServer::start_tls(&tls, false).await;
    let app = spawn_ok("app").await;
    let section = format!(
        "[redis]\nurl = \"{}\"\ntimeout = \"100ms\"\n{}\n",
        redis.url(),
        tls_line(&tls.other_ca(), None)
    );
    let gw = Gateway::start(&limited(&section, &app, 1000, "on_store_error = \"deny\"")).await;
    eventually(
        "the TLS failure is logged",
        Duration::from_secs(10),
        async || gw.stderr().contains("TLS handshake failed"),
    )
    .await;
    let log = gw.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("TLS handshake failed"))
        .unwrap();
    assert!(line.contains("certificate"), "{line}");
    assert!(
        line.contains(&redis.url().replace("rediss://", "")),
        "names the server: {line}"
    );
    // Down meanwhile: on_store_error = "deny" refuses, and /status says so.
    assert_eq!(gw.get("/api/x").await.status(), 429);
    assert_eq!(gw.admin_json("/status").await["redis"]["up"], false);
    gw.metrics_showing(&[
        r#"portico_rate_limit_decisions_total{decision="store_error",plugin="limit"}"#,
    ])
    .await;
    // And it goes on trying, logging each attempt.
    eventually(
        "a retry is logged too",
        Duration::from_secs(10),
        async || gw.stderr().matches("TLS handshake failed").count() >= 2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rediss_works_on_one_server_a_cluster_and_sentinel() {
    let tls = TlsMaterial::generate();
    let app = spawn_ok("app").await;

    // One server that asks for a client certificate.
    let redis = RedisServer::start_tls(&tls, true).await;
    let section = format!(
        "[redis]\nurl = \"{}\"\ntimeout = \"250ms\"\n{}\n",
        redis.url(),
        tls_line(&tls.ca(), Some(&tls))
    );
    let gw = Gateway::start(&limited(&section, &app, 1000, "on_store_error = \"deny\"")).await;
    eventually("counted over TLS", Duration::from_secs(10), async || {
        gw.get("/api/x").await.status() == 200
            && redis
                .command(&["KEYS", "portico:rl:*"])
                .await
                .is_some_and(|k| k.contains("portico:rl:{limit:"))
    })
    .await;
    drop(gw);

    let cluster = RedisCluster::start_tls(3, 0, &tls, false).await;
    let section = cluster_section(&cluster, "250ms", &tls_line(&tls.ca(), None));
    let gw = Gateway::start(&limited(&section, &app, 1000, "on_store_error = \"deny\"")).await;
    counter_in_cluster(&gw, &cluster).await;
    drop(gw);

    let sentinel = RedisSentinel::start_tls(&tls, false).await;
    let section = sentinel_section(&sentinel, "250ms", &tls_line(&tls.ca(), None));
    let gw = Gateway::start(&limited(&section, &app, 1000, "on_store_error = \"deny\"")).await;
    eventually(
        "counted through the sentinels over TLS",
        Duration::from_secs(10),
        async || {
            gw.get("/api/x").await.status() == 200
                && sentinel
                    .command(sentinel.primary_port(), &["KEYS", "portico:rl:*"])
                    .await
                    .contains("portico:rl:{limit:")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_cache_tier_and_its_purges_work_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0).await;
    let app = spawn_upstream("app", |seen| {
        Reply::With(
            200,
            vec![("cache-control", "max-age=300".to_string())],
            format!("page {}", seen.uri),
        )
    })
    .await;
    let config = format!(
        r#"{}
[cache]
max_size = "16MiB"
shared = "redis"

[plugins.cache]
kind = "cache"
ttl = "60s"

[upstreams.app]
targets = ["{}"]

[[routes]]
name = "pages"
path = "/"
upstream = "app"
plugins = ["cache"]
"#,
        cluster_section(&cluster, "250ms", ""),
        app.addr
    );
    let (a, b) = (Gateway::start(&config).await, Gateway::start(&config).await);
    let x_cache = async |gw: &Gateway, path: &str| {
        let resp = gw
            .client
            .get(gw.url(path))
            .header("host", "www.example.com")
            .send()
            .await
            .unwrap();
        resp.headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    // Pages whose keys land on different primaries.
    let paths: Vec<String> = (0..6).map(|i| format!("/page/{i}")).collect();
    for path in &paths {
        assert_eq!(x_cache(&a, path).await, "MISS");
    }
    eventually(
        "A's pages reach the shared tier",
        Duration::from_secs(5),
        async || {
            a.metrics()
                .await
                .contains(r#"portico_cache_shared_operations_total{result="write"} 6"#)
        },
    )
    .await;
    for path in &paths {
        assert_eq!(
            x_cache(&b, path).await,
            "HIT",
            "{path} from the shared tier"
        );
    }
    assert_eq!(app.hits(), 6);

    // A purge of the whole route on B empties Redis and A's memory.
    eventually(
        "every instance listens for purges",
        Duration::from_secs(5),
        async || {
            let mut listeners = 0;
            for node in cluster.view().await.into_iter().filter(|n| n.is_master()) {
                let reply = cluster
                    .command(node.port, &["PUBSUB", "NUMSUB", "portico:cache:purge"])
                    .await;
                listeners += reply
                    .lines()
                    .nth(1)
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0);
            }
            listeners >= 2
        },
    )
    .await;
    let resp = b
        .client
        .post(b.admin_url("/cache/purge"))
        .body(r#"{"route": "pages"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["shared"]["purged"], 6, "{answer}");
    eventually(
        "A's memory is purged too",
        Duration::from_secs(1),
        async || x_cache(&a, &paths[0]).await == "MISS",
    )
    .await;
}
