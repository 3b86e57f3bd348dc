//! A `cache` plugin's settings, compiled, and the HTTP caching rules (RFC 9111) it applies to
//! each response: whether it may be stored in a shared cache, and for how long it is fresh.

use std::time::{Duration, SystemTime};

use http::{header, HeaderName, StatusCode};
use pingora_cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora_cache::filters::calculate_expires_header_time;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheMeta, NoCacheReason, RespCacheable, VarianceBuilder};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;

use crate::config::{ByteSize, ConfigDuration};

/// `[plugins.NAME] kind = "cache"`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Freshness when the upstream gives none (no max-age, s-maxage or Expires).
    pub ttl: ConfigDuration,
    /// The statuses that may be stored.
    #[serde(default = "default_statuses")]
    pub statuses: Vec<u16>,
    /// How long past freshness a stale answer may be served while one request refreshes it
    /// in the background, unless the response's own Cache-Control says otherwise.
    #[serde(default)]
    pub stale_while_revalidate: Option<ConfigDuration>,
    /// How long past freshness a stale answer may be served when the upstream fails.
    #[serde(default)]
    pub stale_if_error: Option<ConfigDuration>,
    /// How long concurrent misses for one key wait for the one request that fetches it.
    #[serde(default)]
    pub lock_timeout: Option<ConfigDuration>,
    /// Larger responses are passed through, not stored.
    #[serde(default)]
    pub max_object_size: Option<ByteSize>,
    /// Request headers whose values are part of the key (besides what `Vary` asks for).
    #[serde(default)]
    pub key_headers: Vec<String>,
}

fn default_statuses() -> Vec<u16> {
    vec![200, 203, 301, 404, 410]
}

const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_OBJECT_SIZE: u64 = 8 * 1024 * 1024;

/// A compiled `cache` plugin.
#[derive(Debug)]
pub struct CachePolicy {
    pub ttl: Duration,
    statuses: Vec<StatusCode>,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub lock_timeout: Duration,
    pub max_object_size: usize,
    pub key_headers: Vec<HeaderName>,
}

impl CachePolicy {
    pub fn compile(config: CacheConfig) -> Result<CachePolicy, String> {
        let mut problems = Vec::new();
        if config.ttl.0.is_zero() {
            problems.push("ttl must be more than 0s".to_string());
        }
        let mut statuses = Vec::new();
        for code in &config.statuses {
            match StatusCode::from_u16(*code) {
                Ok(s) if (200..600).contains(code) => statuses.push(s),
                _ => problems.push(format!("statuses: {code} is not an HTTP status")),
            }
        }
        let mut key_headers = Vec::new();
        for name in &config.key_headers {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => key_headers.push(h),
                Err(_) => problems.push(format!("key_headers: \"{name}\" is not a header name")),
            }
        }
        let max_object_size = config
            .max_object_size
            .map_or(DEFAULT_MAX_OBJECT_SIZE, |s| s.0);
        if max_object_size == 0 {
            problems.push("max_object_size must be more than 0".to_string());
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(CachePolicy {
            ttl: config.ttl.0,
            statuses,
            stale_while_revalidate: config
                .stale_while_revalidate
                .map_or(Duration::ZERO, |d| d.0),
            stale_if_error: config.stale_if_error.map_or(Duration::ZERO, |d| d.0),
            lock_timeout: config.lock_timeout.map_or(DEFAULT_LOCK_TIMEOUT, |d| d.0),
            max_object_size: usize::try_from(max_object_size).unwrap_or(usize::MAX),
            key_headers,
        })
    }

    /// May this response be stored, and until when is it fresh? `authorization`: the request
    /// carried credentials, so only a response that says it is shareable may be stored.
    pub fn response_cacheable(&self, resp: &ResponseHeader, authorization: bool) -> RespCacheable {
        use RespCacheable::Uncacheable;
        if !self.statuses.contains(&resp.status) {
            return Uncacheable(NoCacheReason::Custom("status"));
        }
        // A cookie is one client's: storing it would hand it to everyone.
        if resp.headers.contains_key(header::SET_COOKIE) {
            return Uncacheable(NoCacheReason::Custom("set-cookie"));
        }
        if vary_names(resp).any(|name| name == "*") {
            return Uncacheable(NoCacheReason::Custom("vary-star"));
        }
        let cc = CacheControl::from_resp_headers(resp);
        if let Some(cc) = &cc {
            // no-cache would need revalidation on every use: not worth storing.
            if cc.no_store() || cc.private() || cc.no_cache() {
                return Uncacheable(NoCacheReason::OriginNotCache);
            }
        }
        if authorization && !cc.as_ref().is_some_and(shareable_with_credentials) {
            return Uncacheable(NoCacheReason::Custom("authorization"));
        }

        let now = SystemTime::now();
        let fresh_until = cc
            .as_ref()
            .and_then(|cc| cc.fresh_duration())
            .map(|ttl| fresh_from(now, ttl))
            .or_else(|| calculate_expires_header_time(resp))
            .unwrap_or_else(|| fresh_from(now, self.ttl));
        let swr = cc
            .as_ref()
            .and_then(|cc| cc.serve_stale_while_revalidate_duration())
            .unwrap_or(self.stale_while_revalidate);
        let sie = cc
            .as_ref()
            .and_then(|cc| cc.serve_stale_if_error_duration())
            .unwrap_or(self.stale_if_error);
        let mut header = resp.clone();
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        RespCacheable::Cacheable(CacheMeta::new(
            fresh_until,
            now,
            seconds(swr),
            seconds(sie),
            header,
        ))
    }

