//! The admin API on `admin.listen`: health, readiness, metrics, status, reload and the API
//! description (`/openapi.json`). Never on the public listener.

mod openapi;
mod page;
pub mod token;
pub mod traffic;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use portico_plugins::ErrorCode;
use serde_json::{json, Value};

use crate::access_log::format_rfc3339;
use crate::cache::shared::PurgeMessage;
use crate::cache::RequestIdentity;
use crate::router::path::normalize_path;
use crate::router::HostMatch;
use crate::state::GatewayState;

pub struct AdminApi {
    pub state: Arc<GatewayState>,
}

fn json_response(status: StatusCode, body: &Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    response(status, "application/json", body)
}

fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let length = body.len();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if let Ok(v) = content_type.parse() {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    headers.insert(http::header::CONTENT_LENGTH, length.into());
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn problem(code: ErrorCode, detail: &str, path: &str) -> Response<Vec<u8>> {
    response(
        StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/problem+json",
        crate::problem::body(code, detail, path, "").to_vec(),
    )
}

impl AdminApi {
    /// The cache's figures are read from the store when scraped.
    fn update_connection_gauges(&self) {
        let metrics = &self.state.metrics;
        let open = self.state.client_connections.load(Ordering::Relaxed);
        metrics.client_connections.set(gauge(open));
        let max = self.state.current().server.max_client_connections;
        metrics.client_connections_max.set(gauge(max));
    }

    fn update_cache_gauges(&self) {
        let stats = self.state.cache.stats();
        let metrics = &self.state.metrics;
        metrics.cache_size_bytes.set(gauge(stats.used));
        metrics.cache_max_size_bytes.set(gauge(stats.max_size));
        metrics.cache_entries.set(gauge(stats.entries));
    }

    /// `POST /cache/purge` with `{"url": "http://host/path?query"}` (every stored variant of
    /// that URL) or `{"route": "name"}` (everything the route stored).
    async fn purge(&self, session: &mut ServerSession, path: &str) -> Response<Vec<u8>> {
        let body = match read_body(session, 64 * 1024).await {
            Ok(body) => body,
            Err(why) => return problem(ErrorCode::BadRequest, &why, path),
        };
        let target: PurgeRequest = match serde_json::from_slice(&body) {
            Ok(t) => t,
            Err(e) => {
                let detail = format!(
                    "expected {{\"url\": \"http://host/path\"}} or {{\"route\": \"name\"}}: {e}"
                );
                return problem(ErrorCode::BadRequest, &detail, path);
            }
        };
        let message = match (&target.url, &target.route) {
            (Some(url), None) => match url_hash(url) {
                Ok(hash) => PurgeMessage::Url(hash),
                Err(why) => return problem(ErrorCode::BadRequest, &why, path),
            },
            (None, Some(route)) => PurgeMessage::Route(route.clone()),
            _ => {
                return problem(
                    ErrorCode::BadRequest,
                    "give exactly one of \"url\" or \"route\"",
                    path,
                )
            }
        };
        let purged = self.state.cache.purge(&message);
        log::info!("cache purge {target:?}: {purged} entries removed");
        let Some(tier) = self.state.cache.shared() else {
            return json_response(StatusCode::OK, &json!({ "purged": purged }));
        };
        // The shared tier, then every instance's memory through publish/subscribe.
        match tier.purge(&message).await {
            Ok(shared) => {
                log::info!("cache purge {target:?}: {shared} shared entries removed, published");
                json_response(
                    StatusCode::OK,
                    &json!({ "purged": purged, "shared": { "purged": shared } }),
                )
            }
            Err(why) => {
                let detail = format!(
                    "{purged} entries purged on this instance, but the shared tier failed ({why}); \
                     other instances may still serve them: try again"
                );
                log::warn!("cache purge {target:?}: {detail}");
                problem(ErrorCode::UpstreamUnavailable, &detail, path)
            }
        }
    }

    /// Circuit states are read when scraped, so the request path never touches the gauge.
    fn update_circuit_gauges(&self) {
        let gauge = &self.state.metrics.circuit_breaker_state;
        for upstream in self.state.current().pools.values() {
            let pool = upstream.current();
            for (i, target) in pool.targets.iter().enumerate() {
                if target.breaker.is_some() {
                    gauge
                        .with_label_values(&[&pool.name, &target.label])
                        .set(pool.circuit(i).0.gauge());
                }
            }
        }
    }

    fn status(&self) -> Value {
        let state = &self.state;
        let snapshot = state.current();
        let last = state.last_load();
        let cache = state.cache.stats();
        let routes: Vec<Value> = snapshot
            .routes
            .entries()
            .map(|(matcher, route)| {
                json!({
                    "name": &*route.name,
                    "host": match &matcher.host {
                        HostMatch::Any => Value::Null,
                        HostMatch::Exact(h) => json!(h),
                        HostMatch::Wildcard(suffix) => json!(format!("*{suffix}")),
                    },
                    "path": matcher.path.to_string(),
                    "methods": matcher.methods.as_ref().map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>()),
                    "upstream": route.upstream.as_ref().map(|u| &*u.name),
                    "split": route.split.as_ref().map(|s| s.upstreams().map(|(u, weight)| json!({ "upstream": &*u.name, "weight": weight })).collect::<Vec<_>>()),
                    "compose": route.compose.as_ref().map(|c| c.calls.iter().map(|call| &*call.key).collect::<Vec<_>>()),
                    "graphql": route.graphql.as_ref().map(|g| &*g.name),
                    "plugins": route.plugins.iter().map(|(name, _)| &**name).collect::<Vec<_>>(),
                    "cache": route.cache.is_some(),
                })
            })
            .collect();
        let upstreams: serde_json::Map<String, Value> = snapshot
            .pools
            .iter()
            .map(|(name, upstream)| {
                let pool = upstream.current();
                let targets: Vec<Value> = pool
                    .targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        json!({
                            "target": &*t.label,
                            "weight": t.weight,
                            "healthy": pool.is_healthy(i),
                            "circuit": pool.circuit(i).0.as_str(),
                            "consecutive_failures": pool.circuit(i).1,
                            "in_flight": t.in_flight.load(Ordering::Relaxed),
                            "pool": pool_json(t.connections.stats()),
                        })
                    })
                    .collect();
                (
                    name.clone(),
                    json!({
                        "balance": pool.spec.balance.as_str(),
                        "health_check": pool.spec.health_check.is_some(),
                        "targets": targets,
                        "discovery": upstream.discovery.as_ref().map(discovery_json),
                    }),
                )
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "generation": state.generation(),
            "loaded_at": format_rfc3339(state.loaded_at()),
            "draining": state.is_draining(),
            "last_reload": {
                "at": format_rfc3339(last.at),
                "result": if last.ok { "ok" } else { "error" },
                "errors": last.errors,
            },
            "routes": routes,
            "traffic": state.traffic.last_minute(&state.metrics),
            "upstreams": upstreams,
            "cache": {
                "max_size": cache.max_size,
                "size": cache.used,
                "entries": cache.entries,
                "shared": state.cache.shared().is_some(),
            },
            "redis": snapshot.reuse.redis.as_ref().map(|(_, redis)| json!({
                "topology": redis.spec().topology.kind(),
                "nodes": redis.for_logs(),
                "up": redis.is_up(),
            })),
        })
    }

    async fn reload(&self, path: &str) -> Response<Vec<u8>> {
        let state = Arc::clone(&self.state);
        // Reading the file and resolving target names may block: keep it off the event loop.
        match tokio::task::spawn_blocking(move || state.reload()).await {
            Ok(Ok(generation)) => {
                json_response(StatusCode::OK, &json!({ "generation": generation }))
            }
            Ok(Err(errors)) => invalid_config(&errors.lines(), path),
            Err(_) => problem(ErrorCode::Internal, "the reload did not complete", path),
        }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    url: Option<String>,
    route: Option<String>,
}

