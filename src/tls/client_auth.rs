//! Client certificates (`[tls] client_ca`, mTLS): every TLS handshake must present one signed
//! by the configured CA. The CA is read again on every reload and swapped in like the server
//! certificates; the listeners, built once, keep this verifier and ask it for the CA of the
//! moment.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

/// A verifier for the client certificates signed by the CA in `ca` (PEM). Errors name the
/// file.
pub fn verifier_for(ca: &std::path::Path) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("cannot read client_ca {}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("client_ca {} is not PEM: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("client_ca {} holds a bad certificate: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("no certificate in client_ca {}", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("client_ca {}: {e}", ca.display()))
}

/// The verifier the listeners hold: it asks whichever CA the config now serving names.
#[derive(Debug)]
pub struct SwapVerifier {
    inner: ArcSwap<Arc<dyn ClientCertVerifier>>,
}

impl SwapVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>) -> Self {
        SwapVerifier {
            inner: ArcSwap::from_pointee(inner),
        }
    }

    pub fn swap(&self, inner: Arc<dyn ClientCertVerifier>) {
        self.inner.store(Arc::new(inner));
    }
}

impl ClientCertVerifier for SwapVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA names are sent as hints: they would have to outlive a swap. Clients with one
    /// certificate (the usual case) send it regardless.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.load().supported_verify_schemes()
    }
}

/// The subject of a verified client certificate (its DN, as `CN=...,O=...`), for plugins
/// and the access log.
pub fn subject_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().to_string())
}
