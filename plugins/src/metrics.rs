//! Metrics that plugins record, registered in the gateway's registry so `/metrics` shows them
//! beside the gateway's own.

use prometheus::{IntCounterVec, Opts, Registry};

pub struct PluginMetrics {
    /// `portico_rate_limit_decisions_total{plugin,decision}`: allowed, limited, store_error.
    pub rate_limit_decisions: IntCounterVec,
}

impl PluginMetrics {
    pub fn new(registry: &Registry) -> Result<PluginMetrics, prometheus::Error> {
        let rate_limit_decisions = IntCounterVec::new(
            Opts::new(
                "portico_rate_limit_decisions_total",
                "Rate limit decisions by plugin: allowed, limited, and store_error (Redis could not be asked; the fallback's decision is counted too).",
            ),
            &["plugin", "decision"],
        )?;
        registry.register(Box::new(rate_limit_decisions.clone()))?;
        Ok(PluginMetrics {
            rate_limit_decisions,
        })
    }

    /// Metrics that go nowhere, for config validation (`portico -t`) and tests.
    pub fn unregistered() -> Result<PluginMetrics, prometheus::Error> {
        PluginMetrics::new(&Registry::new())
    }
}
