//! The config file's model, as the user writes it (SPEC.md). Kept apart from the compiled
//! runtime model in `snapshot`, so the file format can stay stable while internals change.
//! Every table rejects unknown keys; defaults are the documented ones.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::units::{ByteSize, ConfigDuration};

fn secs(n: u64) -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(n))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Worker threads; 0 means one per CPU core.
    #[serde(default)]
    pub threads: usize,
    #[serde(default = "default_grace_period")]
    pub grace_period: ConfigDuration,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default = "default_max_request_body")]
    pub max_request_body: ByteSize,
    #[serde(default = "default_access_log")]
    pub access_log: String,
    /// Where a running instance hands its listeners to one started with `portico -u`.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    /// Written when running with `-d`.
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    /// `false` sends every request through Pingora's proxy instead of Portico's own HTTP/1
    /// driver: a troubleshooting switch.
    #[serde(default = "default_true")]
    pub fast_path: bool,
    /// The whole request head must arrive within this (408 and close).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: ConfigDuration,
    /// Open client connections per instance; past it new ones are closed at once.
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: u32,
    /// The whole request head (431 past it).
    #[serde(default = "default_max_header_size")]
    pub max_header_size: ByteSize,
    /// One header line (431), or the request line (414).
    #[serde(default = "default_max_header_line")]
    pub max_header_line: ByteSize,
    /// Header names with "_": dropped, refused (400) or let through.
    #[serde(default)]
    pub underscore_headers: UnderscoreHeaders,
    /// A request body must arrive whole within this, counted from the end of its head (408).
    #[serde(default = "default_body_timeout")]
    pub body_timeout: ConfigDuration,
    /// The longest one write of the answer to a client may take (when `min_send_rate` is 0).
    #[serde(default = "default_send_timeout")]
    pub send_timeout: ConfigDuration,
    /// Bytes per second a client must read an answer at, at least: each write may take as
    /// long as its size at this rate (and at least 1 s). "0" turns it off.
    #[serde(default = "default_min_send_rate")]
    pub min_send_rate: ByteSize,
    /// Offer HTTP/2: by ALPN on TLS listeners, h2c with prior knowledge on plain ones.
    #[serde(default)]
    pub http2: bool,
}

fn default_body_timeout() -> ConfigDuration {
    secs(60)
}
fn default_send_timeout() -> ConfigDuration {
    secs(60)
}
fn default_min_send_rate() -> ByteSize {
    ByteSize(1024)
}

/// `server.underscore_headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoreHeaders {
    #[default]
    Drop,
    Reject,
    Allow,
}

fn default_header_timeout() -> ConfigDuration {
    secs(10)
}
fn default_max_client_connections() -> u32 {
    10_000
}
fn default_max_header_size() -> ByteSize {
    ByteSize(60 << 10)
}
fn default_max_header_line() -> ByteSize {
    ByteSize(16 << 10)
}

fn default_true() -> bool {
    true
}

fn default_upgrade_sock() -> String {
    "/tmp/portico_upgrade.sock".into()
}
fn default_pid_file() -> String {
    "/tmp/portico.pid".into()
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".into()]
}
fn default_grace_period() -> ConfigDuration {
    secs(10)
}
fn default_max_request_body() -> ByteSize {
    ByteSize(10 << 20)
}
fn default_access_log() -> String {
    "stdout".into()
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            threads: 0,
            grace_period: default_grace_period(),
            trusted_proxies: Vec::new(),
            max_request_body: default_max_request_body(),
            access_log: default_access_log(),
            upgrade_sock: default_upgrade_sock(),
            pid_file: default_pid_file(),
            fast_path: true,
            header_timeout: default_header_timeout(),
            max_client_connections: default_max_client_connections(),
            max_header_size: default_max_header_size(),
            max_header_line: default_max_header_line(),
            underscore_headers: UnderscoreHeaders::default(),
            body_timeout: default_body_timeout(),
            send_timeout: default_send_timeout(),
            min_send_rate: default_min_send_rate(),
            http2: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Required on every admin endpoint but `/healthz` and `/readyz` when set.
    #[serde(default)]
    pub token: Option<String>,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9901".into()
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: default_admin_listen(),
            token: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// One server. Exactly one of `url`, `cluster` and `sentinel`.
    #[serde(default)]
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster.
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    #[serde(default)]
    pub sentinel: Option<SentinelSection>,
    /// Certificates for `rediss://`.
    #[serde(default)]
    pub tls: Option<RedisTlsSection>,
    #[serde(default = "default_redis_timeout")]
    pub timeout: ConfigDuration,
}

