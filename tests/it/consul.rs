//! Service discovery from Consul's catalog, watched with blocking queries. The Consul here is
//! the test kit's stand-in (`common::consul`: Consul's documented HTTP contract, since no
//! Consul server can be installed on this machine).

use std::time::{Duration, Instant};

use crate::common::consul::{FakeConsul, Instance};
use crate::common::traffic::Traffic;
use crate::common::upstream::labels;
use crate::common::upstream::spawn_ok;
use crate::common::{eventually, Gateway, Upstream};

fn consul_config(consul: &FakeConsul, discovery: &str) -> String {
    format!(
        r#"
[consul]
address = "{}"
token = "${{CONSUL_TOKEN}}"
datacenter = "dc1"

[upstreams.users]
discovery = {discovery}

[[routes]]
name = "users"
path = "/"
upstream = "users"
"#,
        consul.url()
    )
}

async fn start(consul: &FakeConsul, discovery: &str) -> Gateway {
    Gateway::start_with_env(
        &consul_config(consul, discovery),
        &[("CONSUL_TOKEN", "s3cr3t-token")],
    )
    .await
}

/// A gateway whose upstream `users` is Consul's `users` service, once its targets are `ups`.
async fn watching(consul: &FakeConsul, ups: &[&Upstream]) -> Gateway {
    let gw = start(consul, r#"{ kind = "consul", service = "users" }"#).await;
    let want = labels(ups);
    eventually(
        "the service's instances are the targets",
        Duration::from_secs(10),
        async || gw.targets_of("users").await == want,
    )
    .await;
    gw
}

fn instance(id: &str, up: &Upstream, tags: &[&str]) -> Instance {
    Instance::new(id, "users", up.addr, tags)
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_that_register_and_leave_while_traffic_flows_lose_no_request() {
    let (a, b, c) = (
        spawn_ok("a").await,
        spawn_ok("b").await,
        spawn_ok("c").await,
    );
    let consul = FakeConsul::start("dc1").await;
    consul.register(instance("a", &a, &[]));
    consul.register(instance("b", &b, &[]));
    let gw = watching(&consul, &[&a, &b]).await;

    let traffic = Traffic::start(&gw.url("/"), 4);
    eventually("traffic flows", Duration::from_secs(10), async || {
        traffic.sent() > 50
    })
    .await;

    // c registers: the held query wakes and the gateway has it well within a second.
    let registered = Instant::now();
    consul.register(instance("c", &c, &[]));
    eventually("c is a target", Duration::from_secs(5), async || {
        gw.targets_of("users").await == labels(&[&a, &b, &c])
    })
    .await;
    eprintln!(
        "consul: a registration reached the upstream in {:?}",
        registered.elapsed()
    );
    let c_before = c.hits();
    eventually("c takes traffic", Duration::from_secs(10), async || {
        c.hits() > c_before + 20
    })
    .await;

    // a leaves.
    let left = Instant::now();
    consul.deregister("a");
    eventually(
        "a is no longer a target",
        Duration::from_secs(5),
        async || gw.targets_of("users").await == labels(&[&b, &c]),
    )
    .await;
    eprintln!(
        "consul: a deregistration reached the upstream in {:?}",
        left.elapsed()
    );
    let a_after = a.hits();
    let before = traffic.sent();
    eventually("traffic goes on", Duration::from_secs(10), async || {
        traffic.sent() > before + 100
    })
    .await;
    let (sent, failed) = traffic.stop().await;
    assert_eq!(failed, 0, "of {sent}");
    assert!(
        a.hits() <= a_after + 4,
        "a still got requests: {} > {a_after}",
        a.hits()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_catalog_costs_one_open_query_and_every_query_carries_the_token() {
    let a = spawn_ok("a").await;
    let consul = FakeConsul::start("dc1").await;
    consul.register(instance("a", &a, &[]));
    let _gw = watching(&consul, &[&a]).await;
    eventually(
        "one query is held open",
        Duration::from_secs(5),
        async || consul.open_queries() == 1,
    )
    .await;
    let queries = consul.queries();
    // Idle for a second: a polling client would have asked again by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        consul.queries(),
        queries,
        "no query while the catalog is idle"
    );
    assert_eq!(consul.open_queries(), 1);
    let tokens = consul.tokens();
    assert!(
        !tokens.is_empty() && tokens.iter().all(|t| t == "s3cr3t-token"),
        "{tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_passing_instances_with_the_tag_are_targets() {
    let (a, b, c) = (
        spawn_ok("a").await,
        spawn_ok("b").await,
        spawn_ok("c").await,
    );
    let consul = FakeConsul::start("dc1").await;
    consul.register(instance("a", &a, &["v2"]));
    consul.register(instance("b", &b, &["v2"]));
    consul.register(instance("c", &c, &["v1"]));
    let gw = start(
        &consul,
        r#"{ kind = "consul", service = "users", tag = "v2" }"#,
    )
    .await;
    eventually(
        "the v2 instances are targets",
        Duration::from_secs(10),
        async || gw.targets_of("users").await == labels(&[&a, &b]),
    )
    .await;
    consul.set_passing("b", false);
    eventually(
        "b's failing check takes it out",
        Duration::from_secs(5),
        async || gw.targets_of("users").await == labels(&[&a]),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(gw.get("/").await.headers()["x-upstream"], "a");
    }
    // Every instance failing: no target, and a 503 rather than a stale one.
    consul.set_passing("a", false);
    eventually(
        "no passing instance is left",
        Duration::from_secs(5),
        async || gw.targets_of("users").await.is_empty(),
    )
    .await;
    assert_eq!(gw.get("/").await.status(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_that_goes_backwards_restarts_the_watch() {
    let (a, b) = (spawn_ok("a").await, spawn_ok("b").await);
    let consul = FakeConsul::start("dc1").await;
    consul.register(instance("a", &a, &[]));
    consul.register(instance("a2", &a, &[]));
    consul.register(instance("a3", &a, &[]));
    let gw = watching(&consul, &[&a]).await;
    eventually(
        "the gateway holds a query at index 4",
        Duration::from_secs(5),
        async || consul.open_queries() == 1,
    )
    .await;
    // The index drops below the one the gateway holds (a restore), then b registers at
    // index 3. A watch still waiting for an index above 4 would never see it.
    consul.reset_index(2);
    eventually(
        "the watch holds a query again",
        Duration::from_secs(5),
        async || consul.open_queries() == 1,
    )
    .await;
    consul.register(instance("b", &b, &[]));
    eventually(
        "the restarted watch sees b",
        Duration::from_secs(5),
        async || gw.targets_of("users").await == labels(&[&a, &b]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_going_down_keeps_the_last_set_and_its_return_is_picked_up() {
    let (a, b) = (spawn_ok("a").await, spawn_ok("b").await);
    let consul = FakeConsul::start("dc1").await;
    consul.register(instance("a", &a, &[]));
    let gw = watching(&consul, &[&a]).await;

    consul.go_down();
    eventually(
        "/status names the failure",
        Duration::from_secs(10),
        async || {
            let status = gw.admin_json("/status").await;
            status["upstreams"]["users"]["discovery"]["last_error"].is_string()
        },
    )
    .await;
    assert_eq!(gw.targets_of("users").await, labels(&[&a]));
    for _ in 0..10 {
        assert_eq!(gw.get("/").await.status(), 200);
    }

    consul.register(instance("b", &b, &[]));
    consul.come_back();
    eventually(
        "the watch resumes and sees b",
        Duration::from_secs(20),
        async || gw.targets_of("users").await == labels(&[&a, &b]),
    )
    .await;
    let status = gw.admin_json("/status").await;
    assert!(status["upstreams"]["users"]["discovery"]["last_error"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consul_upstream_without_a_consul_section_is_a_config_error() {
    let (code, output) = crate::common::gateway::validate_text(
            "[upstreams.users]\ndiscovery = { kind = \"consul\", service = \"users\", port = 80 }\n\n[[routes]]\nname = \"users\"\npath = \"/\"\nupstream = \"users\"\n",
    );
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("upstreams.users.discovery"), "{output}");
    assert!(output.contains("[consul]"), "{output}");
    assert!(
        output.contains("upstreams.users.discovery.port"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_instance_finishes_its_requests_then_its_connections_close() {
    use crate::common::faults::{Fault, FaultyUpstream};
    let a = FaultyUpstream::start("a", Fault::Slow).await;
    let b = spawn_ok("b").await;
    let consul = FakeConsul::start("dc1").await;
    consul.register(Instance::new("a", "users", a.addr, &[]));
    let gw = start(&consul, r#"{ kind = "consul", service = "users" }"#).await;
    eventually("a is the target", Duration::from_secs(10), async || {
        gw.targets_of("users").await == vec![a.addr.to_string()]
    })
    .await;

    // A request is on its way to a (which answers after 300 ms) when a leaves and b joins.
    let in_flight = tokio::spawn({
        let (client, url) = (gw.client.clone(), gw.url("/slow"));
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    eventually(
        "the request reached a",
        Duration::from_secs(5),
        async || a.requests() == 1,
    )
    .await;
    consul.deregister("a");
    consul.register(instance("b", &b, &[]));
    eventually("b replaced a", Duration::from_secs(5), async || {
        gw.targets_of("users").await == labels(&[&b])
    })
    .await;
    assert_eq!(in_flight.await.expect("the request task").ok(), Some(200));
    for _ in 0..10 {
        assert_eq!(gw.get("/").await.headers()["x-upstream"], "b");
    }
    eventually(
        "a's pooled connection is closed",
        Duration::from_secs(5),
        async || a.open() == 0,
    )
    .await;
    assert_eq!(a.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_stays_keeps_its_health_when_the_set_changes() {
    let (a, b, c) = (
        spawn_ok("a").await,
        spawn_ok("b").await,
        spawn_ok("c").await,
    );
    let consul = FakeConsul::start("dc1").await;
    consul.register(instance("a", &a, &[]));
    consul.register(instance("b", &b, &[]));
    // Probes every 2 s, one failure takes a target out: a target whose verdict were lost
    // with a change of the set would be back in rotation for two seconds.
    let gw = start(
        &consul,
        r#"{ kind = "consul", service = "users" }
health_check = { path = "/health", interval = "2s", timeout = "1s", unhealthy = 1, healthy = 2 }"#,
    )
    .await;
    eventually("a and b are targets", Duration::from_secs(10), async || {
        gw.targets_of("users").await == labels(&[&a, &b])
    })
    .await;
    a.go_down();
    eventually(
        "a fails its health check",
        Duration::from_secs(10),
        async || !gw.target_healthy("users", a.addr).await,
    )
    .await;

    consul.register(instance("c", &c, &[]));
    eventually("c joined", Duration::from_secs(5), async || {
        gw.targets_of("users").await == labels(&[&a, &b, &c])
    })
    .await;
    assert!(
        !gw.target_healthy("users", a.addr).await,
        "a kept its verdict"
    );
    let a_hits = a.hits();
    for _ in 0..20 {
        assert_eq!(gw.get("/").await.status(), 200);
    }
    assert_eq!(a.hits(), a_hits, "no request went to a");
}
