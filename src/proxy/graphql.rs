//! Answering a route that serves a GraphQL schema (`graphql = "NAME"`), by the GraphQL over
//! HTTP spec: read the request (GET or POST), resolve a persisted query, hold the query to
//! the edge limits before any upstream is called, execute it within the route's deadline,
//! and answer in GraphQL's own format: `data` and `errors`, with the media type the client
//! accepts (`application/graphql-response+json` when it does, else `application/json`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::parser::types::ExecutableDocument;
use bytes::Bytes;
use http::Method;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use portico_plugins::graphql::{self as edge, code, MediaType, Received, Refusal};

use super::ctx::RequestCtx;
use super::forwarding::{edit_request_headers, gateway_request_headers, TRACEPARENT, X_REQUEST_ID};
use super::Portico;
use crate::graphql::execute::QueryState;
use crate::graphql::GraphqlSchema;
use crate::snapshot::Route;

/// A query's whole deadline when its route sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How an operation ended: the `result` of `portico_graphql_operations_total`.
#[derive(Clone, Copy)]
enum Outcome {
    Ok,
    Partial,
    Error,
    Invalid,
    Refused,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Partial => "partial",
            Outcome::Error => "error",
            Outcome::Invalid => "invalid",
            Outcome::Refused => "refused",
        }
    }
}

/// An answer ready to write: its status, and the GraphQL response document.
struct Reply {
    status: u16,
    body: Vec<u8>,
    outcome: Outcome,
    operation: Option<Arc<str>>,
}

