//! `GET /openapi.json` on the admin listener: an OpenAPI 3.1 document of the public routes,
//! made from the config that serves now. For each route: its path as a template, with its
//! captures as path parameters; its methods; the credentials its plugins demand (security
//! schemes from `jwt` and `api_key`); and what it answers: the upstream's answer, a composed
//! JSON object, and the problem+json errors Portico itself may give on it, with their codes
//! and headers (`RateLimit-*`, `Retry-After`, `WWW-Authenticate`).
//!
//! Choices the document makes:
//! - A route matches its path and everything under it (prefix match). The document lists
//!   the path as written and says so in the description; OpenAPI has no prefix paths.
//! - A route without `methods` takes any method: it is listed with GET, HEAD, POST, PUT,
//!   PATCH and DELETE (`ANY_METHOD`), and marked `x-portico-any-method`.
//! - Two routes with the same path and method (told apart by host or headers) share one
//!   operation, the first route's; the description names the others.
//! - A JWT route's required scopes are listed in its security requirement, as OpenAPI 3.1
//!   allows for schemes other than OAuth2 ("role names").
//!
//! Built on demand from the snapshot: the admin listener is off the request path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use http::Method;
use portico_plugins::{ErrorCode, PluginDoc};
use serde_json::{json, Map, Value};

use crate::router::{HostMatch, RouteMatcher};
use crate::snapshot::{Route, Snapshot};

/// The methods a route without `methods` is listed with.
const ANY_METHOD: [&str; 6] = ["get", "head", "post", "put", "patch", "delete"];

/// The errors Portico answers itself on a route, with what each means there.
const ROUTE_ERRORS: [(ErrorCode, &str); 11] = [
    (
        ErrorCode::BadRequest,
        "The request is malformed: a path that could mean another path (`..`, encoded `/`, `//`), a bad header",
    ),
    (
        ErrorCode::Unauthorized,
        "No credentials, or credentials that are not valid",
    ),
    (
        ErrorCode::Forbidden,
        "The credentials lack a required scope, or the client address is refused",
    ),
    (
        ErrorCode::PayloadTooLarge,
        "The request body is larger than the route takes",
    ),
    (
        ErrorCode::RateLimited,
        "Over the rate limit; `Retry-After` says when to try again",
    ),
    (
        ErrorCode::MethodNotAllowed,
        "The path is served, but not for this method",
    ),
    (
        ErrorCode::Internal,
        "The gateway failed in a way that is not the client's fault",
    ),
    (
        ErrorCode::BadGateway,
        "The upstream answered with something that is not HTTP, or a required part of a composition failed",
    ),
    (
        ErrorCode::UpstreamUnavailable,
        "No healthy upstream target, or its circuit is open; `Retry-After` says when to try again",
    ),
    (
        ErrorCode::UpstreamTimeout,
        "The upstream did not answer in time",
    ),
    (ErrorCode::NoRoute, "No route takes this request"),
];

/// Every `code` a problem answer may carry (SPEC.md), for the schema's enum.
const ALL_CODES: [ErrorCode; 14] = [
    ErrorCode::NoRoute,
    ErrorCode::MethodNotAllowed,
    ErrorCode::BadRequest,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::PayloadTooLarge,
    ErrorCode::RateLimited,
    ErrorCode::UpstreamUnavailable,
    ErrorCode::BadGateway,
    ErrorCode::UpstreamTimeout,
    ErrorCode::Internal,
    ErrorCode::RequestTimeout,
    ErrorCode::UriTooLong,
    ErrorCode::HeaderTooLarge,
];

