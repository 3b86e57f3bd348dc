//! Keep-alive to the upstreams: the gateway reuses one connection for request after request,
//! closes it once it has sat idle for the upstream's `idle_timeout`, and lets go of one the
//! upstream closed without waiting for traffic to find out.

use std::time::Duration;

use crate::common::faults::{Fault, FaultyUpstream};
use crate::common::gateway::{driver, Driver};
use crate::common::{eventually, one_route, Gateway};

#[tokio::test(flavor = "multi_thread")]
async fn requests_one_after_another_share_one_upstream_connection() {
    let target = FaultyUpstream::start("a", Fault::Healthy).await;
    let gw = Gateway::start(&one_route("app", target.addr, "", "/")).await;
    for _ in 0..20 {
        // Each on a new client connection: the upstream connection is the gateway's own.
        assert_eq!(gw.get("/x").await.status(), 200);
    }
    assert_eq!(target.requests(), 20);
    match driver() {
        Driver::Fast => assert_eq!(target.accepts(), 1, "one upstream connection for all 20"),
        // The exchange's pool is the only one; Pingora's proxy keeps no idle connection, so
        // with `fast_path = false` each request has its own, closed after it.
        Driver::Pingora => assert_eq!(target.accepts(), 20),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_upstream_connection_is_closed_after_its_idle_timeout() {
    let target = FaultyUpstream::start("a", Fault::Healthy).await;
    let config = one_route("app", target.addr, "idle_timeout = \"200ms\"", "/");
    let gw = Gateway::start(&config).await;
    assert_eq!(gw.get("/x").await.status(), 200);

    // Nobody asks for anything more: the gateway closes the connection by itself.
    eventually(
        "the gateway to close its idle connection",
        Duration::from_secs(10),
        async || target.hangups() == 1,
    )
    .await;

    // The next request opens a new one.
    assert_eq!(gw.get("/x").await.status(), 200);
    assert_eq!(target.accepts(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_the_upstream_closed_while_idle_is_closed_by_the_gateway_too() {
    let target = FaultyUpstream::start("a", Fault::HealthyThenClose).await;
    let gw = Gateway::start(&one_route("app", target.addr, "", "/")).await;
    assert_eq!(gw.get("/x").await.status(), 200);

    // The upstream answered and closed. Without another request to find out, the gateway
    // closes its end as well, rather than holding the socket half-closed (CLOSE_WAIT): the
    // upstream's end then moves on from FIN_WAIT2 to TIME_WAIT.
    let port = target.addr.port();
    eventually(
        "the gateway to close its end",
        Duration::from_secs(10),
        async || tcp_states(port).contains(&TIME_WAIT),
    )
    .await;
    assert_eq!(target.hangups(), 0, "the upstream closed first");
}

const TIME_WAIT: u8 = 0x06;

/// The TCP states of the IPv4 sockets whose local port is `port`, from `/proc/net/tcp`.
fn tcp_states(port: u16) -> Vec<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            let (_, local_port) = local.split_once(':')?;
            (u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| u8::from_str_radix(state, 16).ok())
                .flatten()
        })
        .collect()
}

/// `pool` of target `addr` in `/status`.
async fn pool_of(gw: &Gateway, addr: std::net::SocketAddr) -> serde_json::Value {
    let status = gw.admin_json("/status").await;
    let targets = status["upstreams"]["app"]["targets"]
        .as_array()
        .unwrap()
        .clone();
    let label = addr.to_string();
    let target = targets
        .iter()
        .find(|t| t["target"] == label.as_str())
        .unwrap();
    target["pool"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn more_concurrent_requests_than_max_connections_wait_their_turn() {
    let target = FaultyUpstream::start("a", Fault::Slow).await;
    let config = one_route(
        "app",
        target.addr,
        "max_connections = 2\nmax_idle = 2\nconnect_timeout = \"5s\"",
        "/",
    );
    let gw = Gateway::start(&config).await;
    // Six at once, each 300 ms upstream: two at a time get a connection, the others wait for
    // one to come free, and all six are answered.
    let requests = (0..6).map(|_| gw.get("/x"));
    let answers = futures_util::future::join_all(requests).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    assert_eq!(target.requests(), 6);
    assert!(
        target.peak_open() <= 2,
        "the upstream saw {} connections at once",
        target.peak_open()
    );
    let pool = pool_of(&gw, target.addr).await;
    assert_eq!(pool["busy"], 0, "{pool}");
    assert_eq!(pool["connect_errors"], 0, "{pool}");
    match driver() {
        Driver::Fast => {
            assert_eq!(pool["opened"], 2, "{pool}");
            assert_eq!(pool["idle"], 2, "{pool}");
        }
        Driver::Pingora => assert_eq!(pool["opened"], 6, "{pool}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_waits_past_connect_timeout_for_a_connection_gets_a_503() {
    let target = FaultyUpstream::start("a", Fault::Hang).await;
    let config = one_route(
        "app",
        target.addr,
        "max_connections = 1\nconnect_timeout = \"200ms\"\nread_timeout = \"5s\"",
        "/",
    );
    let gw = Gateway::start(&config).await;
    // The first request holds the only connection (the upstream never answers it).
    let holding = tokio::spawn({
        let (client, url) = (gw.client.clone(), gw.url("/hold"));
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    eventually(
        "the first request to reach the upstream",
        Duration::from_secs(5),
        async || target.requests() == 1,
    )
    .await;
    let started = std::time::Instant::now();
    let refused = gw.get("/next").await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused after connect_timeout, not after the read timeout"
    );
    assert_eq!(target.accepts(), 1, "no second connection was opened");
    let pool = pool_of(&gw, target.addr).await;
    assert_eq!(pool["busy"], 1, "{pool}");
    holding.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn no_more_than_max_idle_connections_stay_open_once_a_burst_is_over() {
    let target = FaultyUpstream::start("a", Fault::Slow).await;
    let config = one_route("app", target.addr, "max_idle = 2", "/");
    let gw = Gateway::start(&config).await;
    let requests = (0..5).map(|_| gw.get("/x"));
    let answers = futures_util::future::join_all(requests).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    let kept = match driver() {
        Driver::Fast => 2,
        Driver::Pingora => 0,
    };
    eventually(
        "the upstream to see only max_idle open connections",
        Duration::from_secs(10),
        async || target.open() == kept,
    )
    .await;
    let pool = pool_of(&gw, target.addr).await;
    assert_eq!(pool["idle"], kept, "{pool}");
    let metrics = gw
        .metrics_showing(&["portico_upstream_connections_opened_total"])
        .await;
    let idle_line = format!(
        "portico_upstream_connections{{state=\"idle\",target=\"{}\",upstream=\"app\"}} {kept}",
        target.addr
    );
    assert!(metrics.contains(&idle_line), "{idle_line} in\n{metrics}");
}
