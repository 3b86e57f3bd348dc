//! Compiling a parsed config into the immutable runtime model the proxy serves from. Every
//! string that can be parsed once (addresses, CIDRs, header names, patterns, plugins) is
//! parsed here, never per request. A config with any problem yields no snapshot at all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use portico_plugins::Plugin;

use crate::cache::CachePolicy;
use crate::compose::Composition;
use crate::config::{self, ConfigErrors, ParsedConfig, PluginBody, Problems, RouteSection};
use crate::graphql::GraphqlSchema;
use crate::proxy::mirror::Mirror;
use crate::proxy::split::{Split, SplitKey, MAX_VARIANTS};
use crate::router::{HostMatch, PathPattern, RouteMatcher, RouteTable};
use crate::upstream::live::{Discovery, Upstream};
use crate::upstream::UpstreamPool;

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

/// `[server]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    /// Worker threads, with 0 already turned into the number of cores.
    pub threads: usize,
    pub grace_period: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub max_request_body: u64,
    pub access_log: AccessLogTarget,
    pub upgrade_sock: String,
    pub pid_file: String,
    /// Whether plain requests take Portico's own driver (`proxy::direct`).
    pub fast_path: bool,
    /// What a request head may be: its deadline and sizes (`connection::head`).
    pub head: crate::connection::head::HeadLimits,
    pub max_client_connections: usize,
    pub underscore_headers: config::UnderscoreHeaders,
    /// The whole request body must arrive within this.
    pub body_timeout: Duration,
    /// Toward clients: how long one write may take, and the least rate it must go at
    /// (0: none; then `send_timeout` bounds each write).
    pub send_timeout: Duration,
    pub min_send_rate: usize,
    /// HTTP/2 is offered (ALPN h2 on TLS listeners, h2c on plain ones).
    pub http2: bool,
}

/// A compiled `[[routes]]` entry.
pub struct Route {
    pub name: Arc<str>,
    /// Its path template (`/users/{id}`), as `/openapi.json` writes it: the `http.route` of its
    /// spans, made once here rather than per request.
    pub path: Arc<str>,
    /// Set for a proxied route.
    pub upstream: Option<Arc<Upstream>>,
    /// Set for a route that splits its requests among upstreams (`split`).
    pub split: Option<Arc<Split>>,
    /// `mirror`: copies of a share of the requests to another upstream.
    pub mirror: Option<Arc<Mirror>>,
    /// Set for a composition route.
    pub compose: Option<Arc<Composition>>,
    /// Set for a route serving a GraphQL schema of Portico's own.
    pub graphql: Option<Arc<GraphqlSchema>>,
    pub pattern: PathPattern,
    /// How many leading path segments `strip_prefix` removes before the request goes upstream.
    pub strip_segments: usize,
    pub plugins: Vec<(Arc<str>, Arc<dyn Plugin>)>,
    /// Set when the route lists a `cache` plugin.
    pub cache: Option<Arc<CachePolicy>>,
    /// Set when the route lists a `compress` plugin.
    pub compress: Option<Arc<crate::proxy::compress::CompressPolicy>>,
    /// Total deadline upstream, retries included.
    pub timeout: Option<Duration>,
    /// Set when the route takes WebSocket upgrades (`websocket = true`): how long the
    /// upgraded connection may go with no bytes either way.
    pub tunnel_idle_timeout: Option<Duration>,
    /// `rewrite`, compiled.
    pub rewrite: Option<crate::proxy::rewrite::Rewrite>,
    /// The largest request body this route takes: its own `max_request_body` or the server's.
    pub max_request_body: u64,
    /// `fallback`, read: what the route answers instead of the gateway's 502/503/504.
    pub fallback: Option<Arc<Fallback>>,
}

/// A route's stand-in answer for when its upstream cannot give one (down, open, too slow).
pub struct Fallback {
    pub status: http::StatusCode,
    pub content_type: http::HeaderValue,
    pub body: bytes::Bytes,
}

/// `graphql = "NAME"`: a schema compiled above, whose templates read captures this route has.
fn compile_graphql_route(
    route: &config::RouteSection,
    index: usize,
    schemas: &BTreeMap<String, Arc<GraphqlSchema>>,
    broken: &[String],
    captures: &[String],
    problems: &mut Problems,
) -> Option<Arc<GraphqlSchema>> {
    let name = route.graphql.as_ref()?;
    let at = format!("routes[{index}].graphql");
    let Some(schema) = schemas.get(name) else {
        if !broken.contains(name) {
            problems.at(
                &at,
                format!("no schema named \"{name}\" (a [graphql.{name}] table)"),
            );
        }
        return None;
    };
    for capture in &schema.captures {
        if !captures.contains(capture) {
            problems.at(&at, format!("schema \"{name}\" reads {{{capture}}}, which the route's path does not capture"));
        }
    }
    Some(Arc::clone(schema))
}

/// The largest fallback body: it is held in memory with the config.
const MAX_FALLBACK_BODY: u64 = 1 << 20;

