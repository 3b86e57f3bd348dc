//! `kind = "rate_limit"`: at most `limit` requests per `window` for each key (client IP,
//! consumer, route, a header or a claim), with per-tier limits, in this process
//! (`store = "local"`) or shared by every instance through Redis (`store = "redis"`).
//! See `window.rs` for the algorithm and its error bound, `shared.rs` for how Redis is used
//! without a round trip per request.

mod local;
mod shared;
pub mod window;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::header_edit::edit_response_headers;
use crate::metrics::PluginMetrics;
use crate::units::ConfigDuration;
use crate::{ErrorCode, Flow, Plugin, PluginCtx, PluginDoc, PluginError, Rejection};
use local::LocalStore;
use shared::SharedLimiter;
use window::Decision;

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// A key as stored: a digest, so a long or hostile header value costs 16 bytes.
pub type KeyDigest = [u8; 16];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Local,
    Redis,
}

/// What to do when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Limit per instance with the same limit (the default).
    Local,
    Allow,
    Deny,
}

fn default_store() -> StoreKind {
    StoreKind::Local
}
fn default_on_store_error() -> OnStoreError {
    OnStoreError::Local
}
fn default_key() -> String {
    "ip".into()
}
fn default_max_keys() -> usize {
    100_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub limit: u64,
    pub window: ConfigDuration,
    /// ip | consumer | route | header:NAME | claim:NAME
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default = "default_store")]
    pub store: StoreKind,
    #[serde(default = "default_on_store_error")]
    pub on_store_error: OnStoreError,
    #[serde(default)]
    pub limits_by_tier: BTreeMap<String, u64>,
    /// Keys tracked in memory at most (per store), bounding memory under a flood of keys.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    ClientIp,
    Consumer,
    Route,
    Header(HeaderName),
    Claim(String),
}

impl KeySource {
    fn parse(text: &str) -> Result<KeySource, String> {
        let bad =
            || format!("key \"{text}\" must be ip, consumer, route, header:NAME or claim:NAME");
        match text.split_once(':') {
            None if text == "ip" => Ok(KeySource::ClientIp),
            None if text == "consumer" => Ok(KeySource::Consumer),
            None if text == "route" => Ok(KeySource::Route),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(KeySource::Header)
                .map_err(|_| bad()),
            Some(("claim", name)) if !name.is_empty() => Ok(KeySource::Claim(name.to_string())),
            _ => Err(bad()),
        }
    }

    /// The key as the config writes it.
    fn text(&self) -> String {
        match self {
            KeySource::ClientIp => "ip".into(),
            KeySource::Consumer => "consumer".into(),
            KeySource::Route => "route".into(),
            KeySource::Header(name) => format!("header:{name}"),
            KeySource::Claim(claim) => format!("claim:{claim}"),
        }
    }
}

pub struct RateLimitPlugin {
    name: String,
    limit: u64,
    /// `limit` as a header value, made once.
    limit_value: HeaderValue,
    window_ms: u64,
    window_text: String,
    key: KeySource,
    limits_by_tier: BTreeMap<String, u64>,
    on_store_error: OnStoreError,
    local: LocalStore,
    shared: Option<SharedLimiter>,
    /// This plugin's decision counters, resolved once rather than looked up per request.
    counters: Counters,
}

struct Counters {
    allowed: prometheus::IntCounter,
    limited: prometheus::IntCounter,
    store_error: prometheus::IntCounter,
}

#[derive(Clone, Copy)]
enum Decided {
    Allowed,
    Limited,
    StoreError,
}

