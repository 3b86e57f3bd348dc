//! Service discovery over real DNS: a dnsmasq server started for each test answers for the
//! upstream's name, with one-second TTLs; the test changes its records while traffic flows.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::dns::{DnsServer, Srv};
use crate::common::traffic::Traffic;
use crate::common::upstream::labels;
use crate::common::upstream::{spawn_ok, spawn_ok_at};
use crate::common::{eventually, Gateway, Upstream};

/// A gateway whose upstream `users` is every address of `users.test` on `port`.
async fn users_by_dns(dns: &DnsServer, port: u16) -> Gateway {
    let discovery = format!(r#"{{ kind = "dns", name = "users.test", port = {port} }}"#);
    Gateway::start(&dns_config(dns, &discovery, "")).await
}

/// Upstreams on `ips` sharing one port, as the addresses of one DNS name do.
async fn on_one_port(ips: &[&str]) -> Vec<Upstream> {
    'again: for _ in 0..20 {
        let first = spawn_ok(ips[0]).await;
        let port = first.addr.port();
        let mut all = Vec::new();
        for ip in &ips[1..] {
            let addr: SocketAddr = format!("{ip}:{port}").parse().expect("an address");
            match spawn_ok_at(addr, ip).await {
                Some(up) => all.push(up),
                None => continue 'again,
            }
        }
        all.insert(0, first);
        return all;
    }
    panic!("no port free on all of {ips:?}");
}