/// The document for the config `snapshot`, the `generation`-th loaded.
pub fn document(snapshot: &Snapshot, generation: u64) -> Value {
    let mut schemes = Map::new();
    let mut paths = Paths::default();
    for (matcher, route) in snapshot.routes.entries() {
        let described = describe(snapshot, matcher, route, &mut schemes);
        paths.add(matcher, route, described);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Portico public routes",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "The routes of the config Portico serves now (generation {generation}), made from it by `GET /openapi.json` on the admin listener. \
                 A route matches its path and everything under it. Every error Portico answers itself is RFC 9457 `application/problem+json` \
                 with a stable `code`; answers relayed from an upstream are the upstream's own. \
                 Besides the errors listed per route, any request may get 408 `request_timeout`, 414 `uri_too_long` or 431 `header_too_large` \
                 when its head is too slow or too large."
            ),
        },
        "servers": servers(snapshot, &HostMatch::Any),
        "paths": paths.into_value(),
        "components": {
            "schemas": { "Problem": problem_schema() },
            "headers": headers(),
            "responses": error_responses(),
            "securitySchemes": schemes,
        },
        "x-portico-generation": generation,
    })
}

/// The operation of one route, and where it is reached.
struct Described {
    operation: Map<String, Value>,
    /// A CORS preflight operation, when the route has a `cors` plugin.
    preflight: Option<Value>,
}

