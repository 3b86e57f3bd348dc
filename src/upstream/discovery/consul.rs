//! Consul discovery: the instances of a service from `/v1/health/service/NAME` (only those
//! whose checks pass, by default), watched with blocking queries. The agent holds each query
//! until the service changes or `wait` passes, so an idle catalog costs one open request and
//! a change arrives as soon as Consul has it.
//!
//! What Consul's documentation asks of a blocking client ("Blocking Queries",
//! implementation details): an index lower than the last resets the watch to 0; an index that
//! is not above 0 is taken as 1; the loop is rate-limited (a query that returns at once with
//! nothing new cannot spin).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use http::Uri;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::protocols::http::HttpTask;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use serde::Deserialize;

use crate::config::file::{ConsulSection, DiscoverySpec};
use crate::upstream::Found;

/// How long Consul may hold a query when nothing changes.
pub const WAIT: Duration = Duration::from_secs(30);

/// Queries start at least this far apart: a bound on a loop that Consul answers at once.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The most of an answer read: a catalog far larger than any service's instances.
const MAX_ANSWER: usize = 16 << 20;

/// A blocking watch of one service.
pub struct Watch {
    peer: HttpPeer,
    authority: String,
    path: String,
    token: Option<String>,
    index: u64,
    connector: TransportConnector,
}

/// One entry of `/v1/health/service/NAME`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: usize,
}

/// Where `[consul] address` points: `http://host:port` (or https).
pub fn parse_address(address: &str) -> Result<(bool, String), String> {
    let uri: Uri = address
        .parse()
        .map_err(|_| format!("\"{address}\" is not a URL like http://127.0.0.1:8500"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("\"{address}\" must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("\"{address}\" has no host"))?;
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok((tls, format!("{}:{port}", authority.host())))
}

impl Watch {
    pub fn new(consul: &ConsulSection, spec: &DiscoverySpec) -> Result<Watch, String> {
        let (tls, authority) = parse_address(&consul.address)?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&authority)
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("cannot resolve the Consul agent {authority}"))?;
        let host = authority
            .rsplit_once(':')
            .map_or("", |(h, _)| h)
            .to_string();
        let mut peer = HttpPeer::new(addr, tls, host);
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.total_connection_timeout = Some(Duration::from_secs(5));
        // Consul adds up to wait/16 to spread its answers.
        peer.options.read_timeout = Some(WAIT + WAIT / 16 + Duration::from_secs(5));
        peer.options.write_timeout = Some(Duration::from_secs(5));
        let service = spec.service.as_deref().unwrap_or_default();
        let mut path = format!(
            "/v1/health/service/{}?wait={}s",
            encode(service),
            WAIT.as_secs()
        );
        if spec.passing {
            path.push_str("&passing=true");
        }
        if let Some(tag) = &spec.tag {
            path.push_str(&format!("&tag={}", encode(tag)));
        }
        if let Some(dc) = &consul.datacenter {
            path.push_str(&format!("&dc={}", encode(dc)));
        }
        Ok(Watch {
            peer,
            authority,
            path,
            token: consul.token.clone().filter(|t| !t.is_empty()),
            index: 0,
            connector: TransportConnector::new(None),
        })
    }

    /// The next answer: at once the first time (and after a reset), else when the service
    /// changes or `WAIT` passes. The instances found (all of them, possibly none).
    pub async fn next(&mut self) -> Result<Vec<Found>, String> {
        let path = format!("{}&index={}", self.path, self.index);
        let (index, body) = self.get(&path).await?;
        let entries: Vec<Entry> = serde_json::from_slice(&body)
            .map_err(|e| format!("Consul's answer is not a list of instances: {e}"))?;
        self.index = next_index(self.index, index);
        let mut found = Vec::new();
        for entry in entries {
            let host = if entry.service.address.is_empty() {
                entry.node.address
            } else {
                entry.service.address
            };
            let weight = entry.service.weights.map_or(1, |w| w.passing.max(1));
            let port = entry.service.port;
            let addr = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, port),
                Err(_) => match tokio::net::lookup_host((host.as_str(), port)).await {
                    Ok(mut addrs) => match addrs.next() {
                        Some(addr) => addr,
                        None => continue,
                    },
                    Err(e) => {
                        log::warn!("Consul instance at {host}: cannot resolve it ({e}); left out");
                        continue;
                    }
                },
            };
            found.push(Found {
                addr,
                weight,
                priority: 0,
                host,
            });
        }
        Ok(found)
    }

    async fn get(&self, path: &str) -> Result<(u64, bytes::Bytes), String> {
        let stream = self
            .connector
            .new_stream(&self.peer)
            .await
            .map_err(|e| format!("connecting to Consul at {}: {e}", self.authority))?;
        let mut session = HttpSession::new_with_options(stream, &self.peer);
        session.read_timeout = self.peer.options.read_timeout;
        session.write_timeout = self.peer.options.write_timeout;
        let mut req =
            RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
        let headers = [
            ("Host", Some(self.authority.as_str())),
            ("User-Agent", Some("portico-discovery")),
            ("Connection", Some("close")),
            ("X-Consul-Token", self.token.as_deref()),
        ];
        for (name, value) in headers {
            if let Some(value) = value {
                req.insert_header(name, value).map_err(|e| e.to_string())?;
            }
        }
        let failed = |e: Box<pingora_error::Error>| format!("asking Consul: {e}");
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(failed)?;
        session.finish_body().await.map_err(failed)?;
        let (head, mut done) = crate::proxy::direct::read_final_head(&mut session)
            .await
            .map_err(failed)?;
        let mut body = BytesMut::new();
        while !done {
            let (chunk, end) = match session.read_response_task().await.map_err(failed)? {
                HttpTask::Body(chunk, end) => (chunk, end),
                HttpTask::Failed(e) => return Err(failed(e)),
                _ => (None, true),
            };
            if let Some(chunk) = chunk {
                if body.len() + chunk.len() > MAX_ANSWER {
                    return Err("Consul's answer is over 16 MiB".into());
                }
                body.extend_from_slice(&chunk);
            }
            done = end;
        }
        if head.status != 200 {
            let text = String::from_utf8_lossy(&body);
            return Err(format!("Consul answered {}: {}", head.status, text.trim()));
        }
        let index = head
            .headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or("Consul's answer has no X-Consul-Index")?;
        Ok((index, body.freeze()))
    }

    /// Start again from index 0 (after a failure: the next answer comes at once).
    pub fn reset(&mut self) {
        self.index = 0;
    }
}

/// The index to send next, by Consul's rules: lower than the last resets to 0 (the next
/// query answers at once); not above 0 is taken as 1.
fn next_index(last: u64, answered: u64) -> u64 {
    if answered < last {
        0
    } else {
        answered.max(1)
    }
}

/// Percent-encode what goes into the query's path or parameters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_that_goes_backwards_resets_and_one_not_above_zero_is_one() {
        assert_eq!(next_index(0, 7), 7);
        assert_eq!(next_index(7, 7), 7);
        assert_eq!(next_index(7, 9), 9);
        assert_eq!(next_index(9, 3), 0);
        assert_eq!(next_index(0, 0), 1);
    }

    #[test]
    fn consul_addresses_are_http_urls() {
        assert_eq!(
            parse_address("http://127.0.0.1:8500"),
            Ok((false, "127.0.0.1:8500".into()))
        );
        assert_eq!(
            parse_address("https://consul.internal"),
            Ok((true, "consul.internal:443".into()))
        );
        assert!(parse_address("127.0.0.1:8500").is_err());
        assert_eq!(encode("users v2/x"), "users%20v2%2Fx");
    }
}
