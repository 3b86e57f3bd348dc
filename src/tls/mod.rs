//! TLS termination on `[tls] listen`: certificates chosen by SNI (`resolver`), read again on
//! every reload and whenever their files change, client certificates (`client_auth`), and
//! what the listeners are built with. The listeners are built once, at start; what they serve
//! comes from `TlsRuntime`, which each new config updates in place, so no connection is
//! dropped and nothing restarts.

pub mod certs;
pub mod client_auth;
pub mod resolver;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use prometheus::{IntCounterVec, IntGaugeVec};
use rustls::server::danger::ClientCertVerifier;

use crate::config::TlsSection;
use certs::LoadedCert;
use client_auth::SwapVerifier;
use resolver::{CertSet, SniResolver};

/// A compiled `[tls]`.
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    pub certs: Vec<LoadedCert>,
    pub set: Arc<CertSet>,
    pub tls13_only: bool,
    pub client_ca: Option<Arc<dyn ClientCertVerifier>>,
    pub redirect_http: bool,
    /// The port `redirect_http` sends clients to: the first TLS listener's.
    pub https_port: u16,
    /// Every file the section names, for the watcher.
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("listen", &self.listen)
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

/// Compile `[tls]`: every problem as (key under `tls`, message). Paths are relative to
/// `config_dir`.
pub fn compile(
    section: &TlsSection,
    config_dir: &Path,
) -> Result<TlsConfig, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let mut listen = Vec::new();
    if section.listen.is_empty() {
        errors.push(("listen".into(), "needs at least one address".into()));
    }
    for (i, text) in section.listen.iter().enumerate() {
        match text.parse::<SocketAddr>() {
            Ok(addr) if listen.contains(&addr) => {
                errors.push((format!("listen[{i}]"), format!("{addr} is listed twice")))
            }
            Ok(addr) => listen.push(addr),
            Err(_) => errors.push((
                format!("listen[{i}]"),
                format!("\"{text}\" is not an ip:port address"),
            )),
        }
    }
    let tls13_only = match section.min_version.as_str() {
        "1.2" => false,
        "1.3" => true,
        other => {
            errors.push((
                "min_version".into(),
                format!("\"{other}\" must be \"1.2\" or \"1.3\""),
            ));
            false
        }
    };
    if section.certificates.is_empty() {
        errors.push((
            "certificates".into(),
            "needs at least one certificate".into(),
        ));
    }
    let mut files = Vec::new();
    let mut certs = Vec::new();
    for (i, spec) in section.certificates.iter().enumerate() {
        let cert = certs::relative_to(config_dir, &spec.cert);
        let key = certs::relative_to(config_dir, &spec.key);
        match certs::load(&cert, &key) {
            Ok(loaded) => certs.push(loaded),
            Err(e) => errors.push((format!("certificates[{i}]"), e)),
        }
        files.extend([cert, key]);
    }
    let client_ca = match &section.client_ca {
        None => None,
        Some(path) => {
            let path = certs::relative_to(config_dir, path);
            let verifier = client_auth::verifier_for(&path);
            files.push(path);
            match verifier {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push(("client_ca".into(), e));
                    None
                }
            }
        }
    };
    let set = CertSet::new(&certs);
    match (set, errors.is_empty()) {
        (Some(set), true) => Ok(TlsConfig {
            https_port: listen.first().map_or(443, SocketAddr::port),
            listen,
            certs,
            set: Arc::new(set),
            tls13_only,
            client_ca,
            redirect_http: section.redirect_http,
            files,
        }),
        _ => Err(errors),
    }
}

/// What the TLS listeners serve from, shared by all of them and updated by each config.
pub struct TlsRuntime {
    resolver: Arc<SniResolver>,
    verifier: Option<Arc<SwapVerifier>>,
    expiry: IntGaugeVec,
}

impl TlsRuntime {
    /// For the config the process starts with.
    pub fn new(tls: &TlsConfig, expiry: IntGaugeVec) -> Self {
        let runtime = TlsRuntime {
            resolver: Arc::new(SniResolver::new(Arc::clone(&tls.set), tls.tls13_only)),
            verifier: tls
                .client_ca
                .clone()
                .map(|v| Arc::new(SwapVerifier::new(v))),
            expiry,
        };
        runtime.note(tls);
        runtime
    }

    /// Serve `tls` from the next handshake on.
    pub fn apply(&self, tls: &TlsConfig) {
        self.resolver.swap(Arc::clone(&tls.set), tls.tls13_only);
        if let (Some(verifier), Some(ca)) = (&self.verifier, &tls.client_ca) {
            verifier.swap(Arc::clone(ca));
        }
        self.note(tls);
    }

    pub fn tls13_only(&self) -> bool {
        self.resolver.tls13_only()
    }

    /// Export each certificate's expiry, and warn loudly about one that is not valid now.
    fn note(&self, tls: &TlsConfig) {
        self.expiry.reset();
        let now = SystemTime::now();
        for cert in &tls.certs {
            let at = cert
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.expiry
                .with_label_values(&[&cert.label])
                .set(i64::try_from(at).unwrap_or(i64::MAX));
            if let Some(problem) = cert.validity_problem(now) {
                log::warn!(
                    "TLS certificate {} ({}) is {problem}: clients will refuse it",
                    cert.label,
                    cert.names.join(", ")
                );
            }
        }
    }

    /// The settings every TLS listener is built with: this runtime's certificates and client
    /// verifier, HTTP/1.1 by ALPN (and h2 first when `http2`), and a callback that counts
    /// handshakes and keeps a verified client certificate's subject for the request.
    pub fn listener_settings(
        &self,
        handshakes: IntCounterVec,
        http2: bool,
    ) -> pingora_error::Result<TlsSettings> {
        let callbacks: pingora_core::listeners::TlsAcceptCallbacks =
            Box::new(Handshakes { handshakes });
        let mut settings = TlsSettings::with_callbacks(callbacks)?;
        settings.set_cert_resolver(Arc::clone(&self.resolver) as _);
        if let Some(verifier) = &self.verifier {
            settings.set_client_cert_verifier(Arc::clone(verifier) as _);
        }
        settings.set_alpn(if http2 {
            pingora_core::protocols::ALPN::H2H1
        } else {
            pingora_core::protocols::ALPN::H1
        });
        Ok(settings)
    }
}

/// A verified client certificate, kept with the connection (`SslDigest::extension`).
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub subject: Arc<str>,
}

struct Handshakes {
    handshakes: IntCounterVec,
}

#[async_trait]
impl TlsAccept for Handshakes {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.handshakes.with_label_values(&["ok"]).inc();
        let subject = tls
            .peer_certificate_der()
            .and_then(client_auth::subject_of)?;
        Some(Arc::new(ClientCert {
            subject: subject.into(),
        }))
    }
}
