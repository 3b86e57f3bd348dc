//! `[redis]` compiled: which topology, over which transport, with which certificates. Files are
//! read and parsed here (so `portico -t` finds a broken certificate); nothing connects.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::Problems;
use super::file::{RedisSection, RedisTlsSection};
use portico_plugins::redis_store::{RedisSpec, TlsPem, Topology};

/// The section as the store wants it, or `None` with every problem reported.
pub fn compile(
    section: &RedisSection,
    config_dir: &Path,
    problems: &mut Problems,
) -> Option<RedisSpec> {
    let before = problems.count();
    let topology = match (&section.url, &section.cluster, &section.sentinel) {
        (Some(url), None, None) => Topology::Single(url.clone()),
        (None, Some(seeds), None) => {
            if seeds.is_empty() {
                problems.at("redis.cluster", "lists no seed nodes");
            }
            Topology::Cluster(seeds.clone())
        }
        (None, None, Some(sentinel)) => {
            if sentinel.nodes.is_empty() {
                problems.at("redis.sentinel.nodes", "lists no sentinels");
            }
            if sentinel.master.trim().is_empty() {
                problems.at(
                    "redis.sentinel.master",
                    "is empty; name the monitored primary",
                );
            }
            Topology::Sentinel {
                master: sentinel.master.clone(),
                nodes: sentinel.nodes.clone(),
            }
        }
        (None, None, None) => {
            problems.at(
                "redis",
                "says where Redis is with one of url, cluster or sentinel",
            );
            return None;
        }
        _ => {
            problems.at(
                "redis",
                "url, cluster and sentinel are alternatives; set only one",
            );
            return None;
        }
    };
    let field = match &topology {
        Topology::Single(_) => "redis.url",
        Topology::Cluster(_) => "redis.cluster",
        Topology::Sentinel { .. } => "redis.sentinel.nodes",
    };
    let urls = topology.urls();
    for url in urls {
        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
            problems.at(
                field,
                format!("{url:?} must start with redis:// (or rediss:// for TLS)"),
            );
        }
    }
    let tls_urls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
    if tls_urls > 0 && tls_urls < urls.len() {
        problems.at(
            field,
            "mixes redis:// and rediss://; every node is reached the same way",
        );
    }
    let tls = match &section.tls {
        Some(_) if tls_urls == 0 => {
            problems.at(
                "redis.tls",
                "is set but no Redis URL is rediss://; use rediss:// to connect over TLS",
            );
            None
        }
        Some(tls) => read_tls(tls, config_dir, problems),
        None => None,
    };
    if problems.count() > before {
        return None;
    }
    let spec = RedisSpec {
        topology,
        tls,
        timeout: section.timeout.0,
    };
    // The store parses the URLs (hosts, ports, databases) the way it will connect.
    if let Err(e) = portico_plugins::redis_store::RedisStore::new(spec.clone()) {
        problems.at(field, e);
        return None;
    }
    Some(spec)
}

fn read_tls(tls: &RedisTlsSection, config_dir: &Path, problems: &mut Problems) -> Option<TlsPem> {
    let before = problems.count();
    let mut read = |field: &str, path: &str| -> Option<Vec<u8>> {
        let full = config_dir.join(path);
        match std::fs::read(&full) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                problems.at(
                    format!("redis.tls.{field}"),
                    format!("cannot read {}: {e}", full.display()),
                );
                None
            }
        }
    };
    let ca = tls.ca.as_deref().and_then(|p| read("ca", p));
    let cert = tls.cert.as_deref().and_then(|p| read("cert", p));
    let key = tls.key.as_deref().and_then(|p| read("key", p));
    if let Some(ca) = &ca {
        check_certificates(ca, "redis.tls.ca", problems);
    }
    if let Some(cert) = &cert {
        check_certificates(cert, "redis.tls.cert", problems);
    }
    if let Some(key) = &key {
        if PrivateKeyDer::from_pem_slice(key).is_err() {
            problems.at("redis.tls.key", "holds no PEM private key");
        }
    }
    match (&tls.cert, &tls.key) {
        (Some(_), None) => problems.at("redis.tls", "has cert without key; set both or neither"),
        (None, Some(_)) => problems.at("redis.tls", "has key without cert; set both or neither"),
        _ => {}
    }
    if problems.count() > before {
        return None;
    }
    Some(TlsPem {
        ca,
        cert_and_key: cert.zip(key),
    })
}

fn check_certificates(pem: &[u8], field: &str, problems: &mut Problems) {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        if let Err(e) = cert {
            problems.at(
                field,
                format!("holds a certificate that does not parse: {e}"),
            );
            return;
        }
        count += 1;
    }
    if count == 0 {
        problems.at(field, "holds no PEM certificate");
    }
}
