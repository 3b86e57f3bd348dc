//! Two thousand clients that trickle their request heads, against the real gateway, while a
//! legitimate client goes on with its requests: the legitimate ones are served while the slow
//! ones are all still open, and every slow one is cut off with a 408 at the header deadline.
//! Bounded in time by that deadline; no latency figure is asserted (the figures are printed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{eventually, one_route, upstream::spawn_ok, Gateway};

const SLOW: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_slow_heads_are_cut_off_while_real_requests_are_served() {
    // Each slow client holds a socket here and one in the gateway: raise the soft limit to
    // the hard one, and fail loudly if even that is too low.
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("the open-file limit");
    assert!(
        limit >= (SLOW as u64) * 2 + 500,
        "the open-file limit ({limit}) is too low for {SLOW} slow clients"
    );
    let app = spawn_ok("app").await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\naccess_log = \"off\"\nheader_timeout = \"5s\"\n\n{}",
        one_route("app", app.addr, "", "/")
    ))
    .await;

    let cut_off = Arc::new(AtomicUsize::new(0));
    let other_end = Arc::new(AtomicUsize::new(0));
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let stream = TcpStream::connect(gw.addr)
            .await
            .expect("a slow connection");
        let (cut_off, other_end) = (Arc::clone(&cut_off), Arc::clone(&other_end));
        slow.push(tokio::spawn(async move {
            let (mut reader, mut writer) = stream.into_split();
            let trickle = tokio::spawn(async move {
                let _ = writer
                    .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                    .await;
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if writer.write_all(b"z").await.is_err() {
                        return;
                    }
                }
            });
            let mut answer = Vec::new();
            let _ = reader.read_to_end(&mut answer).await;
            trickle.abort();
            if answer.starts_with(b"HTTP/1.1 408") {
                cut_off.fetch_add(1, Ordering::SeqCst);
            } else {
                other_end.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    eventually(
        "the gateway to hold every slow client",
        Duration::from_secs(10),
        async || {
            gw.metrics().await.lines().any(|l| {
                l.strip_prefix("portico_client_connections ")
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n >= SLOW)
            })
        },
    )
    .await;

    // Meanwhile, real requests, each on its own connection.
    let mut latencies = Vec::new();
    for i in 0..100 {
        let started = Instant::now();
        let resp = gw.get(&format!("/real/{i}")).await;
        latencies.push(started.elapsed());
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(
        cut_off.load(Ordering::SeqCst) + other_end.load(Ordering::SeqCst),
        0,
        "every real request was served while all {SLOW} slow clients were still open"
    );
    latencies.sort();
    println!(
        "with {SLOW} slow clients open: p50 {:?}, p99 {:?}, max {:?}",
        latencies[50], latencies[98], latencies[99]
    );

    // Then the deadline closes every slow one, with a 408.
    eventually(
        "every slow client to be cut off",
        Duration::from_secs(30),
        async || cut_off.load(Ordering::SeqCst) + other_end.load(Ordering::SeqCst) == SLOW,
    )
    .await;
    assert_eq!(cut_off.load(Ordering::SeqCst), SLOW, "each got a 408");
    for task in slow {
        task.await.unwrap();
    }
    assert_eq!(app.hits(), 100, "no slow head reached the upstream");
}
