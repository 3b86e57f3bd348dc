//! Prometheus metrics (SPEC.md). Labels carry configured names only (route, upstream,
//! target), never raw paths or client-controlled strings, so cardinality stays bounded.

use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// The plugins' metrics, in the same registry.
    pub plugins: std::sync::Arc<portico_plugins::metrics::PluginMetrics>,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_target_healthy: IntGaugeVec,
    /// Targets discovery gives each upstream now.
    pub upstream_targets: IntGaugeVec,
    /// Discovery lookups, by upstream and result (ok, error).
    pub discovery_refreshes: IntCounterVec,
    pub circuit_breaker_state: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub compose_calls: IntCounterVec,
    /// Answers a route's `fallback` gave instead of the gateway's 502/503/504.
    pub fallback_responses: IntCounterVec,
    /// Requests on split routes, by route and the variant's upstream.
    pub split_requests: IntCounterVec,
    /// Mirrored copies, by route and result: sent, failed, dropped.
    pub mirror_requests: IntCounterVec,
    /// gRPC calls answered, by route and `grpc-status` (its name).
    pub grpc_requests: IntCounterVec,
    pub config_generation: IntGauge,
    pub access_log_dropped: IntCounter,
    /// Spans the tracer could not queue or the collector did not take.
    pub tracing_spans_dropped: IntCounter,
    /// Client connections closed at once because `server.max_client_connections` were open.
    pub client_connections_refused: IntCounter,
    pub client_connections: IntGauge,
    pub client_connections_max: IntGauge,
    pub tls_certificate_expiry: IntGaugeVec,
    pub tls_handshakes: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub cache_shared: IntCounterVec,
    /// The response store's figures, read from it when scraped.
    pub cache_size_bytes: IntGauge,
    pub cache_max_size_bytes: IntGauge,
    pub cache_entries: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "portico_http_requests_total",
                "Requests answered, by route, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let http_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "portico_http_request_duration_seconds",
                "Time from the request's arrival to the end of its response, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )?;
        let mirror_requests = IntCounterVec::new(
            Opts::new(
                "portico_mirror_requests_total",
                "Copies of requests sent to a route's mirror, by result: sent (the mirror answered), failed (it did not), dropped (not sent: too many in flight, or a body over 1 MiB).",
            ),
            &["route", "result"],
        )?;
        let split_requests = IntCounterVec::new(
            Opts::new(
                "portico_split_requests_total",
                "Requests on routes with a split, by route and the variant's upstream.",
            ),
            &["route", "upstream"],
        )?;
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "portico_upstream_requests_total",
                "Requests sent to upstream targets, by outcome: success, http_5xx, connect_error, timeout, reset.",
            ),
            &["upstream", "target", "outcome"],
        )?;
        let upstream_target_healthy = IntGaugeVec::new(
            Opts::new(
                "portico_upstream_target_healthy",
                "1 while the active health check passes a target.",
            ),
            &["upstream", "target"],
        )?;
        let upstream_targets = IntGaugeVec::new(
            Opts::new(
                "portico_upstream_targets",
                "How many targets service discovery gives an upstream now.",
            ),
            &["upstream"],
        )?;
        let discovery_refreshes = IntCounterVec::new(
            Opts::new(
                "portico_discovery_refreshes_total",
                "Service discovery lookups, by upstream and result: ok or error.",
            ),
            &["upstream", "result"],
        )?;
        let circuit_breaker_state = IntGaugeVec::new(
            Opts::new(
                "portico_circuit_breaker_state",
                "Circuit breaker state per target: 0 closed, 1 half-open, 2 open.",
            ),
            &["upstream", "target"],
        )?;
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "portico_grpc_requests_total",
                "gRPC calls answered, by route and grpc-status (the upstream's, or the gateway's own).",
            ),
            &["route", "grpc_status"],
        )?;
        let fallback_responses = IntCounterVec::new(
            Opts::new(
                "portico_fallback_responses_total",
                "Answers a route's fallback gave instead of a 502, 503 or 504, by route and the code it stood in for.",
            ),
            &["route", "code"],
        )?;
        let compose_calls = IntCounterVec::new(
            Opts::new(
                "portico_compose_calls_total",
                "Composition calls by route, call key and outcome: success or failed.",
            ),
            &["route", "key", "outcome"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "portico_config_reloads_total",
                "Config loads, by result: ok or error.",
            ),
            &["result"],
        )?;
        let config_generation = IntGauge::new(
            "portico_config_generation",
            "Generation of the config now serving.",
        )?;
        let access_log_dropped = IntCounter::new(
            "portico_access_log_dropped_total",
            "Access log lines dropped because the writer could not keep up.",
        )?;
        let tracing_spans_dropped = IntCounter::new(
            "portico_tracing_spans_dropped_total",
            "Spans dropped: the export queue was full or the collector did not take them.",
        )?;
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "portico_cache_lookups_total",
                "Requests on caching routes, by route and result: hit, miss, stale or bypass.",
            ),
            &["route", "result"],
        )?;
        let cache_shared = IntCounterVec::new(
            Opts::new(
                "portico_cache_shared_operations_total",
                "The shared cache tier in Redis, by result: hit, miss (looked up after a memory miss), write, or error (Redis failed or did not answer within redis.timeout).",
            ),
            &["result"],
        )?;
        let cache_size_bytes = IntGauge::new(
            "portico_cache_size_bytes",
            "Bytes the response cache holds: bodies, headers and bookkeeping.",
        )?;
        let cache_max_size_bytes = IntGauge::new(
            "portico_cache_max_size_bytes",
            "The response cache's limit, [cache] max_size.",
        )?;
        let cache_entries = IntGauge::new("portico_cache_entries", "Responses the cache holds.")?;
        let client_connections_refused = IntCounter::new(
            "portico_client_connections_refused_total",
            "Client connections closed at once because server.max_client_connections were open.",
        )?;
        let client_connections =
            IntGauge::new("portico_client_connections", "Client connections open now.")?;
        let client_connections_max = IntGauge::new(
            "portico_client_connections_max",
            "The cap on open client connections, server.max_client_connections.",
        )?;
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "portico_tls_certificate_expiry_timestamp_seconds",
                "When each TLS certificate of the config now serving expires (Unix time), by its first name.",
            ),
            &["name"],
        )?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "portico_tls_handshakes_total",
                "TLS handshakes on the TLS listeners, by result: ok, or refused (a client without TLS 1.3 where min_version is 1.3).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(tls_certificate_expiry.clone()))?;
        registry.register(Box::new(tls_handshakes.clone()))?;
        registry.register(Box::new(client_connections_refused.clone()))?;
        registry.register(Box::new(client_connections.clone()))?;
        registry.register(Box::new(client_connections_max.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(cache_lookups.clone()))?;
        registry.register(Box::new(cache_shared.clone()))?;
        registry.register(Box::new(cache_size_bytes.clone()))?;
        registry.register(Box::new(cache_max_size_bytes.clone()))?;
        registry.register(Box::new(cache_entries.clone()))?;
        registry.register(Box::new(http_request_duration.clone()))?;
        registry.register(Box::new(upstream_requests.clone()))?;
        registry.register(Box::new(upstream_target_healthy.clone()))?;
        registry.register(Box::new(upstream_targets.clone()))?;
        registry.register(Box::new(fallback_responses.clone()))?;
        registry.register(Box::new(split_requests.clone()))?;
        registry.register(Box::new(mirror_requests.clone()))?;
        registry.register(Box::new(discovery_refreshes.clone()))?;
        registry.register(Box::new(circuit_breaker_state.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(compose_calls.clone()))?;
        registry.register(Box::new(grpc_requests.clone()))?;
        registry.register(Box::new(config_generation.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        registry.register(Box::new(tracing_spans_dropped.clone()))?;
        let plugins = std::sync::Arc::new(portico_plugins::metrics::PluginMetrics::new(&registry)?);
        Ok(Metrics {
            registry,
            plugins,
            http_requests,
            http_request_duration,
            upstream_requests,
            upstream_target_healthy,
            upstream_targets,
            fallback_responses,
            split_requests,
            mirror_requests,
            discovery_refreshes,
            circuit_breaker_state,
            config_reloads,
            compose_calls,
            grpc_requests,
            config_generation,
            access_log_dropped,
            tracing_spans_dropped,
            client_connections_refused,
            client_connections,
            client_connections_max,
            tls_certificate_expiry,
            tls_handshakes,
            cache_lookups,
            cache_shared,
            cache_size_bytes,
            cache_max_size_bytes,
            cache_entries,
        })
    }

    /// What compiling a config needs: the plugins record into this registry.
    /// `reuse`: the instances of the config serving now (empty at start-up).
    pub fn build_context(&self, reuse: crate::config::Reuse) -> crate::config::BuildContext {
        crate::config::BuildContext {
            plugin_metrics: std::sync::Arc::clone(&self.plugins),
            reuse,
        }
    }

    /// The Prometheus text exposition of every metric, with `extra` families computed at
    /// scrape time.
    pub fn render(&self, extra: Vec<MetricFamily>) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        let mut families = self.registry.gather();
        families.extend(extra);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

/// The connection pools' metrics, read from every target of `pools` when scraped, so the
/// request path only moves the pools' own counters: `portico_upstream_connections{state}`
/// (idle, busy) and `portico_upstream_connections_opened_total`. A pool a reload replaced
/// starts counting again, which Prometheus reads as a counter reset.
pub fn pool_families(
    pools: impl IntoIterator<Item = std::sync::Arc<crate::upstream::UpstreamPool>>,
) -> Vec<MetricFamily> {
    let mut connections = family(
        "portico_upstream_connections",
        "Open connections to each upstream target, by state: idle (kept for reuse) or busy.",
        MetricType::GAUGE,
    );
    let mut opened = family(
        "portico_upstream_connections_opened_total",
        "Connections opened to each upstream target.",
        MetricType::COUNTER,
    );
    for pool in pools {
        for target in &pool.targets {
            let stats = target.connections.stats();
            let labels = [("upstream", &*pool.name), ("target", &*target.label)];
            for (state, n) in [("idle", stats.idle), ("busy", stats.busy)] {
                let mut metric = sample(&labels, Some(("state", state)));
                let mut gauge = prometheus::proto::Gauge::default();
                gauge.set_value(n as f64);
                metric.set_gauge(gauge);
                connections.mut_metric().push(metric);
            }
            let mut metric = sample(&labels, None);
            let mut counter = prometheus::proto::Counter::default();
            counter.set_value(stats.opened as f64);
            metric.set_counter(counter);
            opened.mut_metric().push(metric);
        }
    }
    [connections, opened]
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family
}

fn sample(labels: &[(&str, &str)], extra: Option<(&str, &str)>) -> prometheus::proto::Metric {
    let mut metric = prometheus::proto::Metric::default();
    let mut labels: Vec<(&str, &str)> = labels.iter().copied().chain(extra).collect();
    // In name order, as the registry writes its own.
    labels.sort_unstable();
    let pairs = labels
        .into_iter()
        .map(|(name, value)| {
            let mut pair = prometheus::proto::LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect();
    metric.set_label(pairs);
    metric
}

/// A bounded label for the request method: unknown methods are one value, not many.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}