/// `[redis] sentinel = { master, nodes }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSection {
    pub master: String,
    pub nodes: Vec<String>,
}

/// `[redis] tls = { ca, cert, key }`: files, relative to the config's folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsSection {
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

/// `[cache] shared`: where the second tier lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedCache {
    Redis,
}

/// `[cache]`: the one store every `cache` plugin shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// The most the store holds, counting bodies, headers and bookkeeping.
    pub max_size: ByteSize,
    /// A second tier behind the memory store, shared by every instance.
    #[serde(default)]
    pub shared: Option<SharedCache>,
}

fn default_redis_timeout() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_millis(25))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    Random,
    LeastConn,
    ConsistentHash,
    /// Power of two choices over in-flight requests.
    P2c,
    /// Power of two choices over peak-EWMA latency times in-flight requests.
    Ewma,
}

impl Balance {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Random => "random",
            Balance::LeastConn => "least_conn",
            Balance::ConsistentHash => "consistent_hash",
            Balance::P2c => "p2c",
            Balance::Ewma => "ewma",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    /// Where the targets come from instead of `targets` (SPEC.md "Service discovery").
    pub discovery: Option<DiscoverySpec>,
    #[serde(default = "default_balance")]
    pub balance: Balance,
    pub hash_key: Option<String>,
    /// A target that joins or recovers ramps its share up over this long.
    pub slow_start: Option<ConfigDuration>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    #[serde(default = "default_read_timeout")]
    pub read_timeout: ConfigDuration,
    /// How long writing the request upstream may stall; defaults to `read_timeout`.
    pub write_timeout: Option<ConfigDuration>,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    pub health_check: Option<HealthCheckSpec>,
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    pub retry: Option<RetrySpec>,
    /// Per target: open connections, busy and idle together.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Per target: idle keep-alive connections kept for reuse; by default 128, or
    /// `max_connections` when that is lower.
    pub max_idle: Option<u32>,
    /// What the targets speak: HTTP/1.1 (over TLS when `tls` is set), HTTP/2 over TLS, or
    /// HTTP/2 in the clear with prior knowledge.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the targets; verification is always on.
    pub tls: Option<UpstreamTls>,
}

/// `upstreams.NAME.discovery`: `{ kind = "dns", name, port }`, `{ kind = "dns_srv", name }`
/// or `{ kind = "consul", service, tag, passing }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySpec {
    pub kind: DiscoveryKind,
    /// The DNS name (`dns`, `dns_srv`).
    pub name: Option<String>,
    /// The port of every address (`dns`).
    pub port: Option<u16>,
    /// The Consul service (`consul`).
    pub service: Option<String>,
    /// Only instances with this tag (`consul`).
    pub tag: Option<String>,
    /// Only instances whose checks pass (`consul`; the default).
    #[serde(default = "default_true")]
    pub passing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryKind {
    Dns,
    DnsSrv,
    Consul,
}

impl DiscoveryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoveryKind::Dns => "dns",
            DiscoveryKind::DnsSrv => "dns_srv",
            DiscoveryKind::Consul => "consul",
        }
    }
}

/// `[dns]`: the resolvers discovery asks (the system's resolv.conf without it), and the
/// bounds on how long an answer is used.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default = "default_min_ttl")]
    pub min_ttl: ConfigDuration,
    #[serde(default = "default_max_ttl")]
    pub max_ttl: ConfigDuration,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            servers: Vec::new(),
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
        }
    }
}

fn default_min_ttl() -> ConfigDuration {
    secs(1)
}
fn default_max_ttl() -> ConfigDuration {
    secs(300)
}

/// `[consul]`: the agent discovery watches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulSection {
    pub address: String,
    pub token: Option<String>,
    pub datacenter: Option<String>,
}

