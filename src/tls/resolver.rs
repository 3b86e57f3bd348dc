//! Which certificate a TLS handshake gets: the one whose names match the client's SNI, the
//! first one listed when none does (or there is no SNI). The set is swapped whole when a
//! reload or a change of a certificate file brings new ones, so handshakes under way finish
//! with the old set and the next ones get the new one; listeners never restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::CipherSuite;

use super::certs::LoadedCert;

/// The certificates of one config, indexed by name.
#[derive(Debug)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` as `example.com`: one label to the left of it, no more (RFC 6125).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertSet {
    /// The set of `certs`, the first the default; `None` when there are none. When two
    /// certificates name the same host, the one listed first wins.
    pub fn new(certs: &[LoadedCert]) -> Option<CertSet> {
        let default = Arc::clone(&certs.first()?.key);
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in certs {
            for name in &cert.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent.to_string()),
                    None => (&mut exact, name.clone()),
                };
                map.entry(key).or_insert_with(|| Arc::clone(&cert.key));
            }
        }
        Some(CertSet {
            exact,
            wildcard,
            default,
        })
    }

    /// The certificate for `server_name` (the SNI, any case).
    pub fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return Arc::clone(&self.default);
        };
        if let Some(key) = self.exact.get(&name) {
            return Arc::clone(key);
        }
        let parent = name.split_once('.').map(|(_, parent)| parent);
        match parent.and_then(|p| self.wildcard.get(p)) {
            Some(key) => Arc::clone(key),
            None => Arc::clone(&self.default),
        }
    }
}

/// The resolver every TLS listener shares.
#[derive(Debug)]
pub struct SniResolver {
    set: ArcSwap<CertSet>,
    /// `[tls] min_version = "1.3"`: a client that offers no TLS 1.3 cipher suite gets no
    /// certificate, so its handshake fails (rustls picks 1.3 whenever both sides can).
    tls13_only: AtomicBool,
}

impl SniResolver {
    pub fn new(set: Arc<CertSet>, tls13_only: bool) -> Self {
        SniResolver {
            set: ArcSwap::new(set),
            tls13_only: AtomicBool::new(tls13_only),
        }
    }

    /// Serve `set` from the next handshake on.
    pub fn swap(&self, set: Arc<CertSet>, tls13_only: bool) {
        self.set.store(set);
        self.tls13_only.store(tls13_only, Ordering::Relaxed);
    }

    pub fn tls13_only(&self) -> bool {
        self.tls13_only.load(Ordering::Relaxed)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.tls13_only() && !hello.cipher_suites().iter().copied().any(is_tls13) {
            return None;
        }
        Some(self.set.load().choose(hello.server_name()))
    }
}

fn is_tls13(suite: CipherSuite) -> bool {
    matches!(
        suite,
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS13_AES_256_GCM_SHA384
            | CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS13_AES_128_CCM_SHA256
            | CipherSuite::TLS13_AES_128_CCM_8_SHA256
    )
}