fn describe(
    snapshot: &Snapshot,
    matcher: &RouteMatcher,
    route: &Route,
    schemes: &mut Map<String, Value>,
) -> Described {
    let docs: Vec<(&str, PluginDoc)> = route
        .plugins
        .iter()
        .filter_map(|(name, plugin)| plugin.doc().map(|doc| (&**name, doc)))
        .collect();
    let mut errors: BTreeSet<u16> = [400, 500].into_iter().collect();
    let mut rate_limited = false;
    let mut requirement: Vec<Vec<(String, Vec<String>)>> = vec![Vec::new()];
    let mut notes = Vec::new();
    for (name, doc) in &docs {
        match doc {
            PluginDoc::BearerJwt {
                algorithms,
                issuers,
                audiences,
                required_scopes,
            } => {
                let scheme = component_name(name);
                schemes.insert(
                    scheme.clone(),
                    jwt_scheme(name, algorithms, issuers, audiences),
                );
                errors.insert(401);
                if !required_scopes.is_empty() {
                    errors.insert(403);
                }
                and_one_of(&mut requirement, vec![(scheme, required_scopes.clone())]);
            }
            PluginDoc::ApiKey { header, query } => {
                let scheme = component_name(name);
                schemes.insert(
                    scheme.clone(),
                    json!({
                        "type": "apiKey", "in": "header", "name": header,
                        "description": format!("plugin \"{name}\": the API key of one of the configured consumers"),
                    }),
                );
                let mut either = vec![(scheme.clone(), Vec::new())];
                if let Some(query) = query {
                    let in_query = format!("{scheme}.query");
                    schemes.insert(
                        in_query.clone(),
                        json!({
                            "type": "apiKey", "in": "query", "name": query,
                            "description": format!("plugin \"{name}\": the same API key as a query parameter, removed before the request goes upstream"),
                        }),
                    );
                    either.push((in_query, Vec::new()));
                }
                errors.insert(401);
                and_one_of(&mut requirement, either);
            }
            PluginDoc::RateLimit {
                limit,
                window,
                key,
                limits_by_tier,
            } => {
                rate_limited = true;
                errors.insert(429);
                let tiers: Vec<String> = limits_by_tier
                    .iter()
                    .map(|(tier, l)| format!("{tier}: {l}"))
                    .collect();
                let tiers = if tiers.is_empty() {
                    String::new()
                } else {
                    format!(" (by tier: {})", tiers.join(", "))
                };
                notes.push(format!(
                    "Rate limited by \"{name}\": {limit} requests per {window} for each {key}{tiers}."
                ));
            }
            PluginDoc::IpFilter => {
                errors.insert(403);
                notes.push(format!(
                    "Only some client addresses are admitted (\"{name}\")."
                ));
            }
            PluginDoc::GraphqlGuard {
                max_depth,
                max_complexity,
                max_aliases,
                max_query_size,
                introspection,
                persisted_queries,
            } => {
                errors.insert(405);
                let introspection = if *introspection { "allowed" } else { "refused" };
                let list = persisted_queries.map_or(String::new(), |n| {
                    format!(" Only the {n} persisted queries are allowed, by text or APQ hash.")
                });
                notes.push(format!(
                    "GraphQL requests are checked by \"{name}\": max_depth {max_depth}, max_complexity {max_complexity}, max_aliases {max_aliases}, max_query_size {max_query_size} bytes, introspection {introspection}.{list} Refusals are GraphQL errors documents: 400 as application/graphql-response+json, 200 as application/json, as Accept asks."
                ));
            }
            PluginDoc::Cors { .. } => {}
        }
    }
    if route.max_request_body > 0 {
        errors.insert(413);
    }
    let mut responses = Map::new();
    let success_headers = success_headers(route, rate_limited);
    let mut what = Vec::new();
    if let Some(compose) = &route.compose {
        errors.insert(502);
        let mut properties = Map::new();
        let mut required = Vec::new();
        let mut parts = Vec::new();
        for call in &compose.calls {
            let answer = if call.fans_out() {
                "an array of the answers of upstream"
            } else {
                "the answer of upstream"
            };
            let failed = if call.required {
                "required: when it fails, the whole answer is a 502 naming it"
            } else {
                "null when it failed (then listed in `_errors` and in `Portico-Incomplete`)"
            };
            let mut schema = json!({
                "description": format!("{answer} \"{}\"; {failed}", call.upstream.name),
            });
            if call.fans_out() {
                schema["type"] = json!(if call.required {
                    json!("array")
                } else {
                    json!(["array", "null"])
                });
            }
            properties.insert(call.key.to_string(), schema);
            required.push(call.key.to_string());
            parts.push(format!("`{}`", call.key));
        }
        properties.insert(
            "_errors".into(),
            json!({
                "type": "object",
                "description": "present when an optional part failed: why, by key",
                "additionalProperties": {
                    "type": "object",
                    "properties": { "status": { "type": "integer" }, "code": { "type": "string" } },
                },
            }),
        );
        let mut headers = success_headers.clone();
        headers.insert(
            "Portico-Incomplete".into(),
            json!({
                "description": "the keys of the optional parts that failed, comma-separated",
                "schema": { "type": "string" },
            }),
        );
        responses.insert(
            "200".into(),
            json!({
                "description": format!("One JSON object composed from the answers of its calls: {}", parts.join(", ")),
                "headers": headers,
                "content": { "application/json": { "schema": {
                    "type": "object",
                    "properties": properties,
                    "required": required,
                } } },
            }),
        );
        what.push(format!(
            "Composed: Portico calls {} and answers one JSON object.",
            describe_calls(route)
        ));
    } else if let Some(schema) = &route.graphql {
        // GraphQL answers are GraphQL's own documents, never problems (SPEC.md).
        let document = json!({
            "type": "object",
            "properties": {
                "data": { "description": "the query's answer; a failed nullable field is null" },
                "errors": { "type": "array", "items": { "type": "object", "properties": {
                    "message": { "type": "string" },
                    "path": { "type": "array" },
                    "extensions": { "type": "object", "properties": { "code": { "type": "string" } } },
                } } },
            },
        });
        let content = json!({
            "application/graphql-response+json": { "schema": document },
            "application/json": { "schema": document },
        });
        responses.insert(
            "200".into(),
            json!({
                "description": "The query's answer (with `errors` for the fields that failed); for a client that accepts only application/json, also a refused or invalid query",
                "headers": success_headers.clone(),
                "content": content,
            }),
        );
        responses.insert(
            "400".into(),
            json!({
                "description": "A query that is not valid or that a limit refused, as application/graphql-response+json: `errors` and no `data`",
                "content": content,
            }),
        );
        what.push(format!(
            "GraphQL: Portico serves the schema \"{}\" here (POST a JSON body with `query`, `operationName`, `variables`; or GET with them in the query string, queries only) and resolves its fields by calls to its upstreams. Limits: max_depth {}, max_complexity {}, max_aliases {}, max_query_size {} bytes, introspection {}.",
            schema.name,
            schema.limits.max_depth,
            schema.limits.max_complexity,
            schema.limits.max_aliases,
            schema.limits.max_query_size,
            if schema.limits.introspection { "on" } else { "off" },
        ));
    } else {
        errors.extend([502, 503, 504]);
        if route.tunnel_idle_timeout.is_some() {
            responses.insert(
                "101".into(),
                json!({ "description": "Upgraded to a WebSocket (GET with `Upgrade: websocket`), relayed to the upstream" }),
            );
        }
        responses.insert(
            "2XX".into(),
            json!({
                "description": "The upstream's answer, relayed",
                "headers": success_headers.clone(),
            }),
        );
        responses.insert(
            "default".into(),
            json!({ "description": "Any other answer of the upstream, relayed as it came" }),
        );
        what.push(match (&route.upstream, &route.split) {
            (_, Some(split)) => {
                let variants: Vec<String> = split
                    .upstreams()
                    .map(|(u, weight)| format!("\"{}\" (weight {weight})", u.name))
                    .collect();
                format!("Proxied to one of {}.", variants.join(", "))
            }
            (Some(upstream), None) => format!("Proxied to upstream \"{}\".", upstream.name),
            (None, None) => "Answered by Portico.".into(),
        });
    }
    if let Some(fallback) = &route.fallback {
        // The route answers with its stand-in instead of these three.
        for status in [502, 503, 504] {
            errors.remove(&status);
        }
        let content_type = fallback
            .content_type
            .to_str()
            .unwrap_or("application/octet-stream");
        responses.insert(
            fallback.status.as_u16().to_string(),
            json!({
                "description": "The route's fallback answer, given when the upstream cannot answer (down, circuit open, too slow)",
                "content": { content_type: {} },
            }),
        );
    }
    for status in errors {
        if let Some(code) = ROUTE_ERRORS.iter().find(|(c, _)| c.status() == status) {
            responses.insert(
                status.to_string(),
                json!({ "$ref": format!("#/components/responses/{}", code.0.as_str()) }),
            );
        }
    }
    what.push(format!(
        "Matches `{}` and every path under it.",
        matcher.path
    ));
    what.extend(notes);
    let mut parameters: Vec<Value> = matcher
        .path
        .capture_names()
        .into_iter()
        .map(|name| {
            json!({
                "name": name, "in": "path", "required": true,
                "description": "one path segment",
                "schema": { "type": "string" },
            })
        })
        .collect();
    parameters.extend(matcher.headers.iter().map(|(name, value)| {
        json!({
            "name": name.as_str(), "in": "header", "required": true,
            "description": "the route takes only requests with this header value",
            "schema": { "type": "string", "const": value.to_str().unwrap_or_default() },
        })
    }));
    let security: Vec<Value> = requirement
        .into_iter()
        .filter(|all| !all.is_empty())
        .map(|all| {
            Value::Object(
                all.into_iter()
                    .map(|(scheme, scopes)| (scheme, json!(scopes)))
                    .collect(),
            )
        })
        .collect();
    let mut operation = Map::new();
    operation.insert("summary".into(), json!(format!("route \"{}\"", route.name)));
    operation.insert("description".into(), json!(what.join(" ")));
    operation.insert("tags".into(), json!([&*route.name]));
    if !parameters.is_empty() {
        operation.insert("parameters".into(), json!(parameters));
    }
    // An explicit empty list says "no credentials needed" rather than "not described".
    operation.insert("security".into(), json!(security));
    operation.insert("responses".into(), Value::Object(responses));
    if matcher.host != HostMatch::Any {
        operation.insert("servers".into(), json!(servers(snapshot, &matcher.host)));
    }
    operation.insert("x-portico-route".into(), json!(&*route.name));
    let preflight = docs.iter().find_map(|(_, doc)| match doc {
        PluginDoc::Cors { allow_methods } => Some(json!({
            "summary": format!("route \"{}\": CORS preflight", route.name),
            "description": format!(
                "Answered by Portico, never sent upstream. Allowed methods: {}.",
                allow_methods.join(", ")
            ),
            "tags": [&*route.name],
            "security": [],
            "responses": { "204": {
                "description": "The preflight's answer: what the browser may send from an allowed origin",
                "headers": {
                    "Access-Control-Allow-Origin": { "schema": { "type": "string" } },
                    "Access-Control-Allow-Methods": { "schema": { "type": "string" } },
                    "Access-Control-Allow-Headers": { "schema": { "type": "string" } },
                    "Access-Control-Max-Age": { "schema": { "type": "integer" } },
                },
            } },
            "x-portico-route": &*route.name,
        })),
        _ => None,
    });
    Described {
        operation,
        preflight,
    }
}

