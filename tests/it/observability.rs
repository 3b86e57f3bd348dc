//! An operator watches Portico with the shipped Grafana dashboard (conf/grafana/portico.json)
//! and Prometheus alerts (conf/prometheus/alerts.yml): the gateway's exposition passes
//! `promtool check metrics`, the rules load and fire as their unit tests say, the dashboard is
//! whole, and every metric the dashboard and the rules query is one the gateway exports.
//!
//! promtool comes from Debian's `prometheus` package, which scripts/ensure-deps.sh installs;
//! without it these tests fail, they do not skip.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::tls::{client_for, TestCa};
use crate::common::{eventually, upstream::spawn_ok, Gateway, Upstream};

const DASHBOARD: &str = "conf/grafana/portico.json";
const ALERTS: &str = "conf/prometheus/alerts.yml";
const ALERT_TESTS: &str = "conf/prometheus/alerts_test.yml";

#[tokio::test(flavor = "multi_thread")]
async fn the_exposition_after_traffic_on_every_feature_passes_promtool() {
    let busy = a_gateway_that_has_seen_every_feature().await;

    let (code, out) = promtool(&["check", "metrics"], Some(&busy.scrape));
    assert_eq!(
        code, 0,
        "promtool check metrics:\n{out}\n--- the scrape ---\n{}",
        busy.scrape
    );
    assert_eq!(out.trim(), "", "promtool found problems in the scrape");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_alert_rules_pass_promtool_check_rules() {
    let (code, out) = promtool(&["check", "rules", ALERTS], None);
    assert_eq!(code, 0, "promtool check rules {ALERTS}:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_alert_fires_when_its_unit_tests_say_and_not_otherwise() {
    let (code, out) = promtool(&["test", "rules", ALERT_TESTS], None);
    assert_eq!(code, 0, "promtool test rules {ALERT_TESTS}:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert in the file has a case where it fires.
    let text = std::fs::read_to_string(repo_file(ALERT_TESTS)).unwrap();
    let tests: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let fired: BTreeSet<&str> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|case| case["alert_rule_test"].as_sequence().unwrap())
        .filter(|check| {
            check["exp_alerts"]
                .as_sequence()
                .is_some_and(|alerts| !alerts.is_empty())
        })
        .filter_map(|check| check["alertname"].as_str())
        .collect();
    for alert in alert_rules().keys() {
        assert!(
            fired.contains(alert.as_str()),
            "{ALERT_TESTS} has no case where {alert} fires"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_the_alerts_query_only_metrics_the_gateway_exports() {
    let busy = a_gateway_that_has_seen_every_feature().await;
    let exported = exported_names(&busy.scrape);

    let dashboard = dashboard();
    let mut queries: Vec<String> = panel_targets(&dashboard)
        .into_iter()
        .map(|(_, expr)| expr)
        .collect();
    queries.extend(variable_queries(&dashboard));
    let dashboard_metrics = metric_names(&queries);
    let alert_metrics = metric_names(&alert_rules().into_values().collect::<Vec<_>>());

    // The scan finds what the files are known to query, so an empty set cannot pass.
    for name in [
        "portico_http_requests_total",
        "portico_http_request_duration_seconds_bucket",
        "portico_upstream_requests_total",
        "portico_circuit_breaker_state",
        "portico_upstream_target_healthy",
        "portico_rate_limit_decisions_total",
        "portico_cache_lookups_total",
        "portico_upstream_connections",
        "portico_config_reloads_total",
        "portico_config_generation",
    ] {
        assert!(
            dashboard_metrics.contains(name),
            "the dashboard does not query {name}"
        );
    }
    for name in [
        "portico_http_requests_total",
        "portico_http_request_duration_seconds_bucket",
        "portico_circuit_breaker_state",
        "portico_upstream_target_healthy",
        "portico_config_reloads_total",
        "portico_tls_certificate_expiry_timestamp_seconds",
        "portico_rate_limit_decisions_total",
    ] {
        assert!(
            alert_metrics.contains(name),
            "the alerts do not query {name}"
        );
    }

    let unknown: Vec<_> = dashboard_metrics.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "{DASHBOARD} queries metrics the gateway does not export: {unknown:?}\nexported: {exported:?}"
    );
    let unknown: Vec<_> = alert_metrics.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "{ALERTS} queries metrics the gateway does not export: {unknown:?}\nexported: {exported:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_panel_queries_prometheus_through_the_datasource_variable() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 39);

    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(variable("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(variable("DS_PROMETHEUS")["query"], "prometheus");
    for (name, query) in [
        ("route", "label_values(portico_http_requests_total, route)"),
        (
            "upstream",
            "label_values(portico_upstream_requests_total, upstream)",
        ),
    ] {
        assert_eq!(variable(name)["type"], "query");
        assert_eq!(variable(name)["definition"], query);
    }

    let panels = all_panels(&dashboard);
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let mut queried = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(
            targets
                .iter()
                .any(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())),
            "panel {title:?} has no target with an expr"
        );
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        }
        queried += 1;
    }
    assert!(queried >= 11, "only {queried} panels query anything");
}

/// A gateway that has served a bit of everything the dashboard shows, and its `/metrics`.
struct Busy {
    scrape: String,
    _gw: Gateway,
    _app: Upstream,
    _certs: tempfile::TempDir,
}

/// One upstream with a health check and a circuit breaker behind a plain route, a
/// rate-limited route and a caching route, and a TLS listener. It serves: a proxied request,
/// one over TLS, a 429, a cache HIT, a 404, and a reload it refuses.
async fn a_gateway_that_has_seen_every_feature() -> Busy {
    let app = spawn_ok("app").await;
    let ca = TestCa::new("Portico test CA");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server(&["portico.test"]).write(certs.path(), "portico");
    let gw = Gateway::start(&format!(
        r#"
[tls]
listen = ["${{PORTICO_TLS}}"]
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[cache]
max_size = "16MiB"

[plugins.limit]
kind = "rate_limit"
limit = 1
window = "1m"

[plugins.cache]
kind = "cache"
ttl = "60s"

[upstreams.app]
targets = ["{app}"]
health_check = {{ path = "/health", interval = "50ms", timeout = "200ms", unhealthy = 2, healthy = 2 }}
circuit_breaker = {{ failures = 3, open_for = "2s" }}

[[routes]]
name = "api"
path = "/api"
upstream = "app"

[[routes]]
name = "limited"
path = "/limited"
upstream = "app"
plugins = ["limit"]

[[routes]]
name = "cached"
path = "/cached"
upstream = "app"
plugins = ["cache"]
"#,
        cert = cert.display(),
        key = key.display(),
        app = app.addr,
    ))
    .await;

    assert_eq!(gw.get("/api/users").await.status(), 200);
    let over_tls = client_for(&ca, &["portico.test"], gw.tls_addr);
    let resp = over_tls
        .get(format!(
            "https://portico.test:{}/api/users",
            gw.tls_addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(gw.get("/limited/x").await.status(), 200);
    assert_eq!(gw.get("/limited/x").await.status(), 429);
    eventually(
        "the cached route answers a HIT",
        Duration::from_secs(10),
        async || {
            let resp = gw.get("/cached/x").await;
            resp.headers().get("x-cache").is_some_and(|v| v == "HIT")
        },
    )
    .await;
    assert_eq!(gw.get("/nowhere").await.status(), 404);
    std::fs::write(
        &gw.config_path,
        "[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"missing\"\n",
    )
    .unwrap();
    assert_eq!(gw.reload().await.status(), 422);

    let target = app.addr;
    let scrape = gw
        .metrics_showing(&[
            "portico_http_requests_total{method=\"GET\",route=\"api\",status=\"200\"} 2",
            "portico_http_requests_total{method=\"GET\",route=\"\",status=\"404\"} 1",
            "portico_http_requests_total{method=\"GET\",route=\"limited\",status=\"429\"} 1",
            "portico_http_request_duration_seconds_bucket{route=\"api\",le=\"+Inf\"} 2",
            &format!("portico_upstream_requests_total{{outcome=\"success\",target=\"{target}\",upstream=\"app\"}}"),
            &format!("portico_upstream_target_healthy{{target=\"{target}\",upstream=\"app\"}} 1"),
            &format!("portico_circuit_breaker_state{{target=\"{target}\",upstream=\"app\"}} 0"),
            &format!("portico_upstream_connections{{state=\"idle\",target=\"{target}\",upstream=\"app\"}}"),
            "portico_rate_limit_decisions_total{decision=\"limited\",plugin=\"limit\"} 1",
            "portico_cache_lookups_total{result=\"hit\",route=\"cached\"}",
            "portico_config_reloads_total{result=\"error\"}",
            "portico_config_generation 1",
            "portico_tls_handshakes_total{result=\"ok\"} 1",
            "portico_tls_certificate_expiry_timestamp_seconds{name=\"portico.test\"}",
        ])
        .await;
    Busy {
        scrape,
        _gw: gw,
        _app: app,
        _certs: certs,
    }
}

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Run promtool from the repository root, with `stdin` as its input: exit code and
/// everything it printed. No promtool is a failure, never a skip.
fn promtool(args: &[&str], stdin: Option<&str>) -> (i32, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Debian's `prometheus` package \
                 (scripts/ensure-deps.sh, which `make test` runs, does)"
            )
        });
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_file(DASHBOARD)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, with the panels of collapsed rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    panels
}

/// (panel title, expr) of every query target.
fn panel_targets(dashboard: &Value) -> Vec<(String, String)> {
    all_panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_string())))
        })
        .collect()
}

