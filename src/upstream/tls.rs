//! TLS and HTTP/2 toward an upstream's targets: `protocol` and `tls = { sni, ca, cert, key }`
//! turned into what each target's `HttpPeer` carries. Files are read when the pool is built
//! (each reload that changes them builds it again), and every problem names its file.
//!
//! Verification is always on. Pingora's TLS connector skips verification for a peer without
//! an SNI, so a target always gets one: `tls.sni`, or the target's own host.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{UpstreamProtocol, UpstreamTls};

/// Concurrent streams Portico opens on one HTTP/2 connection to a target before it opens
/// another.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// What the TLS files said, read and checked.
#[derive(Clone, Default)]
pub struct TlsMaterial {
    pub sni: Option<String>,
    ca: Option<Arc<[WrappedX509]>>,
    client: Option<Arc<CertKey>>,
    /// A hash of the files' contents and the protocol: part of each peer's pool key, so a
    /// connection made under one CA or client certificate is never reused under another.
    pub fingerprint: u64,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("sni", &self.sni)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("client", &self.client.is_some())
            .finish()
    }
}

/// Check `protocol` against `tls`, and read the files. Errors are `(key, message)` under the
/// upstream's table.
pub fn load(
    protocol: UpstreamProtocol,
    tls: Option<&UpstreamTls>,
    config_dir: &Path,
) -> Result<Option<TlsMaterial>, Vec<(String, String)>> {
    let mut errors = Vec::new();
    match (protocol, tls) {
        (UpstreamProtocol::H2, None) => errors.push((
            "protocol".into(),
            "h2 is HTTP/2 over TLS (by ALPN): it needs `tls`; use h2c for HTTP/2 in the clear"
                .into(),
        )),
        (UpstreamProtocol::H2c, Some(_)) => errors.push((
            "protocol".into(),
            "h2c is HTTP/2 in the clear: it cannot have `tls`; use h2 for HTTP/2 over TLS".into(),
        )),
        _ => {}
    }
    let Some(tls) = tls else {
        return if errors.is_empty() {
            Ok(None)
        } else {
            Err(errors)
        };
    };
    let mut hasher = DefaultHasher::new();
    protocol.hash(&mut hasher);
    tls.sni.hash(&mut hasher);
    if tls.sni.as_deref().is_some_and(str::is_empty) {
        errors.push(("tls.sni".into(), "must not be empty".into()));
    }
    let ca = tls.ca.as_ref().and_then(|path| {
        let path = relative_to(config_dir, path);
        match read_certs(&path) {
            Ok((certs, bytes)) => {
                bytes.hash(&mut hasher);
                Some(certs)
            }
            Err(e) => {
                errors.push(("tls.ca".into(), e));
                None
            }
        }
    });
    let client = match (&tls.cert, &tls.key) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            errors.push((
                "tls".into(),
                "cert and key go together: the client certificate for mTLS and its key".into(),
            ));
            None
        }
        (Some(cert), Some(key)) => {
            let (cert, key) = (relative_to(config_dir, cert), relative_to(config_dir, key));
            match read_client(&cert, &key) {
                Ok((pair, bytes)) => {
                    bytes.hash(&mut hasher);
                    Some(pair)
                }
                Err((which, e)) => {
                    errors.push((format!("tls.{which}"), e));
                    None
                }
            }
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Some(TlsMaterial {
        sni: tls.sni.clone(),
        ca,
        client,
        fingerprint: hasher.finish(),
    }))
}

/// Set a target's peer up for `protocol` and `tls`. `host` is the target's host as written
/// (the default SNI).
pub fn apply(
    peer: &mut HttpPeer,
    protocol: UpstreamProtocol,
    tls: Option<&TlsMaterial>,
    host: &str,
) {
    peer.options.alpn = match protocol {
        UpstreamProtocol::H1 => ALPN::H1,
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => ALPN::H2,
    };
    if protocol != UpstreamProtocol::H1 {
        peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
    }
    let Some(tls) = tls else {
        return;
    };
    peer.scheme = pingora_core::upstreams::peer::Scheme::HTTPS;
    peer.sni = tls.sni.clone().unwrap_or_else(|| host.to_string());
    peer.options.verify_cert = true;
    peer.options.verify_hostname = true;
    peer.options.ca = tls.ca.clone();
    peer.client_cert_key = tls.client.clone();
    peer.group_key = tls.fingerprint;
}

