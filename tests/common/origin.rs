//! An upstream that speaks what a test asks of it: HTTP/1.1 or HTTP/2 (h2c with prior
//! knowledge, or h2 by ALPN), in the clear or over TLS with a certificate from the test's CA,
//! optionally requiring a client certificate (mTLS). It records each request's protocol
//! version, path and headers, the name the client asked for (SNI), and how many connections
//! and failed handshakes it saw; it answers each request with that request as JSON (after two
//! seconds for a path with `/Slow` in it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

use super::tls::{Issued, TestCa};

/// What the origin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    Http1,
    /// HTTP/2 with prior knowledge, in the clear.
    H2c,
}

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct OriginRequest {
    pub version: http::Version,
    pub path: String,
    pub headers: http::HeaderMap,
    /// The SNI of the connection it came on (TLS only).
    pub sni: Option<String>,
}

#[derive(Default)]
struct Log {
    requests: Mutex<Vec<OriginRequest>>,
    connections: AtomicUsize,
    failed_handshakes: AtomicUsize,
}

pub struct Origin {
    pub addr: SocketAddr,
    log: Arc<Log>,
    task: tokio::task::JoinHandle<()>,
}

/// How an origin over TLS is set up.
pub struct OriginTls<'a> {
    pub cert: &'a Issued,
    /// Require client certificates signed by this CA.
    pub client_ca: Option<&'a TestCa>,
    /// ALPN protocols offered, e.g. `[b"h2"]`; HTTP/2 is served when "h2" is chosen.
    pub alpn: &'a [&'a [u8]],
}

impl Origin {
    /// In the clear.
    pub async fn plain(speaks: Speaks) -> Origin {
        Self::start(speaks, None).await
    }

    /// Over TLS; HTTP/2 when the client chose "h2" by ALPN, HTTP/1.1 otherwise.
    pub async fn tls(tls: OriginTls<'_>) -> Origin {
        let config = server_config(&tls);
        Self::start(Speaks::Http1, Some(Arc::new(config))).await
    }

    async fn start(speaks: Speaks, tls: Option<Arc<rustls::ServerConfig>>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Log::default());
        let shared = Arc::clone(&log);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let log = Arc::clone(&shared);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve(TokioIo::new(tcp), speaks == Speaks::H2c, None, log).await,
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                log.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                                return;
                            };
                            let (_, conn) = stream.get_ref();
                            let h2 = conn.alpn_protocol() == Some(b"h2");
                            let sni = conn.server_name().map(str::to_string);
                            serve(TokioIo::new(stream), h2, sni, log).await
                        }
                    }
                });
            }
        });
        Origin { addr, log, task }
    }

    pub fn requests(&self) -> Vec<OriginRequest> {
        self.log.requests.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    pub fn failed_handshakes(&self) -> usize {
        self.log.failed_handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<I>(io: I, h2: bool, sni: Option<String>, log: Arc<Log>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let log = Arc::clone(&log);
        let sni = sni.clone();
        async move {
            let seen = OriginRequest {
                version: req.version(),
                path: req
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                headers: req.headers().clone(),
                sni,
            };
            let _ = req.into_body().collect().await;
            // A server that takes its time, and knows nothing of gRPC deadlines.
            if seen.path.contains("/Slow") {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            let body = serde_json::json!({
                "version": format!("{:?}", seen.version),
                "path": seen.path,
            })
            .to_string();
            log.requests.lock().unwrap().push(seen);
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
        }
    });
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    }
}

fn server_config(tls: &OriginTls<'_>) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.cert.cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(tls.cert.key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = tls.alpn.iter().map(|p| p.to_vec()).collect();
    config
}
