//! `kind = "graphql_guard"`: hold GraphQL requests to limits before they reach a GraphQL
//! upstream. Each request is read (a GET's query string, a POST's whole body), parsed, and
//! checked: size, depth, aliases, estimated cost, introspection, and, with
//! `persisted_queries`, the allow-list. An allowed request is forwarded unchanged, byte for
//! byte; a refused one is answered here in GraphQL's own error format (`graphql::answer`:
//! 400 in `application/graphql-response+json`, 200 in `application/json`, as the client's
//! `Accept` asks) and never reaches the upstream.
//!
//! Methods: GraphQL over HTTP has GET (queries only; a mutation over GET is answered 405) and
//! POST. `OPTIONS` passes untouched (it runs nothing, and a CORS preflight must get through);
//! every other method is answered 405 here, since an upstream that ran a GraphQL document from
//! a PUT would run it unchecked. A WebSocket upgrade (GraphQL over WebSocket, subscriptions) is
//! refused for the same reason: what crosses the socket afterwards is not seen.
//!
//! A POST body is held whole to be checked (`max_query_size` twice over plus 4 KiB for the
//! JSON around the query, at most 64 KiB: what the drivers can replay upstream from the
//! session's retry buffer). A client that sends `Expect: 100-continue` is answered 100 here,
//! and the upstream gets the request without the expectation.
//!
//! Persisted queries: a listed query passes by its full text, or by its APQ hash alone. The
//! request is forwarded as sent (a hash alone stays a hash alone): the guard does not rewrite
//! bodies, and an upstream that does not know the hash says `PERSISTED_QUERY_NOT_FOUND`, on
//! which APQ clients send the full text, which the guard then checks and lets through.
//! Without a list, an APQ hash must come with its query: a hash alone is refused with
//! `PERSISTED_QUERY_NOT_SUPPORTED` (a guard cannot check what it cannot see), and clients
//! then send the query.
//!
//! Counted in `portico_graphql_operations_total{route,operation,result}`: `ok` (forwarded),
//! `refused` (a limit, introspection, the persisted list) or `invalid` (not a GraphQL request
//! that could be checked). The operation's name goes to the access log.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, CONTENT_TYPE, EXPECT, UPGRADE};
use http::{HeaderValue, Method, StatusCode};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use serde::Deserialize;

use crate::graphql::limits::{
    self, DEFAULT_MAX_ALIASES, DEFAULT_MAX_COMPLEXITY, DEFAULT_MAX_DEPTH, DEFAULT_MAX_QUERY_SIZE,
};
use crate::graphql::{
    answer, code, query_of, receive, request, GraphqlRequest, Limits, MediaType, OperationNames,
    PersistedQueries, Received, Refusal,
};
use crate::metrics::PluginMetrics;
use crate::units::ByteSize;
use crate::{Answer, ErrorCode, Flow, Plugin, PluginCtx, PluginDoc, PluginError, Rejection};

/// What a request body may hold at most: the request is buffered whole so that both drivers
/// can forward it unchanged, and they replay what was read from the session's retry buffer,
/// which Pingora caps at 64 KiB (past it, the buffer is dropped and the body would be lost).
const MAX_BODY: usize = 64 * 1024;

/// Room in a body for the JSON around its query (`variables`, `extensions`, escapes).
const BODY_ROOM: usize = 4 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlGuardConfig {
    #[serde(default = "max_depth")]
    pub max_depth: usize,
    #[serde(default = "max_complexity")]
    pub max_complexity: usize,
    #[serde(default = "max_aliases")]
    pub max_aliases: usize,
    /// The longest query text, as a size; 16 KiB by default.
    #[serde(default)]
    pub max_query_size: Option<ByteSize>,
    #[serde(default)]
    pub introspection: bool,
    /// A JSON file of sha256 hash to query: the only queries allowed.
    #[serde(default)]
    pub persisted_queries: Option<String>,
}

fn max_depth() -> usize {
    DEFAULT_MAX_DEPTH
}
fn max_complexity() -> usize {
    DEFAULT_MAX_COMPLEXITY
}
fn max_aliases() -> usize {
    DEFAULT_MAX_ALIASES
}

