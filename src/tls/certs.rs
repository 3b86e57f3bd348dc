//! One certificate of `[tls] certificates`: its chain and key read from their files, checked
//! to belong together, and what it says about itself (the names it is for, when it expires).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// The DNS names it is for (subjectAltName, else the subject's CN), lower-case; a
    /// wildcard keeps its `*.`.
    pub names: Vec<String>,
    /// What metrics and logs call it: its first name, or its file's name.
    pub label: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub key: Arc<CertifiedKey>,
}

impl LoadedCert {
    /// Why it should not be served now, if it should not: expired, or not valid yet. It is
    /// still loaded (a warning, not an error: a replacement may be on its way), and its expiry
    /// is exported so an alert fires before this happens.
    pub fn validity_problem(&self, now: SystemTime) -> Option<String> {
        if now > self.not_after {
            Some(format!("expired at {}", rfc3339(self.not_after)))
        } else if now < self.not_before {
            Some(format!("not valid before {}", rfc3339(self.not_before)))
        } else {
            None
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    x509_parser::time::ASN1Time::from_timestamp(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{secs} (unix time)"))
}

/// Read `cert` (a PEM chain, leaf first) and `key` (a PEM private key) and check they are a
/// pair. Errors name the file at fault.
pub fn load(cert: &Path, key: &Path) -> Result<LoadedCert, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate {} is not PEM: {e}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("no certificate in {}", cert.display()));
    };
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let (names, not_before, not_after) = describe(leaf.as_ref())
        .map_err(|e| format!("certificate {} cannot be parsed: {e}", cert.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, private_key, &provider).map_err(|e| {
        format!(
            "the key in {} does not go with the certificate in {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    let label = names.first().cloned().unwrap_or_else(|| {
        cert.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    });
    Ok(LoadedCert {
        names,
        label,
        not_before,
        not_after,
        key: Arc::new(certified),
    })
}

/// A certificate's DNS names and validity window.
fn describe(der: &[u8]) -> Result<(Vec<String>, SystemTime, SystemTime), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect();
    }
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let validity = cert.validity();
    Ok((names, at(validity.not_before), at(validity.not_after)))
}

/// A path from the config, relative to the config file's folder (SPEC.md).
pub fn relative_to(config_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        config_dir.join(path)
    }
}
