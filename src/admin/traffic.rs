//! The last minute of traffic per route, for `/status` and the status page: request rate,
//! 5xx rate and p99. A background task samples the request counters and the latency histogram
//! every `EVERY`; `/status` compares the figures now with the oldest sample of the last minute.
//! Nothing here touches the request path: the counters are the ones `/metrics` exports.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::core::Collector;
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::state::GatewayState;

pub const EVERY: Duration = Duration::from_secs(5);
pub const WINDOW: Duration = Duration::from_secs(60);

/// One route's counters at one moment.
#[derive(Debug, Clone, Default)]
struct RouteCounts {
    requests: u64,
    errors: u64,
    /// The latency histogram's cumulative bucket counts, by upper bound in seconds.
    buckets: Vec<(f64, u64)>,
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    routes: BTreeMap<String, RouteCounts>,
}

#[derive(Default)]
pub struct Traffic {
    samples: Mutex<VecDeque<Sample>>,
}

impl Traffic {
    fn record(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        while samples
            .front()
            .is_some_and(|s| sample.at.duration_since(s.at) > WINDOW)
        {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Per route: `requests_per_s`, `errors_per_s` (5xx), `p99_ms` (null without requests) and
    /// `seconds`, the span the figures cover (up to a minute; less just after the start).
    pub fn last_minute(&self, metrics: &Metrics) -> Value {
        let now = sample(metrics);
        let oldest = {
            let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            samples
                .iter()
                .find(|s| now.at.duration_since(s.at) <= WINDOW + EVERY)
                .cloned()
        };
        let Some(oldest) = oldest else {
            return json!({});
        };
        let seconds = now.at.duration_since(oldest.at).as_secs_f64();
        let routes: serde_json::Map<String, Value> = now
            .routes
            .iter()
            .map(|(route, counts)| {
                let before = oldest.routes.get(route).cloned().unwrap_or_default();
                let requests = counts.requests.saturating_sub(before.requests);
                let errors = counts.errors.saturating_sub(before.errors);
                let rate = |n: u64| {
                    if seconds > 0.0 {
                        n as f64 / seconds
                    } else {
                        0.0
                    }
                };
                (
                    route.clone(),
                    json!({
                        "requests_per_s": rate(requests),
                        "errors_per_s": rate(errors),
                        "p99_ms": quantile(0.99, &counts.buckets, &before.buckets).map(|s| s * 1000.0),
                        "seconds": seconds,
                    }),
                )
            })
            .collect();
        Value::Object(routes)
    }
}

/// The route counters now.
fn sample(metrics: &Metrics) -> Sample {
    let mut routes: BTreeMap<String, RouteCounts> = BTreeMap::new();
    for family in metrics.http_requests.collect() {
        for m in family.get_metric() {
            let (mut route, mut status) = ("", "");
            for label in m.get_label() {
                match label.get_name() {
                    "route" => route = label.get_value(),
                    "status" => status = label.get_value(),
                    _ => {}
                }
            }
            let n = m.get_counter().get_value() as u64;
            let counts = routes.entry(route.to_string()).or_default();
            counts.requests += n;
            if status.starts_with('5') {
                counts.errors += n;
            }
        }
    }
    for family in metrics.http_request_duration.collect() {
        for m in family.get_metric() {
            let Some(route) = m.get_label().iter().find(|l| l.get_name() == "route") else {
                continue;
            };
            let histogram = m.get_histogram();
            let mut buckets: Vec<(f64, u64)> = histogram
                .get_bucket()
                .iter()
                .map(|b| (b.get_upper_bound(), b.get_cumulative_count()))
                .collect();
            buckets.push((f64::INFINITY, histogram.get_sample_count()));
            routes
                .entry(route.get_value().to_string())
                .or_default()
                .buckets = buckets;
        }
    }
    Sample {
        at: Instant::now(),
        routes,
    }
}

/// The `q` quantile of what was observed between two cumulative histograms, interpolated
/// within its bucket as Prometheus's `histogram_quantile` does; the last finite bound when it
/// falls in the +Inf bucket. None without observations.
fn quantile(q: f64, now: &[(f64, u64)], before: &[(f64, u64)]) -> Option<f64> {
    let delta: Vec<(f64, u64)> = now
        .iter()
        .enumerate()
        .map(|(i, &(bound, n))| (bound, n.saturating_sub(before.get(i).map_or(0, |b| b.1))))
        .collect();
    let total = delta.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(bound, n) in &delta {
        if n as f64 >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let inside = (n - below) as f64;
            let fraction = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                1.0
            };
            return Some(lower + (bound - lower) * fraction);
        }
        (lower, below) = (bound, n);
    }
    Some(lower)
}

/// Takes a sample every `EVERY`, for as long as the process runs.
pub struct TrafficSampler {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for TrafficSampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.state.traffic.record(sample(&self.state.metrics)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantile_is_interpolated_within_its_bucket_over_the_difference() {
        let before = [(0.01, 10), (0.1, 10), (1.0, 10), (f64::INFINITY, 10)];
        // Since then: 90 under 10 ms, 10 between 100 ms and 1 s.
        let now = [(0.01, 100), (0.1, 100), (1.0, 110), (f64::INFINITY, 110)];
        let p99 = quantile(0.99, &now, &before).unwrap();
        assert!((p99 - 0.91).abs() < 1e-9, "{p99}");
        let p50 = quantile(0.5, &now, &before).unwrap();
        assert!(p50 > 0.0 && p50 <= 0.01, "{p50}");
        assert_eq!(quantile(0.99, &before, &before), None);
        let slow = [(0.01, 0), (f64::INFINITY, 5)];
        assert_eq!(quantile(0.99, &slow, &[]), Some(0.01));
    }
}