fn dns_config(dns: &DnsServer, discovery: &str, upstream_extra: &str) -> String {
    format!(
        r#"
[dns]
servers = ["{}"]
min_ttl = "1s"

[upstreams.users]
discovery = {discovery}
{upstream_extra}

[[routes]]
name = "users"
path = "/"
upstream = "users"
"#,
        dns.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_address_of_a_name_is_a_target() {
    let ups = on_one_port(&["127.0.0.1", "127.0.0.2"]).await;
    let dns = DnsServer::start(
        &[("127.0.0.1", "users.test"), ("127.0.0.2", "users.test")],
        &[],
    )
    .await;
    let gw = users_by_dns(&dns, ups[0].addr.port()).await;
    let want = labels(&[&ups[0], &ups[1]]);
    eventually(
        "both addresses are targets",
        Duration::from_secs(10),
        async || gw.targets_of("users").await == want,
    )
    .await;
    for _ in 0..20 {
        assert_eq!(gw.get("/").await.status(), 200);
    }
    assert!(
        ups[0].hits() > 0 && ups[1].hits() > 0,
        "{} / {}",
        ups[0].hits(),
        ups[1].hits()
    );

    let status = gw.admin_json("/status").await;
    let discovery = &status["upstreams"]["users"]["discovery"];
    assert_eq!(discovery["kind"], "dns");
    assert!(discovery["last_refresh"].is_string(), "{discovery}");
    assert!(discovery["last_error"].is_null(), "{discovery}");
    gw.metrics_showing(&[
        "portico_upstream_targets{upstream=\"users\"} 2",
        "portico_discovery_refreshes_total{result=\"ok\",upstream=\"users\"}",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_record_reaches_traffic_when_its_ttl_runs_out_and_no_request_fails() {
    let ups = on_one_port(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]).await;
    let dns = DnsServer::start(
        &[("127.0.0.1", "users.test"), ("127.0.0.2", "users.test")],
        &[],
    )
    .await;
    let gw = users_by_dns(&dns, ups[0].addr.port()).await;
    eventually(
        "the first two addresses are targets",
        Duration::from_secs(10),
        async || gw.targets_of("users").await == labels(&[&ups[0], &ups[1]]),
    )
    .await;

    // Traffic the whole time, from four clients.
    let traffic = Traffic::start(&gw.url("/"), 4);
    eventually("traffic flows", Duration::from_secs(10), async || {
        traffic.sent() > 50
    })
    .await;

    // .1 leaves, .3 joins.
    let changed = Instant::now();
    dns.set_hosts(&[("127.0.0.2", "users.test"), ("127.0.0.3", "users.test")]);
    eventually(
        "the new set is the upstream's",
        Duration::from_secs(10),
        async || gw.targets_of("users").await == labels(&[&ups[1], &ups[2]]),
    )
    .await;
    let took = changed.elapsed();
    eprintln!("discovery: the changed record reached the upstream in {took:?}");
    let first_gone = ups[0].hits();
    let third_before = ups[2].hits();
    let before = traffic.sent();
    eventually(
        "traffic reaches the new address",
        Duration::from_secs(10),
        async || ups[2].hits() > third_before + 20 && traffic.sent() > before + 100,
    )
    .await;
    let (sent, failed) = traffic.stop().await;
    assert_eq!(failed, 0, "of {} requests sent while the set changed", sent);
    // A request that had already chosen .1 may still finish there, but none starts later.
    assert!(
        ups[0].hits() <= first_gone + 4,
        "{} > {first_gone}",
        ups[0].hits()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn srv_weights_split_traffic_and_a_lower_priority_serves_only_while_the_preferred_are_down() {
    let (a, b, c) = (
        spawn_ok("a").await,
        spawn_ok("b").await,
        spawn_ok("c").await,
    );
    let srv = |host, up: &Upstream, priority, weight| Srv {
        name: "_http._tcp.users.test",
        host,
        port: up.addr.port(),
        priority,
        weight,
    };
    let dns = DnsServer::start(
        &[
            ("127.0.0.1", "a.users.test"),
            ("127.0.0.1", "b.users.test"),
            ("127.0.0.1", "c.users.test"),
        ],
        &[
            srv("a.users.test", &a, 10, 3),
            srv("b.users.test", &b, 10, 1),
            srv("c.users.test", &c, 20, 1),
        ],
    )
    .await;
    let gw = Gateway::start(&dns_config(
        &dns,
        r#"{ kind = "dns_srv", name = "_http._tcp.users.test" }"#,
        r#"health_check = { path = "/health", interval = "50ms", timeout = "2s", unhealthy = 2, healthy = 1 }"#,
    ))
    .await;
    eventually(
        "the three SRV targets are the upstream's",
        Duration::from_secs(10),
        async || gw.targets_of("users").await.len() == 3,
    )
    .await;
    let traffic = |up: &Upstream| up.seen().iter().filter(|s| s.uri == "/work").count();
    for _ in 0..400 {
        assert_eq!(gw.get("/work").await.status(), 200);
    }
    let (to_a, to_b, to_c) = (traffic(&a), traffic(&b), traffic(&c));
    assert_eq!(
        to_c, 0,
        "priority 20 serves nothing while priority 10 is up"
    );
    assert_eq!(to_a + to_b, 400);
    assert!(
        to_a > 2 * to_b && to_b > 50,
        "weights 3:1 gave {to_a}:{to_b}"
    );

    a.go_down();
    b.go_down();
    eventually(
        "both preferred targets are out",
        Duration::from_secs(10),
        async || {
            !gw.target_healthy("users", a.addr).await && !gw.target_healthy("users", b.addr).await
        },
    )
    .await;
    for _ in 0..20 {
        let resp = gw.get("/work").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream"], "c");
    }

    a.come_back();
    eventually("a is back", Duration::from_secs(10), async || {
        gw.target_healthy("users", a.addr).await
    })
    .await;
    let c_before = traffic(&c);
    for _ in 0..20 {
        let resp = gw.get("/work").await;
        assert_eq!(resp.headers()["x-upstream"], "a");
    }
    assert_eq!(
        traffic(&c),
        c_before,
        "priority 20 is left as soon as priority 10 is back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resolver_that_goes_away_leaves_the_last_set_serving() {
    let ups = on_one_port(&["127.0.0.1"]).await;
    let mut dns = DnsServer::start(&[("127.0.0.1", "users.test")], &[]).await;
    let gw = users_by_dns(&dns, ups[0].addr.port()).await;
    eventually(
        "the address is a target",
        Duration::from_secs(10),
        async || gw.targets_of("users").await.len() == 1,
    )
    .await;

    dns.kill();
    eventually(
        "/status names the failed lookup",
        Duration::from_secs(20),
        async || {
            let status = gw.admin_json("/status").await;
            status["upstreams"]["users"]["discovery"]["last_error"].is_string()
        },
    )
    .await;
    assert_eq!(gw.targets_of("users").await, labels(&[&ups[0]]));
    for _ in 0..10 {
        assert_eq!(gw.get("/").await.status(), 200);
    }
    gw.metrics_showing(&["portico_discovery_refreshes_total{result=\"error\",upstream=\"users\"}"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_never_resolved_answers_503_at_once() {
    let dns = DnsServer::start(&[], &[]).await;
    let gw = Gateway::start(&dns_config(
        &dns,
        r#"{ kind = "dns", name = "nobody.test", port = 80 }"#,
        "",
    ))
    .await;
    eventually(
        "the failed lookup is in /status",
        Duration::from_secs(10),
        async || {
            let status = gw.admin_json("/status").await;
            status["upstreams"]["users"]["discovery"]["last_error"].is_string()
        },
    )
    .await;
    let resp = gw.get("/").await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.expect("problem json");
    assert_eq!(body["code"], "upstream_unavailable");
}
