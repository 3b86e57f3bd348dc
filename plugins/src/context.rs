//! What a plugin knows about the request it is looking at, beyond the request itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Per-request state shared by the plugins of one route. The gateway fills in the route,
/// client address and request id; authentication plugins fill in `identity`, which later
/// plugins (rate limiting by consumer or tier) and the access log read.
#[derive(Debug)]
pub struct PluginCtx {
    /// The configured name of the matched route.
    pub route: Arc<str>,
    /// The client's address, after `trusted_proxies` decided whether to believe
    /// `X-Forwarded-For`.
    pub client_ip: IpAddr,
    pub request_id: String,
    /// Set once a plugin has verified who is calling. Shared: a JWT verification cache hit
    /// hands out the identity it stored, without copying its claims.
    pub identity: Option<Arc<Identity>>,
    /// Per-request state a plugin keeps between its phases, by type.
    pub extensions: http::Extensions,
    /// The subject of the client certificate the TLS handshake verified (mTLS), if any.
    pub client_cert: Option<Arc<str>>,
    /// The GraphQL operation's name, once a GraphQL plugin has read the request (for the
    /// access log's `operation`).
    pub graphql_operation: Option<Arc<str>>,
}

impl PluginCtx {
    pub fn new(route: Arc<str>, client_ip: IpAddr, request_id: String) -> Self {
        PluginCtx {
            route,
            client_ip,
            request_id,
            identity: None,
            extensions: http::Extensions::new(),
            client_cert: None,
            graphql_operation: None,
        }
    }

    /// A verified claim's value, if an authentication plugin recorded one.
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.identity
            .as_ref()
            .and_then(|id| id.claims.get(name))
            .map(String::as_str)
    }
}

/// A caller whose identity a plugin has verified (a JWT, an API key).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The consumer's name: a configured `[consumers.NAME]`, or a token's subject.
    pub consumer: String,
    pub tier: Option<String>,
    /// Verified claims, as strings, for templates, hashing and forwarding.
    pub claims: HashMap<String, String>,
}