/// `[tracing]`: spans to an OpenTelemetry collector over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    /// The collector's traces URL, `http://` or `https://` (Jaeger: `:4318/v1/traces`).
    pub otlp_endpoint: String,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of the traces Portico starts that are kept; a caller's sampled flag is
    /// followed either way. OpenTelemetry's default sampler keeps every trace, and so does this.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Sent with every export (a collector's `authorization`, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_service_name() -> String {
    "portico".into()
}
fn default_sample_ratio() -> f64 {
    1.0
}

/// `upstreams.NAME.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    H1,
    H2,
    H2c,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::H1 => "h1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

/// `tls = { sni, ca, cert, key }`: paths relative to the config file's folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// The name sent and verified; by default each target's host.
    pub sni: Option<String>,
    /// PEM CA certificates to verify the targets against; by default the system's roots.
    pub ca: Option<String>,
    /// A client certificate (PEM chain) and its key, for mTLS to the targets.
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `circuit_breaker = { failures = 5, open_for = "30s", half_open_requests = 1 }`
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Consecutive failures that open the circuit.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    #[serde(default = "default_open_for")]
    pub open_for: ConfigDuration,
    /// Repeated trips double the open time up to this.
    #[serde(default = "default_max_open_for")]
    pub max_open_for: ConfigDuration,
    #[serde(default = "default_half_open_requests")]
    pub half_open_requests: u32,
    /// Which outcomes count as failures: connect, timeout, reset, 5xx.
    #[serde(default = "default_failure_on")]
    pub failure_on: Vec<String>,
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_open_for() -> ConfigDuration {
    secs(30)
}
fn default_max_open_for() -> ConfigDuration {
    secs(300)
}
fn default_half_open_requests() -> u32 {
    1
}
fn default_failure_on() -> Vec<String> {
    ["connect", "timeout", "reset", "5xx"]
        .map(String::from)
        .to_vec()
}

/// `retry = { attempts = 2, backoff = "25ms" }`
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Retries after the first attempt, each on another target when there is one.
    pub attempts: u32,
    #[serde(default = "default_backoff")]
    pub backoff: ConfigDuration,
    /// Retries may add at most this percentage of extra requests over 10 seconds.
    #[serde(default = "default_budget_percent")]
    pub budget_percent: u32,
    /// Retries always allowed per 10 seconds, however quiet the upstream.
    #[serde(default = "default_min_retries")]
    pub min_retries: u64,
}

fn default_backoff() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_millis(25))
}
fn default_budget_percent() -> u32 {
    20
}
fn default_min_retries() -> u64 {
    10
}

fn default_balance() -> Balance {
    Balance::RoundRobin
}
fn default_connect_timeout() -> ConfigDuration {
    secs(1)
}
fn default_read_timeout() -> ConfigDuration {
    secs(30)
}
fn default_idle_timeout() -> ConfigDuration {
    secs(60)
}
fn default_max_connections() -> u32 {
    1024
}
/// `max_idle` when the config leaves it out: never more than `max_connections`.
pub const DEFAULT_MAX_IDLE: u32 = 128;

/// A target is `"host:port"` or `{ addr = "host:port", weight = 3 }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetSpec {
    pub addr: String,
    pub weight: u32,
}

impl<'de> Deserialize<'de> for TargetSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Weighted {
            addr: String,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        struct TargetVisitor;
        impl<'de> Visitor<'de> for TargetVisitor {
            type Value = TargetSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port\" or { addr = \"host:port\", weight = N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetSpec, E> {
                Ok(TargetSpec {
                    addr: v.to_string(),
                    weight: 1,
                })
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<TargetSpec, M::Error> {
                let w = Weighted::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TargetSpec {
                    addr: w.addr,
                    weight: w.weight,
                })
            }
        }
        d.deserialize_any(TargetVisitor)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    #[serde(default = "default_health_path")]
    pub path: String,
    /// The Host header of the probe; defaults to `localhost`.
    pub host: Option<String>,
    #[serde(default = "default_health_interval")]
    pub interval: ConfigDuration,
    #[serde(default = "default_health_timeout")]
    pub timeout: ConfigDuration,
    /// Consecutive passes that bring a target back.
    #[serde(default = "default_healthy")]
    pub healthy: usize,
    /// Consecutive failures that take a target out.
    #[serde(default = "default_unhealthy")]
    pub unhealthy: usize,
}

