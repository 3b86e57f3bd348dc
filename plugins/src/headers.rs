//! `kind = "headers"`: set or remove request headers sent upstream and response headers
//! sent to the client. A value may name what earlier plugins learned about the request:
//! `{consumer}`, `{tier}`, `{route}`, `{client_ip}`, `{request_id}` (a header whose
//! placeholders are all unknown, like `{tier}` for an anonymous caller, is not set).

use std::collections::BTreeMap;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;

use crate::{Plugin, PluginCtx, PluginError};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    #[serde(default)]
    pub request_set: BTreeMap<String, String>,
    #[serde(default)]
    pub request_remove: Vec<String>,
    #[serde(default)]
    pub response_set: BTreeMap<String, String>,
    #[serde(default)]
    pub response_remove: Vec<String>,
}

/// Header edits, parsed once when the config is compiled.
#[derive(Debug)]
pub struct HeadersPlugin {
    request_set: Vec<(HeaderName, Template)>,
    request_remove: Vec<HeaderName>,
    response_set: Vec<(HeaderName, Template)>,
    response_remove: Vec<HeaderName>,
}

/// A header value, fixed or with placeholders filled in per request.
#[derive(Debug)]
enum Template {
    Fixed(HeaderValue),
    Parts(Vec<Part>),
}

#[derive(Debug)]
enum Part {
    Text(String),
    Var(Var),
}

#[derive(Debug, Clone, Copy)]
enum Var {
    Consumer,
    Tier,
    Route,
    ClientIp,
    RequestId,
}

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let var = match &rest[open + 1..open + close] {
                "consumer" => Var::Consumer,
                "tier" => Var::Tier,
                "route" => Var::Route,
                "client_ip" => Var::ClientIp,
                "request_id" => Var::RequestId,
                other => return Err(format!("unknown placeholder {{{other}}} (known: consumer, tier, route, client_ip, request_id)")),
            };
            parts.push(Part::Text(rest[..open].to_string()));
            parts.push(Part::Var(var));
            rest = &rest[open + close + 1..];
        }
        if parts.is_empty() {
            return HeaderValue::from_str(text)
                .map(Template::Fixed)
                .map_err(|_| format!("invalid header value \"{text}\""));
        }
        parts.push(Part::Text(rest.to_string()));
        Ok(Template::Parts(parts))
    }

    /// The value for this request; `None` when every placeholder is unknown here.
    fn render(&self, cx: &PluginCtx) -> Option<HeaderValue> {
        let parts = match self {
            Template::Fixed(v) => return Some(v.clone()),
            Template::Parts(parts) => parts,
        };
        let identity = cx.identity.as_ref();
        let mut out = String::new();
        let mut known = false;
        for part in parts {
            let value = match part {
                Part::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Part::Var(Var::Consumer) => identity.map(|i| i.consumer.clone()),
                Part::Var(Var::Tier) => identity.and_then(|i| i.tier.clone()),
                Part::Var(Var::Route) => Some(cx.route.to_string()),
                Part::Var(Var::ClientIp) => Some(cx.client_ip.to_string()),
                Part::Var(Var::RequestId) => Some(cx.request_id.clone()),
            };
            if let Some(v) = value {
                known = true;
                out.push_str(&v);
            }
        }
        known.then(|| HeaderValue::from_str(&out).ok()).flatten()
    }
}

fn parse_pairs(map: BTreeMap<String, String>) -> Result<Vec<(HeaderName, Template)>, String> {
    map.into_iter()
        .map(|(name, value)| Ok((parse_name(&name)?, Template::parse(&value)?)))
        .collect()
}

fn parse_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name \"{name}\""))
}

fn parse_names(names: Vec<String>) -> Result<Vec<HeaderName>, String> {
    names.iter().map(|n| parse_name(n)).collect()
}

impl HeadersPlugin {
    pub fn new(cfg: HeadersConfig) -> Result<Self, String> {
        Ok(HeadersPlugin {
            request_set: parse_pairs(cfg.request_set)?,
            request_remove: parse_names(cfg.request_remove)?,
            response_set: parse_pairs(cfg.response_set)?,
            response_remove: parse_names(cfg.response_remove)?,
        })
    }
}

#[async_trait]
impl Plugin for HeadersPlugin {
    async fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        cx: &mut PluginCtx,
    ) -> Result<(), PluginError> {
        for name in &self.request_remove {
            req.remove_header(name);
        }
        for (name, template) in &self.request_set {
            req.remove_header(name);
            if let Some(value) = template.render(cx) {
                req.insert_header(name.clone(), value)
                    .map_err(|e| PluginError::Internal(e.to_string()))?;
            }
        }
        Ok(())
    }

    async fn on_response(
        &self,
        resp: &mut ResponseHeader,
        cx: &mut PluginCtx,
    ) -> Result<(), PluginError> {
        for name in &self.response_remove {
            resp.remove_header(name);
        }
        for (name, template) in &self.response_set {
            resp.remove_header(name);
            if let Some(value) = template.render(cx) {
                resp.insert_header(name.clone(), value)
                    .map_err(|e| PluginError::Internal(e.to_string()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn cx() -> PluginCtx {
        PluginCtx::new("r".into(), IpAddr::V4(Ipv4Addr::LOCALHOST), "id".into())
    }

    #[tokio::test]
    async fn sets_and_removes_upstream_request_headers() {
        let plugin = HeadersPlugin::new(HeadersConfig {
            request_set: [("x-api-version".to_string(), "2".to_string())].into(),
            request_remove: vec!["x-debug".into()],
            ..Default::default()
        })
        .unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-debug", "1").unwrap();
        plugin
            .on_upstream_request(&mut req, &mut cx())
            .await
            .unwrap();
        assert!(req.headers.get("x-debug").is_none());
        assert_eq!(req.headers.get("x-api-version").unwrap(), "2");
    }

    #[tokio::test]
    async fn placeholders_are_filled_from_the_verified_identity() {
        let plugin = HeadersPlugin::new(HeadersConfig {
            request_set: [
                ("x-tier".to_string(), "{tier}".to_string()),
                ("x-who".to_string(), "{consumer}@{route}".to_string()),
            ]
            .into(),
            ..Default::default()
        })
        .unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-tier", "spoofed").unwrap();
        let mut anonymous = cx();
        plugin
            .on_upstream_request(&mut req, &mut anonymous)
            .await
            .unwrap();
        assert!(
            req.headers.get("x-tier").is_none(),
            "unknown tier: not set, and the spoof is gone"
        );
        assert_eq!(req.headers.get("x-who").unwrap(), "@r");

        let mut known = cx();
        known.identity = Some(std::sync::Arc::new(crate::Identity {
            consumer: "acme".into(),
            tier: Some("premium".into()),
            claims: Default::default(),
        }));
        plugin
            .on_upstream_request(&mut req, &mut known)
            .await
            .unwrap();
        assert_eq!(req.headers.get("x-tier").unwrap(), "premium");
        assert_eq!(req.headers.get("x-who").unwrap(), "acme@r");
        assert!(Template::parse("{nope}").is_err());
    }

    #[test]
    fn rejects_a_bad_header_name_at_compile_time() {
        let err = HeadersPlugin::new(HeadersConfig {
            response_set: [("bad name".to_string(), "v".to_string())].into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("bad name"), "{err}");
    }
}
