//! `kind = "jwt"`: bearer tokens verified at the edge, so the services behind Portico can
//! trust the identity headers they receive.
//!
//! Algorithms are pinned by config; the token's `alg` only has to be one of them. Keys come
//! from `secret` (HS*), `public_key` (a PEM file) or `jwks_url`. `exp` is required; `nbf`,
//! `iss` and `aud` are checked with `leeway`; `required_scopes` against `scope`/`scp`.
//! Answers follow RFC 6750: 401 `invalid_token` for a bad token, 403 `insufficient_scope`.

mod cache;
mod jwks;
mod keys;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora_http::RequestHeader;

use crate::header_edit::edit_request_headers;
use pingora_proxy::Session;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::consumers::Consumers;
use crate::units::ConfigDuration;
use crate::{ErrorCode, Flow, Identity, Plugin, PluginCtx, PluginDoc, PluginError, Rejection};
use cache::{now_secs, TokenCache, Verified};
use jwks::{Jwks, JwksSettings};
use keys::{pem_key, sane_kid, KeySource, VerifyKey};

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

fn default_leeway() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}
fn default_consumer_claim() -> String {
    "sub".into()
}
fn default_jwks_refresh() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}
fn default_jwks_min_refresh() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}
fn default_jwks_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(2))
}
fn default_cache_size() -> usize {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub algorithms: Vec<String>,
    pub secret: Option<String>,
    pub public_key: Option<String>,
    pub jwks_url: Option<String>,
    pub issuer: Option<OneOrMany>,
    pub audience: Option<OneOrMany>,
    #[serde(default = "default_leeway")]
    pub leeway: ConfigDuration,
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Verified claim → request header sent upstream. The client's own copies of these
    /// headers are always removed.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// The claim that names the consumer (for rate limiting and the access log).
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// The claim that names the consumer's tier; without it, a consumer's tier comes from
    /// `[consumers.NAME]` when the consumer claim names one.
    pub tier_claim: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: ConfigDuration,
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh: ConfigDuration,
    #[serde(default = "default_jwks_timeout")]
    pub jwks_timeout: ConfigDuration,
    /// Verified tokens remembered until they expire; 0 turns the cache off.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
}

/// Why a token was not accepted: 401 or 403, and nothing more specific (RFC 6750).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    InvalidToken,
    InsufficientScope,
}

pub struct JwtPlugin {
    algorithms: Vec<Algorithm>,
    /// One prepared validation per pinned algorithm.
    validations: HashMap<Algorithm, Validation>,
    keys: KeySource,
    required_scopes: Vec<String>,
    forward: Vec<(String, HeaderName)>,
    consumer_claim: String,
    tier_claim: Option<String>,
    consumers: Arc<Consumers>,
    leeway: u64,
    cache: Option<TokenCache>,
    doc: PluginDoc,
}