pub struct GraphqlGuardPlugin {
    limits: Limits,
    persisted: Option<PersistedQueries>,
    /// Labels for operation names when there is no persisted list to bound them.
    names: OperationNames,
    metrics: Arc<PluginMetrics>,
    /// The largest POST body read: room for the largest query and the JSON around it.
    max_body: usize,
}

/// Marks a request whose body the guard has read: the `Expect: 100-continue` it answered
/// itself is not sent upstream.
#[derive(Clone)]
struct BodyRead;

/// How a request ended at the guard.
enum Outcome {
    Allowed,
    Refused(Refusal),
    /// A mutation over GET, or a method GraphQL over HTTP does not have: 405, with `Allow`.
    MethodNotAllowed(Refusal, &'static str),
}

impl GraphqlGuardPlugin {
    pub fn new(
        config: GraphqlGuardConfig,
        metrics: Arc<PluginMetrics>,
    ) -> Result<GraphqlGuardPlugin, String> {
        let max_query_size = match config.max_query_size {
            None => DEFAULT_MAX_QUERY_SIZE,
            Some(ByteSize(size)) => usize::try_from(size).unwrap_or(usize::MAX),
        };
        if max_query_size == 0 || max_query_size > MAX_BODY - BODY_ROOM {
            return Err(format!(
                "max_query_size must be between 1B and {}KiB: the request is held whole to check it",
                (MAX_BODY - BODY_ROOM) / 1024
            ));
        }
        if config.max_depth == 0 || config.max_complexity == 0 {
            return Err("max_depth and max_complexity must be at least 1".into());
        }
        let persisted = config
            .persisted_queries
            .as_deref()
            .map(|path| PersistedQueries::load(std::path::Path::new(path)))
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(GraphqlGuardPlugin {
            limits: Limits {
                max_depth: config.max_depth,
                max_complexity: config.max_complexity,
                max_aliases: config.max_aliases,
                max_query_size,
                introspection: config.introspection,
            },
            persisted,
            names: OperationNames::default(),
            metrics,
            max_body: max_query_size
                .saturating_mul(2)
                .saturating_add(BODY_ROOM)
                .min(MAX_BODY),
        })
    }

    /// Read and check the request. `Ok(None)`: not the guard's to check (OPTIONS).
    async fn examine(
        &self,
        session: &mut Session,
        cx: &mut PluginCtx,
        name: &mut Option<String>,
    ) -> Result<Option<Outcome>, Flow> {
        let req = session.req_header();
        let method = req.method.clone();
        if method == Method::OPTIONS {
            return Ok(None);
        }
        let websocket = req
            .headers
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
            });
        if websocket {
            return Ok(Some(Outcome::Refused(Refusal::new(
                code::BAD_REQUEST,
                "graphql_guard does not let WebSocket upgrades through: what crosses the socket could not be checked",
            ))));
        }
        if method == Method::POST {
            // The body read here is all there: the upstream is not asked to send a 100.
            cx.extensions.insert(BodyRead);
        }
        let graphql = match receive(session, self.max_body, self.limits.max_query_size, true)
            .await
            .map_err(internal)?
        {
            Received::Request(graphql) => graphql,
            Received::Refused(refusal) => return Ok(Some(Outcome::Refused(refusal))),
            Received::MethodNotAllowed(refusal, allow) => {
                return Ok(Some(Outcome::MethodNotAllowed(refusal, allow)))
            }
            Received::BodyFailed(code) => {
                return Err(Flow::Reject(Rejection::new(
                    code,
                    "the request body did not arrive whole",
                )))
            }
        };
        name.clone_from(&graphql.operation_name);
        Ok(Some(self.check(&graphql, &method, name)))
    }

    fn check(
        &self,
        graphql: &GraphqlRequest,
        method: &Method,
        name: &mut Option<String>,
    ) -> Outcome {
        let query = match query_of(self.persisted.as_ref(), graphql) {
            Ok(query) => query,
            Err(refusal) => return Outcome::Refused(refusal),
        };
        let (operation, checked) = limits::check_named(
            query,
            graphql.operation_name.as_deref(),
            &graphql.variables,
            &self.limits,
            None,
        );
        *name = operation;
        match checked {
            Ok(checked) => {
                if *method == Method::GET && !request::runs_over_get(checked.operation_type) {
                    return Outcome::MethodNotAllowed(
                        request::refused_over_get(checked.operation_type),
                        "POST",
                    );
                }
                Outcome::Allowed
            }
            Err(refusal) => Outcome::Refused(refusal),
        }
    }

    /// The label for `name`: what the persisted list knows, or one of the first names seen.
    /// A refused request only reuses a label, so refusals cannot fill the set.
    fn label(&self, name: Option<&str>, admit: bool) -> Arc<str> {
        let Some(name) = name else {
            return self.names.unnamed();
        };
        match &self.persisted {
            Some(list) => list
                .operation_name(name)
                .unwrap_or_else(|| self.names.unnamed()),
            None if admit => self.names.label(name),
            None => self.names.known(name),
        }
    }

    fn count(&self, route: &str, operation: &str, result: &str) {
        self.metrics
            .graphql_operations
            .with_label_values(&[route, operation, result])
            .inc();
    }
}