    /// May a request with credentials be answered with this stored response?
    pub fn serves_credentials(meta: &CacheMeta) -> bool {
        CacheControl::from_resp_headers(meta.response_header())
            .as_ref()
            .is_some_and(shareable_with_credentials)
    }
}

/// `public` or `s-maxage`: the origin said a response to a request with credentials may be
/// shared (RFC 9111 §3.5).
fn shareable_with_credentials(cc: &CacheControl) -> bool {
    cc.public() || cc.s_maxage().ok().flatten().is_some()
}

fn fresh_from(now: SystemTime, ttl: Duration) -> SystemTime {
    if ttl.is_zero() {
        // Stale from the start: only useful for serving stale.
        now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
    } else {
        now.checked_add(ttl).unwrap_or(now)
    }
}

fn seconds(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// The header names a response's `Vary` lists, lowercased.
fn vary_names(resp: &ResponseHeader) -> impl Iterator<Item = String> + '_ {
    resp.headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
}

/// The variant of a stored response this request asks for: the values of the request headers
/// the response's `Vary` names. `None` when the response does not vary.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    for name in vary_names(meta.response_header()) {
        let value: Vec<u8> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .flat_map(|v| v.as_bytes().iter().copied().chain(*b","))
            .collect();
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CachePolicy {
        CachePolicy::compile(CacheConfig {
            ttl: ConfigDuration(Duration::from_secs(30)),
            statuses: default_statuses(),
            stale_while_revalidate: Some(ConfigDuration(Duration::from_secs(5))),
            stale_if_error: None,
            lock_timeout: None,
            max_object_size: None,
            key_headers: vec![],
        })
        .unwrap()
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).unwrap();
        for (name, value) in headers {
            resp.append_header(name.to_string(), *value).unwrap();
        }
        resp
    }

    /// Seconds of freshness granted, or None when not stored.
    fn fresh_secs(resp: ResponseHeader, authorization: bool) -> Option<u64> {
        match policy().response_cacheable(&resp, authorization) {
            RespCacheable::Cacheable(meta) => Some(
                meta.fresh_until()
                    .duration_since(meta.created())
                    .map_or(0, |d| d.as_secs()),
            ),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn the_origin_decides_freshness_and_ttl_fills_in() {
        assert_eq!(fresh_secs(response(200, &[]), false), Some(30));
        assert_eq!(
            fresh_secs(response(200, &[("cache-control", "max-age=100")]), false),
            Some(100)
        );
        assert_eq!(
            fresh_secs(
                response(200, &[("cache-control", "max-age=100, s-maxage=7")]),
                false
            ),
            Some(7)
        );
        let past = "Thu, 01 Jan 2015 00:00:00 GMT";
        assert_eq!(
            fresh_secs(response(200, &[("expires", past)]), false),
            Some(0)
        );
    }

    #[test]
    fn what_must_not_be_shared_is_not_stored() {
        for cc in ["no-store", "private", "no-cache", "private, max-age=60"] {
            assert_eq!(
                fresh_secs(response(200, &[("cache-control", cc)]), false),
                None,
                "{cc}"
            );
        }
        assert_eq!(
            fresh_secs(response(200, &[("set-cookie", "s=1")]), false),
            None
        );
        assert_eq!(
            fresh_secs(response(200, &[("vary", "accept, *")]), false),
            None
        );
        for status in [201, 204, 302, 400, 401, 403, 429, 500, 502, 503] {
            assert_eq!(fresh_secs(response(status, &[]), false), None, "{status}");
        }
        for status in [200, 203, 301, 404, 410] {
            assert!(
                fresh_secs(response(status, &[]), false).is_some(),
                "{status}"
            );
        }
    }

    #[test]
    fn a_request_with_credentials_is_stored_only_when_the_origin_allows_sharing() {
        assert_eq!(fresh_secs(response(200, &[]), true), None);
        assert_eq!(
            fresh_secs(response(200, &[("cache-control", "max-age=60")]), true),
            None
        );
        assert_eq!(
            fresh_secs(response(200, &[("cache-control", "public")]), true),
            Some(30)
        );
        assert_eq!(
            fresh_secs(response(200, &[("cache-control", "s-maxage=9")]), true),
            Some(9)
        );
    }

    #[test]
    fn stale_windows_come_from_the_origin_or_the_plugin() {
        let meta = |resp| match policy().response_cacheable(&resp, false) {
            RespCacheable::Cacheable(m) => m,
            RespCacheable::Uncacheable(r) => panic!("uncacheable: {r:?}"),
        };
        let m = meta(response(200, &[]));
        assert_eq!(
            (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            (5, 0)
        );
        let m = meta(response(
            200,
            &[("cache-control", "max-age=1, stale-if-error=60")],
        ));
        assert_eq!(
            (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            (5, 60)
        );
        let m = meta(response(
            200,
            &[("cache-control", "max-age=1, must-revalidate")],
        ));
        assert_eq!(
            (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            (0, 0)
        );
    }

    #[test]
    fn variance_follows_the_vary_header() {
        let stored = |vary: &[(&str, &str)]| match policy()
            .response_cacheable(&response(200, vary), false)
        {
            RespCacheable::Cacheable(m) => m,
            RespCacheable::Uncacheable(r) => panic!("{r:?}"),
        };
        let req = |lang: &str| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.insert_header("accept-language", lang).unwrap();
            r
        };
        let plain = stored(&[]);
        assert_eq!(variance(&plain, &req("en")), None);
        let by_lang = stored(&[("vary", "Accept-Language")]);
        assert_ne!(
            variance(&by_lang, &req("en")),
            variance(&by_lang, &req("de"))
        );
        assert_eq!(
            variance(&by_lang, &req("en")),
            variance(&by_lang, &req("en"))
        );
    }
}