/// `split` and `split_key`: variants naming known upstreams, at least one with a weight.
fn compile_split(
    route: &config::RouteSection,
    index: usize,
    pools: &BTreeMap<String, Arc<Upstream>>,
    broken_upstreams: &[String],
    problems: &mut Problems,
) -> Option<Arc<Split>> {
    let at = |key: &str| format!("routes[{index}].{key}");
    let Some(specs) = &route.split else {
        if route.split_key.is_some() {
            problems.at(at("split_key"), "needs a split");
        }
        return None;
    };
    let key = match route.split_key.as_deref().map(SplitKey::parse) {
        None => Some(None),
        Some(Ok(key)) => Some(Some(key)),
        Some(Err(e)) => {
            problems.at(at("split_key"), e);
            None
        }
    };
    let before = problems.count();
    if specs.is_empty() || specs.len() > MAX_VARIANTS {
        problems.at(
            at("split"),
            format!("needs from 1 to {MAX_VARIANTS} variants"),
        );
    }
    if specs.iter().all(|v| v.weight == 0) {
        problems.at(
            at("split"),
            "at least one variant needs a weight above zero",
        );
    }
    let mut variants = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|v| v.upstream == spec.upstream) {
            problems.at(
                at(&format!("split[{i}].upstream")),
                format!("upstream \"{}\" is already a variant", spec.upstream),
            );
        }
        match pools.get(&spec.upstream) {
            Some(pool) => variants.push((Arc::clone(pool), spec.weight)),
            None if broken_upstreams.contains(&spec.upstream) => {}
            None => problems.at(
                at(&format!("split[{i}].upstream")),
                format!("no upstream named \"{}\"", spec.upstream),
            ),
        }
    }
    let key = key?;
    (problems.count() == before && variants.len() == specs.len())
        .then(|| Arc::new(Split::new(variants, key, &route.path)))
}

/// `mirror`: a known HTTP/1 upstream (copies go through the composition client) and a
/// share above 0 and at most 100.
fn compile_mirror(
    route: &config::RouteSection,
    index: usize,
    pools: &BTreeMap<String, Arc<Upstream>>,
    broken_upstreams: &[String],
    problems: &mut Problems,
) -> Option<Arc<Mirror>> {
    let spec = route.mirror.as_ref()?;
    let at = |key: &str| format!("routes[{index}].mirror.{key}");
    let percent_ok = spec.percent > 0.0 && spec.percent <= 100.0;
    if !percent_ok {
        problems.at(at("percent"), "must be above 0 and at most 100");
    }
    if route.compose.is_some() || route.graphql.is_some() {
        problems.at(
            format!("routes[{index}].mirror"),
            "a compose or graphql route sends nothing upstream to copy",
        );
        return None;
    }
    match pools.get(&spec.upstream) {
        Some(pool) if pool.protocol != config::UpstreamProtocol::H1 => {
            problems.at(
                at("upstream"),
                "a mirror upstream speaks HTTP/1 (protocol = \"h1\")",
            );
            None
        }
        Some(pool) => percent_ok.then(|| Arc::new(Mirror::new(Arc::clone(pool), spec.percent))),
        None => {
            if !broken_upstreams.contains(&spec.upstream) {
                problems.at(
                    at("upstream"),
                    format!("no upstream named \"{}\"", spec.upstream),
                );
            }
            None
        }
    }
}

fn compile_fallback(
    spec: &config::file::FallbackSpec,
    config_dir: &Path,
    at: &str,
    problems: &mut Problems,
) -> Option<Arc<Fallback>> {
    let status = match http::StatusCode::from_u16(spec.status) {
        Ok(s) if (200..=599).contains(&spec.status) => s,
        _ => {
            problems.at(format!("{at}.status"), "must be a status from 200 to 599");
            return None;
        }
    };
    let content_type = spec.content_type.as_deref().unwrap_or("application/json");
    let Ok(content_type) = http::HeaderValue::from_str(content_type) else {
        problems.at(format!("{at}.content_type"), "is not a valid header value");
        return None;
    };
    let path = config_dir.join(&spec.body_file);
    let body = match std::fs::metadata(&path) {
        Ok(m) if m.len() > MAX_FALLBACK_BODY => {
            problems.at(
                format!("{at}.body_file"),
                format!("{} is over 1 MiB", path.display()),
            );
            return None;
        }
        _ => match std::fs::read(&path) {
            Ok(body) => body,
            Err(e) => {
                problems.at(
                    format!("{at}.body_file"),
                    format!("cannot read {}: {e}", path.display()),
                );
                return None;
            }
        },
    };
    Some(Arc::new(Fallback {
        status,
        content_type,
        body: body.into(),
    }))
}

/// `tunnel_idle_timeout` when a WebSocket route does not set it.
const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl Route {
    /// Whether only Pingora's proxy can serve this route: it caches (the cache lives there),
    /// or its upstream speaks HTTP/2.
    pub fn needs_proxy(&self) -> bool {
        let h2 = |u: &Upstream| u.protocol != config::UpstreamProtocol::H1;
        self.cache.is_some()
            || self.upstream.as_deref().is_some_and(h2)
            || self
                .split
                .as_ref()
                .is_some_and(|s| s.upstreams().any(|(u, _)| h2(u)))
    }
}