fn internal(e: Box<pingora_error::Error>) -> Flow {
    Flow::Reject(Rejection::new(
        ErrorCode::Internal,
        format!("graphql_guard: {e}"),
    ))
}

/// A GraphQL name, which is safe to log; anything else a client sent as `operationName` is not
/// logged.
fn is_graphql_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 256
        && bytes
            .next()
            .is_some_and(|b| b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

fn errors_answer(
    status: u16,
    media: MediaType,
    refusal: &Refusal,
    allow: Option<&'static str>,
) -> Answer {
    let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static(media.content_type()))];
    if let Some(allow) = allow {
        headers.push((ALLOW, HeaderValue::from_static(allow)));
    }
    Answer {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        headers,
        body: Bytes::from(answer::errors_body(std::slice::from_ref(refusal))),
    }
}

#[async_trait]
impl Plugin for GraphqlGuardPlugin {
    async fn on_request(
        &self,
        session: &mut Session,
        cx: &mut PluginCtx,
    ) -> Result<Flow, PluginError> {
        let media = MediaType::from_accept(
            session
                .req_header()
                .headers
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok()),
        );
        let mut name = None;
        let outcome = match self.examine(session, cx, &mut name).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) => return Ok(Flow::Continue),
            Err(flow) => return Ok(flow),
        };
        let name = name.filter(|n| is_graphql_name(n));
        let allowed = matches!(outcome, Outcome::Allowed);
        let label = self.label(name.as_deref(), allowed);
        cx.graphql_operation = name.map(|n| {
            if *label == *n {
                label.clone()
            } else {
                Arc::from(n)
            }
        });
        let (refusal, status, allow) = match outcome {
            Outcome::Allowed => {
                self.count(&cx.route, &label, "ok");
                return Ok(Flow::Continue);
            }
            Outcome::Refused(refusal) => {
                let status = answer::refusal_status(media);
                (refusal, status, None)
            }
            Outcome::MethodNotAllowed(refusal, allow) => {
                (refusal, answer::MUTATION_OVER_GET_STATUS, Some(allow))
            }
        };
        let result = if refusal.is_invalid() {
            "invalid"
        } else {
            "refused"
        };
        self.count(&cx.route, &label, result);
        Ok(Flow::Respond(errors_answer(status, media, &refusal, allow)))
    }

    async fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        cx: &mut PluginCtx,
    ) -> Result<(), PluginError> {
        if cx.extensions.get::<BodyRead>().is_some() {
            // Answered with a 100 already, and the body is all there.
            req.remove_header(&EXPECT);
        }
        Ok(())
    }

    fn doc(&self) -> Option<PluginDoc> {
        Some(PluginDoc::GraphqlGuard {
            max_depth: self.limits.max_depth,
            max_complexity: self.limits.max_complexity,
            max_aliases: self.limits.max_aliases,
            max_query_size: self.limits.max_query_size,
            introspection: self.limits.introspection,
            persisted_queries: self.persisted.as_ref().map(PersistedQueries::len),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(extra: &str) -> Result<GraphqlGuardPlugin, String> {
        let config: GraphqlGuardConfig = toml::from_str(extra).map_err(|e| e.to_string())?;
        let metrics = Arc::new(PluginMetrics::unregistered().map_err(|e| e.to_string())?);
        GraphqlGuardPlugin::new(config, metrics)
    }

    fn post(query: &str) -> GraphqlRequest {
        GraphqlRequest {
            query: Some(query.into()),
            ..GraphqlRequest::default()
        }
    }

    #[test]
    fn the_config_has_the_spec_defaults_and_bounds() {
        let g = guard("").unwrap();
        assert_eq!(g.limits, Limits::default());
        assert_eq!(g.max_body, 2 * 16 * 1024 + 4096);
        let g = guard("max_depth = 3\nmax_query_size = \"60KiB\"\nintrospection = true").unwrap();
        assert_eq!(g.limits.max_depth, 3);
        assert_eq!(
            g.max_body, MAX_BODY,
            "never past what the drivers can replay"
        );
        assert!(g.limits.introspection);
        for bad in [
            "max_query_size = \"61KiB\"",
            "max_query_size = \"0B\"",
            "max_depth = 0",
        ] {
            assert!(guard(bad).is_err(), "{bad}");
        }
        assert!(guard("max_dept = 3")
            .err()
            .unwrap()
            .contains("unknown field"));
        let missing = guard("persisted_queries = \"/nonexistent/pq.json\"")
            .err()
            .unwrap();
        assert!(missing.contains("/nonexistent/pq.json"), "{missing}");
    }

    #[test]
    fn checks_decide_allowed_refused_and_405() {
        let g = guard("max_depth = 2").unwrap();
        let mut name = None;
        assert!(matches!(
            g.check(&post("query Q { a }"), &Method::POST, &mut name),
            Outcome::Allowed
        ));
        assert_eq!(name.as_deref(), Some("Q"));
        assert!(matches!(
            g.check(&post("{ a { b { c } } }"), &Method::POST, &mut name),
            Outcome::Refused(r) if r.code == code::MAX_DEPTH_EXCEEDED
        ));
        assert!(matches!(
            g.check(&post("{ a }"), &Method::GET, &mut name),
            Outcome::Allowed
        ));
        assert!(matches!(
            g.check(&post("mutation M { a }"), &Method::GET, &mut name),
            Outcome::MethodNotAllowed(r, "POST") if r.code == code::BAD_REQUEST
        ));
        let hash_only = GraphqlRequest {
            persisted_hash: Some(crate::graphql::persisted::sha256_hex("{ a }")),
            ..GraphqlRequest::default()
        };
        assert!(matches!(
            g.check(&hash_only, &Method::POST, &mut name),
            Outcome::Refused(r) if r.code == code::PERSISTED_QUERY_NOT_SUPPORTED
        ));
    }

    #[test]
    fn labels_are_bounded_and_refusals_do_not_add_names() {
        let g = guard("").unwrap();
        assert_eq!(&*g.label(Some("Seen"), false), "");
        assert_eq!(&*g.label(Some("Seen"), true), "Seen");
        assert_eq!(&*g.label(Some("Seen"), false), "Seen");
        assert_eq!(&*g.label(None, true), "");
    }

    #[test]
    fn only_graphql_names_are_logged() {
        for (name, ok) in [
            ("UserOrders", true),
            ("_x1", true),
            ("1x", false),
            ("", false),
            ("a b", false),
            ("é", false),
        ] {
            assert_eq!(is_graphql_name(name), ok, "{name}");
        }
        assert!(!is_graphql_name(&"a".repeat(257)));
    }

    #[test]
    fn a_refusal_is_a_graphql_errors_document() {
        let refusal = Refusal::new(
            code::MAX_DEPTH_EXCEEDED,
            "query depth 3 exceeds max_depth 2",
        );
        let a = errors_answer(400, MediaType::GraphqlResponse, &refusal, None);
        assert_eq!(a.status, 400);
        assert_eq!(a.headers[0].1, "application/graphql-response+json");
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["errors"][0]["extensions"]["code"], "MAX_DEPTH_EXCEEDED");
        let a = errors_answer(405, MediaType::Json, &refusal, Some("POST"));
        assert_eq!(a.headers[1], (ALLOW, HeaderValue::from_static("POST")));
    }
}
