//! DNS discovery through hickory-resolver: every A and AAAA address of a name, or the targets
//! of its SRV records, each answer good for its records' TTL.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::config::file::DnsSection;
use crate::upstream::Found;

/// How long one query may wait for an answer, per attempt.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A `[dns] servers` entry: an IP address, with `:port` when not 53.
pub fn parse_server(text: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("\"{text}\" is not an IP address or IP:port"))
}

/// The resolver `[dns]` describes: its servers over UDP (and TCP for long answers), or the
/// system's resolv.conf without any. Answers are cached no shorter than `min_ttl` and no
/// longer than `max_ttl`; failures for `min_ttl` at most, so a name that comes back is seen.
pub fn resolver(dns: &DnsSection) -> Result<TokioResolver, String> {
    let mut builder = if dns.servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("the system's DNS config: {e}"))?
    } else {
        let mut servers = Vec::new();
        for text in &dns.servers {
            let addr = parse_server(text)?;
            let connection = |protocol| {
                let mut c = ConnectionConfig::new(protocol);
                c.port = addr.port();
                c
            };
            servers.push(NameServerConfig::new(
                addr.ip(),
                true,
                vec![
                    connection(ProtocolConfig::Udp),
                    connection(ProtocolConfig::Tcp),
                ],
            ));
        }
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.positive_min_ttl = Some(dns.min_ttl.0);
    options.positive_max_ttl = Some(dns.max_ttl.0);
    options.negative_max_ttl = Some(dns.min_ttl.0);
    options.timeout = QUERY_TIMEOUT;
    options.attempts = 2;
    builder.build().map_err(|e| e.to_string())
}

/// Every address of `name`, each a target on `port`, and until when the answer holds.
pub async fn addresses(
    resolver: &TokioResolver,
    name: &str,
    port: u16,
) -> Result<(Vec<Found>, Instant), String> {
    let lookup = resolver
        .lookup_ip(name)
        .await
        .map_err(|e| format!("looking up {name}: {e}"))?;
    let found: Vec<Found> = lookup
        .iter()
        .map(|ip| Found {
            addr: SocketAddr::new(ip, port),
            weight: 1,
            priority: 0,
            host: name.to_string(),
        })
        .collect();
    if found.is_empty() {
        return Err(format!("{name} has no A or AAAA record"));
    }
    Ok((found, lookup.valid_until()))
}

/// The targets of `name`'s SRV records: each record's host (every address of it), port,
/// weight and priority, and until when the answers hold (the soonest of them). A weight of
/// 0 is taken as 1: RFC 2782 gives such targets a very small chance, not none.
pub async fn services(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<Found>, Instant), String> {
    let lookup = resolver
        .srv_lookup(name)
        .await
        .map_err(|e| format!("looking up SRV {name}: {e}"))?;
    let mut valid_until = lookup.valid_until();
    let mut found = Vec::new();
    for record in lookup.answers() {
        let RData::SRV(srv) = &record.data else {
            continue;
        };
        let host = srv.target.to_utf8();
        let host = host.trim_end_matches('.');
        let (addresses, until) = addresses(resolver, host, srv.port).await?;
        valid_until = valid_until.min(until);
        found.extend(addresses.into_iter().map(|f| Found {
            weight: usize::from(srv.weight.max(1)),
            priority: srv.priority,
            ..f
        }));
    }
    if found.is_empty() {
        return Err(format!("{name} has no SRV record"));
    }
    Ok((found, valid_until))
}