impl Portico {
    /// Answer the request with `schema`. `Ok(true)`: answered.
    pub(super) async fn answer_graphql(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        schema: &Arc<GraphqlSchema>,
    ) -> Result<bool> {
        let media = MediaType::from_accept(
            session
                .req_header()
                .headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok()),
        );
        let reply = match self.run_graphql(session, ctx, route, schema).await? {
            Ok(reply) => reply,
            Err((refusal, status)) => Reply {
                status: status.unwrap_or_else(|| edge::refusal_status(media)),
                outcome: if refusal.is_invalid() {
                    Outcome::Invalid
                } else {
                    Outcome::Refused
                },
                body: edge::errors_body(&[refusal]),
                operation: None,
            },
        };
        let label = reply
            .operation
            .clone()
            .unwrap_or_else(|| schema.operations.unnamed());
        self.state
            .metrics
            .plugins
            .graphql_operations
            .with_label_values(&[&route.name, &label, reply.outcome.as_str()])
            .inc();
        let mut resp = ResponseHeader::build(reply.status, Some(4))?;
        resp.insert_header(http::header::CONTENT_TYPE, media.content_type())?;
        resp.insert_header(http::header::CONTENT_LENGTH, reply.body.len())?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        if reply.status == 405 {
            resp.insert_header(http::header::ALLOW, "GET, POST")?;
        }
        if ctx.trace.is_some() {
            resp.insert_header(TRACEPARENT, ctx.traceparent.clone())?;
        }
        let id = ctx.id().to_string();
        if let Some(routed) = ctx.routed.as_mut() {
            routed.plugin_cx.graphql_operation = reply.operation;
            // The route's plugins see the answer as they see a proxied one.
            for (name, plugin) in route.plugins.iter().rev() {
                if let Err(e) = plugin.on_response(&mut resp, &mut routed.plugin_cx).await {
                    log::error!("plugin {name} failed on response {id}: {e}");
                }
            }
        }
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(reply.body)), true)
            .await?;
        Ok(true)
    }

    /// Read, check and execute the request. `Err` inside: a request error, with its status
    /// when it is not the usual one for the media type (405).
    async fn run_graphql(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        schema: &Arc<GraphqlSchema>,
    ) -> Result<std::result::Result<Reply, (Refusal, Option<u16>)>> {
        let limits = &schema.limits;
        let method = session.req_header().method.clone();
        // The JSON around a query adds to its size; past twice the limit it is not one.
        let most = limits.max_query_size.saturating_mul(2).saturating_add(4096);
        let request = match edge::receive(session, most, limits.max_query_size, false).await? {
            Received::Request(request) => request,
            Received::Refused(refusal) => return Ok(Err((refusal, None))),
            Received::MethodNotAllowed(refusal, _) => return Ok(Err((refusal, Some(405)))),
            Received::BodyFailed(code) => return Ok(Err((body_failed(code), Some(code.status())))),
        };
        let query = match edge::query_of(schema.persisted.as_ref(), &request) {
            Ok(q) => q,
            Err(refusal) => return Ok(Err((refusal, None))),
        };
        // A text that passed full validation before is not parsed or validated again
        // (`graphql::documents`); its operation is measured again, for its variables.
        let known = schema.documents.get(query);
        let checked = match &known {
            Some(document) => edge::check_document(
                ExecutableDocument::clone(document),
                request.operation_name.as_deref(),
                &request.variables,
                limits,
                Some(&schema.model),
            ),
            None => edge::check(
                query,
                request.operation_name.as_deref(),
                &request.variables,
                limits,
                Some(&schema.model),
            ),
        };
        let checked = match checked {
            Ok(c) => c,
            Err(refusal) => return Ok(Err((refusal, None))),
        };
        if method == Method::GET && !edge::request::runs_over_get(checked.operation_type) {
            let refusal = edge::request::refused_over_get(checked.operation_type);
            return Ok(Err((refusal, Some(405))));
        }
        let operation = checked.operation_name.clone();
        let state = self.query_state(session, ctx, route)?;
        let mut gql = async_graphql::Request::new(query.to_string())
            .variables(async_graphql::Variables::from_json(
                serde_json::Value::Object(request.variables.clone()),
            ))
            .data(state);
        if let Some(name) = &request.operation_name {
            gql = gql.operation_name(name.clone());
        }
        let to_keep = known.is_none().then(|| checked.document.clone());
        gql.set_parsed_query(checked.document);
        let engine = match known {
            Some(_) => &schema.fast,
            None => &schema.schema,
        };
        let timeout = route.timeout.unwrap_or(DEFAULT_TIMEOUT);
        // Every call is bounded by the deadline already; this only bounds the engine.
        let response =
            tokio::time::timeout(timeout + Duration::from_millis(50), engine.execute(gql)).await;
        let Ok(response) = response else {
            let refusal = Refusal::new("TIMEOUT", "the query's deadline passed");
            return Ok(Err((refusal, Some(504))));
        };
        // A request error (validation) has no path and no data: the query never ran.
        let never_ran = response.data == async_graphql::Value::Null
            && response.errors.iter().all(|e| e.path.is_empty());
        if never_ran && !response.errors.is_empty() {
            let message = response
                .errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            return Ok(Err((
                Refusal::new(code::GRAPHQL_VALIDATION_FAILED, message),
                None,
            )));
        }
        if let Some(document) = to_keep {
            schema.documents.insert(query, document);
        }
        let outcome = match (response.errors.is_empty(), &response.data) {
            (true, _) => Outcome::Ok,
            (false, async_graphql::Value::Null) => Outcome::Error,
            (false, _) => Outcome::Partial,
        };
        // Only an operation that passed validation names its label (bounded all the same).
        let operation = operation.map(|name| schema.operations.label(&name));
        Ok(Ok(Reply {
            status: 200,
            body: serde_json::to_vec(&response).unwrap_or_default(),
            outcome,
            operation,
        }))
    }

    /// What the query's resolvers share: the request's identity, headers and deadline.
    fn query_state(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        route: &Route,
    ) -> Result<QueryState> {
        let req = session.req_header();
        let captures = route.pattern.captures(req.uri.path()).unwrap_or_default();
        // Every call carries the headers a proxied request would: X-Forwarded-*, the request
        // id and the trace context, set once here.
        let mut base = req.clone();
        edit_request_headers(&mut base, 7, |headers| {
            gateway_request_headers(headers, session, ctx)
        })?;
        let timeout = route.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let Some(routed) = ctx.routed.as_ref() else {
            return Err(pingora_error::Error::explain(
                pingora_error::ErrorType::InternalError,
                "a GraphQL query outside its route",
            ));
        };
        Ok(QueryState::new(
            Arc::clone(&self.state),
            ctx.span_parent(),
            Instant::now() + timeout,
            base,
            captures,
            &routed.plugin_cx,
            route.plugins.clone(),
        ))
    }
}

/// The GraphQL error of a body the client did not send whole (the connection then closes).
fn body_failed(code: portico_plugins::ErrorCode) -> Refusal {
    let message = match code {
        portico_plugins::ErrorCode::RequestTimeout => "the request body did not arrive in time",
        _ => "the request body did not arrive whole",
    };
    Refusal::new(code::BAD_REQUEST, message)
}
