//! `kind = "ip_filter"`: refuse clients by address. The client's address is the one the
//! gateway settled on (`server.trusted_proxies` decide whether `X-Forwarded-For` is
//! believed), so a client cannot lift itself onto the allow list with a header of its own.
//! `deny` wins over `allow`; with an `allow` list, every other address is refused. Refused:
//! 403 `forbidden`.

use std::net::IpAddr;

use async_trait::async_trait;
use ipnet::IpNet;
use pingora_proxy::Session;
use serde::Deserialize;

use crate::{ErrorCode, Flow, Plugin, PluginCtx, PluginDoc, PluginError, Rejection};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug)]
pub struct IpFilterPlugin {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`).
fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("\"{text}\" is not a CIDR block or an IP address"))
}

impl IpFilterPlugin {
    pub fn new(config: IpFilterConfig) -> Result<IpFilterPlugin, String> {
        if config.allow.is_empty() && config.deny.is_empty() {
            return Err("needs allow, deny or both".into());
        }
        let parse = |list: &[String]| {
            list.iter()
                .map(|t| parse_net(t))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(IpFilterPlugin {
            allow: parse(&config.allow)?,
            deny: parse(&config.deny)?,
        })
    }

    fn admits(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

#[async_trait]
impl Plugin for IpFilterPlugin {
    fn doc(&self) -> Option<PluginDoc> {
        Some(PluginDoc::IpFilter)
    }

    async fn on_request(
        &self,
        _session: &mut Session,
        cx: &mut PluginCtx,
    ) -> Result<Flow, PluginError> {
        if self.admits(cx.client_ip) {
            return Ok(Flow::Continue);
        }
        Ok(Flow::Reject(Rejection::new(
            ErrorCode::Forbidden,
            "this client's address is not allowed on this route",
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilterPlugin {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        IpFilterPlugin::new(IpFilterConfig {
            allow: owned(allow),
            deny: owned(deny),
        })
        .unwrap()
    }

    #[test]
    fn deny_wins_and_an_allow_list_refuses_the_rest() {
        let f = filter(&["10.0.0.0/8", "192.0.2.7"], &["10.9.0.0/16"]);
        assert!(f.admits("10.1.2.3".parse().unwrap()));
        assert!(f.admits("192.0.2.7".parse().unwrap()));
        assert!(!f.admits("10.9.1.1".parse().unwrap()));
        assert!(!f.admits("192.0.2.8".parse().unwrap()));
        assert!(f.admits("::ffff:10.1.2.3".parse().unwrap()));
        let deny_only = filter(&[], &["2001:db8::/32"]);
        assert!(!deny_only.admits("2001:db8::1".parse().unwrap()));
        assert!(deny_only.admits("2001:db9::1".parse().unwrap()));
        assert!(IpFilterPlugin::new(IpFilterConfig {
            allow: vec!["10.0.0.0/33".into()],
            deny: vec![]
        })
        .is_err());
        assert!(IpFilterPlugin::new(IpFilterConfig {
            allow: vec![],
            deny: vec![]
        })
        .is_err());
    }
}
