//! An operator points Portico at a trace collector (`[tracing]`) and finds each request there:
//! one server span named after its route, one client span per upstream attempt and per
//! composition call, linked to each other and to the caller's trace, and the same ids in the
//! `traceparent` each upstream received. The collector here decodes real OTLP/HTTP protobuf.

use std::time::Duration;

use serde_json::json;

use crate::common::otlp::{Collector, Span};
use crate::common::{eventually, refused_port, spawn_upstream, Gateway, Reply};

/// Exports every 50 ms instead of every 5 s, so a test waits for its spans briefly.
const QUICK_EXPORT: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "50");

fn tracing(collector: &Collector, sample_ratio: f64) -> String {
    format!(
        "[tracing]\notlp_endpoint = \"{}\"\nservice_name = \"edge\"\nsample_ratio = {sample_ratio}\n\
         headers = {{ authorization = \"Bearer collector-token\" }}\n",
        collector.endpoint()
    )
}

/// `00-<trace>-<span>-<flags>` split in its parts.
fn parts(traceparent: &str) -> (&str, &str, &str) {
    (
        &traceparent[3..35],
        &traceparent[36..52],
        &traceparent[53..55],
    )
}

fn one<'a>(spans: &'a [Span], kind: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.kind == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} span in {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_request_is_a_server_span_over_one_client_span_per_attempt() {
    let collector = Collector::start().await;
    let good = spawn_upstream("good", |_| Reply::Status(200, "ok")).await;
    // Nothing listens on the other target: an attempt there fails and is retried on `good`.
    let refused = refused_port();
    let gw = Gateway::start_with_env(
        &format!(
            "{}\n[upstreams.users]\ntargets = [\"127.0.0.1:{}\", \"{}\"]\nretry = {{ attempts = 1 }}\n\n\
             [[routes]]\nname = \"user-api\"\npath = \"/users/{{id}}\"\nupstream = \"users\"\n",
            tracing(&collector, 1.0),
            refused.port,
            good.addr
        ),
        &[QUICK_EXPORT],
    )
    .await;

    // A caller that traces sends its context; round robin sends one of the first two
    // requests to the dead target first.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    for i in 0..2 {
        let resp = gw
            .client
            .get(gw.url(&format!("/users/{i}")))
            .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
            .header("tracestate", "vendor=opaque")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // The client is told the server span it can look its request up by.
        let back = resp.headers()["traceparent"].to_str().unwrap().to_string();
        let (trace, server_span, flags) = parts(&back);
        assert_eq!((trace, flags), (caller_trace, "01"));
        assert_ne!(server_span, caller_span);
    }

    // Every request is one server span; the retried one has two client spans.
    // A request's attempt spans are written before its server span: once both server
    // spans are in, so is everything under them.
    let mut spans = Vec::new();
    eventually(
        "both requests' server spans",
        Duration::from_secs(20),
        async || {
            spans = collector.spans();
            spans
                .iter()
                .filter(|s| s.kind == "SPAN_KIND_SERVER")
                .count()
                == 2
        },
    )
    .await;
    assert!(spans.iter().all(|s| s.trace_id == caller_trace));
    let servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == "SPAN_KIND_SERVER")
        .collect();
    assert_eq!(servers.len(), 2, "{spans:#?}");
    let retried = servers
        .iter()
        .find(|server| {
            spans
                .iter()
                .filter(|s| s.parent_span_id == server.span_id)
                .count()
                == 2
        })
        .expect("one request was tried twice");
    assert_eq!(retried.name, "user-api");
    assert_eq!(retried.service, "edge");
    assert_eq!(
        retried.parent_span_id, caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(retried.attr("http.request.method"), Some("GET"));
    assert_eq!(retried.attr("http.route"), Some("/users/{id}"));
    assert_eq!(retried.attr("http.response.status_code"), Some("200"));
    assert!(retried.attr("url.path").unwrap().starts_with("/users/"));
    assert_eq!(retried.attr("url.scheme"), Some("http"));

    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == retried.span_id)
        .collect();
    attempts.sort_by_key(|s| s.start_ns);
    let (failed, answered) = (attempts[0], attempts[1]);
    for attempt in [failed, answered] {
        assert_eq!(attempt.kind, "SPAN_KIND_CLIENT");
        assert_eq!(attempt.name, "GET users");
        assert_eq!(attempt.attr("portico.upstream"), Some("users"));
        assert!(attempt.attr("portico.target").is_some());
        assert!(attempt.start_ns >= retried.start_ns && attempt.end_ns <= retried.end_ns);
    }
    assert_eq!(failed.attr("error.type"), Some("connect_error"));
    assert_eq!(failed.status, "STATUS_CODE_ERROR");
    assert_eq!(failed.attr("server.port"), Some(&*refused.port.to_string()));
    assert_eq!(failed.attr("http.request.resend_count"), None);
    assert_eq!(answered.attr("http.response.status_code"), Some("200"));
    assert_eq!(answered.attr("http.request.resend_count"), Some("1"));
    assert_eq!(
        answered.attr("server.port"),
        Some(&*good.addr.port().to_string())
    );
    assert_eq!(answered.attr("error.type"), None);
    assert_eq!(
        answered.attr("portico.target"),
        Some(&*good.addr.to_string())
    );

    // The upstream was sent the answering attempt's own span id, and the caller's tracestate.
    let sent: Vec<String> = good
        .seen()
        .iter()
        .map(|s| s.header("traceparent").unwrap().to_string())
        .collect();
    assert!(
        sent.contains(&format!("00-{caller_trace}-{}-01", answered.span_id)),
        "{sent:?} carries attempt {}",
        answered.span_id
    );
    assert!(good
        .seen()
        .iter()
        .all(|s| s.header("tracestate") == Some("vendor=opaque")));

    // The collector got the configured headers with every export.
    let exports = collector.export_headers();
    assert!(exports
        .iter()
        .all(|h| h["authorization"] == "Bearer collector-token"));
    assert!(gw
        .metrics()
        .await
        .contains("portico_tracing_spans_dropped_total 0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_composition_call_is_a_client_span_of_the_request() {
    let collector = Collector::start().await;
    let svc = spawn_upstream("svc", |s| {
        Reply::Body(
            200,
            json!({ "path": s.uri, "traceparent": s.header("traceparent") }).to_string(),
        )
    })
    .await;
    let gw = Gateway::start_with_env(
        &format!(
            "{}\n[upstreams.svc]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"dashboard\"\n\
             path = \"/dashboard/{{id}}\"\ncompose = {{ calls = [\n\
             {{ key = \"user\", upstream = \"svc\", path = \"/users/{{id}}\" }},\n\
             {{ key = \"orders\", upstream = \"svc\", path = \"/orders/user/{{id}}\" }},\n] }}\n",
            tracing(&collector, 1.0),
            svc.addr
        ),
        &[QUICK_EXPORT],
    )
    .await;

    // Portico starts the trace: no traceparent from the client.
    let resp = gw.get("/dashboard/7").await;
    assert_eq!(resp.status(), 200);
    let back = resp.headers()["traceparent"].to_str().unwrap().to_string();
    let (trace, server_span, flags) = parts(&back);
    assert_eq!(flags, "01");
    let body: serde_json::Value = resp.json().await.unwrap();

    let spans = collector.trace(trace, 3).await;
    let server = one(&spans, "SPAN_KIND_SERVER");
    assert_eq!(server.name, "dashboard");
    assert_eq!(server.span_id, server_span);
    assert_eq!(
        server.parent_span_id, "",
        "a trace Portico starts has a root span"
    );
    let calls: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == "SPAN_KIND_CLIENT")
        .collect();
    assert_eq!(calls.len(), 2, "{spans:#?}");
    for call in &calls {
        assert_eq!(call.parent_span_id, server.span_id);
        assert_eq!(call.attr("portico.upstream"), Some("svc"));
        assert_eq!(call.attr("http.response.status_code"), Some("200"));
    }
    // Each call's upstream request named its own span as the parent.
    for key in ["user", "orders"] {
        let sent = body[key]["traceparent"].as_str().unwrap();
        let (sent_trace, sent_span, _) = parts(sent);
        assert_eq!(sent_trace, trace);
        assert!(
            calls.iter().any(|c| c.span_id == sent_span),
            "{key} was sent span {sent_span}, not one of {calls:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_portico_starts_are_sampled_at_the_ratio_and_callers_decide_their_own() {
    let collector = Collector::start().await;
    let app = spawn_upstream("app", |_| Reply::Status(200, "ok")).await;
    let gw = Gateway::start_with_env(
        &format!(
            "{}\n{}",
            tracing(&collector, 0.25),
            crate::common::one_route("app", app.addr, "", "/")
        ),
        &[QUICK_EXPORT],
    )
    .await;

    // 400 requests that start their trace at the gateway: each is kept with probability
    // 0.25 (mean 100, standard deviation 8.7); outside 100 +/- 6 deviations is a broken
    // sampler, not bad luck (about one run in 10^8).
    let mut sampled = Vec::new();
    for _ in 0..400 {
        let resp = gw.get("/").await;
        assert_eq!(resp.status(), 200);
        // Only a sampled request is told its trace.
        if let Some(tp) = resp.headers().get("traceparent") {
            sampled.push(parts(tp.to_str().unwrap()).0.to_string());
        }
    }
    assert!(
        (48..=152).contains(&sampled.len()),
        "{} of 400 sampled at 0.25",
        sampled.len()
    );
    // Each of them, and only they, reached the collector.
    let expected = sampled.len();
    eventually(
        "every sampled request's span",
        Duration::from_secs(20),
        async || collector.spans().len() >= expected * 2,
    )
    .await;
    let spans = collector.spans();
    let servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == "SPAN_KIND_SERVER")
        .collect();
    assert_eq!(servers.len(), expected);
    assert!(servers.iter().all(|s| sampled.contains(&s.trace_id)));
    // The unsampled ones still went upstream with a trace context, marked not sampled.
    let unsampled = app
        .seen()
        .iter()
        .filter(|s| s.header("traceparent").is_some_and(|t| t.ends_with("-00")))
        .count();
    assert_eq!(unsampled, 400 - expected);

    // A caller's decision stands whatever the ratio: sampled is recorded, unsampled is not.
    let caller = |flags: &str, n: u32| format!("00-{:032x}-00f067aa0ba902b7-{flags}", 0xabc000 + n);
    for n in 0..20 {
        for flags in ["01", "00"] {
            let resp = gw
                .client
                .get(gw.url("/"))
                .header("traceparent", caller(flags, n))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers().contains_key("traceparent"), flags == "01");
        }
    }
    eventually(
        "the callers' sampled traces",
        Duration::from_secs(20),
        async || collector.spans().len() >= (expected + 20) * 2,
    )
    .await;
    let spans = collector.spans();
    for n in 0..20 {
        let trace = &caller("01", n)[3..35];
        assert_eq!(
            spans.iter().filter(|s| s.trace_id == trace).count(),
            2,
            "the sampled caller's trace {trace}"
        );
    }
    assert_eq!(
        spans.len(),
        (expected + 20) * 2,
        "no unsampled caller was recorded"
    );
    // An unsampled caller's context went upstream exactly as it came.
    let sent: Vec<String> = app
        .seen()
        .iter()
        .filter_map(|s| s.header("traceparent").map(str::to_string))
        .collect();
    for n in 0..20 {
        assert!(sent.contains(&caller("00", n)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_hangs_or_is_gone_never_holds_a_request() {
    let app = spawn_upstream("app", |_| Reply::Status(200, "ok")).await;
    let hanging = Collector::start_hanging().await;
    // A small queue, so it fills within the test.
    let env = [
        QUICK_EXPORT,
        ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
    ];
    let gw = Gateway::start_with_env(
        &format!(
            "{}\n{}",
            tracing(&hanging, 1.0),
            crate::common::one_route("app", app.addr, "", "/")
        ),
        &env,
    )
    .await;
    // Requests go on while an export is held: the export is not on their path.
    assert_eq!(gw.get("/").await.status(), 200);
    eventually(
        "an export held by the collector",
        Duration::from_secs(10),
        async || hanging.held() > 0,
    )
    .await;
    for _ in 0..100 {
        assert_eq!(gw.get("/").await.status(), 200);
    }
    assert!(hanging.held() > 0, "the collector still holds the export");
    // What did not fit in the queue was dropped, and counted.
    let metrics = gw.metrics().await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portico_tracing_spans_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        dropped >= 100,
        "{dropped} spans dropped of 202 made with a queue of 16"
    );

    // Nothing listens at the collector's address at all: every export fails; counted too.
    let gone = refused_port();
    let gw = Gateway::start_with_env(
        &format!(
            "[tracing]\notlp_endpoint = \"http://127.0.0.1:{}/v1/traces\"\n\n{}",
            gone.port,
            crate::common::one_route("app", app.addr, "", "/")
        ),
        &env,
    )
    .await;
    for _ in 0..20 {
        assert_eq!(gw.get("/").await.status(), 200);
    }
    gw.metrics_showing(&["portico_tracing_spans_dropped_total 40"])
        .await;
    assert!(gw.stderr().contains("spans are not reaching the collector"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tracing_settings_are_checked_with_the_rest_of_the_config() {
    let (code, out) = crate::common::gateway::validate_text(
        "[tracing]\notlp_endpoint = \"collector:4318\"\nsample_ratio = 2\nservice_name = \"\"\n\
         headers = { \"bad header\" = \"x\" }\n\n[[routes]]\nname = \"r\"\npath = \"/\"\n\
         upstream = \"nowhere\"\n",
    );
    assert_ne!(code, 0);
    for key in [
        "tracing.otlp_endpoint",
        "tracing.sample_ratio",
        "tracing.service_name",
        "tracing.headers.bad header",
    ] {
        assert!(out.contains(key), "{key} in:\n{out}");
    }
    // The other problems of the same file are named too.
    assert!(out.contains("nowhere"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_requests_spans_leave_with_the_process() {
    let collector = Collector::start().await;
    let app = spawn_upstream("app", |_| Reply::Status(200, "ok")).await;
    // The processor's default schedule: 5 s between exports, longer than the drain takes.
    let mut gw = Gateway::start(&format!(
        "{}\n{}",
        tracing(&collector, 1.0),
        crate::common::one_route("app", app.addr, "", "/")
    ))
    .await;
    let resp = gw.get("/").await;
    let trace = parts(resp.headers()["traceparent"].to_str().unwrap())
        .0
        .to_string();
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).await.success());
    let spans = collector.trace(&trace, 2).await;
    assert_eq!(one(&spans, "SPAN_KIND_SERVER").name, "app");
}
