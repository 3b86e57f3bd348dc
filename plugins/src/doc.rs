//! What a plugin tells the API description (`GET /openapi.json` on the admin listener) about
//! the routes that use it: the credentials it demands, the limits it applies, the answers it
//! gives by itself. Built from the plugin's config when the instance is built, so describing
//! a route reads no request state.

use std::collections::BTreeMap;

/// One plugin's part in a route's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginDoc {
    /// `jwt`: a bearer token in `Authorization`; 401 without a valid one, 403 without the
    /// required scopes.
    BearerJwt {
        algorithms: Vec<String>,
        issuers: Vec<String>,
        audiences: Vec<String>,
        required_scopes: Vec<String>,
    },
    /// `api_key`: a key in `header`, or in query parameter `query` where one is set; 401
    /// without a known one.
    ApiKey {
        header: String,
        query: Option<String>,
    },
    /// `rate_limit`: `limit` requests per `window` for each key; 429 past it, and the
    /// `RateLimit-*` headers on every answer.
    RateLimit {
        limit: u64,
        window: String,
        key: String,
        limits_by_tier: BTreeMap<String, u64>,
    },
    /// `ip_filter`: 403 for a client address it refuses.
    IpFilter,
    /// `graphql_guard`: GraphQL requests held to limits, and to the persisted queries (how
    /// many are listed) when there is a list; refusals are GraphQL error documents.
    GraphqlGuard {
        max_depth: usize,
        max_complexity: usize,
        max_aliases: usize,
        max_query_size: usize,
        introspection: bool,
        persisted_queries: Option<usize>,
    },
    /// `cors`: preflights (`OPTIONS` with `Access-Control-Request-Method`) answered 204.
    Cors { allow_methods: Vec<String> },
}