/// `requirement` (alternatives, each a set of schemes that must all be met) and also one of
/// `either`: every alternative times every choice of `either`.
fn and_one_of(
    requirement: &mut Vec<Vec<(String, Vec<String>)>>,
    either: Vec<(String, Vec<String>)>,
) {
    *requirement = requirement
        .iter()
        .flat_map(|all| {
            either.iter().map(move |one| {
                let mut all = all.clone();
                all.push(one.clone());
                all
            })
        })
        .collect();
}

fn describe_calls(route: &Route) -> String {
    route
        .compose
        .iter()
        .flat_map(|c| &c.calls)
        .map(|call| format!("\"{}\" for `{}`", call.upstream.name, call.key))
        .collect::<Vec<_>>()
        .join(", ")
}

fn jwt_scheme(
    name: &str,
    algorithms: &[String],
    issuers: &[String],
    audiences: &[String],
) -> Value {
    let mut description = format!(
        "plugin \"{name}\": a JWT signed with {}",
        algorithms.join(" or ")
    );
    if !issuers.is_empty() {
        description.push_str(&format!(", issued by {}", issuers.join(" or ")));
    }
    if !audiences.is_empty() {
        description.push_str(&format!(", for audience {}", audiences.join(" or ")));
    }
    description.push_str("; scopes, where listed, are checked against its `scope` or `scp` claim");
    json!({
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": description,
    })
}

