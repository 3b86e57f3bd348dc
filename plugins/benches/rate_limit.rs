//! Rate-limit decisions on the request path: what counting one request costs with the limit
//! in memory (one busy client, many clients, a flood of new keys), and shared through a real
//! `redis-server` (up, and down with the default `on_store_error = "local"` fallback).
//!
//! Every case runs `decide` inside `block_on` on a current-thread runtime, as the JWT benchmark
//! does, so each figure includes the cost of entering the runtime; `runtime/enter` measures
//! that alone, to subtract.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may fail loudly on bad setup

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use portico_plugins::metrics::PluginMetrics;
use portico_plugins::rate_limit::{KeyDigest, RateLimitConfig, RateLimitPlugin};
use portico_plugins::redis_store::RedisStore;

/// High enough that nothing is refused: the benchmark measures admissions, the common case.
const LIMIT: u64 = 1_000_000_000;

fn plugin(store: &str, redis: Option<Arc<RedisStore>>) -> RateLimitPlugin {
    let text = format!("limit = {LIMIT}\nwindow = \"1m\"\nkey = \"ip\"\nstore = \"{store}\"\n");
    let cfg: RateLimitConfig = toml::from_str(&text).expect("bench config");
    let metrics = Arc::new(PluginMetrics::unregistered().expect("metrics"));
    RateLimitPlugin::new("bench", cfg, redis, metrics).expect("bench plugin")
}

/// The key of client number `i`, as `key = "ip"` makes it (an IPv4-mapped IPv6 address).
fn client(i: u32) -> KeyDigest {
    std::net::Ipv4Addr::from(0x0a00_0000 | i)
        .to_ipv6_mapped()
        .octets()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// A real `redis-server` on a free port, killed when dropped.
struct RedisServer {
    child: Child,
    url: String,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}); `make test` installs it"));
        let url = format!("redis://127.0.0.1:{port}/0");
        let mut server = RedisServer { child, url };
        let client = redis::Client::open(server.url.as_str()).expect("redis url");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = client
                .get_connection_with_timeout(Duration::from_secs(1))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("redis-server exited ({status}) before answering PING");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server never answered PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("rate_limit");
    group.bench_function("runtime/enter", |b| b.iter(|| rt.block_on(async {})));

    let server = RedisServer::start();
    let store =
        |url: &str| Arc::new(RedisStore::single(url, Duration::from_millis(100)).expect("url"));
    let local = plugin("local", None);
    // Through Redis, admissions are reserved in batches, so most decisions are local; the
    // figure is the average over the round trips too.
    let shared = plugin("redis", Some(store(&server.url)));
    for (kind, limiter) in [("local", &local), ("redis", &shared)] {
        group.bench_function(format!("{kind}/one_client"), |b| {
            let key = client(1);
            b.iter(|| rt.block_on(limiter.decide(&key, LIMIT)))
        });
        group.bench_function(format!("{kind}/10k_clients"), |b| {
            let keys: Vec<KeyDigest> = (0..10_000).map(client).collect();
            let mut next = keys.iter().cycle();
            b.iter(|| rt.block_on(limiter.decide(next.next().expect("cycle"), LIMIT)))
        });
    }
    // Every request from a client never seen before: the store fills to `max_keys` and
    // evicts, so this is the cost of a flood of spoofed or random keys.
    group.bench_function("local/new_client_each_time", |b| {
        let mut i = 0u32;
        b.iter(|| {
            i = i.wrapping_add(1);
            rt.block_on(local.decide(&client(i), LIMIT))
        })
    });
    // Nothing listens there: the first call fails, the store is marked down and requests take
    // the in-memory fallback at once, with one probe per back-off.
    let down = plugin(
        "redis",
        Some(store(&format!("redis://127.0.0.1:{}/0", free_port()))),
    );
    group.bench_function("redis_down/one_client", |b| {
        let key = client(1);
        b.iter(|| rt.block_on(down.decide(&key, LIMIT)))
    });
    group.finish();
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