fn default_health_path() -> String {
    "/health".into()
}
fn default_health_interval() -> ConfigDuration {
    secs(5)
}
fn default_health_timeout() -> ConfigDuration {
    secs(1)
}
fn default_healthy() -> usize {
    2
}
fn default_unhealthy() -> usize {
    3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSection {
    #[serde(default)]
    pub api_keys: Vec<String>,
    pub tier: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub name: String,
    pub host: Option<String>,
    pub path: String,
    pub methods: Option<Vec<String>>,
    /// Request headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Where the route proxies to; a route has one of `upstream`, `split` or `compose`.
    pub upstream: Option<String>,
    /// A weighted share of the requests to each of several upstreams (A/B, canary).
    pub split: Option<Vec<SplitSpec>>,
    /// What keeps a client on its variant: `cookie:NAME`, `header:NAME`, `consumer`, `ip`.
    pub split_key: Option<String>,
    /// Copies of a share of the requests to another upstream; their answers are discarded.
    pub mirror: Option<MirrorSpec>,
    pub compose: Option<ComposeSpec>,
    /// A schema of `[graphql.NAME]` this route serves.
    pub graphql: Option<String>,
    pub strip_prefix: Option<String>,
    /// A deadline for the whole request upstream, retries included.
    pub timeout: Option<ConfigDuration>,
    #[serde(default)]
    pub plugins: Vec<String>,
    /// Allow `Upgrade: websocket` on this route (refused elsewhere).
    #[serde(default)]
    pub websocket: bool,
    /// An upgraded connection with no bytes either way this long is closed (default 5m).
    pub tunnel_idle_timeout: Option<ConfigDuration>,
    /// A regex path rewrite before the request goes upstream (instead of `strip_prefix`).
    pub rewrite: Option<RewriteSpec>,
    /// This route's limit on request bodies, instead of `server.max_request_body`.
    pub max_request_body: Option<ByteSize>,
    /// What the route answers instead of the gateway's 502/503/504.
    pub fallback: Option<FallbackSpec>,
}

/// `mirror = { upstream = "posts-shadow", percent = 5 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    pub upstream: String,
    #[serde(default = "default_mirror_percent")]
    pub percent: f64,
}

fn default_mirror_percent() -> f64 {
    100.0
}

/// `{ upstream = "posts-b", weight = 10 }`, one variant of a `split`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    pub upstream: String,
    pub weight: u32,
}

/// `fallback = { status = 200, body_file = "fallback/posts.json", content_type = "application/json" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSpec {
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    pub body_file: String,
    pub content_type: Option<String>,
}

fn default_fallback_status() -> u16 {
    200
}

/// `rewrite = { pattern = "^/api/v1/(.*)$", to = "/v1/$1" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    pub pattern: String,
    pub to: String,
}

/// `compose = { timeout = "2s", calls = [...] }`: one call, many services, one answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeSpec {
    #[serde(default = "default_compose_timeout")]
    pub timeout: ConfigDuration,
    pub calls: Vec<CallSpec>,
}

fn default_compose_timeout() -> ConfigDuration {
    secs(5)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    pub key: String,
    pub upstream: String,
    pub path: String,
    pub method: Option<String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub required: bool,
    pub timeout: Option<ConfigDuration>,
    /// `KEY.path.to.array`: run once per element, `{item}` in the templates.
    pub for_each: Option<String>,
    #[serde(default = "default_max_fan_out")]
    pub max_fan_out: usize,
}

fn default_max_fan_out() -> usize {
    10
}

/// `[graphql.NAME]`: a GraphQL schema Portico serves itself, its fields resolved by calls to
/// upstreams (SPEC.md "GraphQL").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlSection {
    /// The SDL file, relative to the config file's folder.
    pub schema: String,
    #[serde(default = "default_graphql_max_depth")]
    pub max_depth: usize,
    #[serde(default = "default_graphql_max_complexity")]
    pub max_complexity: usize,
    #[serde(default = "default_graphql_max_aliases")]
    pub max_aliases: usize,
    #[serde(default = "default_graphql_max_query_size")]
    pub max_query_size: ByteSize,
    /// Whether `__schema` and `__type` may be asked (off unless turned on).
    #[serde(default)]
    pub introspection: bool,
    /// An allow-list file of sha256 hash -> query; anything else is refused.
    pub persisted_queries: Option<String>,
    #[serde(default)]
    pub resolvers: Vec<ResolverSpec>,
}

