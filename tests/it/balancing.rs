//! Traffic is spread over a pool's targets the way its `balance` says.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{spawn_upstream, upstream::spawn_ok, Gateway, Reply};

fn pool_config(balance: &str, extra: &str, targets: &[(std::net::SocketAddr, u32)]) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|(addr, w)| format!("{{ addr = \"{addr}\", weight = {w} }}"))
        .collect();
    format!(
        "[upstreams.pool]\ntargets = [{}]\nbalance = \"{balance}\"\n{extra}\n\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"pool\"\n",
        targets.join(", ")
    )
}

async fn spread(gw: &Gateway, n: usize, header: Option<(&str, String)>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let mut req = gw.client.get(gw.url("/x"));
        if let Some((name, value)) = &header {
            req = req.header(*name, value);
        }
        let resp = req.send().await.unwrap();
        let name = resp.headers()["x-upstream"].to_str().unwrap().to_string();
        *counts.entry(name).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_honours_weights_exactly() {
    let (a, b) = (spawn_ok("a").await, spawn_ok("b").await);
    let gw = Gateway::start(&pool_config("round_robin", "", &[(a.addr, 1), (b.addr, 3)])).await;
    let counts = spread(&gw, 200, None).await;
    assert_eq!(counts["a"], 50, "{counts:?}");
    assert_eq!(counts["b"], 150, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn random_follows_weights_on_average() {
    let (a, b) = (spawn_ok("a").await, spawn_ok("b").await);
    let gw = Gateway::start(&pool_config("random", "", &[(a.addr, 1), (b.addr, 3)])).await;
    let counts = spread(&gw, 800, None).await;
    // Expected 200 / 600; a binomial's 5-sigma band is about +-61.
    let a_share = counts.get("a").copied().unwrap_or(0);
    assert!((130..=270).contains(&a_share), "{counts:?}");
    assert_eq!(a_share + counts["b"], 800);
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_keeps_a_key_on_one_target_and_spreads_keys() {
    let (a, b, c) = (
        spawn_ok("a").await,
        spawn_ok("b").await,
        spawn_ok("c").await,
    );
    let gw = Gateway::start(&pool_config(
        "consistent_hash",
        "hash_key = \"header:x-user-id\"",
        &[(a.addr, 1), (b.addr, 1), (c.addr, 1)],
    ))
    .await;
    let mut owners = HashMap::new();
    for user in 0..60 {
        let counts = spread(&gw, 5, Some(("x-user-id", format!("user-{user}")))).await;
        assert_eq!(
            counts.len(),
            1,
            "user-{user} went to several targets: {counts:?}"
        );
        let owner = counts.into_keys().next().unwrap();
        *owners.entry(owner).or_insert(0) += 1;
    }
    assert_eq!(
        owners.len(),
        3,
        "60 users should land on every target: {owners:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn least_conn_avoids_the_busy_target() {
    // The long request never gets its answer while the test runs: however slow the machine,
    // it is still in flight while the short ones are sent.
    let slow = |s: &crate::common::Seen| {
        if s.uri.starts_with("/slow") {
            Reply::Hang
        } else {
            Reply::Status(200, "ok")
        }
    };
    let (a, b) = (
        spawn_upstream("a", slow).await,
        spawn_upstream("b", slow).await,
    );
    let gw = Gateway::start(&pool_config("least_conn", "", &[(a.addr, 1), (b.addr, 1)])).await;

    // One long request occupies one target...
    let slow_request = tokio::spawn({
        let (client, url) = (gw.client.clone(), gw.url("/slow"));
        async move { client.get(url).send().await }
    });
    crate::common::eventually(
        "the slow request reached a target",
        Duration::from_secs(5),
        async || a.hits() + b.hits() == 1,
    )
    .await;
    let busy = if a.hits() == 1 { "a" } else { "b" };
    let idle = if busy == "a" { b.addr } else { a.addr };
    // ...so every short request while it runs goes to the other one. Each is sent once the
    // last has left the gateway's count too (the client has its answer a moment before the
    // gateway finishes the request): otherwise the two targets would tie at one each.
    let mut counts = HashMap::new();
    for _ in 0..10 {
        crate::common::eventually(
            "the idle target has nothing in flight",
            Duration::from_secs(5),
            async || {
                let status = gw.admin_json("/status").await;
                status["upstreams"]["pool"]["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["target"] == idle.to_string() && t["in_flight"] == 0)
            },
        )
        .await;
        for (name, n) in spread(&gw, 1, None).await {
            *counts.entry(name).or_insert(0) += n;
        }
    }
    assert_eq!(
        counts.get(busy),
        None,
        "busy target {busy} got requests: {counts:?}"
    );
    assert!(
        !slow_request.is_finished(),
        "the long request is still in flight"
    );
    slow_request.abort();
}

/// `clients` clients at once, each sending `each` requests one after the other: how many
/// each target answered.
async fn concurrent_spread(gw: &Gateway, clients: usize, each: usize) -> HashMap<String, usize> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url) = (gw.client.clone(), gw.url("/x"));
            tokio::spawn(async move {
                let mut names = Vec::new();
                for _ in 0..each {
                    let resp = client.get(&url).send().await.unwrap();
                    names.push(resp.headers()["x-upstream"].to_str().unwrap().to_string());
                }
                names
            })
        })
        .collect();
    let mut counts = HashMap::new();
    for task in tasks {
        for name in task.await.unwrap() {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn p2c_sends_a_slow_target_less_than_round_robin_does() {
    let fast = spawn_ok("fast").await;
    let slow = spawn_upstream("slow", |_| Reply::Delay(Duration::from_millis(100))).await;
    let targets = [(fast.addr, 1), (slow.addr, 1)];
    let rr = Gateway::start(&pool_config("round_robin", "", &targets)).await;
    let p2c = Gateway::start(&pool_config("p2c", "", &targets)).await;
    let by_rr = concurrent_spread(&rr, 6, 20).await;
    let by_p2c = concurrent_spread(&p2c, 6, 20).await;
    let slow_share = |c: &HashMap<String, usize>| c.get("slow").copied().unwrap_or(0);
    // Round robin gives each target half, however slow. With p2c, requests pile up on the
    // slow target's in-flight count, and the fast one takes most of them.
    assert!(
        (50..=70).contains(&slow_share(&by_rr)),
        "round robin: {by_rr:?}"
    );
    assert!(
        slow_share(&by_p2c) * 2 < slow_share(&by_rr),
        "p2c {by_p2c:?} against round robin {by_rr:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ewma_learns_which_target_answers_slowly() {
    let fast = spawn_ok("fast").await;
    let slow = spawn_upstream("slow", |_| Reply::Delay(Duration::from_millis(50))).await;
    let gw = Gateway::start(&pool_config("ewma", "", &[(fast.addr, 1), (slow.addr, 1)])).await;
    // One request at a time: nothing is ever in flight to compare, only answer times. The
    // slow target's first answers put its estimate far above the fast one's.
    let counts = spread(&gw, 60, None).await;
    let slow_count = counts.get("slow").copied().unwrap_or(0);
    assert!(slow_count <= 5, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recovered_target_ramps_up_under_slow_start() {
    let sick = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let b = spawn_upstream("b", {
        let sick = std::sync::Arc::clone(&sick);
        move |seen| {
            if seen.uri == "/health" && sick.load(std::sync::atomic::Ordering::SeqCst) {
                Reply::Status(503, "sick")
            } else {
                Reply::Status(200, "ok")
            }
        }
    })
    .await;
    let a = spawn_ok("a").await;
    let check =
        "health_check = { path = \"/health\", interval = \"50ms\", unhealthy = 1, healthy = 1 }";
    let gw = Gateway::start(&pool_config(
        "round_robin",
        &format!("{check}\nslow_start = \"60s\""),
        &[(a.addr, 1), (b.addr, 1)],
    ))
    .await;
    crate::common::eventually("b is out", Duration::from_secs(10), async || {
        !gw.target_healthy("pool", b.addr).await
    })
    .await;
    sick.store(false, std::sync::atomic::Ordering::SeqCst);
    crate::common::eventually("b is back", Duration::from_secs(10), async || {
        gw.target_healthy("pool", b.addr).await
    })
    .await;
    // Just back, b takes about a tenth of its share (round robin alone: half).
    let counts = spread(&gw, 300, None).await;
    let b_count = counts.get("b").copied().unwrap_or(0);
    assert!((1..90).contains(&b_count), "{counts:?}");
}

#[test]
fn slow_start_with_consistent_hash_is_a_config_error() {
    let (code, out) = crate::common::gateway::validate_text(
        "[upstreams.pool]\ntargets = [\"127.0.0.1:1\"]\nbalance = \"consistent_hash\"\nhash_key = \"ip\"\nslow_start = \"30s\"\n\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"pool\"\n",
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("upstreams.pool.slow_start: does not apply to consistent_hash"),
        "{out}"
    );
}