/// Tokens larger than this are refused without parsing.
const MAX_TOKEN: usize = 8 * 1024;

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg = match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            return Err(format!(
                "algorithm \"{other}\" is not supported (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"
            ))
        }
    };
    Ok(alg)
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl JwtPlugin {
    pub fn new(cfg: JwtConfig, consumers: Arc<Consumers>) -> Result<Self, String> {
        if cfg.algorithms.is_empty() {
            return Err("`algorithms` must pin at least one algorithm".into());
        }
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<Result<Vec<_>, _>>()?;
        let hmac = algorithms.iter().filter(|a| is_hmac(**a)).count();
        if hmac != 0 && hmac != algorithms.len() {
            return Err("do not mix HS* with public-key algorithms: a public key must never be usable as an HMAC secret".into());
        }
        let keys = match (&cfg.secret, &cfg.public_key, &cfg.jwks_url) {
            (Some(secret), None, None) => {
                if hmac == 0 {
                    return Err(
                        "`secret` is for HS* algorithms; use `public_key` or `jwks_url`".into(),
                    );
                }
                if secret.len() < 32 {
                    return Err("`secret` must be at least 32 bytes".into());
                }
                KeySource::Static(Arc::new(VerifyKey {
                    key: DecodingKey::from_secret(secret.as_bytes()),
                    alg: None,
                }))
            }
            (None, Some(path), None) => {
                if hmac != 0 {
                    return Err("HS* algorithms take `secret`, not `public_key`".into());
                }
                if algorithms
                    .iter()
                    .any(|a| a.family() != algorithms[0].family())
                {
                    return Err(
                        "one `public_key` serves one algorithm family; use `jwks_url` for several"
                            .into(),
                    );
                }
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read public_key {path}: {e}"))?;
                KeySource::Static(Arc::new(VerifyKey {
                    key: pem_key(&pem, algorithms[0])?,
                    alg: None,
                }))
            }
            (None, None, Some(url)) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err("`jwks_url` must be an http(s) URL".into());
                }
                KeySource::Jwks(Jwks::new(JwksSettings {
                    url: url.clone(),
                    refresh: cfg.jwks_refresh.0,
                    min_refresh: cfg.jwks_min_refresh.0,
                    timeout: cfg.jwks_timeout.0,
                }))
            }
            _ => return Err("set exactly one of `secret`, `public_key` or `jwks_url`".into()),
        };

        let issuers = cfg.issuer.map(OneOrMany::into_vec).unwrap_or_default();
        let audiences = cfg.audience.map(OneOrMany::into_vec).unwrap_or_default();
        let leeway = cfg.leeway.0.as_secs();
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if !issuers.is_empty() {
                    v.set_issuer(&issuers);
                    required.push("iss");
                }
                if audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&audiences);
                    required.push("aud");
                }
                v.set_required_spec_claims(&required);
                (*alg, v)
            })
            .collect();
        let forward = cfg
            .forward_claims
            .into_iter()
            .map(|(claim, header)| {
                HeaderName::from_bytes(header.as_bytes())
                    .map(|h| (claim, h))
                    .map_err(|_| format!("invalid header name \"{header}\" in forward_claims"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let doc = PluginDoc::BearerJwt {
            algorithms: cfg.algorithms,
            issuers,
            audiences,
            required_scopes: cfg.required_scopes.clone(),
        };
        Ok(JwtPlugin {
            algorithms,
            validations,
            keys,
            required_scopes: cfg.required_scopes,
            forward,
            consumer_claim: cfg.consumer_claim,
            tier_claim: cfg.tier_claim,
            consumers,
            leeway,
            cache: TokenCache::new(cfg.cache_size),
            doc,
        })
    }

    /// Verify a well-formed token (cache first) and return who it names. Public for the
    /// benchmarks; the plugin calls it from `on_request`.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, AuthFailure> {
        let generation = self.generation();
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(token, generation)) {
            return Ok(hit.identity);
        }
        let (claims, generation) = self
            .verify(token)
            .await
            .map_err(|_| AuthFailure::InvalidToken)?;
        if !self.has_scopes(&claims) {
            return Err(AuthFailure::InsufficientScope);
        }
        let identity = Arc::new(
            self.identity(&claims)
                .map_err(|_| AuthFailure::InvalidToken)?,
        );
        if let Some(cache) = &self.cache {
            let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
            // Cached no longer than the token's own validity, leeway included.
            let valid_until = exp.saturating_add(self.leeway);
            if valid_until > now_secs() {
                cache.insert(
                    token,
                    Verified {
                        identity: Arc::clone(&identity),
                        valid_until,
                        generation,
                    },
                );
            }
        }
        Ok(identity)
    }

    fn generation(&self) -> u64 {
        match &self.keys {
            KeySource::Static(_) => 0,
            KeySource::Jwks(jwks) => jwks.generation(),
        }
    }

    /// Verify a token's signature and registered claims; `Err` means 401.
    async fn verify(&self, token: &str) -> Result<(Map<String, Value>, u64), ()> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| ())?;
        if !self.algorithms.contains(&header.alg) {
            return Err(());
        }
        let key = match &self.keys {
            KeySource::Static(key) => Arc::clone(key),
            KeySource::Jwks(jwks) => {
                if let Some(kid) = header.kid.as_deref() {
                    if !sane_kid(kid) {
                        return Err(());
                    }
                }
                let kid = header.kid.as_deref();
                match jwks.current().find(kid) {
                    Some(key) => Arc::clone(key),
                    None => {
                        let refreshed = jwks.refresh_for_unknown_kid().await.ok_or(())?;
                        let key = refreshed.find(kid).ok_or(())?;
                        Arc::clone(key)
                    }
                }
            }
        };
        if key.alg.is_some_and(|bound| bound != header.alg)
            || key.key.family() != header.alg.family()
        {
            return Err(());
        }
        let generation = self.generation();
        let validation = self.validations.get(&header.alg).ok_or(())?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(|_| ())?;
        Ok((data.claims, generation))
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, ()> {
        let mut strings = HashMap::new();
        for (name, value) in claims {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            strings.insert(name.clone(), text);
        }
        // A forwarded claim becomes a header: control characters would split or smuggle it.
        for (claim, _) in &self.forward {
            if strings
                .get(claim)
                .is_some_and(|v| v.chars().any(char::is_control))
            {
                return Err(());
            }
        }
        let consumer = strings
            .get(&self.consumer_claim)
            .cloned()
            .unwrap_or_default();
        let tier = match &self.tier_claim {
            Some(claim) => strings.get(claim).cloned(),
            None => self
                .consumers
                .by_name(&consumer)
                .and_then(|c| c.tier.as_deref().map(String::from)),
        };
        Ok(Identity {
            consumer,
            tier,
            claims: strings,
        })
    }

    fn has_scopes(&self, claims: &Map<String, Value>) -> bool {
        if self.required_scopes.is_empty() {
            return true;
        }
        let granted: Vec<&str> = ["scope", "scp"]
            .iter()
            .filter_map(|name| claims.get(*name))
            .flat_map(|v| match v {
                Value::String(s) => s.split(' ').collect::<Vec<_>>(),
                Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            })
            .collect();
        self.required_scopes
            .iter()
            .all(|s| granted.contains(&s.as_str()))
    }
}