fn default_graphql_max_depth() -> usize {
    10
}
fn default_graphql_max_complexity() -> usize {
    1000
}
fn default_graphql_max_aliases() -> usize {
    30
}
fn default_graphql_max_query_size() -> ByteSize {
    ByteSize(16 << 10)
}

/// One `{ field = "Type.field", ... }` of a schema's `resolvers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverSpec {
    pub field: String,
    pub upstream: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON body (POST): strings are templates, and a string that is one placeholder
    /// takes its value as it is (an object, a list).
    pub body: Option<toml::Value>,
    pub batch: Option<BatchSpec>,
    /// `"args"`: the field makes no call; it is an object of its arguments.
    pub object: Option<String>,
    /// Sibling fields whose answers this call's templates read (`{sibling.NAME}`).
    #[serde(default)]
    pub after: Vec<String>,
    pub timeout: Option<ConfigDuration>,
}

/// `batch = { keys = "parent.product_ids", key = "product_id", max = 50 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    pub keys: String,
    pub key: String,
    #[serde(default = "default_batch_max")]
    pub max: usize,
}

fn default_batch_max() -> usize {
    50
}

/// `[tls]`: TLS listeners and their certificates (SPEC.md "Listeners, TLS and protocols").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub listen: Vec<String>,
    /// Chosen by SNI from each certificate's names; the first is the default.
    pub certificates: Vec<CertificateSpec>,
    #[serde(default = "default_min_version")]
    pub min_version: String,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca: Option<String>,
    /// Plain listeners answer 308 to the https:// URL.
    #[serde(default)]
    pub redirect_http: bool,
}

/// One `{ cert = "...", key = "..." }`: a PEM chain (leaf first) and its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    pub cert: String,
    pub key: String,
}

fn default_min_version() -> String {
    "1.2".into()
}

/// The whole file, each part already deserialized on its own (see `load`), so one bad
/// route does not hide the problems of the next.
#[derive(Debug, Default)]
pub struct FileConfig {
    pub server: ServerSection,
    pub admin: AdminSection,
    pub redis: Option<RedisSection>,
    pub cache: Option<CacheSection>,
    pub tls: Option<TlsSection>,
    pub dns: Option<DnsSection>,
    pub consul: Option<ConsulSection>,
    pub tracing: Option<TracingSection>,
    pub upstreams: BTreeMap<String, UpstreamSection>,
    pub graphql: BTreeMap<String, GraphqlSection>,
    pub consumers: BTreeMap<String, ConsumerSection>,
    /// Built plugin instances by name, with their kind.
    pub plugins: BTreeMap<String, PluginInstance>,
    /// The shared Redis, with the fingerprint of its section.
    pub redis_store: Option<(
        String,
        std::sync::Arc<portico_plugins::redis_store::RedisStore>,
    )>,
    /// Routes with their index in the file, for error paths.
    pub routes: Vec<(usize, RouteSection)>,
    /// Names that are present in the file but failed to parse; references to them are not
    /// reported a second time as dangling.
    pub broken_upstreams: Vec<String>,
    pub broken_plugins: Vec<String>,
    pub broken_graphql: Vec<String>,
}

#[derive(Clone)]
pub struct PluginInstance {
    pub kind: String,
    pub plugin: PluginBody,
    /// Its config as written (with what it depends on: consumers, redis); an instance with
    /// the same fingerprint is kept across a reload, with its state.
    pub fingerprint: String,
}

/// What a plugin instance is: one more link in a route's chain of request/response hooks, or
/// the cache, which works through Pingora's cache hooks instead.
#[derive(Clone)]
pub enum PluginBody {
    Chain(std::sync::Arc<dyn portico_plugins::Plugin>),
    Cache(std::sync::Arc<crate::cache::CachePolicy>),
    Compress(std::sync::Arc<crate::proxy::compress::CompressPolicy>),
}

impl fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PluginInstance({})", self.kind)
    }
}
