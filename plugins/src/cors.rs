//! `kind = "cors"`: Cross-Origin Resource Sharing, per the Fetch standard, at the edge.
//! Preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are answered here,
//! 204, and never sent upstream; the answers to actual requests (the upstream's and the
//! gateway's own, such as a 401) carry the CORS headers for an allowed origin.
//!
//! Origins match exactly (scheme, host and port; ASCII case-insensitive), never by substring
//! or suffix, so `https://app.example.com.evil.net` is not `https://app.example.com`. An
//! origin that is not allowed gets no CORS header at all. Credentials are never allowed with
//! `*`. The policy is the gateway's: `Access-Control-*` headers from the upstream are replaced.

use async_trait::async_trait;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use serde::Deserialize;

use crate::units::ConfigDuration;
use crate::{Answer, Flow, Plugin, PluginCtx, PluginDoc, PluginError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    pub allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    pub max_age: Option<ConfigDuration>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

#[derive(Debug)]
pub struct CorsPlugin {
    /// `None`: any origin (`*`).
    origins: Option<Vec<String>>,
    methods: Vec<Method>,
    /// Lowercase; `None`: any header (`*`, only without credentials).
    headers: Option<Vec<HeaderName>>,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

/// The Vary every preflight answer carries: what it was decided on.
const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

fn joined(items: &[String]) -> Result<Option<HeaderValue>, String> {
    if items.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&items.join(", "))
        .map(Some)
        .map_err(|_| format!("\"{}\" is not a valid header value", items.join(", ")))
}

/// An origin as browsers serialize it: `scheme://host[:port]`, nothing after.
fn parse_origin(text: &str) -> Result<String, String> {
    let bad = || format!("\"{text}\" is not an origin (scheme://host[:port], no path), or \"*\"");
    let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
    if !matches!(scheme, "http" | "https")
        || rest.is_empty()
        || rest.contains(['/', '?', '#', '@', ' '])
    {
        return Err(bad());
    }
    Ok(text.to_ascii_lowercase())
}

impl CorsPlugin {
    pub fn new(config: CorsConfig) -> Result<CorsPlugin, String> {
        if config.allow_origins.is_empty() {
            return Err("allow_origins needs at least one origin, or \"*\"".into());
        }
        let any = config.allow_origins.iter().any(|o| o == "*");
        if any && config.allow_origins.len() > 1 {
            return Err("allow_origins: \"*\" stands alone".into());
        }
        if any && config.allow_credentials {
            return Err("allow_credentials cannot be used with allow_origins = [\"*\"] (the Fetch standard forbids it): list the origins".into());
        }
        let origins = if any {
            None
        } else {
            Some(
                config
                    .allow_origins
                    .iter()
                    .map(|o| parse_origin(o))
                    .collect::<Result<_, _>>()?,
            )
        };
        let methods = config
            .allow_methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.as_bytes()).map_err(|_| format!("\"{m}\" is not a method"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let any_header = config.allow_headers.iter().any(|h| h == "*");
        if any_header && config.allow_credentials {
            return Err(
                "allow_headers = [\"*\"] cannot be used with allow_credentials: list the headers"
                    .into(),
            );
        }
        let headers = if any_header {
            None
        } else {
            Some(
                config
                    .allow_headers
                    .iter()
                    .map(|h| {
                        HeaderName::from_bytes(h.as_bytes())
                            .map_err(|_| format!("\"{h}\" is not a header name"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        for h in &config.expose_headers {
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("\"{h}\" is not a header name"))?;
        }
        let max_age = config.max_age.map(|d| HeaderValue::from(d.0.as_secs()));
        Ok(CorsPlugin {
            origins,
            methods,
            headers,
            allow_methods: joined(&config.allow_methods)?
                .unwrap_or(HeaderValue::from_static("GET")),
            allow_headers: joined(&config.allow_headers)?,
            expose_headers: joined(&config.expose_headers)?,
            max_age,
            credentials: config.allow_credentials,
        })
    }

    /// The request's `Origin`, when it is allowed.
    fn allowed<'a>(&self, req: &'a RequestHeader) -> Option<&'a HeaderValue> {
        let origin = req.headers.get(ORIGIN)?;
        match &self.origins {
            None => Some(origin),
            Some(list) => {
                let text = origin.to_str().ok()?;
                list.iter()
                    .any(|o| o.eq_ignore_ascii_case(text))
                    .then_some(origin)
            }
        }
    }

    /// What `Access-Control-Allow-Origin` says to this origin.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        match self.origins {
            None if !self.credentials => HeaderValue::from_static("*"),
            _ => origin.clone(),
        }
    }

    /// Whether the answer depends on the request's `Origin` (it does unless any origin is
    /// allowed and `*` is the answer): caches must then keep one copy per origin.
    fn varies(&self) -> bool {
        self.origins.is_some() || self.credentials
    }

    /// The CORS headers of an answer to an actual request from an allowed origin.
    fn actual_headers(&self, req: &RequestHeader) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        if self.varies() {
            out.push((VARY, HeaderValue::from_static("Origin")));
        }
        let Some(origin) = self.allowed(req) else {
            return out;
        };
        out.push((ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin)));
        if self.credentials {
            out.push((
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(expose) = &self.expose_headers {
            out.push((ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
        }
        out
    }

    /// The answer to a preflight: its CORS headers when the origin, the method and every
    /// requested header are allowed, none otherwise (the browser then refuses the request).
    fn preflight(&self, req: &RequestHeader) -> Answer {
        let mut headers = vec![(VARY, HeaderValue::from_static(PREFLIGHT_VARY))];
        let method_ok = req
            .headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        let headers_ok = match (
            &self.headers,
            req.headers.get(ACCESS_CONTROL_REQUEST_HEADERS),
        ) {
            (_, None) | (None, _) => true,
            (Some(allowed), Some(asked)) => asked.to_str().is_ok_and(|asked| {
                asked
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .all(|h| allowed.iter().any(|a| a.as_str().eq_ignore_ascii_case(h)))
            }),
        };
        if let (Some(origin), true, true) = (self.allowed(req), method_ok, headers_ok) {
            headers.push((ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin)));
            headers.push((ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone()));
            match (&self.allow_headers, &self.headers) {
                // `*` for headers: say back what was asked (and `*` itself).
                (_, None) => {
                    if let Some(asked) = req.headers.get(ACCESS_CONTROL_REQUEST_HEADERS) {
                        headers.push((ACCESS_CONTROL_ALLOW_HEADERS, asked.clone()));
                    }
                }
                (Some(list), Some(_)) => headers.push((ACCESS_CONTROL_ALLOW_HEADERS, list.clone())),
                (None, Some(_)) => {}
            }
            if self.credentials {
                headers.push((
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
            if let Some(age) = &self.max_age {
                headers.push((ACCESS_CONTROL_MAX_AGE, age.clone()));
            }
        }
        Answer {
            status: StatusCode::NO_CONTENT,
            headers,
            body: bytes::Bytes::new(),
        }
    }
}

fn is_preflight(req: &RequestHeader) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(ORIGIN)
        && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

#[async_trait]
impl Plugin for CorsPlugin {
    fn doc(&self) -> Option<PluginDoc> {
        Some(PluginDoc::Cors {
            allow_methods: self
                .methods
                .iter()
                .map(|m| m.as_str().to_string())
                .collect(),
        })
    }

    async fn on_request(
        &self,
        session: &mut Session,
        cx: &mut PluginCtx,
    ) -> Result<Flow, PluginError> {
        let req = session.req_header();
        if is_preflight(req) {
            return Ok(Flow::Respond(self.preflight(req)));
        }
        let headers = self.actual_headers(req);
        if !headers.is_empty() {
            cx.extensions.insert(CorsAnswer(headers));
        }
        Ok(Flow::Continue)
    }

    async fn on_response(
        &self,
        resp: &mut ResponseHeader,
        cx: &mut PluginCtx,
    ) -> Result<(), PluginError> {
        for name in [
            ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            resp.remove_header(&name);
        }
        let Some(headers) = cx.extensions.get::<CorsAnswer>() else {
            return Ok(());
        };
        for (name, value) in headers.0.clone() {
            let added = if name == VARY {
                resp.append_header(name, value).map(|_| ())
            } else {
                resp.insert_header(name, value)
            };
            added.map_err(|e| PluginError::Internal(e.to_string()))?;
        }
        Ok(())
    }

    fn answer_headers(
        &self,
        req: &RequestHeader,
        _cx: &PluginCtx,
    ) -> Vec<(HeaderName, HeaderValue)> {
        if is_preflight(req) {
            return Vec::new();
        }
        self.actual_headers(req)
    }
}

/// The CORS headers decided for this request, kept for its response.
#[derive(Clone)]
struct CorsAnswer(Vec<(HeaderName, HeaderValue)>);