fn bearer_token(req: &RequestHeader) -> Option<&str> {
    let value = req
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Three base64url parts, nothing else: two- and four-part tokens, JWE and junk stop here.
/// One pass over the bytes: it runs on every request, before the verification cache.
fn well_formed(token: &str) -> bool {
    if token.len() > MAX_TOKEN {
        return false;
    }
    let mut dots = 0;
    let mut part_len = 0;
    for b in token.bytes() {
        if b == b'.' {
            // The header and the payload may not be empty; the signature is checked later.
            if part_len == 0 || dots == 2 {
                return false;
            }
            dots += 1;
            part_len = 0;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            part_len += 1;
        } else {
            return false;
        }
    }
    dots == 2
}

fn unauthorized(token_present: bool) -> Flow {
    let (detail, challenge) = if token_present {
        (
            "the bearer token is invalid",
            "Bearer error=\"invalid_token\"",
        )
    } else {
        ("a bearer token is required", "Bearer")
    };
    Flow::Reject(Rejection::new(ErrorCode::Unauthorized, detail).with_header(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    ))
}

#[async_trait]
impl Plugin for JwtPlugin {
    /// A JWKS starts being fetched once its config serves.
    fn start(&self) {
        if let KeySource::Jwks(jwks) = &self.keys {
            jwks.start();
        }
    }

    fn doc(&self) -> Option<PluginDoc> {
        Some(self.doc.clone())
    }

    async fn on_request(
        &self,
        session: &mut Session,
        cx: &mut PluginCtx,
    ) -> Result<Flow, PluginError> {
        let req = session.req_header_mut();
        for (_, header) in &self.forward {
            req.remove_header(header);
        }
        let Some(token) = bearer_token(req) else {
            return Ok(unauthorized(false));
        };
        if !well_formed(token) {
            return Ok(unauthorized(true));
        }
        match self.authenticate(token).await {
            Ok(identity) => {
                cx.identity = Some(identity);
                Ok(Flow::Continue)
            }
            Err(AuthFailure::InvalidToken) => Ok(unauthorized(true)),
            Err(AuthFailure::InsufficientScope) => Ok(Flow::Reject(
                Rejection::new(ErrorCode::Forbidden, "the token lacks a required scope")
                    .with_header(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
                    ),
            )),
        }
    }

    async fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        cx: &mut PluginCtx,
    ) -> Result<(), PluginError> {
        edit_request_headers(req, self.forward.len(), |headers| {
            for (claim, header) in &self.forward {
                headers.remove(header);
                if let Some(value) = cx.claim(claim) {
                    let value = HeaderValue::from_str(value)
                        .map_err(|e| PluginError::Internal(e.to_string()))?;
                    headers.insert(header.clone(), value);
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_three_part_base64url_tokens_are_parsed() {
        assert!(well_formed("eyJh.eyJz.c2ln"));
        assert!(
            well_formed("eyJh.eyJz."),
            "an unsigned token is well-formed; verification refuses it"
        );
        for bad in [
            "a.b", "a.b.c.d", "a..c", ".b.c", "a.b.c.", "a.b.c d", "a.b.c\"", "",
        ] {
            assert!(!well_formed(bad), "{bad:?}");
        }
    }

    fn config(extra: &str) -> JwtConfig {
        let text = format!(
            "algorithms = [\"HS256\"]\nsecret = \"0123456789abcdef0123456789abcdef\"\n{extra}"
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn risky_configs_are_refused() {
        let consumers = Arc::new(Consumers::default());
        let bad = [
            "algorithms = [\"HS256\", \"RS256\"]\nsecret = \"0123456789abcdef0123456789abcdef\"",
            "algorithms = [\"HS256\"]\nsecret = \"short\"",
            "algorithms = [\"none\"]\nsecret = \"0123456789abcdef0123456789abcdef\"",
            "algorithms = []\nsecret = \"0123456789abcdef0123456789abcdef\"",
            "algorithms = [\"RS256\"]\nsecret = \"0123456789abcdef0123456789abcdef\"",
            "algorithms = [\"HS256\"]",
        ];
        for text in bad {
            let cfg: JwtConfig = toml::from_str(text).unwrap();
            assert!(
                JwtPlugin::new(cfg, Arc::clone(&consumers)).is_err(),
                "{text}"
            );
        }
        assert!(JwtPlugin::new(config(""), consumers).is_ok());
    }
}