/// A client address as a key: IPv4 as its IPv4-mapped IPv6 form.
fn ip_key(ip: std::net::IpAddr) -> KeyDigest {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// The headers every response of a limited route carries, kept for `on_response`.
#[derive(Debug, Clone, Copy)]
struct RateLimitHeaders(Decision);

impl RateLimitPlugin {
    pub fn new(
        name: &str,
        cfg: RateLimitConfig,
        redis: Option<Arc<crate::redis_store::RedisStore>>,
        metrics: Arc<PluginMetrics>,
    ) -> Result<Self, String> {
        if cfg.limit == 0 {
            return Err("`limit` must be at least 1".into());
        }
        let window_ms = cfg.window.0.as_millis() as u64;
        if window_ms < 1000 {
            return Err("`window` must be at least 1s".into());
        }
        if let Some((tier, _)) = cfg.limits_by_tier.iter().find(|(_, l)| **l == 0) {
            return Err(format!("limits_by_tier.{tier} must be at least 1"));
        }
        let shared = match (cfg.store, redis) {
            (StoreKind::Local, _) => None,
            (StoreKind::Redis, Some(redis)) => Some(SharedLimiter::new(redis, name, cfg.max_keys)),
            (StoreKind::Redis, None) => {
                return Err("store = \"redis\" needs a [redis] section with a valid url".into())
            }
        };
        Ok(RateLimitPlugin {
            name: name.to_string(),
            limit: cfg.limit,
            limit_value: HeaderValue::from(cfg.limit),
            window_ms,
            window_text: humantime(window_ms),
            key: KeySource::parse(&cfg.key)?,
            limits_by_tier: cfg.limits_by_tier,
            on_store_error: cfg.on_store_error,
            local: LocalStore::new(cfg.max_keys),
            shared,
            counters: Counters {
                allowed: metrics
                    .rate_limit_decisions
                    .with_label_values(&[name, "allowed"]),
                limited: metrics
                    .rate_limit_decisions
                    .with_label_values(&[name, "limited"]),
                store_error: metrics
                    .rate_limit_decisions
                    .with_label_values(&[name, "store_error"]),
            },
        })
    }

    /// The key's digest. A consumer, header or claim key that is absent falls back to the
    /// client IP, so anonymous callers are still limited one by one.
    fn key(&self, session: &Session, cx: &PluginCtx) -> KeyDigest {
        // The common case, costs no string and no hash: the address's own 16 bytes.
        if self.key == KeySource::ClientIp {
            return ip_key(cx.client_ip);
        }
        let ip = || format!("ip:{}", cx.client_ip);
        let text = match &self.key {
            KeySource::ClientIp => ip(),
            KeySource::Route => format!("route:{}", cx.route),
            KeySource::Consumer => cx
                .identity
                .as_ref()
                .map_or_else(ip, |id| format!("consumer:{}", id.consumer)),
            KeySource::Header(name) => {
                session.req_header().headers.get(name).map_or_else(ip, |v| {
                    format!("header:{}", String::from_utf8_lossy(v.as_bytes()))
                })
            }
            KeySource::Claim(claim) => cx.claim(claim).map_or_else(ip, |v| format!("claim:{v}")),
        };
        let digest = Sha256::digest(text.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        key
    }

    fn limit_for(&self, cx: &PluginCtx) -> u64 {
        cx.identity
            .as_ref()
            .and_then(|id| id.tier.as_ref())
            .and_then(|tier| self.limits_by_tier.get(tier))
            .copied()
            .unwrap_or(self.limit)
    }

    fn count(&self, decision: Decided) {
        match decision {
            Decided::Allowed => self.counters.allowed.inc(),
            Decided::Limited => self.counters.limited.inc(),
            Decided::StoreError => self.counters.store_error.inc(),
        }
    }

    /// Count one request for `key` against `limit` and decide, in memory or through Redis
    /// with this plugin's fallback: what `on_request` does once it has the key. Public for the
    /// criterion benchmark (`benches/rate_limit.rs`).
    pub async fn decide(&self, key: &KeyDigest, limit: u64) -> Decision {
        let Some(shared) = &self.shared else {
            return self
                .local
                .check(key, self.local.now_ms(), self.window_ms, limit);
        };
        match shared.check(key, self.window_ms, limit).await {
            Ok(decision) => decision,
            Err(e) => {
                self.count(Decided::StoreError);
                log::debug!("rate limit {}: {e}", self.name);
                match self.on_store_error {
                    OnStoreError::Local => {
                        self.local
                            .check(key, self.local.now_ms(), self.window_ms, limit)
                    }
                    OnStoreError::Allow => Decision {
                        allowed: true,
                        limit,
                        remaining: limit,
                        reset_secs: 1,
                        retry_after_secs: 0,
                    },
                    OnStoreError::Deny => Decision {
                        allowed: false,
                        limit,
                        remaining: 0,
                        reset_secs: 1,
                        retry_after_secs: 1,
                    },
                }
            }
        }
    }
}

fn humantime(ms: u64) -> String {
    match ms {
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

/// A count as a header value. The values up to `SMALL` (every reset time of a window up to
/// ~17 minutes, most limits and remainders) are made once and shared: writing and allocating
/// three numbers on every response was a good part of this plugin's cost.
fn number(n: u64) -> HeaderValue {
    const SMALL: u64 = 1024;
    static VALUES: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    if n >= SMALL {
        return HeaderValue::from(n);
    }
    let values = VALUES.get_or_init(|| (0..SMALL).map(HeaderValue::from).collect());
    values[n as usize].clone()
}

fn headers(d: &Decision) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = vec![
        (RATELIMIT_LIMIT, number(d.limit)),
        (RATELIMIT_REMAINING, number(d.remaining)),
        (RATELIMIT_RESET, number(d.reset_secs)),
    ];
    if !d.allowed {
        out.push((http::header::RETRY_AFTER, number(d.retry_after_secs)));
    }
    out
}

#[async_trait]
impl Plugin for RateLimitPlugin {
    fn doc(&self) -> Option<PluginDoc> {
        Some(PluginDoc::RateLimit {
            limit: self.limit,
            window: self.window_text.clone(),
            key: self.key.text(),
            limits_by_tier: self.limits_by_tier.clone(),
        })
    }

    async fn on_request(
        &self,
        session: &mut Session,
        cx: &mut PluginCtx,
    ) -> Result<Flow, PluginError> {
        let key = self.key(session, cx);
        let limit = self.limit_for(cx);
        let decision = self.decide(&key, limit).await;
        // With several limits on a route, the client hears about the tightest.
        let tighter = cx
            .extensions
            .get::<RateLimitHeaders>()
            .is_none_or(|RateLimitHeaders(previous)| decision.remaining <= previous.remaining);
        if tighter {
            cx.extensions.insert(RateLimitHeaders(decision));
        }
        if decision.allowed {
            self.count(Decided::Allowed);
            return Ok(Flow::Continue);
        }
        self.count(Decided::Limited);
        let mut rejection = Rejection::new(
            ErrorCode::RateLimited,
            format!("limit of {limit} per {} reached", self.window_text),
        );
        rejection.headers = headers(&decision);
        Ok(Flow::Reject(rejection))
    }

    async fn on_response(
        &self,
        resp: &mut ResponseHeader,
        cx: &mut PluginCtx,
    ) -> Result<(), PluginError> {
        let Some(RateLimitHeaders(d)) = cx.extensions.get::<RateLimitHeaders>() else {
            return Ok(());
        };
        let limit = if d.limit == self.limit {
            self.limit_value.clone()
        } else {
            number(d.limit)
        };
        let values = [
            (RATELIMIT_LIMIT, limit),
            (RATELIMIT_REMAINING, number(d.remaining)),
            (RATELIMIT_RESET, number(d.reset_secs)),
        ];
        // Straight into the header map, with prebuilt names: through `insert_header` each
        // name was parsed again, on every response (callgrind: most of this plugin's cost).
        edit_response_headers(resp, values.len(), |headers| {
            for (name, value) in values {
                headers.insert(name, value);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_alike_whether_shared_or_made() {
        for n in [0, 7, 1023, 1024, 1_000_000_000] {
            assert_eq!(number(n), n.to_string().as_str());
        }
    }

    #[test]
    fn keys_and_windows_are_parsed_once() {
        assert_eq!(KeySource::parse("ip"), Ok(KeySource::ClientIp));
        assert_eq!(
            KeySource::parse("claim:sub"),
            Ok(KeySource::Claim("sub".into()))
        );
        assert!(KeySource::parse("header:bad name").is_err());
        assert!(KeySource::parse("cookie:x").is_err());
        assert_eq!(humantime(60_000), "1m");
        assert_eq!(humantime(1_500), "1500ms");
    }
}