pub struct Snapshot {
    /// Plugin instances and the Redis connection, kept for the next reload to reuse.
    pub reuse: config::Reuse,
    pub server: ServerSettings,
    pub admin_listen: SocketAddr,
    /// `admin.token`: what the admin endpoints but `/healthz` and `/readyz` require.
    pub admin_token: Option<crate::admin::token::AdminToken>,
    pub routes: RouteTable<Arc<Route>>,
    pub pools: BTreeMap<String, Arc<Upstream>>,
    /// `[cache] max_size`: the limit of the response store; 0 without a `[cache]` table.
    pub cache_max_size: u64,
    /// `[cache] shared = "redis"`: a second tier in `reuse.redis`.
    pub cache_shared: bool,
    /// Whether any route is served only by Pingora's proxy (`Route::needs_proxy`), so the
    /// direct path (`proxy::direct`) looks up the route of each request it takes while one is.
    pub proxy_routes: bool,
    /// `[tls]`, with its certificates read.
    pub tls: Option<crate::tls::TlsConfig>,
    /// `[tracing]`: kept from the config before while the section is unchanged.
    pub tracer: Option<Arc<crate::trace::Tracer>>,
}

impl Snapshot {
    /// Start what this config's plugins run in the background (a JWKS fetcher): called once
    /// the config is valid and about to serve, never for one that is only validated.
    /// Instances kept from the config before were started already and do nothing.
    pub fn start(&self, metrics: &crate::metrics::Metrics) {
        if let Some(tracer) = &self.tracer {
            tracer.start(&metrics.tracing_spans_dropped);
        }
        for instance in self.reuse.plugins.values() {
            if let config::PluginBody::Chain(plugin) = &instance.plugin {
                plugin.start();
            }
        }
    }
}

/// Read, validate and compile the config at `path`. `previous` is the snapshot now serving,
/// whose unchanged upstream pools are kept (with their health state and connections).
pub fn load(
    path: &Path,
    previous: Option<&Snapshot>,
    ctx: &config::BuildContext,
) -> Result<Snapshot, ConfigErrors> {
    compile(config::read_file(path, ctx)?, previous)
}