/// The headers of a successful answer on `route`.
fn success_headers(route: &Route, rate_limited: bool) -> Map<String, Value> {
    let mut headers = Map::new();
    headers.insert(
        "X-Request-Id".into(),
        json!({ "$ref": "#/components/headers/X-Request-Id" }),
    );
    if rate_limited {
        for name in ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"] {
            headers.insert(
                name.into(),
                json!({ "$ref": format!("#/components/headers/{name}") }),
            );
        }
    }
    if route.cache.is_some() {
        headers.insert(
            "X-Cache".into(),
            json!({
                "description": "how the gateway's cache answered: HIT, MISS, STALE or BYPASS",
                "schema": { "type": "string", "enum": ["HIT", "MISS", "STALE", "BYPASS"] },
            }),
        );
    }
    headers
}

/// Plugin names as component names, which OpenAPI limits to `[a-zA-Z0-9._-]`.
fn component_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where the routes are reached: the public listeners, with `host` as the route's host.
fn servers(snapshot: &Snapshot, host: &HostMatch) -> Vec<Value> {
    let tls = snapshot.tls.as_ref();
    let plain = if tls.is_some_and(|t| t.redirect_http) {
        // Plain listeners only redirect to HTTPS then.
        &[][..]
    } else {
        &snapshot.server.listen[..]
    };
    let secure = tls.map_or(&[][..], |t| &t.listen[..]);
    plain
        .iter()
        .map(|addr| server("http", *addr, host))
        .chain(secure.iter().map(|addr| server("https", *addr, host)))
        .collect()
}

