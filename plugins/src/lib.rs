//! Portico's plugin API: the trait every plugin implements, the context it sees, and the
//! registry of built-in plugin kinds.
//!
//! The gateway (`portico`) depends on this crate, never the other way round, so everything a
//! plugin needs to name (its context, its answers, the stable error codes) lives here.

mod api_key;
pub mod consumers;
mod context;
mod cors;
pub mod doc;
mod error_code;
pub mod graphql;
mod graphql_guard;
pub mod header_edit;
mod headers;
mod ip_filter;
pub mod jwt;
pub mod metrics;
pub mod rate_limit;
pub mod redis_store;
mod registry;
pub mod units;

pub use context::{Identity, PluginCtx};
pub use doc::PluginDoc;
pub use error_code::ErrorCode;
pub use registry::{build_plugin, file_keys, known_kinds, PluginEnv};

use async_trait::async_trait;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// What the gateway does after a plugin's `on_request`.
#[derive(Debug)]
pub enum Flow {
    /// Go on to the next plugin, then to the upstream.
    Continue,
    /// Stop here and answer the client with this rejection (written as problem+json by the
    /// gateway, so every early answer looks the same).
    Reject(Rejection),
    /// Stop here and answer the client with this, which is not a problem+json error (a CORS
    /// preflight's 204, a GraphQL errors document): the status, headers and body as given,
    /// never sent upstream.
    Respond(Answer),
}

/// An answer a plugin gives by itself that is not a problem+json error.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The body, written with its `Content-Length`; empty for none. A 204 or 304 never has
    /// one, whatever this holds.
    pub body: bytes::Bytes,
}

/// An answer a plugin asks the gateway to give instead of proxying.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub code: ErrorCode,
    /// Human-readable detail for the problem body. Never a secret, a token or a key.
    pub detail: String,
    /// Extra response headers, e.g. `WWW-Authenticate` or `Retry-After`.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Rejection {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Rejection {
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// A plugin failed in a way that is the gateway's fault, not the client's: answered as 500
/// `internal`, and logged with the plugin's name.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    Internal(String),
}

/// One configured plugin instance. Every phase has a default that does nothing, so a plugin
/// implements only the phases it cares about.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// Runs in `request_filter`, in the route's plugin order, after routing.
    /// `Flow::Reject` ends the chain and answers the client; `Flow::Continue` goes on.
    /// Default: continue.
    async fn on_request(
        &self,
        _session: &mut Session,
        _cx: &mut PluginCtx,
    ) -> Result<Flow, PluginError> {
        Ok(Flow::Continue)
    }

    /// Runs in `upstream_request_filter`, in the route's plugin order: shape the request
    /// that is sent upstream (it runs again on each retry). Default: no change.
    async fn on_upstream_request(
        &self,
        _req: &mut RequestHeader,
        _cx: &mut PluginCtx,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// Runs in `response_filter`, in reverse plugin order, on every response the route
    /// sends that came from an upstream. Default: no change.
    async fn on_response(
        &self,
        _resp: &mut ResponseHeader,
        _cx: &mut PluginCtx,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// Headers this plugin adds to an answer the gateway gives itself on this route (a
    /// problem, a rejection by another plugin, another plugin's `Respond`), which
    /// `on_response` does not see: CORS headers, so a browser lets the page read a 401 or a
    /// 429. Called with the client's request, whatever plugins ran before. Default: none.
    fn answer_headers(
        &self,
        _req: &RequestHeader,
        _cx: &PluginCtx,
    ) -> Vec<(http::HeaderName, http::HeaderValue)> {
        Vec::new()
    }

    /// Runs once the config this instance belongs to is valid and about to serve, before it
    /// takes its first request; it may be called again (for an instance a reload kept) and
    /// must then do nothing. Building an instance only checks its config: a config that is
    /// validated (`portico -t`) or rejected on reload never starts anything, so background
    /// work (a JWKS fetcher, say) starts here. Default: nothing to start.
    fn start(&self) {}

    /// What this instance adds to the description of the routes that use it
    /// (`GET /openapi.json`). Default: nothing (a plugin that only edits headers).
    fn doc(&self) -> Option<PluginDoc> {
        None
    }
}
