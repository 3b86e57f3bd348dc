//! One failing service never drags the gateway or its clients down with it: circuits open
//! and close, retries go elsewhere within a budget, and failures are fast and honest.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::faults::{Fault, FaultyUpstream};
use crate::common::{eventually, Gateway};

fn pool(targets: &[&FaultyUpstream], extra: &str, route_extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{}\"", t.addr)).collect();
    format!(
        "[upstreams.app]\ntargets = [{}]\n{extra}\n\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"app\"\n{route_extra}\n",
        targets.join(", ")
    )
}

async fn circuit(gw: &Gateway, target: &FaultyUpstream) -> String {
    let status = gw.admin_json("/status").await;
    let label = target.addr.to_string();
    status["upstreams"]["app"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == label.as_str())
        .map(|t| t["circuit"].as_str().unwrap().to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_circuit_opens_rests_probes_and_closes() {
    let target = FaultyUpstream::start("a", Fault::Status503).await;
    let gw = Gateway::start(&pool(
        &[&target],
        "circuit_breaker = { failures = 3, open_for = \"2s\", half_open_requests = 1 }",
        "",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            gw.get("/x").await.status(),
            503,
            "the upstream's own 503, relayed"
        );
    }
    eventually("the circuit opens", Duration::from_secs(5), async || {
        circuit(&gw, &target).await == "open"
    })
    .await;

    // Open: the target gets no traffic; the client gets a fast 503 with Retry-After.
    let before = target.accepts() + target.requests();
    let resp = gw.get("/x").await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    assert_eq!(
        resp.json::<Value>().await.unwrap()["code"],
        "upstream_unavailable"
    );
    assert_eq!(
        target.accepts() + target.requests(),
        before,
        "no connection while open"
    );

    // After open_for, one probe goes through; it succeeds and the circuit closes.
    target.set(Fault::Healthy);
    eventually(
        "the circuit is half-open",
        Duration::from_secs(5),
        async || circuit(&gw, &target).await == "half_open",
    )
    .await;
    assert_eq!(gw.get("/x").await.status(), 200);
    // The outcome is recorded as the request ends, just after the client has its answer.
    eventually(
        "the circuit is closed",
        Duration::from_secs(5),
        async || circuit(&gw, &target).await == "closed",
    )
    .await;

    gw.metrics_showing(&[
        &format!(
            "portico_circuit_breaker_state{{target=\"{}\",upstream=\"app\"}} 0",
            target.addr
        ),
        &format!(
            "portico_upstream_requests_total{{outcome=\"http_5xx\",target=\"{}\",upstream=\"app\"}} 3",
            target.addr
        ),
    ])
    .await;
    let log = gw.stderr();
    assert!(
        log.contains("circuit open")
            && log.contains("circuit half-open")
            && log.contains("circuit closed"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_probe_opens_the_circuit_again() {
    let target = FaultyUpstream::start("a", Fault::ResetAfterRequest).await;
    let gw = Gateway::start(&pool(
        &[&target],
        "circuit_breaker = { failures = 2, open_for = \"200ms\", max_open_for = \"10s\" }",
        "",
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(gw.get("/x").await.status(), 502);
    }
    eventually("half-open", Duration::from_secs(5), async || {
        circuit(&gw, &target).await == "half_open"
    })
    .await;
    assert_eq!(gw.get("/x").await.status(), 502, "the probe fails");
    eventually(
        "the circuit is open again",
        Duration::from_secs(5),
        async || circuit(&gw, &target).await == "open",
    )
    .await;
    assert!(
        gw.stderr().contains("circuit open for 400ms"),
        "the second trip lasts twice as long:\n{}",
        gw.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn when_every_target_is_open_the_answer_is_an_immediate_503() {
    let (a, b) = (
        FaultyUpstream::start("a", Fault::ResetOnAccept).await,
        FaultyUpstream::start("b", Fault::ResetOnAccept).await,
    );
    let gw = Gateway::start(&pool(
        &[&a, &b],
        "circuit_breaker = { failures = 1, open_for = \"1m\" }",
        "",
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(gw.get("/x").await.status(), 502);
    }
    let accepts = a.accepts() + b.accepts();
    for _ in 0..10 {
        let resp = gw.get("/x").await;
        assert_eq!(resp.status(), 503);
        let retry_after: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }
    assert_eq!(
        a.accepts() + b.accepts(),
        accepts,
        "not one connect attempt while every circuit is open"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_is_retried_on_another_target_after_a_reset() {
    let (bad, good) = (
        FaultyUpstream::start("bad", Fault::ResetAfterRequest).await,
        FaultyUpstream::start("good", Fault::Healthy).await,
    );
    let gw = Gateway::start(&pool(
        &[&bad, &good],
        "retry = { attempts = 1, backoff = \"10ms\" }",
        "",
    ))
    .await;
    for _ in 0..10 {
        let resp = gw.get("/x").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream"], "good");
    }
    assert!(
        bad.requests() > 0,
        "round robin did send requests to the bad target first"
    );
    assert_eq!(good.requests(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_whose_body_went_out_is_never_sent_again() {
    let (bad, good) = (
        FaultyUpstream::start("bad", Fault::ResetAfterRequest).await,
        FaultyUpstream::start("good", Fault::Healthy).await,
    );
    let gw = Gateway::start(&pool(&[&bad, &good], "retry = { attempts = 2 }", "")).await;
    let mut failed = 0;
    for i in 0..6 {
        let resp = gw
            .client
            .post(gw.url("/orders"))
            .body(format!("order {i}"))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => {}
            502 => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        bad.requests() + good.requests(),
        6,
        "every POST reached exactly one upstream once"
    );
    assert_eq!(failed, bad.requests());
    assert!(failed > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connect_failure_is_retried_for_any_method() {
    let good = FaultyUpstream::start("good", Fault::Healthy).await;
    // Nothing listens on the other target: its connections are refused.
    let refused = crate::common::refused_port();
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ntargets = [\"127.0.0.1:{}\", \"{}\"]\nretry = {{ attempts = 1 }}\n\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"app\"\n",
        refused.port, good.addr
    ))
    .await;
    for _ in 0..4 {
        let resp = gw.client.post(gw.url("/x")).body("b").send().await.unwrap();
        assert_eq!(
            resp.status(),
            200,
            "a POST that never left is safe to send elsewhere"
        );
    }
    assert_eq!(good.requests(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_the_upstream_closed_is_not_an_error() {
    let target = FaultyUpstream::start("a", Fault::HealthyThenClose).await;
    let gw = Gateway::start(&pool(&[&target], "", "")).await;
    let client = reqwest::Client::new(); // keep-alive to the gateway, too
    for _ in 0..20 {
        assert_eq!(client.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retry_budget_caps_extra_load_during_an_outage() {
    let (a, b) = (
        FaultyUpstream::start("a", Fault::ResetAfterRequest).await,
        FaultyUpstream::start("b", Fault::ResetAfterRequest).await,
    );
    let gw = Gateway::start(&pool(
        &[&a, &b],
        "retry = { attempts = 3, backoff = \"1ms\", budget_percent = 20, min_retries = 0 }",
        "",
    ))
    .await;
    for _ in 0..50 {
        assert_eq!(gw.get("/x").await.status(), 502);
    }
    let sent = a.requests() + b.requests();
    assert!(
        (50..=60).contains(&sent),
        "50 requests with 3 retries each would be 200 attempts; the budget allowed {sent}"
    );
    assert!(gw.stderr().contains("retry budget spent"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_upstream_is_a_504_within_the_route_timeout() {
    let target = FaultyUpstream::start("a", Fault::Hang).await;
    let gw = Gateway::start(&pool(
        &[&target],
        "read_timeout = \"30s\"",
        "timeout = \"500ms\"",
    ))
    .await;
    let started = Instant::now();
    let resp = gw.get("/x").await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["code"],
        "upstream_timeout"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_body_is_cut_off_at_the_route_timeout() {
    let target = FaultyUpstream::start("a", Fault::Trickle).await;
    let gw = Gateway::start(&pool(&[&target], "", "timeout = \"1s\"")).await;
    let started = Instant::now();
    let resp = gw.get("/x").await;
    assert_eq!(resp.status(), 200, "the headers were already on their way");
    let body = resp.bytes().await;
    assert!(
        body.is_err() || body.unwrap().len() < 100,
        "the body was not allowed to finish"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_from_an_upstream_is_a_502_and_its_connection_is_not_reused() {
    let target = FaultyUpstream::start("a", Fault::Garbage).await;
    let gw = Gateway::start(&pool(&[&target], "", "")).await;
    let resp = gw.get("/x").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "bad_gateway");
    target.set(Fault::Healthy);
    let accepts = target.accepts();
    assert_eq!(gw.get("/x").await.status(), 200);
    assert_eq!(
        target.accepts(),
        accepts + 1,
        "a fresh connection, not the poisoned one"
    );
}
