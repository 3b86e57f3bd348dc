//! Metrics that plugins record, registered in the gateway's registry so `/metrics` shows them
//! beside the gateway's own.

use prometheus::{IntCounterVec, Opts, Registry};

pub struct PluginMetrics {
    /// `portico_rate_limit_decisions_total{plugin,decision}`: allowed, limited, store_error.
    pub rate_limit_decisions: IntCounterVec,
    /// `portico_graphql_operations_total{route,operation,result}`: ok, partial, error,
    /// invalid, refused. `operation` is the operation's name when the schema or persisted
    /// list knows it (or one of a route's first few names), else `""`.
    pub graphql_operations: IntCounterVec,
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
        let graphql_operations = IntCounterVec::new(
            Opts::new(
                "portico_graphql_operations_total",
                "GraphQL operations by route, operation name and result: ok (forwarded, or answered without errors), partial (data with errors), error (no data: every root field failed), invalid (not a GraphQL request that could be checked: bad JSON, a parse failure), and refused (over a limit, introspection off, or not allowed by the persisted queries).",
            ),
            &["route", "operation", "result"],
        )?;
        registry.register(Box::new(graphql_operations.clone()))?;
        Ok(PluginMetrics {
            rate_limit_decisions,
            graphql_operations,
        })
    }

    /// Metrics that go nowhere, for config validation (`portico -t`) and tests.
    pub fn unregistered() -> Result<PluginMetrics, prometheus::Error> {
        PluginMetrics::new(&Registry::new())
    }
}