pub fn compile(
    parsed: ParsedConfig,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ConfigErrors> {
    let ParsedConfig {
        file,
        map,
        origin,
        problems: earlier,
    } = parsed;
    let mut problems = Problems::new(&map);
    problems.extend(earlier);

    let server = compile_server(&file.server, &mut problems);
    let admin_listen = match file.admin.listen.parse::<SocketAddr>() {
        Ok(addr) => {
            if server.listen.contains(&addr) {
                problems.at(
                    "admin.listen",
                    "must differ from every server.listen address",
                );
            }
            Some(addr)
        }
        Err(_) => {
            problems.at(
                "admin.listen",
                format!("\"{}\" is not an ip:port address", file.admin.listen),
            );
            None
        }
    };
    let admin_token = match file.admin.token.as_deref() {
        Some("") => {
            problems.at(
                "admin.token",
                "is empty; set a long random token or leave admin.token out",
            );
            None
        }
        Some(token) => Some(crate::admin::token::AdminToken::new(token)),
        None => None,
    };
    if let Some(previous) = previous {
        fixed_at_start(previous, &server, admin_listen, &mut problems);
    }
    // `[redis]` itself was checked when the file was read (config::redis).
    if file.cache.as_ref().is_some_and(|c| c.shared.is_some()) && file.redis.is_none() {
        problems.at(
            "cache.shared",
            "is \"redis\" but there is no [redis] section saying where Redis is",
        );
    }

    if file.cache.as_ref().is_some_and(|c| c.max_size.0 == 0) {
        problems.at("cache.max_size", "must be more than 0");
    }
    // Paths in the config are relative to the config file's folder (SPEC.md).
    let config_dir = Path::new(&origin)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let tls =
        file.tls
            .as_ref()
            .and_then(|section| match crate::tls::compile(section, &config_dir) {
                Ok(tls) => {
                    for addr in &tls.listen {
                        if server.listen.contains(addr) || admin_listen == Some(*addr) {
                            problems.at(
                                "tls.listen",
                                format!("{addr} is also a plain or admin listener"),
                            );
                        }
                    }
                    Some(tls)
                }
                Err(errors) => {
                    for (key, message) in errors {
                        problems.at(format!("tls.{key}"), message);
                    }
                    None
                }
            });
    if let Some(previous) = previous {
        tls_fixed_at_start(
            previous.tls.as_ref(),
            tls.as_ref(),
            file.tls.is_some(),
            &mut problems,
        );
    }

    let tracer = file
        .tracing
        .as_ref()
        .and_then(|section| match crate::trace::compile(section) {
            Ok(settings) => Some(
                previous
                    .and_then(|p| p.tracer.as_ref())
                    .filter(|t| t.settings == settings)
                    .map(Arc::clone)
                    .unwrap_or_else(|| Arc::new(crate::trace::Tracer::new(settings))),
            ),
            Err(errors) => {
                for (key, message) in errors {
                    problems.at(format!("tracing.{key}"), message);
                }
                None
            }
        });

    let dns = file.dns.clone().unwrap_or_default();
    for (key, message) in crate::upstream::discovery::dns_errors(&dns) {
        problems.at(format!("dns.{key}"), message);
    }
    if let Some(consul) = &file.consul {
        if let Err(e) = crate::upstream::discovery::consul::parse_address(&consul.address) {
            problems.at("consul.address", e);
        }
    }
    let mut pools = BTreeMap::new();
    // Upstreams with problems of their own: routes naming them are not told again.
    let mut broken_upstreams = file.broken_upstreams.clone();
    for (name, spec) in &file.upstreams {
        let reused = previous.and_then(|p| p.pools.get(name)).filter(|up| {
            let current = up.current();
            let same_sources = up
                .discovery
                .as_ref()
                .is_none_or(|d| d.dns == dns && d.consul == file.consul);
            current.spec == *spec && same_sources && current.tls_files_unchanged(&config_dir)
        });
        if let Some(upstream) = reused {
            pools.insert(name.clone(), Arc::clone(upstream));
            continue;
        }
        let needs_consul = spec
            .discovery
            .as_ref()
            .is_some_and(|d| d.kind == config::file::DiscoveryKind::Consul);
        if needs_consul && file.consul.is_none() {
            problems.at(
                format!("upstreams.{name}.discovery"),
                "kind = \"consul\" needs a [consul] section with the agent's address",
            );
        }
        match UpstreamPool::build(name, spec, &config_dir) {
            Ok(pool) => {
                let discovery = spec
                    .discovery
                    .clone()
                    .map(|d| Discovery::new(d, dns.clone(), file.consul.clone()));
                pools.insert(name.clone(), Arc::new(Upstream::new(pool, discovery)));
            }
            Err(errors) => {
                broken_upstreams.push(name.clone());
                for (key, message) in errors {
                    let path = if key.is_empty() {
                        format!("upstreams.{name}")
                    } else {
                        format!("upstreams.{name}.{key}")
                    };
                    problems.at(path, message);
                }
            }
        }
    }

    let mut api_keys = BTreeMap::new();
    for (name, consumer) in &file.consumers {
        for (i, key) in consumer.api_keys.iter().enumerate() {
            let path = format!("consumers.{name}.api_keys[{i}]");
            if key.len() < 8 {
                problems.at(&path, "an API key must be at least 8 characters");
            } else if let Some(owner) = api_keys.insert(key.clone(), name.clone()) {
                problems.at(
                    &path,
                    format!("this key is also an API key of consumer \"{owner}\""),
                );
            }
        }
    }

    let mut schemas = BTreeMap::new();
    // Schemas with problems of their own: routes naming them are not told again.
    let mut broken_schemas = file.broken_graphql.clone();
    for (name, section) in &file.graphql {
        match GraphqlSchema::compile(name, section, &config_dir, &pools) {
            Ok(schema) => {
                schemas.insert(name.clone(), Arc::new(schema));
            }
            Err(errors) => {
                broken_schemas.push(name.clone());
                for (key, message) in errors {
                    problems.at(format!("graphql.{name}.{key}"), message);
                }
            }
        }
    }

    let mut names = BTreeMap::new();
    let mut compiled: Vec<(usize, RouteMatcher, Arc<Route>)> = Vec::new();
    for (index, route) in &file.routes {
        let at = |key: &str| format!("routes[{index}].{key}");
        if route.name.is_empty() {
            problems.at(at("name"), "must not be empty");
        } else if let Some(first) = names.insert(route.name.clone(), *index) {
            problems.at(
                at("name"),
                format!(
                    "route name \"{}\" is already used by routes[{first}]",
                    route.name
                ),
            );
        }
        let matcher = compile_matcher(route, *index, &mut problems);
        let captures = matcher
            .as_ref()
            .map(|m| m.path.capture_names())
            .unwrap_or_default();
        let tunnel_idle_timeout = match (route.websocket, route.tunnel_idle_timeout) {
            (false, None) => None,
            (false, Some(_)) => {
                problems.at(
                    at("tunnel_idle_timeout"),
                    "only for a route with websocket = true",
                );
                None
            }
            (true, _) if route.compose.is_some() || route.graphql.is_some() => {
                problems.at(
                    at("websocket"),
                    "a compose or graphql route answers itself: there is no upstream to upgrade to",
                );
                None
            }
            (true, Some(t)) if t.0.is_zero() => {
                problems.at(at("tunnel_idle_timeout"), "must be greater than zero");
                None
            }
            (true, t) => Some(t.map_or(DEFAULT_TUNNEL_IDLE_TIMEOUT, |t| t.0)),
        };
        let split = compile_split(route, *index, &pools, &broken_upstreams, &mut problems);
        // A route proxies to an upstream, splits among several or composes several calls:
        // exactly one of them.
        let graphql = compile_graphql_route(
            route,
            *index,
            &schemas,
            &broken_schemas,
            &captures,
            &mut problems,
        );
        let target = match (&route.upstream, &route.compose) {
            _ if route.graphql.is_some() => {
                if route.upstream.is_some() || route.split.is_some() || route.compose.is_some() {
                    problems.at(
                        at("graphql"),
                        "a route has one of upstream, split, compose or graphql",
                    );
                    None
                } else {
                    graphql.as_ref().map(|_| (None, None, None))
                }
            }
            (None, None) if route.split.is_some() => split.map(|s| (None, None, Some(s))),
            (Some(_), _) | (_, Some(_)) if route.split.is_some() => {
                problems.at(at("split"), "a route has one of upstream, split or compose");
                None
            }
            (Some(name), None) => match pools.get(name) {
                Some(pool) => Some((Some(Arc::clone(pool)), None, None)),
                None => {
                    if !broken_upstreams.contains(name) {
                        problems.at(at("upstream"), format!("no upstream named \"{name}\""));
                    }
                    None
                }
            },
            (None, Some(_)) if route.timeout.is_some() => {
                problems.at(
                    at("timeout"),
                    "a compose route's deadline is compose.timeout",
                );
                None
            }
            (None, Some(spec)) => match Composition::compile(spec, &captures, &pools) {
                Ok(c) => Some((None, Some(Arc::new(c)), None)),
                Err(errors) => {
                    for (key, message) in errors {
                        problems.at(at(&key), message);
                    }
                    None
                }
            },
            _ => {
                problems.at(
                    format!("routes[{index}]"),
                    "needs exactly one of `upstream`, `split`, `compose` or `graphql`",
                );
                None
            }
        };
        let mut plugins = Vec::new();
        let mut cache = None;
        let mut compress = None;
        for (i, name) in route.plugins.iter().enumerate() {
            match file.plugins.get(name).map(|p| &p.plugin) {
                Some(PluginBody::Chain(plugin)) => {
                    plugins.push((Arc::<str>::from(name.as_str()), Arc::clone(plugin)))
                }
                Some(PluginBody::Cache(policy)) => {
                    let at = at(&format!("plugins[{i}]"));
                    if cache.is_some() {
                        problems.at(at, "a route takes at most one cache plugin");
                    } else if route.compose.is_some() || route.graphql.is_some() {
                        problems.at(
                            at,
                            "a cache plugin caches upstream answers; a compose or graphql route has none",
                        );
                    } else if file.cache.is_none() {
                        problems.at(
                            at,
                            format!("plugin \"{name}\" caches, which needs a [cache] table with max_size"),
                        );
                    } else {
                        cache = Some(Arc::clone(policy));
                    }
                }
                Some(PluginBody::Compress(policy)) => {
                    if compress.is_some() {
                        problems.at(
                            at(&format!("plugins[{i}]")),
                            "a route takes at most one compress plugin",
                        );
                    }
                    compress = Some(Arc::clone(policy));
                }
                None if file.broken_plugins.contains(name) => {}
                None => problems.at(
                    at(&format!("plugins[{i}]")),
                    format!("no plugin named \"{name}\""),
                ),
            }
        }
        let strip_segments = compile_strip_prefix(route, *index, matcher.as_ref(), &mut problems);
        let rewrite = match &route.rewrite {
            None => None,
            Some(_) if route.strip_prefix.is_some() => {
                problems.at(
                    at("rewrite"),
                    "a route has rewrite or strip_prefix, not both",
                );
                None
            }
            Some(spec) => match crate::proxy::rewrite::Rewrite::compile(&spec.pattern, &spec.to) {
                Ok(rewrite) => Some(rewrite),
                Err(e) => {
                    problems.at(at("rewrite"), e);
                    None
                }
            },
        };
        let mirror = compile_mirror(route, *index, &pools, &broken_upstreams, &mut problems);
        let fallback = route
            .fallback
            .as_ref()
            .and_then(|f| compile_fallback(f, &config_dir, &at("fallback"), &mut problems));
        if route.max_request_body.is_some_and(|b| b.0 == 0) {
            problems.at(at("max_request_body"), "must be greater than zero");
        }
        if let (Some(matcher), Some((upstream, compose, split)), Some(strip_segments)) =
            (matcher, target, strip_segments)
        {
            let pattern = matcher.path.clone();
            compiled.push((
                *index,
                matcher,
                Arc::new(Route {
                    name: route.name.as_str().into(),
                    path: pattern.to_string().into(),
                    upstream,
                    split,
                    mirror,
                    compose,
                    graphql,
                    pattern,
                    strip_segments,
                    plugins,
                    cache,
                    compress,
                    timeout: route.timeout.map(|t| t.0),
                    tunnel_idle_timeout,
                    rewrite,
                    max_request_body: route
                        .max_request_body
                        .map_or(server.max_request_body, |b| b.0),
                    fallback,
                }),
            ));
        }
    }

    let proxy_routes = compiled.iter().any(|(_, _, route)| route.needs_proxy());
    let file_indices: Vec<usize> = compiled.iter().map(|(i, _, _)| *i).collect();
    let routes = match RouteTable::build(compiled.into_iter().map(|(_, m, r)| (m, r)).collect()) {
        Ok(table) => Some(table),
        Err(ambiguities) => {
            for a in ambiguities {
                let (first, second) = (file_indices[a.first], file_indices[a.second]);
                problems.at(
                    format!("routes[{second}]"),
                    format!("could take the same requests as routes[{first}] with the same specificity; make one more specific (host, path, methods or headers)"),
                );
            }
            None
        }
    };

    problems.finish(&origin)?;
    match (routes, admin_listen) {
        (Some(routes), Some(admin_listen)) => Ok(Snapshot {
            reuse: config::Reuse {
                plugins: file.plugins,
                redis: file.redis_store,
            },
            server,
            admin_listen,
            admin_token,
            routes,
            pools,
            cache_max_size: file.cache.as_ref().map_or(0, |c| c.max_size.0),
            cache_shared: file.cache.as_ref().is_some_and(|c| c.shared.is_some()),
            proxy_routes,
            tls,
            tracer,
        }),
        _ => Err(ConfigErrors::single(
            &origin,
            "the config could not be compiled",
        )),
    }
}

/// Listeners, threads, the access log and the grace period belong to the running process:
/// a reload that changes them cannot apply whole, so it is refused and says what to do.
fn fixed_at_start(
    previous: &Snapshot,
    server: &ServerSettings,
    admin: Option<SocketAddr>,
    problems: &mut Problems,
) {
    const HOW: &str = "cannot change while running; restart, or start the new config with `portico -u` for a zero-downtime upgrade";
    let old = &previous.server;
    let changed = [
        ("server.listen", old.listen != server.listen),
        ("server.threads", old.threads != server.threads),
        (
            "server.grace_period",
            old.grace_period != server.grace_period,
        ),
        ("server.access_log", old.access_log != server.access_log),
        (
            "server.upgrade_sock",
            old.upgrade_sock != server.upgrade_sock,
        ),
        ("server.pid_file", old.pid_file != server.pid_file),
        // Offered by ALPN in the TLS listeners' settings, which are built once.
        ("server.http2", old.http2 != server.http2),
        (
            "admin.listen",
            admin.is_some_and(|a| a != previous.admin_listen),
        ),
    ];
    for (key, differs) in changed {
        if differs {
            problems.at(key, HOW);
        }
    }
}

/// TLS listeners are opened once, and whether clients must present certificates is built into
/// them: a reload that changes either is refused like `server.listen`. Certificates, keys,
/// the client CA's content and `min_version` reload in place.
fn tls_fixed_at_start(
    old: Option<&crate::tls::TlsConfig>,
    new: Option<&crate::tls::TlsConfig>,
    new_has_section: bool,
    problems: &mut Problems,
) {
    const HOW: &str = "cannot change while running; restart, or start the new config with `portico -u` for a zero-downtime upgrade";
    match (old, new_has_section) {
        (None, true) | (Some(_), false) => problems.at("tls", HOW),
        (Some(old), true) => {
            let Some(new) = new else { return };
            if old.listen != new.listen {
                problems.at("tls.listen", HOW);
            }
            if old.client_ca.is_some() != new.client_ca.is_some() {
                problems.at(
                    "tls.client_ca",
                    "cannot be added or removed while running; restart, or use `portico -u`",
                );
            }
        }
        (None, false) => {}
    }
}

fn compile_server(s: &config::ServerSection, problems: &mut Problems) -> ServerSettings {
    let mut listen = Vec::new();
    if s.listen.is_empty() {
        problems.at("server.listen", "needs at least one address");
    }
    for (i, text) in s.listen.iter().enumerate() {
        match text.parse::<SocketAddr>() {
            Ok(addr) if listen.contains(&addr) => problems.at(
                format!("server.listen[{i}]"),
                format!("{addr} is listed twice"),
            ),
            Ok(addr) => listen.push(addr),
            Err(_) => problems.at(
                format!("server.listen[{i}]"),
                format!("\"{text}\" is not an ip:port address"),
            ),
        }
    }
    let mut trusted_proxies = Vec::new();
    for (i, text) in s.trusted_proxies.iter().enumerate() {
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => problems.at(
                format!("server.trusted_proxies[{i}]"),
                format!("\"{text}\" is not an IP address or CIDR range"),
            ),
        }
    }
    let access_log = match s.access_log.as_str() {
        "off" => AccessLogTarget::Off,
        "stdout" => AccessLogTarget::Stdout,
        "" => {
            problems.at(
                "server.access_log",
                "must be \"stdout\", \"off\" or a file path",
            );
            AccessLogTarget::Off
        }
        path => {
            let path = PathBuf::from(path);
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !dir.is_dir() {
                problems.at(
                    "server.access_log",
                    format!("directory {} does not exist", dir.display()),
                );
            }
            AccessLogTarget::File(path)
        }
    };
    if s.threads > 1024 {
        problems.at(
            "server.threads",
            "must be at most 1024 (0 means one per CPU core)",
        );
    }
    if s.max_request_body.0 == 0 {
        problems.at("server.max_request_body", "must be greater than zero");
    }
    for (key, d) in [
        ("server.header_timeout", s.header_timeout),
        ("server.body_timeout", s.body_timeout),
        ("server.send_timeout", s.send_timeout),
    ] {
        if d.0.is_zero() {
            problems.at(key, "must be greater than zero");
        }
    }
    if s.max_client_connections == 0 {
        problems.at("server.max_client_connections", "must be at least 1");
    }
    // A head must hold at least a request line and a Host; Pingora reads at most 1 MiB.
    let (size, line) = (s.max_header_size.0, s.max_header_line.0);
    if !(1024..=1 << 20).contains(&size) {
        problems.at("server.max_header_size", "must be between 1KiB and 1MiB");
    }
    if line < 256 || line > size {
        problems.at(
            "server.max_header_line",
            "must be at least 256 bytes and at most max_header_size",
        );
    }
    let threads = if s.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        s.threads
    };
    ServerSettings {
        listen,
        threads,
        grace_period: s.grace_period.0,
        trusted_proxies,
        max_request_body: s.max_request_body.0,
        access_log,
        upgrade_sock: s.upgrade_sock.clone(),
        pid_file: s.pid_file.clone(),
        fast_path: s.fast_path,
        head: crate::connection::head::HeadLimits {
            timeout: s.header_timeout.0,
            max_size: usize::try_from(s.max_header_size.0).unwrap_or(usize::MAX),
            max_line: usize::try_from(s.max_header_line.0).unwrap_or(usize::MAX),
        },
        max_client_connections: s.max_client_connections as usize,
        underscore_headers: s.underscore_headers,
        body_timeout: s.body_timeout.0,
        send_timeout: s.send_timeout.0,
        min_send_rate: usize::try_from(s.min_send_rate.0).unwrap_or(usize::MAX),
        http2: s.http2,
    }
}

