//! The status page (`GET /` on the admin listener), as an operator sees it: opened in headless
//! Chromium next to a running gateway with live traffic. It draws the gateway's routes and
//! targets, shows a target that goes down within two of its redraws, and leaves a screenshot
//! in `target/status-page.png` (the README's picture, docs/status-page.png, is a copy of one).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::browser::{Chromium, Tab};
use crate::common::{eventually, spawn_upstream, Gateway, Reply, Upstream};

/// What an operator's screen might show: a 1280 x 800 window.
const VIEWPORT: (u32, u32) = (1280, 800);

/// A service behind the gateway: JSON for every path, `/health` included.
async fn service(name: &'static str) -> Upstream {
    spawn_upstream(name, move |seen| {
        Reply::With(
            200,
            vec![("content-type", "application/json".to_string())],
            json!({ "service": name, "path": seen.uri }).to_string(),
        )
    })
    .await
}

/// Two upstreams of two targets each, health-checked every 100 ms, and the routes a small
/// shop would have: proxied ones with plugins, one cached, one rate-limited, and a composition.
fn config(users: &[Upstream; 2], orders: &[Upstream; 2]) -> String {
    let health = "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"500ms\", healthy = 1, unhealthy = 2 }";
    format!(
        r#"[cache]
max_size = "16MiB"

[upstreams.users]
targets = ["{u0}", {{ addr = "{u1}", weight = 2 }}]
{health}

[upstreams.orders]
targets = ["{o0}", "{o1}"]
balance = "least_conn"
{health}

[plugins.served-by]
kind = "headers"
response_set = {{ "x-served-by" = "portico" }}

[plugins.user-cache]
kind = "cache"
ttl = "1s"

[plugins.per-ip]
kind = "rate_limit"
limit = 100000
window = "1m"

[[routes]]
name = "users"
path = "/api/v1/users"
upstream = "users"
strip_prefix = "/api/v1"
plugins = ["served-by", "user-cache"]

[[routes]]
name = "orders"
path = "/api/v1/orders"
methods = ["GET", "POST"]
upstream = "orders"
strip_prefix = "/api/v1"
plugins = ["per-ip"]

[[routes]]
name = "me"
path = "/api/v1/me"
upstream = "users"
plugins = ["served-by"]

[[routes]]
name = "dashboard"
path = "/dashboard/{{user_id}}"
methods = ["GET"]
compose = {{ timeout = "2s", calls = [
  {{ key = "user",   upstream = "users",  path = "/users/{{user_id}}", required = true }},
  {{ key = "orders", upstream = "orders", path = "/orders/user/{{user_id}}" }},
] }}
"#,
        u0 = users[0].addr,
        u1 = users[1].addr,
        o0 = orders[0].addr,
        o1 = orders[1].addr,
    )
}

/// Requests on every route, a few a second, until dropped: the page's traffic columns have
/// something to show. Failures are fine here (a target is taken down on purpose).
struct Traffic(tokio::task::JoinHandle<()>);

