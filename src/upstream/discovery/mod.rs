//! Service discovery: upstreams whose targets come from DNS (A/AAAA, SRV) instead of the
//! config. One task per such upstream looks its targets up, again when the answer's TTL runs
//! out, and gives the upstream a new pool generation when the set changed (`live`).
//!
//! A failed lookup keeps the last good set (and says so in `/status`, the log and
//! `portico_discovery_refreshes_total`); an upstream that never resolved has no target and
//! answers 503 `upstream_unavailable` at once.

pub mod consul;
pub mod dns;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::live::Upstream;
use super::Found;
use crate::config::file::{DiscoveryKind, DiscoverySpec, DnsSection};
use crate::state::GatewayState;

/// How often the service looks for upstreams a reload added.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The longest wait before a failed lookup is tried again (it starts at `min_ttl`, at least
/// a second, and doubles).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What is wrong with `upstreams.NAME.discovery`, as `(key, message)` under the upstream.
pub fn spec_errors(d: &DiscoverySpec) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let mut error = |key: &str, message: &str| {
        errors.push((format!("discovery.{key}"), message.to_string()));
    };
    let kind = d.kind.as_str();
    match d.kind {
        DiscoveryKind::Dns | DiscoveryKind::DnsSrv => {
            match d.name.as_deref() {
                None | Some("") => error("name", &format!("{kind} discovery needs a name")),
                Some(_) => {}
            }
            if d.service.is_some() || d.tag.is_some() {
                error("service", "service and tag are for kind = \"consul\"");
            }
        }
        DiscoveryKind::Consul => {
            match d.service.as_deref() {
                None | Some("") => error("service", "consul discovery needs a service"),
                Some(_) => {}
            }
            if d.name.is_some() {
                error("name", "name is for dns and dns_srv; consul takes service")
            }
        }
    }
    match (d.kind, d.port) {
        (DiscoveryKind::Dns, None | Some(0)) => {
            error("port", "dns discovery needs the targets' port (1-65535)")
        }
        (DiscoveryKind::DnsSrv, Some(_)) => {
            error("port", "SRV records carry their own ports: leave port out")
        }
        (DiscoveryKind::Consul, Some(_)) => {
            error("port", "Consul gives each instance's port: leave port out")
        }
        _ => {}
    }
    errors
}

/// What is wrong with `[dns]`, as `(key, message)` under it.
pub fn dns_errors(section: &DnsSection) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    for (i, server) in section.servers.iter().enumerate() {
        if let Err(e) = dns::parse_server(server) {
            errors.push((format!("servers[{i}]"), e));
        }
    }
    if section.min_ttl.0.is_zero() || section.max_ttl.0 < section.min_ttl.0 {
        errors.push((
            "max_ttl".into(),
            "min_ttl must be above zero and max_ttl at least min_ttl".into(),
        ));
    }
    errors
}

/// Starts a discovery task for every upstream of the serving config that has discovery,
/// once per upstream (an upstream kept across a reload keeps its task).
pub struct DiscoveryService {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let snapshot = self.state.current();
            for upstream in snapshot.pools.values() {
                let Some(discovery) = &upstream.discovery else {
                    continue;
                };
                if !discovery.started.swap(true, Ordering::AcqRel) {
                    let upstream = Arc::downgrade(upstream);
                    let state = Arc::clone(&self.state);
                    tokio::spawn(async move { watch(upstream, state).await });
                }
            }
            drop(snapshot);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }
}

/// Where one upstream's targets come from.
enum Source {
    Dns {
        resolver: Result<Box<hickory_resolver::TokioResolver>, String>,
        spec: DiscoverySpec,
    },
    Consul(Result<Box<consul::Watch>, String>),
}

/// What a lookup found, and when the next may start.
struct Answer {
    found: Vec<Found>,
    /// DNS: when the answer expires. Consul: `None`, ask again at once (the query blocks).
    valid_until: Option<Instant>,
}

impl Source {
    fn new(discovery: &super::live::Discovery) -> Source {
        match discovery.spec.kind {
            DiscoveryKind::Dns | DiscoveryKind::DnsSrv => Source::Dns {
                resolver: dns::resolver(&discovery.dns).map(Box::new),
                spec: discovery.spec.clone(),
            },
            DiscoveryKind::Consul => Source::Consul(match &discovery.consul {
                Some(section) => consul::Watch::new(section, &discovery.spec).map(Box::new),
                None => Err("no [consul] section".into()),
            }),
        }
    }

    async fn next(&mut self) -> Result<Answer, String> {
        match self {
            Source::Dns { resolver, spec } => {
                let resolver = resolver.as_ref().map_err(|e| format!("no resolver: {e}"))?;
                let name = spec.name.as_deref().unwrap_or_default();
                let (found, until) = match spec.kind {
                    DiscoveryKind::DnsSrv => dns::services(resolver, name).await?,
                    _ => dns::addresses(resolver, name, spec.port.unwrap_or(0)).await?,
                };
                Ok(Answer {
                    found,
                    valid_until: Some(until),
                })
            }
            Source::Consul(watch) => {
                let watch = watch.as_mut().map_err(|e| e.clone())?;
                let found = watch.next().await.inspect_err(|_| watch.reset())?;
                Ok(Answer {
                    found,
                    valid_until: None,
                })
            }
        }
    }
}