fn compile_matcher(
    route: &RouteSection,
    index: usize,
    problems: &mut Problems,
) -> Option<RouteMatcher> {
    let at = |key: &str| format!("routes[{index}].{key}");
    let mut ok = true;
    let host = match route.host.as_deref().map(HostMatch::parse) {
        None => HostMatch::Any,
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            problems.at(at("host"), e);
            ok = false;
            HostMatch::Any
        }
    };
    let path = match PathPattern::parse(&route.path) {
        Ok(p) => Some(p),
        Err(e) => {
            problems.at(at("path"), e);
            None
        }
    };
    let methods = match &route.methods {
        None => None,
        Some(list) if list.is_empty() => {
            problems.at(
                at("methods"),
                "must name at least one method, or be left out for any method",
            );
            ok = false;
            None
        }
        Some(list) => {
            let mut methods = BTreeSet::new();
            for (i, m) in list.iter().enumerate() {
                let valid = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
                match Method::from_bytes(m.as_bytes()) {
                    Ok(method) if valid => {
                        methods.insert(method.to_string());
                    }
                    _ => {
                        problems.at(
                            at(&format!("methods[{i}]")),
                            format!("\"{m}\" is not an HTTP method (write it in upper case)"),
                        );
                        ok = false;
                    }
                }
            }
            Some(
                methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
            )
        }
    };
    let mut headers = Vec::new();
    for (name, value) in &route.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => {
                problems.at(
                    at(&format!("headers.{name}")),
                    "is not a valid header name and value",
                );
                ok = false;
            }
        }
    }
    let path = path?;
    ok.then_some(RouteMatcher {
        host,
        path,
        methods,
        headers,
    })
}