impl Traffic {
    fn start(gw: &Gateway) -> Traffic {
        let client = gw.client.clone();
        let paths = [
            "/api/v1/users/7",
            "/api/v1/orders/7",
            "/api/v1/me",
            "/dashboard/7",
        ];
        let urls: Vec<String> = paths.iter().map(|p| gw.url(p)).collect();
        Traffic(tokio::spawn(async move {
            loop {
                for url in &urls {
                    let _ = client.get(url).send().await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the screenshot goes: the build's target folder.
fn target_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// How many times the page has redrawn itself from `/status` (it counts them in
/// `body[data-refreshes]`).
async fn refreshes(browser: &mut Chromium, tab: &Tab) -> u64 {
    browser
        .eval(tab, "Number(document.body.dataset.refreshes)")
        .await
        .as_u64()
        .expect("a redraw count")
}

/// Each target row's `data-healthy`, by address.
async fn targets_shown(browser: &mut Chromium, tab: &Tab) -> BTreeMap<String, String> {
    let shown = browser
        .eval(
            tab,
            "Object.fromEntries([...document.querySelectorAll('tr[data-target]')]\
             .map(row => [row.dataset.target, row.dataset.healthy]))",
        )
        .await;
    serde_json::from_value(shown).expect("target rows")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_in_headless_chromium() {
    let users = [service("users-a").await, service("users-b").await];
    let orders = [service("orders-a").await, service("orders-b").await];
    let gw = Gateway::start(&config(&users, &orders)).await;
    let _traffic = Traffic::start(&gw);

    let mut browser = Chromium::start().await;
    let tab = browser.open_tab(VIEWPORT.0, VIEWPORT.1).await;
    browser.navigate(&tab, &gw.admin_url("/")).await;

    // The page draws the running gateway: every route in config order, and every target of
    // both upstreams, all up once their first health checks pass.
    browser
        .wait_for(
            &tab,
            "every target, up",
            Duration::from_secs(10),
            "document.querySelectorAll('tr[data-target]').length === 4 && \
             [...document.querySelectorAll('tr[data-target]')].every(r => r.dataset.healthy === 'true')",
        )
        .await;
    assert_eq!(
        browser.eval(&tab, "document.title").await,
        json!("Portico status")
    );
    let routes = browser
        .eval(
            &tab,
            "[...document.querySelectorAll('tr[data-route]')].map(r => r.dataset.route)",
        )
        .await;
    assert_eq!(routes, json!(["users", "orders", "me", "dashboard"]));
    let expected: BTreeMap<String, String> = users
        .iter()
        .chain(&orders)
        .map(|u| (u.addr.to_string(), "true".to_string()))
        .collect();
    assert_eq!(targets_shown(&mut browser, &tab).await, expected);
    let dashboard = browser
        .eval(
            &tab,
            "document.querySelector('tr[data-route=\"dashboard\"]').textContent",
        )
        .await;
    assert!(
        dashboard
            .as_str()
            .is_some_and(|row| row.contains("compose: user, orders")),
        "{dashboard}"
    );

    // A target goes down. From the moment /status first says so, the page shows it within
    // two of its redraws (one may already have been on its way with the old answer).
    let down = &users[1];
    down.go_down();
    eventually(
        "/status to report users-b down",
        Duration::from_secs(10),
        async || !gw.target_healthy("users", down.addr).await,
    )
    .await;
    let reported_at = refreshes(&mut browser, &tab).await;
    browser
        .wait_for(
            &tab,
            "users-b down",
            Duration::from_secs(10),
            &format!(
                "document.querySelector('tr[data-target=\"{}\"]')?.dataset.healthy === 'false'",
                down.addr
            ),
        )
        .await;
    let shown_at = refreshes(&mut browser, &tab).await;
    assert!(
        shown_at - reported_at <= 2,
        "the page took {} redraws to show the target down",
        shown_at - reported_at
    );
    let heading = browser
        .eval(
            &tab,
            "document.querySelector('section[data-upstream=\"users\"] h2').textContent",
        )
        .await;
    assert!(
        heading
            .as_str()
            .is_some_and(|h| h.contains("1 of 2 healthy")),
        "{heading}"
    );
    // The other targets stay up.
    let mut expected = expected;
    expected.insert(down.addr.to_string(), "false".to_string());
    assert_eq!(targets_shown(&mut browser, &tab).await, expected);

    // The picture for the README: once the traffic figures are in (requests are sampled every
    // 5 s) and the page has drawn them.
    eventually(
        "traffic figures in /status",
        Duration::from_secs(15),
        async || {
            let status: Value = gw.admin_json("/status").await;
            status["traffic"]["users"]["requests_per_s"]
                .as_f64()
                .is_some_and(|r| r > 0.0)
        },
    )
    .await;
    browser
        .wait_for(
            &tab,
            "the users route's request rate",
            Duration::from_secs(10),
            "document.querySelector('tr[data-route=\"users\"] td.num').textContent !== '–'",
        )
        .await;
    let path = target_dir().join("status-page.png");
    browser.screenshot(&tab, &path).await;
    let written = std::fs::metadata(&path).expect("the screenshot").len();
    assert!(
        written > 10_000,
        "a {written}-byte screenshot is too small to show anything"
    );
}