/// Look the upstream's targets up until it is no longer served (a reload dropped it): again
/// when a DNS answer expires or as soon as Consul answers, sooner (with backoff) after a
/// failure.
async fn watch(upstream: Weak<Upstream>, state: Arc<GatewayState>) {
    let Some((mut source, section)) = upstream.upgrade().and_then(|u| {
        let d = u.discovery.as_ref()?;
        Some((Source::new(d), d.dns.clone()))
    }) else {
        return;
    };
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let result = source.next().await;
        // Held only between lookups, so a dropped upstream ends its task.
        let Some(live) = upstream.upgrade() else {
            return;
        };
        let wait = match result {
            Ok(answer) => {
                failures = 0;
                apply(&live, answer.found, &state);
                match answer.valid_until {
                    Some(until) => until
                        .saturating_duration_since(Instant::now())
                        .clamp(section.min_ttl.0, section.max_ttl.0),
                    None => {
                        (started + consul::MIN_INTERVAL).saturating_duration_since(Instant::now())
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                failed(&live, e, &state);
                let first = section.min_ttl.0.max(Duration::from_secs(1));
                first
                    .saturating_mul(2u32.saturating_pow(failures - 1))
                    .min(MAX_BACKOFF)
            }
        };
        drop(live);
        tokio::time::sleep(wait).await;
    }
}

/// A lookup's answer: a new generation when the set changed.
fn apply(live: &Upstream, mut found: Vec<Found>, state: &GatewayState) {
    found.sort();
    found.dedup_by(|a, b| a.addr == b.addr);
    let current = live.current();
    let unchanged = current.targets.len() == found.len()
        && current.targets.iter().zip(&found).all(|(t, f)| t.is(f));
    let name = &live.name;
    if !unchanged {
        match current.with_found(&found) {
            Ok(next) => {
                let list: Vec<&str> = next.targets.iter().map(|t| &*t.label).collect();
                log::info!(
                    "upstream {name}: discovery found {} targets: {}",
                    list.len(),
                    list.join(", ")
                );
                live.replace(next);
            }
            Err(e) => {
                failed(live, format!("could not build the new set: {e}"), state);
                return;
            }
        }
    }
    if let Some(d) = &live.discovery {
        d.record(Ok(()));
    }
    let metrics = &state.metrics;
    metrics
        .upstream_targets
        .with_label_values(&[name])
        .set(found.len() as i64);
    metrics
        .discovery_refreshes
        .with_label_values(&[name, "ok"])
        .inc();
}

fn failed(live: &Upstream, error: String, state: &GatewayState) {
    let kept = live.current().targets.len();
    log::warn!(
        "upstream {}: discovery failed ({error}); keeping the last {kept} targets",
        live.name
    );
    if let Some(d) = &live.discovery {
        d.record(Err(error));
    }
    state
        .metrics
        .discovery_refreshes
        .with_label_values(&[&live.name, "error"])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: DiscoveryKind, name: Option<&str>, port: Option<u16>) -> DiscoverySpec {
        DiscoverySpec {
            kind,
            name: name.map(String::from),
            port,
            service: None,
            tag: None,
            passing: true,
        }
    }

    #[test]
    fn dns_needs_a_name_and_a_port_and_srv_brings_its_own_ports() {
        assert!(spec_errors(&spec(
            DiscoveryKind::Dns,
            Some("users.internal"),
            Some(3001)
        ))
        .is_empty());
        let keys = |d| {
            spec_errors(&d)
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(spec(DiscoveryKind::Dns, None, None)),
            ["discovery.name", "discovery.port"]
        );
        assert!(
            spec_errors(&spec(DiscoveryKind::DnsSrv, Some("_http._tcp.users"), None)).is_empty()
        );
        assert_eq!(
            keys(spec(
                DiscoveryKind::DnsSrv,
                Some("_http._tcp.users"),
                Some(80)
            )),
            ["discovery.port"]
        );
    }

    #[test]
    fn dns_servers_are_addresses_and_ttls_are_ordered() {
        let mut section = DnsSection {
            servers: vec![
                "127.0.0.1".into(),
                "10.0.0.2:5353".into(),
                "[::1]:53".into(),
            ],
            ..DnsSection::default()
        };
        assert!(dns_errors(&section).is_empty());
        assert_eq!(
            dns::parse_server("10.0.0.2:5353"),
            Ok("10.0.0.2:5353".parse().unwrap())
        );
        section.servers.push("dns.example".into());
        section.max_ttl = portico_plugins::units::ConfigDuration(Duration::from_millis(10));
        let keys: Vec<_> = dns_errors(&section).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["servers[3]", "max_ttl"]);
    }
}
