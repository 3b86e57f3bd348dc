//! `kind = "api_key"`: a caller presents a key that belongs to one of `[consumers.NAME]`.
//! The consumer's name and tier go into the request context (for rate limiting and the access
//! log) and, as `consumer_header`, to the upstream. The key never goes further than the edge
//! when it came in the query string, and is never logged.

use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue, Uri};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use serde::Deserialize;

use crate::consumers::Consumers;
use crate::{ErrorCode, Flow, Identity, Plugin, PluginCtx, PluginDoc, PluginError, Rejection};

fn default_header() -> String {
    "x-api-key".into()
}
fn default_consumer_header() -> String {
    "x-consumer".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The request header that carries the key.
    #[serde(default = "default_header")]
    pub header: String,
    /// A query parameter that may carry the key instead; removed before forwarding.
    pub query: Option<String>,
    /// The header that tells the upstream which consumer called; the client's own copy is
    /// always removed.
    #[serde(default = "default_consumer_header")]
    pub consumer_header: String,
}

pub struct ApiKeyPlugin {
    header: HeaderName,
    query: Option<String>,
    consumer_header: HeaderName,
    challenge: HeaderValue,
    consumers: Arc<Consumers>,
}

impl ApiKeyPlugin {
    pub fn new(cfg: ApiKeyConfig, consumers: Arc<Consumers>) -> Result<Self, String> {
        let name = |h: &str| {
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("invalid header name \"{h}\""))
        };
        if consumers.is_empty() {
            return Err("no [consumers] are configured, so no key could ever be accepted".into());
        }
        if cfg
            .query
            .as_deref()
            .is_some_and(|q| q.is_empty() || q.contains(['&', '=', '#']))
        {
            return Err("`query` must be a plain parameter name".into());
        }
        let challenge = HeaderValue::from_str(&format!("ApiKey header=\"{}\"", cfg.header))
            .map_err(|_| format!("invalid header name \"{}\"", cfg.header))?;
        Ok(ApiKeyPlugin {
            header: name(&cfg.header)?,
            query: cfg.query,
            consumer_header: name(&cfg.consumer_header)?,
            challenge,
            consumers,
        })
    }
}

/// The value of query parameter `name`, and the query without it.
fn take_query_param(query: &str, name: &str) -> (Option<String>, String) {
    let mut found = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            if key == name {
                if found.is_none() {
                    found = Some(pair.split_once('=').map_or("", |(_, v)| v).to_string());
                }
                false
            } else {
                true
            }
        })
        .collect();
    (found, kept.join("&"))
}

fn remove_query_param(req: &mut RequestHeader, name: &str) -> Option<String> {
    let query = req.uri.query()?;
    let (found, rest) = take_query_param(query, name);
    found.as_ref()?;
    let path = req.uri.path();
    let uri = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{rest}")
    };
    if let Ok(uri) = uri.parse::<Uri>() {
        req.set_uri(uri);
    }
    found
}

#[async_trait]
impl Plugin for ApiKeyPlugin {
    fn doc(&self) -> Option<PluginDoc> {
        Some(PluginDoc::ApiKey {
            header: self.header.as_str().to_string(),
            query: self.query.clone(),
        })
    }

    async fn on_request(
        &self,
        session: &mut Session,
        cx: &mut PluginCtx,
    ) -> Result<Flow, PluginError> {
        let req = session.req_header_mut();
        req.remove_header(&self.consumer_header);
        let from_header = req.headers.get(&self.header).map(|v| v.as_bytes().to_vec());
        let from_query = match &self.query {
            Some(name) => remove_query_param(req, name),
            None => None,
        };
        let presented = from_header.or_else(|| from_query.map(String::into_bytes));
        let reject = |detail: &str| {
            Flow::Reject(
                Rejection::new(ErrorCode::Unauthorized, detail)
                    .with_header(http::header::WWW_AUTHENTICATE, self.challenge.clone()),
            )
        };
        let Some(key) = presented.filter(|k| !k.is_empty()) else {
            return Ok(reject("an API key is required"));
        };
        let Some(consumer) = self.consumers.by_api_key(&key) else {
            return Ok(reject("the API key is not valid"));
        };
        cx.identity = Some(std::sync::Arc::new(Identity {
            consumer: consumer.name.to_string(),
            tier: consumer.tier.as_deref().map(String::from),
            claims: Default::default(),
        }));
        Ok(Flow::Continue)
    }

    async fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        cx: &mut PluginCtx,
    ) -> Result<(), PluginError> {
        crate::header_edit::edit_request_headers(req, 1, |headers| {
            headers.remove(&self.header);
            if let Some(identity) = &cx.identity {
                let value = HeaderValue::from_str(&identity.consumer)
                    .map_err(|e| PluginError::Internal(e.to_string()))?;
                headers.insert(self.consumer_header.clone(), value);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_parameter_is_taken_out_of_the_query() {
        assert_eq!(
            take_query_param("api_key=k1&x=1", "api_key"),
            (Some("k1".into()), "x=1".into())
        );
        assert_eq!(
            take_query_param("x=1&api_key=k1&y", "api_key"),
            (Some("k1".into()), "x=1&y".into())
        );
        assert_eq!(take_query_param("x=1", "api_key"), (None, "x=1".into()));
        assert_eq!(
            take_query_param("api_keyx=1", "api_key"),
            (None, "api_keyx=1".into())
        );
    }
}