/// The queries of the dashboard's query variables (`label_values(...)`).
fn variable_queries(dashboard: &Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .flat_map(|v| {
            [&v["definition"], &v["query"]["query"], &v["query"]]
                .into_iter()
                .filter_map(|q| q.as_str().map(String::from))
        })
        .collect()
}

/// Alert name -> expr, of every rule in alerts.yml.
fn alert_rules() -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo_file(ALERTS)).unwrap();
    let file: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{ALERTS} is not YAML: {e}"));
    let mut rules = std::collections::BTreeMap::new();
    for group in file["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"]
                .as_str()
                .expect("an alerting rule")
                .to_string();
            let expr = rule["expr"].as_str().expect("an expr").to_string();
            assert!(rules.insert(name.clone(), expr).is_none(), "{name} twice");
        }
    }
    rules
}

/// The `portico_` identifiers in PromQL texts.
fn metric_names(queries: &[String]) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for query in queries {
        for token in query.split(|c: char| !is_ident(c)) {
            if token.starts_with("portico_") {
                names.insert(token.to_string());
            }
        }
    }
    names
}

/// The metric names a scrape has samples for, from its `# TYPE` lines: a histogram as its
/// `_bucket`, `_sum` and `_count` series (the family's own name is no series to query). A
/// family without a sample line does not count.
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let sampled: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        let series: Vec<String> = match kind {
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{name}{suffix}"))
                .collect(),
            "summary" => [
                name.to_string(),
                format!("{name}_sum"),
                format!("{name}_count"),
            ]
            .into(),
            _ => vec![name.to_string()],
        };
        names.extend(series.into_iter().filter(|s| sampled.contains(s.as_str())));
    }
    names
}
