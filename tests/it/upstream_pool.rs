//! Keep-alive to the upstreams: the gateway reuses one connection for request after request,
//! closes it once it has sat idle for the upstream's `idle_timeout`, and lets go of one the
//! upstream closed without waiting for traffic to find out.

use std::time::Duration;

use crate::common::faults::{Fault, FaultyUpstream};
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
    assert_eq!(target.accepts(), 1, "one upstream connection for all 20");
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