fn server(scheme: &str, addr: SocketAddr, host: &HostMatch) -> Value {
    let port = addr.port();
    let (authority, variables) = match host {
        HostMatch::Exact(name) => (name.clone(), None),
        HostMatch::Wildcard(suffix) => (
            format!("{{subdomain}}{suffix}"),
            Some(json!({ "subdomain": {
                "default": "www",
                "description": format!("any name under {}", suffix.trim_start_matches('.')),
            } })),
        ),
        HostMatch::Any if addr.ip().is_unspecified() => (
            "{host}".into(),
            Some(json!({ "host": {
                "default": "localhost",
                "description": format!("this gateway's address (it listens on {addr})"),
            } })),
        ),
        HostMatch::Any => (
            match addr {
                SocketAddr::V4(v4) => v4.ip().to_string(),
                SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
            },
            None,
        ),
    };
    let mut server = json!({ "url": format!("{scheme}://{authority}:{port}") });
    if let Some(variables) = variables {
        server["variables"] = variables;
    }
    server
}

fn problem_schema() -> Value {
    let codes: Vec<&str> = ALL_CODES.iter().map(|c| c.as_str()).collect();
    json!({
        "type": "object",
        "description": "RFC 9457 problem details: the one shape of every error Portico answers itself",
        "properties": {
            "type": { "type": "string", "description": "urn:portico:error:CODE" },
            "title": { "type": "string", "description": "the status's reason phrase" },
            "status": { "type": "integer" },
            "detail": { "type": "string", "description": "what went wrong, for people" },
            "instance": { "type": "string", "description": "the request path" },
            "code": { "type": "string", "enum": codes, "description": "stable and machine-readable" },
            "request_id": { "type": "string", "description": "as in the X-Request-Id header and the access log" },
        },
        "required": ["type", "title", "status", "detail", "instance", "code", "request_id"],
    })
}

fn headers() -> Value {
    let integer = |description: &str| json!({ "description": description, "schema": { "type": "integer", "minimum": 0 } });
    json!({
        "X-Request-Id": {
            "description": "the request's id, as in the access log",
            "schema": { "type": "string" },
        },
        "RateLimit-Limit": integer("requests allowed in the current window"),
        "RateLimit-Remaining": integer("requests left in the current window"),
        "RateLimit-Reset": integer("seconds until the current window ends"),
        "Retry-After": integer("seconds to wait before trying again"),
        "WWW-Authenticate": {
            "description": "the credentials the route wants (`Bearer`, `Bearer error=\"invalid_token\"`, `ApiKey header=\"...\"`)",
            "schema": { "type": "string" },
        },
    })
}

/// One response per error code: problem+json, with the headers that code comes with.
fn error_responses() -> Value {
    let responses: Map<String, Value> = ROUTE_ERRORS
        .iter()
        .map(|(code, description)| {
            let header = |name: &str| (name.to_string(), json!({ "$ref": format!("#/components/headers/{name}") }));
            let mut headers: Map<String, Value> = [header("X-Request-Id")].into_iter().collect();
            match code {
                ErrorCode::Unauthorized | ErrorCode::Forbidden => {
                    headers.extend([header("WWW-Authenticate")]);
                }
                ErrorCode::RateLimited => headers.extend([
                    header("Retry-After"),
                    header("RateLimit-Limit"),
                    header("RateLimit-Remaining"),
                    header("RateLimit-Reset"),
                ]),
                ErrorCode::UpstreamUnavailable => headers.extend([header("Retry-After")]),
                ErrorCode::MethodNotAllowed => headers.extend([(
                    "Allow".to_string(),
                    json!({ "description": "the methods the path takes", "schema": { "type": "string" } }),
                )]),
                _ => {}
            }
            (
                code.as_str().to_string(),
                json!({
                    "description": format!("{} `{}`: {description}", code.status(), code.as_str()),
                    "headers": headers,
                    "content": { "application/problem+json": {
                        "schema": { "$ref": "#/components/schemas/Problem" },
                        "example": {
                            "type": format!("urn:portico:error:{}", code.as_str()),
                            "title": code.title(),
                            "status": code.status(),
                            "detail": description,
                            "instance": "/",
                            "code": code.as_str(),
                            "request_id": "6f1c2a9e",
                        },
                    } },
                }),
            )
        })
        .collect();
    Value::Object(responses)
}