/// The host of `host:port` (an IPv6 literal without its brackets).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn relative_to(dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}

/// The certificates of a PEM file, checked to parse, and the file's bytes.
fn read_certs(path: &Path) -> Result<(Arc<[WrappedX509]>, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let ders = pem_certs(&bytes, path)?;
    let certs: Vec<WrappedX509> = ders
        .into_iter()
        .map(|der| WrappedX509::new(der, parse_x509))
        .collect();
    Ok((certs.into(), bytes))
}

fn pem_certs(bytes: &[u8], path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let ders: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(bytes)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    if ders.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    // Pingora's wrapper panics on a certificate that does not parse: check each first.
    for der in &ders {
        if x509_parser::parse_x509_certificate(der).is_err() {
            return Err(format!(
                "{} holds a certificate that does not parse",
                path.display()
            ));
        }
    }
    Ok(ders)
}

/// A client certificate chain and its key, checked to belong together.
#[allow(clippy::type_complexity)]
fn read_client(cert: &Path, key: &Path) -> Result<(Arc<CertKey>, Vec<u8>), (&'static str, String)> {
    let mut bytes = std::fs::read(cert)
        .map_err(|e| ("cert", format!("cannot read {}: {e}", cert.display())))?;
    let chain = pem_certs(&bytes, cert).map_err(|e| ("cert", e))?;
    let key_bytes =
        std::fs::read(key).map_err(|e| ("key", format!("cannot read {}: {e}", key.display())))?;
    let private = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        (
            "key",
            format!("{} is not a PEM private key: {e}", key.display()),
        )
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| {
        (
            "key",
            format!("{} is not a usable private key: {e}", key.display()),
        )
    })?;
    let leaf = CertificateDer::from(chain[0].clone());
    let certified = rustls::sign::CertifiedKey::new(vec![leaf], signing);
    if let Err(e) = certified.keys_match() {
        return Err((
            "key",
            format!(
                "{} does not belong to the certificate {}: {e}",
                key.display(),
                cert.display()
            ),
        ));
    }
    let der = private.secret_der().to_vec();
    bytes.extend_from_slice(&key_bytes);
    Ok((Arc::new(CertKey::new(chain, der)), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_a_target_is_its_default_sni() {
        assert_eq!(host_of("billing.internal:443"), "billing.internal");
        assert_eq!(host_of("10.0.0.1:8443"), "10.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
    }

    #[test]
    fn h2_needs_tls_and_h2c_refuses_it() {
        let dir = Path::new(".");
        let tls = UpstreamTls::default();
        assert!(load(UpstreamProtocol::H2, None, dir).is_err());
        assert!(load(UpstreamProtocol::H2c, Some(&tls), dir).is_err());
        assert!(load(UpstreamProtocol::H2c, None, dir).unwrap().is_none());
        assert!(load(UpstreamProtocol::H1, Some(&tls), dir)
            .unwrap()
            .is_some());
    }

    #[test]
    fn unreadable_files_are_named() {
        let tls = UpstreamTls {
            ca: Some("/nonexistent/ca.pem".into()),
            cert: Some("client.pem".into()),
            ..UpstreamTls::default()
        };
        let errors = load(UpstreamProtocol::H1, Some(&tls), Path::new("/etc")).unwrap_err();
        assert!(errors
            .iter()
            .any(|(k, m)| k == "tls.ca" && m.contains("/nonexistent/ca.pem")));
        assert!(errors
            .iter()
            .any(|(k, m)| k == "tls" && m.contains("cert and key go together")));
    }
}