/// The hash purge by URL looks for: the URL as the proxy keys it (GET, which HEAD shares;
/// the path normalized as for routing). Portico listens on plain HTTP, so every entry's
/// scheme is http, whatever scheme the operator writes.
fn url_hash(url: &str) -> Result<pingora_cache::key::HashBinary, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("\"{url}\" is not a URL: {e}"))?;
    let host = uri
        .authority()
        .ok_or_else(|| format!("\"{url}\" needs a host, like http://api.example.com/path"))?;
    let path = normalize_path(uri.path()).map_err(|e| e.detail().to_string())?;
    Ok(RequestIdentity {
        method: "GET",
        scheme: "http",
        host: host.as_str(),
        path: &path,
        query: uri.query(),
    }
    .url_hash())
}

/// The request body, up to `limit` bytes.
async fn read_body(session: &mut ServerSession, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > limit {
                    return Err(format!("the body is larger than {limit} bytes"));
                }
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(format!("the body could not be read: {e}")),
        }
    }
}

/// 401 for a missing or wrong `admin.token`. Both challenges: Basic makes a browser ask for
/// the token (as the password), Bearer tells a script what to send.
fn unauthorized(path: &str) -> Response<Vec<u8>> {
    let mut resp = problem(
        ErrorCode::Unauthorized,
        "this admin endpoint needs admin.token, as Authorization: Bearer or as the HTTP Basic password",
        path,
    );
    let headers = resp.headers_mut();
    headers.append(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Basic realm=\"portico admin\", charset=\"UTF-8\""),
    );
    headers.append(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"portico admin\""),
    );
    resp
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// 422 for a rejected reload: a problem (code `invalid_config`, an extension of SPEC.md's
/// list) with every error in `errors`.
fn invalid_config(errors: &[String], path: &str) -> Response<Vec<u8>> {
    let body = json!({
        "type": "urn:portico:error:invalid_config",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "the new config has problems; the old config keeps serving",
        "instance": path,
        "code": "invalid_config",
        "errors": errors,
    });
    response(
        StatusCode::UNPROCESSABLE_ENTITY,
        "application/problem+json",
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        // Before anything else, so that without the token even which endpoints exist is hidden.
        let open = matches!(path.as_str(), "/healthz" | "/readyz");
        if let (false, Some(token)) = (open, &self.state.current().admin_token) {
            if !token.admits(req.headers.get(http::header::AUTHORIZATION)) {
                return unauthorized(&path);
            }
        }
        let allowed = match path.as_str() {
            "/" | "/healthz" | "/readyz" | "/metrics" | "/status" | "/openapi.json" => Method::GET,
            "/reload" | "/cache/purge" => Method::POST,
            _ => return problem(ErrorCode::NoRoute, "no admin endpoint here", &path),
        };
        if method != allowed && !(allowed == Method::GET && method == Method::HEAD) {
            let mut resp = problem(
                ErrorCode::MethodNotAllowed,
                &format!("use {allowed}"),
                &path,
            );
            if let Ok(v) = allowed.as_str().parse() {
                resp.headers_mut().insert(http::header::ALLOW, v);
            }
            return resp;
        }
        match path.as_str() {
            "/healthz" => json_response(StatusCode::OK, &json!({ "status": "ok" })),
            "/readyz" if self.state.is_draining() => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "status": "draining" }),
            ),
            "/readyz" => json_response(
                StatusCode::OK,
                &json!({ "status": "ready", "generation": self.state.generation() }),
            ),
            "/metrics" => {
                self.update_circuit_gauges();
                self.update_cache_gauges();
                self.update_connection_gauges();
                let snapshot = self.state.current();
                let pools =
                    crate::metrics::pool_families(snapshot.pools.values().map(|u| u.current()));
                response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.state.metrics.render(pools),
                )
            }
            "/status" => json_response(StatusCode::OK, &self.status()),
            "/openapi.json" => json_response(
                StatusCode::OK,
                &openapi::document(&self.state.current(), self.state.generation()),
            ),
            "/" => {
                let mut resp = response(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    page::STATUS_PAGE.as_bytes().to_vec(),
                );
                resp.headers_mut().insert(
                    http::header::CONTENT_SECURITY_POLICY,
                    http::HeaderValue::from_static(page::CONTENT_SECURITY_POLICY),
                );
                resp
            }
            "/cache/purge" => self.purge(session, &path).await,
            _ => self.reload(&path).await,
        }
    }
}

/// A target's `pool` in `/status` (SPEC.md).
/// `discovery` of an upstream in `/status`: where its targets come from, when a lookup last
/// succeeded, and what the last one failed with (the set it kept is its `targets`).
fn discovery_json(d: &crate::upstream::live::Discovery) -> Value {
    let status = d.status();
    json!({
        "kind": d.spec.kind.as_str(),
        "name": d.spec.name.as_deref().or(d.spec.service.as_deref()),
        "last_refresh": status.last_refresh.map(format_rfc3339),
        "last_error": status.last_error,
    })
}

fn pool_json(stats: crate::upstream::pool::PoolStats) -> Value {
    json!({
        "idle": stats.idle,
        "busy": stats.busy,
        "opened": stats.opened,
        "closed": stats.closed,
        "connect_errors": stats.connect_errors,
    })
}