/// The `paths` object as it is built: path items by template, and which route holds each
/// operation.
#[derive(Default)]
struct Paths {
    /// Template -> method -> operation.
    items: BTreeMap<String, BTreeMap<String, Map<String, Value>>>,
    /// The shape of a template (captures unnamed) -> the template first listed with it: OpenAPI
    /// forbids two templates that differ only in capture names.
    shapes: BTreeMap<String, String>,
}

impl Paths {
    fn add(&mut self, matcher: &RouteMatcher, route: &Route, described: Described) {
        let written = matcher.path.to_string();
        let template = self
            .shapes
            .entry(shape(&written))
            .or_insert_with(|| written.clone())
            .clone();
        let mut operation = described.operation;
        if template != written {
            // Same segments, other names: the parameters take the listed template's names.
            rename_parameters(&mut operation, &template);
        }
        let methods: Vec<String> = match &matcher.methods {
            Some(methods) => methods.iter().map(method_key).collect(),
            None => {
                operation.insert("x-portico-any-method".into(), json!(true));
                ANY_METHOD.iter().map(|m| m.to_string()).collect()
            }
        };
        let item = self.items.entry(template).or_default();
        for method in methods {
            let mut op = operation.clone();
            op.insert(
                "operationId".into(),
                json!(format!("{}.{method}", route.name)),
            );
            match item.get_mut(&method) {
                None => {
                    item.insert(method, op);
                }
                Some(first) => also_served_by(first, route, matcher),
            }
        }
        if let Some(preflight) = described.preflight {
            if let (Value::Object(mut op), false) = (preflight, item.contains_key("options")) {
                op.insert(
                    "operationId".into(),
                    json!(format!("{}.preflight", route.name)),
                );
                if let Some(parameters) = operation.get("parameters") {
                    op.insert("parameters".into(), parameters.clone());
                }
                item.insert("options".into(), op);
            }
        }
    }

    fn into_value(self) -> Value {
        Value::Object(
            self.items
                .into_iter()
                .map(|(template, ops)| {
                    (
                        template,
                        Value::Object(
                            ops.into_iter()
                                .map(|(m, op)| (m, Value::Object(op)))
                                .collect(),
                        ),
                    )
                })
                .collect(),
        )
    }
}

/// OpenAPI's key of an operation: the lower-case method, where it has one; other methods
/// (none of the usual ones) go under the extension `x-METHOD`, which keeps the document valid.
fn method_key(method: &Method) -> String {
    let lower = method.as_str().to_ascii_lowercase();
    match lower.as_str() {
        "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace" => lower,
        _ => format!("x-{lower}"),
    }
}

fn shape(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

fn rename_parameters(operation: &mut Map<String, Value>, template: &str) {
    let mut names = template
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')));
    if let Some(Value::Array(parameters)) = operation.get_mut("parameters") {
        for parameter in parameters.iter_mut().filter(|p| p["in"] == "path") {
            if let Some(name) = names.next() {
                parameter["name"] = json!(name);
            }
        }
    }
}

fn also_served_by(first: &mut Map<String, Value>, route: &Route, matcher: &RouteMatcher) {
    let host = match &matcher.host {
        HostMatch::Any => String::new(),
        HostMatch::Exact(h) => format!(" for host {h}"),
        HostMatch::Wildcard(suffix) => format!(" for host *{suffix}"),
    };
    let headers = if matcher.headers.is_empty() {
        String::new()
    } else {
        " for requests with its headers".into()
    };
    let note = format!(" Also route \"{}\"{host}{headers}.", route.name);
    if let Some(Value::String(description)) = first.get_mut("description") {
        description.push_str(&note);
    }
}
