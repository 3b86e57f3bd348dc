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
