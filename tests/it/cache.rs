//! Answers are cached by the rules of HTTP: what may be shared is served again without a trip
//! upstream, what may not never is, a stampede sends one request, and a stale answer is
//! better than an error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::gateway::with_defaults;
use crate::common::http::read_one_response;
use crate::common::{eventually, raw_request, spawn_upstream, Gateway, Reply, Upstream};

fn cached(upstream: &Upstream, plugin_extra: &str, upstream_extra: &str, top: &str) -> String {
    format!(
        r#"{top}
[plugins.cache]
kind = "cache"
ttl = "60s"
{plugin_extra}

[upstreams.app]
targets = ["{}"]
{upstream_extra}

[[routes]]
name = "r"
path = "/"
upstream = "app"
plugins = ["cache"]
"#,
        upstream.addr
    )
}

const STORE: &str = "[cache]\nmax_size = \"16MiB\"\n";

/// An upstream whose answers count up, "v1", "v2", ...: the first with Cache-Control
/// `first`, later ones with `later` (long-lived, so a slow test run never sees them expire).
async fn counting(first: &'static str) -> Upstream {
    let counter = AtomicUsize::new(0);
    spawn_upstream("app", move |_| {
        let v = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let cc = if v == 1 { first } else { "max-age=300" };
        Reply::With(
            200,
            vec![("cache-control", cc.to_string())],
            format!("v{v}"),
        )
    })
    .await
}

