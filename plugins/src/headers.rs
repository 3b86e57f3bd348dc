//! `kind = "headers"`: set or remove request headers sent upstream and response headers
//! sent to the client.

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
    request_set: Vec<(HeaderName, HeaderValue)>,
    request_remove: Vec<HeaderName>,
    response_set: Vec<(HeaderName, HeaderValue)>,
    response_remove: Vec<HeaderName>,
}

fn parse_pairs(map: BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    map.into_iter()
        .map(|(name, value)| {
            let name = parse_name(&name)?;
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("invalid value for header \"{name}\""))?;
            Ok((name, value))
        })
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
        _cx: &mut PluginCtx,
    ) -> Result<(), PluginError> {
        for name in &self.request_remove {
            req.remove_header(name);
        }
        for (name, value) in &self.request_set {
            req.insert_header(name.clone(), value.clone())
                .map_err(|e| PluginError::Internal(e.to_string()))?;
        }
        Ok(())
    }

    async fn on_response(
        &self,
        resp: &mut ResponseHeader,
        _cx: &mut PluginCtx,
    ) -> Result<(), PluginError> {
        for name in &self.response_remove {
            resp.remove_header(name);
        }
        for (name, value) in &self.response_set {
            resp.insert_header(name.clone(), value.clone())
                .map_err(|e| PluginError::Internal(e.to_string()))?;
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