/// `strip_prefix` must be a leading part of the route's own path (captures included), so
/// what it removes is known for every request the route takes.
fn compile_strip_prefix(
    route: &RouteSection,
    index: usize,
    matcher: Option<&RouteMatcher>,
    problems: &mut Problems,
) -> Option<usize> {
    let Some(prefix) = &route.strip_prefix else {
        return Some(0);
    };
    let path = format!("routes[{index}].strip_prefix");
    let prefix_pattern = match PathPattern::parse(prefix) {
        Ok(p) => p,
        Err(e) => {
            problems.at(path, e);
            return None;
        }
    };
    let route_pattern = &matcher?.path;
    if !route_pattern.starts_with(&prefix_pattern) {
        problems.at(
            path,
            format!(
                "\"{prefix}\" is not a leading part of the route's path \"{}\"",
                route.path
            ),
        );
        return None;
    }
    Some(prefix_pattern.segment_count())
}

/// The path to send upstream: the first `segments` segments removed, `/` if nothing is left.
pub fn strip_segments(path: &str, segments: usize) -> &str {
    if segments == 0 {
        return path;
    }
    let mut slashes = path.match_indices('/').skip(segments);
    match slashes.next() {
        Some((i, _)) => &path[i..],
        None => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_text(text: &str) -> Result<Snapshot, ConfigErrors> {
        let ctx = config::BuildContext::for_validation().unwrap();
        compile(config::parse_str(text, "t.toml", |_| None, &ctx)?, None)
    }

    const UPSTREAM: &str = "[upstreams.users]\ntargets = [\"127.0.0.1:3001\"]\n";

    #[test]
    fn strip_prefix_removes_whole_segments() {
        assert_eq!(strip_segments("/api/v1/users/42", 2), "/users/42");
        assert_eq!(strip_segments("/api/v1", 2), "/");
        assert_eq!(strip_segments("/api/v1/", 2), "/");
        assert_eq!(strip_segments("/x", 0), "/x");
    }

    #[test]
    fn a_valid_config_compiles() {
        let s = compile_text(&format!(
            "{UPSTREAM}[[routes]]\nname = \"users\"\npath = \"/api/v1/users\"\nupstream = \"users\"\nstrip_prefix = \"/api/v1\"\n"
        ))
        .unwrap();
        assert_eq!(s.pools.len(), 1);
        assert_eq!(s.routes.entries().next().unwrap().1.strip_segments, 2);
    }

    #[test]
    fn semantic_problems_are_all_reported_at_once() {
        let err = compile_text(&format!(
            "[server]\nlisten = [\"nowhere\"]\ntrusted_proxies = [\"10.0.0.0/33\"]\n\n{UPSTREAM}\
             [upstreams.empty]\ntargets = []\n\n\
             [[routes]]\nname = \"a\"\npath = \"/a\"\nupstream = \"user\"\n\n\
             [[routes]]\nname = \"a\"\npath = \"a\"\nupstream = \"users\"\nmethods = [\"get\"]\n\n\
             [[routes]]\nname = \"c\"\npath = \"/c\"\nupstream = \"users\"\nstrip_prefix = \"/d\"\nplugins = [\"nope\"]\n\n\
             [[routes]]\nname = \"e\"\npath = \"/e\"\nupstream = \"users\"\n\n\
             [[routes]]\nname = \"f\"\npath = \"/e/\"\nupstream = \"users\"\n"
        ))
        .err()
        .expect("the config must be rejected");
        let text = err.lines().join("\n");
        for expected in [
            "t.toml:2:11: server.listen[0]: \"nowhere\" is not an ip:port address",
            "server.trusted_proxies[0]: \"10.0.0.0/33\" is not an IP address or CIDR range",
            "upstreams.empty.targets: needs at least one target",
            "routes[0].upstream: no upstream named \"user\"",
            "routes[1].name: route name \"a\" is already used by routes[0]",
            "routes[1].path: path \"a\" must start with \"/\"",
            "routes[1].methods[0]: \"get\" is not an HTTP method",
            "routes[2].plugins[0]: no plugin named \"nope\"",
            "routes[2].strip_prefix: \"/d\" is not a leading part",
            "routes[4]: could take the same requests as routes[3]",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(err.errors.len(), 10, "{text}");
    }

    #[test]
    fn cache_plugins_need_the_store_and_an_upstream_route() {
        let plugins = "[plugins.c]\nkind = \"cache\"\nttl = \"30s\"\n\n\
                       [plugins.d]\nkind = \"cache\"\nttl = \"0s\"\nstatuses = [99]\nkey_headers = [\"bad header\"]\n\n";
        let routes =
            "[[routes]]\nname = \"a\"\npath = \"/a\"\nupstream = \"users\"\nplugins = [\"c\"]\n";
        let err = compile_text(&format!("{UPSTREAM}{plugins}{routes}"))
            .err()
            .expect("no [cache] table");
        let text = err.lines().join("\n");
        for expected in [
            "routes[0].plugins[0]: plugin \"c\" caches, which needs a [cache] table with max_size",
            "plugins.d: ttl must be more than 0s; statuses: 99 is not an HTTP status; key_headers: \"bad header\" is not a header name",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }

        let twice = "[cache]\nmax_size = \"1MiB\"\n[plugins.c]\nkind = \"cache\"\nttl = \"30s\"\n\n\
                     [plugins.e]\nkind = \"cache\"\nttl = \"5s\"\n\n\
                     [[routes]]\nname = \"a\"\npath = \"/a\"\nupstream = \"users\"\nplugins = [\"c\", \"e\"]\n";
        let err = compile_text(&format!("{UPSTREAM}{twice}"))
            .err()
            .expect("two caches");
        assert!(
            err.lines()
                .join("\n")
                .contains("routes[0].plugins[1]: a route takes at most one cache plugin"),
            "{:?}",
            err.lines()
        );

        let ok = "[cache]\nmax_size = \"1MiB\"\n[plugins.c]\nkind = \"cache\"\nttl = \"30s\"\n\n\
                  [[routes]]\nname = \"a\"\npath = \"/a\"\nupstream = \"users\"\nplugins = [\"c\"]\n";
        let s = compile_text(&format!("{UPSTREAM}{ok}")).unwrap();
        assert_eq!(s.cache_max_size, 1 << 20);
        assert!(s.proxy_routes, "route a caches");
        let uncached = "[cache]\nmax_size = \"1MiB\"\n\n\
                        [[routes]]\nname = \"a\"\npath = \"/a\"\nupstream = \"users\"\n";
        let plain = compile_text(&format!("{UPSTREAM}{uncached}")).unwrap();
        assert!(!plain.proxy_routes, "a [cache] table alone caches nothing");
        let route = s.routes.entries().next().unwrap().1;
        assert!(route.cache.is_some() && route.plugins.is_empty());
    }
}