fn x_cache(resp: &reqwest::Response) -> String {
    header(resp, "x-cache")
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// GET `path` with extra headers; returns (status, X-Cache, body).
async fn fetch(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = gw.client.get(gw.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("an answer");
    let (status, cache) = (resp.status().as_u16(), x_cache(&resp));
    (status, cache, resp.text().await.unwrap_or_default())
}

async fn purge(gw: &Gateway, body: &str) -> serde_json::Value {
    let resp = gw
        .client
        .post(gw.admin_url("/cache/purge"))
        .body(body.to_string())
        .send()
        .await
        .expect("admin answers");
    assert_eq!(resp.status(), 200, "purge {body}");
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_is_served_from_the_cache_until_it_expires() {
    let upstream = counting("max-age=1").await;
    let gw = Gateway::start(&cached(&upstream, "", "", STORE)).await;

    let first = gw.get("/item").await;
    assert_eq!(x_cache(&first), "MISS");
    assert_eq!(first.text().await.unwrap(), "v1");
    let second = gw.get("/item").await;
    assert_eq!(x_cache(&second), "HIT");
    assert!(!header(&second, "age").is_empty(), "a hit says its Age");
    assert_eq!(second.text().await.unwrap(), "v1");
    // HEAD is answered from the GET entry.
    let head = gw.client.head(gw.url("/item")).send().await.unwrap();
    assert_eq!(x_cache(&head), "HIT");
    assert_eq!(upstream.hits(), 1);

    // max-age=1: soon the entry is stale and the next request fetches a fresh answer.
    eventually("the entry expires", Duration::from_secs(10), async || {
        fetch(&gw, "/item", &[]).await.1 == "MISS"
    })
    .await;
    assert_eq!(upstream.hits(), 2);
    assert_eq!(
        fetch(&gw, "/item", &[]).await,
        (200, "HIT".into(), "v2".into())
    );

    gw.metrics_showing(&[
        r#"portico_cache_lookups_total{result="miss",route="r"} 2"#,
        r#"portico_cache_lookups_total{result="hit",route="r"}"#,
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_separates_hosts_queries_and_vary_variants() {
    let upstream = spawn_upstream("app", |seen| {
        let body = format!(
            "{} {} {}",
            seen.header("host").unwrap_or(""),
            seen.uri,
            seen.header("accept-language").unwrap_or("-")
        );
        Reply::With(200, vec![("vary", "Accept-Language".into())], body)
    })
    .await;
    let gw = Gateway::start(&cached(&upstream, "", "", STORE)).await;

    let cases: [(&str, &[(&str, &str)]); 5] = [
        ("/p?x=1", &[("host", "a.example")]),
        ("/p?x=1", &[("host", "b.example")]),
        ("/p?x=2", &[("host", "a.example")]),
        (
            "/p?x=1",
            &[("host", "a.example"), ("accept-language", "de")],
        ),
        (
            "/p?x=1",
            &[("host", "a.example"), ("accept-language", "en")],
        ),
    ];
    let mut bodies = Vec::new();
    for (path, headers) in cases {
        let (status, cache, body) = fetch(&gw, path, headers).await;
        assert_eq!(
            (status, cache.as_str()),
            (200, "MISS"),
            "{path} {headers:?}"
        );
        bodies.push(body);
    }
    for ((path, headers), body) in cases.iter().zip(&bodies) {
        let (_, cache, again) = fetch(&gw, path, headers).await;
        assert_eq!(cache, "HIT", "{path} {headers:?}");
        assert_eq!(&again, body, "each variant keeps its own answer");
    }
    assert_eq!(upstream.hits(), cases.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn what_is_private_is_never_shared() {
    let upstream = spawn_upstream("app", |seen| {
        let (cc, cookie) = match seen.uri.as_str() {
            "/no-store" => ("no-store", false),
            "/private" => ("private, max-age=60", false),
            "/cookie" => ("max-age=60", true),
            "/public" => ("public, max-age=60", false),
            _ => ("max-age=60", false),
        };
        let mut headers = vec![("cache-control", cc.to_string())];
        if cookie {
            headers.push(("set-cookie", "session=abc".to_string()));
        }
        Reply::With(200, headers, seen.uri.clone())
    })
    .await;
    let gw = Gateway::start(&cached(&upstream, "", "", STORE)).await;
    let auth = [("authorization", "Bearer token-of-alice")];

    for path in ["/no-store", "/private", "/cookie"] {
        assert_eq!(fetch(&gw, path, &[]).await.1, "MISS", "{path}");
        assert_eq!(
            fetch(&gw, path, &[]).await.1,
            "MISS",
            "{path} is not stored"
        );
    }
    // A request with credentials: its answer is stored only if the origin says public.
    assert_eq!(fetch(&gw, "/mine", &auth).await.1, "MISS");
    assert_eq!(
        fetch(&gw, "/mine", &[]).await.1,
        "MISS",
        "alice's answer was not kept"
    );
    assert_eq!(fetch(&gw, "/public", &auth).await.1, "MISS");
    assert_eq!(fetch(&gw, "/public", &auth).await.1, "HIT");
    // A stored answer that is not public is not handed to a request with credentials.
    assert_eq!(fetch(&gw, "/mine", &[]).await.1, "HIT");
    assert_eq!(fetch(&gw, "/mine", &auth).await.1, "BYPASS");
    // Only GET and HEAD use the cache.
    let post = gw.client.post(gw.url("/mine")).send().await.unwrap();
    assert_eq!(x_cache(&post), "BYPASS");
    assert_eq!(upstream.hits(), 6 + 2 + 1 + 1 + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_not_cached_and_listed_statuses_are() {
    let upstream = spawn_upstream("app", |seen| {
        let status = seen.uri.trim_start_matches('/').parse().unwrap_or(200);
        Reply::With(status, vec![], "answer".into())
    })
    .await;
    let gw = Gateway::start(&cached(&upstream, "", "", STORE)).await;
    for status in [400, 401, 403, 429, 500, 503] {
        let path = format!("/{status}");
        for _ in 0..2 {
            let (got, cache, _) = fetch(&gw, &path, &[]).await;
            assert_eq!((got, cache.as_str()), (status, "MISS"), "{path}");
        }
    }
    assert_eq!(upstream.hits(), 12);
    assert_eq!(fetch(&gw, "/404", &[]).await.1, "MISS");
    assert_eq!(
        fetch(&gw, "/404", &[]).await.1,
        "HIT",
        "404 is cacheable by default"
    );

    // The gateway's own 502 when the upstream is down is never stored either.
    upstream.go_down();
    assert_eq!(fetch(&gw, "/fresh", &[]).await.0, 502);
    upstream.come_back();
    assert_eq!(
        fetch(&gw, "/fresh", &[]).await,
        (200, "MISS".into(), "answer".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stampede_of_cold_misses_sends_one_request_upstream() {
    let upstream = spawn_upstream("app", |_| {
        Reply::DelayBody(Duration::from_millis(300), 200, "the answer".into())
    })
    .await;
    let gw = Gateway::start(&cached(&upstream, "", "", STORE)).await;
    let client = reqwest::Client::new();
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let (client, url) = (client.clone(), gw.url("/cold"));
            tokio::spawn(async move {
                let resp = client.get(url).send().await.unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), (200, "the answer".to_string()));
    }
    assert_eq!(
        upstream.hits(),
        1,
        "one request upstream for 200 concurrent misses"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    // "v1" may be served stale for a minute; the refresh ("v2") takes a second to answer.
    let counter = AtomicUsize::new(0);
    let upstream = spawn_upstream("app", move |_| {
        let v = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let headers = |cc: &str| vec![("cache-control", cc.to_string())];
        if v == 1 {
            Reply::With(
                200,
                headers("max-age=1, stale-while-revalidate=60"),
                "v1".into(),
            )
        } else {
            Reply::DelayWith(
                Duration::from_secs(1),
                200,
                headers("max-age=300"),
                format!("v{v}"),
            )
        }
    })
    .await;
    let gw = Gateway::start(&cached(&upstream, "", "", STORE)).await;
    assert_eq!(fetch(&gw, "/s", &[]).await.2, "v1");
    eventually(
        "the entry goes stale",
        Duration::from_secs(10),
        async || fetch(&gw, "/s", &[]).await.1 == "STALE",
    )
    .await;
    // That stale answer came at once and started one background refresh. Twenty readers
    // meanwhile get the stale copy at once too, and none of them goes upstream.
    let stale: Vec<_> = (0..20).map(|_| fetch(&gw, "/s", &[])).collect();
    for answer in futures_util::future::join_all(stale).await {
        assert_eq!(answer, (200, "STALE".into(), "v1".into()));
    }
    assert_eq!(upstream.hits(), 2, "the first fetch and the one refresh");
    eventually("the refresh lands", Duration::from_secs(10), async || {
        fetch(&gw, "/s", &[]).await == (200, "HIT".into(), "v2".into())
    })
    .await;
    // A reader whose lookup saw the stale entry just before the refresh was stored may start
    // one more refresh (Pingora takes a key's lock after the lookup): at most one, never one
    // per reader.
    assert!(
        upstream.hits() <= 3,
        "{} upstream requests",
        upstream.hits()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_if_error_serves_stale_while_the_upstream_is_down() {
    let upstream = counting("max-age=1, stale-if-error=60").await;
    let breaker = "circuit_breaker = { failures = 1, open_for = \"30s\" }";
    let gw = Gateway::start(&cached(&upstream, "", breaker, STORE)).await;
    assert_eq!(fetch(&gw, "/e", &[]).await.2, "v1");
    upstream.go_down();
    // Once stale, the failed fetch is answered with the stale copy; then the circuit is
    // open and the copy is served without trying the upstream.
    eventually(
        "the entry goes stale",
        Duration::from_secs(10),
        async || {
            let (status, cache, body) = fetch(&gw, "/e", &[]).await;
            assert_eq!((status, body.as_str()), (200, "v1"), "never an error");
            cache == "STALE"
        },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            fetch(&gw, "/e", &[]).await,
            (200, "STALE".into(), "v1".into())
        );
    }
    let status = gw.admin_json("/status").await;
    assert_eq!(status["upstreams"]["app"]["targets"][0]["circuit"], "open");
    // Without stale-if-error the failure would have been a 502.
    assert_eq!(fetch(&gw, "/never-cached", &[]).await.0, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_keeps_the_store_under_max_size() {
    let upstream = spawn_upstream("app", |_| Reply::Body(200, "x".repeat(64 * 1024))).await;
    let gw = Gateway::start(&cached(&upstream, "", "", "[cache]\nmax_size = \"1MiB\"\n")).await;
    for i in 0..64 {
        assert_eq!(fetch(&gw, &format!("/big/{i}"), &[]).await.0, 200);
    }
    let metrics = gw.metrics().await;
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
            .parse()
            .unwrap()
    };
    let (size, max, entries) = (
        gauge("portico_cache_size_bytes"),
        gauge("portico_cache_max_size_bytes"),
        gauge("portico_cache_entries"),
    );
    assert_eq!(max, 1 << 20);
    assert!(size <= max, "{size} bytes held, limit {max}");
    assert!(size > max / 2, "the store is used: {size}");
    assert!(
        (8..=16).contains(&entries),
        "{entries} entries of 64 KiB in 1 MiB"
    );
    assert_eq!(
        fetch(&gw, "/big/0", &[]).await.1,
        "MISS",
        "the oldest was evicted"
    );
    assert_eq!(
        fetch(&gw, "/big/63", &[]).await.1,
        "HIT",
        "the newest is kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_works_on_the_admin_port_and_never_on_the_public_one() {
    let upstream = counting("max-age=300").await;
    let gw = Gateway::start(&cached(&upstream, "", "", STORE)).await;
    for path in ["/a?q=1", "/b"] {
        fetch(&gw, path, &[]).await;
        assert_eq!(fetch(&gw, path, &[]).await.1, "HIT");
    }
    // The public listener has no purge: these are ordinary requests that purge nothing.
    let public = gw
        .client
        .post(gw.url("/cache/purge"))
        .body(r#"{"route":"r"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(x_cache(&public), "BYPASS", "proxied like any POST");
    let purge_method = raw_request(
        gw.addr,
        &format!("PURGE /b HTTP/1.1\r\nHost: {}", gw.addr),
        b"",
    )
    .await;
    assert_eq!(
        purge_method.header("x-cache"),
        Some("BYPASS"),
        "proxied, not a purge"
    );
    assert_eq!(fetch(&gw, "/b", &[]).await.1, "HIT", "still cached");

    let url = gw.url("/a?q=1");
    assert_eq!(
        purge(&gw, &format!(r#"{{"url":"{url}"}}"#)).await["purged"],
        1
    );
    assert_eq!(fetch(&gw, "/a?q=1", &[]).await.1, "MISS");
    assert_eq!(fetch(&gw, "/b", &[]).await.1, "HIT");
    assert_eq!(purge(&gw, r#"{"route":"r"}"#).await["purged"], 2);
    assert_eq!(fetch(&gw, "/b", &[]).await.1, "MISS");

    let bad = gw
        .client
        .post(gw.admin_url("/cache/purge"))
        .body(r#"{"path":"/b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(header(&bad, "content-type"), "application/problem+json");
}

/// A raw upstream that promises 100 bytes, sends 50 and closes; counts connections.
async fn truncating_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head =
                    "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=60\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&[b'x'; 50]).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_body_is_never_stored() {
    let (addr, accepted) = truncating_upstream().await;
    let config = format!(
        "{STORE}\n[plugins.cache]\nkind = \"cache\"\nttl = \"60s\"\n\n[upstreams.app]\ntargets = [\"{addr}\"]\nretry = {{ attempts = 0 }}\n\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"app\"\nplugins = [\"cache\"]\n"
    );
    let gw = Gateway::start(&config).await;
    for _ in 0..3 {
        let body = match gw.client.get(gw.url("/t")).send().await {
            Ok(resp) => resp.bytes().await.map(|b| b.len()).unwrap_or(0),
            Err(_) => 0,
        };
        assert!(body < 100, "the client never gets a whole body: {body}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "every request went upstream"
    );
    let status = gw.admin_json("/status").await;
    assert_eq!(status["cache"]["entries"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_body_on_a_hit_cannot_become_the_next_request() {
    let upstream = counting("max-age=300").await;
    let gw = Gateway::start(&cached(&upstream, "", "", STORE)).await;
    fetch(&gw, "/h", &[]).await;
    assert_eq!(fetch(&gw, "/h", &[]).await.1, "HIT");

    // A GET whose body is itself a request: after the hit, the body must be read and
    // dropped, not parsed as the next request on the connection, which stays usable.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let host = gw.addr;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let first = format!(
        "GET /h HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    stream.write_all(first.as_bytes()).await.unwrap();
    let answer = read_one_response(&mut stream).await;
    assert!(answer.contains("x-cache: HIT"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    let second = format!("GET /after HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(second.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the gateway answers")
        .ok();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(
        rest.contains("x-cache: MISS"),
        "the next answer is /after's: {rest}"
    );
    assert!(
        upstream.seen().iter().all(|s| s.uri != "/smuggled"),
        "the body was run as a request"
    );
    assert!(upstream.seen().iter().any(|s| s.uri == "/after"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_cache_and_resizes_it() {
    let upstream = spawn_upstream("app", |_| Reply::Body(200, "y".repeat(16 * 1024))).await;
    let gw = Gateway::start(&cached(&upstream, "", "", STORE)).await;
    for i in 0..8 {
        fetch(&gw, &format!("/r/{i}"), &[]).await;
    }
    let reload = async |max_size: &str| {
        let store = format!("[cache]\nmax_size = \"{max_size}\"\n");
        std::fs::write(
            &gw.config_path,
            with_defaults(&cached(&upstream, "", "", &store)),
        )
        .unwrap();
        let resp = gw.reload().await;
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    };
    reload("32MiB").await;
    assert_eq!(
        fetch(&gw, "/r/7", &[]).await.1,
        "HIT",
        "entries survive a reload"
    );
    let cache = &gw.admin_json("/status").await["cache"];
    assert_eq!(
        (cache["max_size"].as_u64(), cache["entries"].as_u64()),
        (Some(32 << 20), Some(8))
    );

    reload("40KiB").await;
    let cache = &gw.admin_json("/status").await["cache"];
    assert!(cache["size"].as_u64().unwrap() <= 40 * 1024, "{cache}");
    assert!(cache["entries"].as_u64().unwrap() <= 2, "{cache}");
    assert_eq!(upstream.hits(), 8);
}
