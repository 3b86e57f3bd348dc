//! A client connection, from accept to close: admitted under `server.max_client_connections`,
//! then request after request, each head read whole by this loop (`head`) before a driver
//! gets it.
//!
//! Pingora's own loop over a keep-alive connection starts the next request's whole state (its
//! boxed `process_new_http` future, about 10 KB, and a 4 KiB header buffer) and only then
//! waits for the client to send something. An idle keep-alive connection pays for both for as
//! long as it stays open. This loop waits first, with nothing but the connection itself, and
//! builds the request's state once its first bytes have arrived. It reads the rest of the head
//! within the head's deadline and limits, answers a head no driver may have with a problem,
//! and hands the bytes read to Pingora's parser as the start of the request, so nothing is
//! read twice.
//!
//! With the whole head in hand it also chooses the request's driver: the fast driver
//! (`proxy::direct`) for the common requests of an API, Pingora's proxy for anything else.
//!
//! HTTP/1.1 comes here, plain or over TLS. HTTP/2 (h2 by ALPN, or h2c with prior knowledge,
//! told by its first bytes) is handed to Pingora's own loop, which serves each stream through
//! the same proxy.

pub mod h2;
pub mod head;
mod prefixed;

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::BytesMut;
use http::{HeaderValue, Method};
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::Session;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::access_log::AccessRecord;
use crate::metrics::method_label;
use crate::proxy::direct::{Direct, Handled};
use crate::proxy::forwarding::new_request_id;
use crate::state::GatewayState;
use head::{Fit, Head, HeadLimits, Refusal};

/// How long a connection may sit idle before its next request: Pingora's own keep-alive
/// timeout, which its loop sets on every new connection.
const KEEPALIVE_SECONDS: u64 = 60;
const KEEPALIVE: Duration = Duration::from_secs(KEEPALIVE_SECONDS);

/// The most read while waiting: Pingora's initial header buffer. The rest of a longer head is
/// read into the request's buffer.
const FIRST_READ: usize = 4096;

/// How long writing a refusal may take before the connection is dropped anyway.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// The HTTP/1.1 connection loop around an HTTP application (Portico's `HttpProxy`) and the
/// fast driver.
pub struct Connections<A> {
    app: Arc<A>,
    direct: Direct,
    /// Each stream of an HTTP/2 connection goes through this (`h2::Streams`).
    streams: Arc<h2::Streams<A>>,
    state: Arc<GatewayState>,
}

impl<A> Connections<A> {
    pub fn new(app: A, direct: Direct, state: Arc<GatewayState>) -> Self {
        let app = Arc::new(app);
        Connections {
            streams: Arc::new(h2::Streams::new(Arc::clone(&app), direct.clone())),
            app,
            direct,
            state,
        }
    }
}

/// Counts a client connection open for as long as it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a request head ended that no driver got.
enum Unread {
    /// The client closed, or the connection failed: nothing to answer.
    Closed,
    Refused(Refusal),
}

#[async_trait]
impl<A> ServerApp for Connections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let _open = self.admit()?;
        // HTTP/1.1 over TLS takes this loop as plain HTTP does: the handshake is done by
        // now, so TLS costs only the TLS. HTTP/2 (by ALPN, or h2c) is Pingora's loop, which
        // runs each stream through the same proxy (the pipeline's Pingora driver).
        if let Some(digest) = stream.get_ssl_digest() {
            // `min_version = "1.3"` is enforced when the certificate is chosen; a connection
            // that still got 1.2 is not served.
            let tls13_only = self.state.tls.as_ref().is_some_and(|t| t.tls13_only());
            if tls13_only && digest.version != "TLSv1_3" {
                self.state
                    .metrics
                    .tls_handshakes
                    .with_label_values(&["refused"])
                    .inc();
                return None;
            }
        }
        let preface_deadline = accepted + self.state.current_limits().timeout;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return match read_preface(&mut stream, BytesMut::new(), preface_deadline).await {
                Preface::Whole(preface) => self.serve_h2(stream, preface, shutdown).await,
                Preface::Not(_) | Preface::Gone => None,
            };
        }
        let h2c = self.app.server_options().is_some_and(|o| o.h2c);
        let reuse_limit = self
            .app
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        // What the previous request on this connection left for the next one. Pingora only
        // carries over bytes read past a request when pipelining is on, which Portico never
        // turns on, so the next request's bytes are always still in the socket.
        let mut carried: Option<HttpPersistentSettings> = None;
        let mut shutdown_watch = shutdown.clone();
        // One timer for the whole connection, pushed back before each wait. The first
        // request's head, its wait included, must arrive within the head deadline; later
        // ones may wait for the keep-alive timeout, then have the deadline from their first
        // byte.
        let idle = tokio::time::sleep(KEEPALIVE);
        tokio::pin!(idle);
        let mut first_request = true;
        loop {
            let limits = self.state.current_limits();
            let wait_until = if first_request {
                accepted + limits.timeout
            } else {
                Instant::now() + KEEPALIVE
            };
            // Closed by the client, a read error, idle for too long, or the service shutting
            // down: as in Pingora's loop, the connection just ends.
            let mut first =
                next_request(&mut stream, &mut shutdown_watch, idle.as_mut(), wait_until).await?;
            if first_request && h2c && starts_preface(&first) {
                // Prior knowledge of h2c, or an HTTP/1.1 method that starts with "P".
                match read_preface(&mut stream, first, preface_deadline).await {
                    Preface::Whole(preface) => {
                        return self.serve_h2(stream, preface, shutdown).await
                    }
                    Preface::Not(bytes) => first = bytes,
                    Preface::Gone => return None,
                }
            }
            // The first request's deadline counts from the accept; a later one's from its
            // first byte (now), and is only looked up should the head need another read.
            let deadline = first_request.then_some(wait_until);
            first_request = false;
            let (bytes, fit) = match read_head(&mut stream, first, &limits, deadline).await {
                Ok(head) => head,
                Err(Unread::Closed) => return None,
                Err(Unread::Refused(refusal)) => {
                    self.refuse(&mut stream, refusal).await;
                    return None;
                }
            };
            let direct = match fit {
                Fit::Fast => self.direct.enabled(),
                // Some routes are Pingora's proxy's alone (`Route::needs_proxy`); the flag
                // spares configs without one the question of which route this is.
                Fit::FastWithBody => self.direct.enabled() && !self.state.proxy_routes(),
                Fit::Full => false,
            };
            let settle = |session: &mut ServerSession, carried: Option<HttpPersistentSettings>| {
                match carried {
                    Some(settings) => settings.apply_to_session(session),
                    None => {
                        // A service that is shutting down answers this request and then
                        // closes.
                        let keepalive = (!*shutdown.borrow()).then_some(KEEPALIVE_SECONDS);
                        session.set_keepalive(keepalive);
                        session.set_keepalive_reuses_remaining(reuse_limit);
                    }
                }
                session.set_pipelined_prefix(bytes);
            };
            let reused = if direct {
                let mut session = Session::new_h1(stream);
                settle(&mut session.downstream_session, carried.take());
                let shutting_down = *shutdown.borrow();
                match self.direct.serve(session, shutting_down).await {
                    Handled::Served(reused) => reused?,
                    Handled::ToProxy(session) => {
                        self.app.process_new_http(*session, shutdown).await?
                    }
                }
            } else {
                let mut session = ServerSession::new_http1(stream);
                settle(&mut session, carried.take());
                self.app.process_new_http(session, shutdown).await?
            };
            (stream, carried) = reused.consume();
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

impl<A> Connections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Serve an HTTP/2 connection whose preface has been read: Pingora's HTTP/2 loop reads
    /// it again and runs each stream through `h2::Streams`.
    async fn serve_h2(
        self: &Arc<Self>,
        stream: Stream,
        preface: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = Box::new(prefixed::Prefixed::new(preface.freeze(), stream));
        ServerApp::process_new(&self.streams, stream, shutdown).await
    }
}

impl<A> Connections<A> {
    /// Count the connection in, or refuse it (`None`: it is closed at once) when
    /// `server.max_client_connections` are open already.
    fn admit(&self) -> Option<OpenConnection> {
        let open = &self.state.client_connections;
        let max = self.state.current().server.max_client_connections;
        let before = open.fetch_add(1, Ordering::Relaxed);
        let guard = OpenConnection(Arc::clone(open));
        if before >= max {
            self.state.metrics.client_connections_refused.inc();
            return None;
        }
        Some(guard)
    }

    /// Answer a head no driver may have with its problem, and close: what followed it on the
    /// connection cannot be trusted to be a request.
    async fn refuse(&self, stream: &mut Stream, refusal: Refusal) {
        let request_id = new_request_id();
        let id = request_id.to_str().unwrap_or_default();
        let body = crate::problem::body(refusal.code, refusal.detail, "", id);
        let code = refusal.code;
        let head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n",
            code.status(),
            code.title(),
            body.len()
        );
        let write = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
            stream.flush().await?;
            stream.shutdown().await
        };
        if let Err(e) = tokio::time::timeout(REFUSAL_WRITE, write)
            .await
            .unwrap_or(Ok(()))
        {
            log::debug!("could not send a refusal: {e}");
        }
        let status = http::StatusCode::from_u16(code.status()).ok();
        let status = status.as_ref().map_or("0", |s| s.as_str());
        let metrics = &self.state.metrics;
        metrics
            .http_requests
            .with_label_values(&["", method_label(&Method::GET), status])
            .inc();
        log::info!(
            "refused a request head: {} ({})",
            code.as_str(),
            refusal.detail
        );
        if self.state.access_log.enabled() {
            let record = AccessRecord {
                ts: SystemTime::now(),
                request_id,
                client_ip: stream
                    .get_socket_digest()
                    .and_then(|d| d.peer_addr().cloned())
                    .and_then(|a| a.as_inet().map(|a| a.ip())),
                method: Method::GET,
                path: String::new(),
                status: code.status(),
                route: None,
                upstream: None,
                target: None,
                duration_ms: 0.0,
                upstream_ms: None,
                bytes_sent: body.len(),
                cache: None,
                consumer: None,
                traceparent: HeaderValue::from_static(""),
                failed_parts: None,
                operation: None,
                client_cert: None,
            };
            if !self.state.access_log.log(record) {
                metrics.access_log_dropped.inc();
            }
        }
    }
}

/// What a client with prior knowledge of h2c sends first (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `bytes` could be the start of the HTTP/2 preface.
fn starts_preface(bytes: &[u8]) -> bool {
    let n = bytes.len().min(H2_PREFACE.len());
    bytes[..n] == H2_PREFACE[..n]
}

/// How reading the HTTP/2 preface ended.
enum Preface {
    /// It came whole (these bytes, and perhaps more after it).
    Whole(BytesMut),
    /// These bytes are not it: an HTTP/1.1 request, on a plain listener.
    Not(BytesMut),
    /// The client closed, failed, or did not send it by the deadline.
    Gone,
}

/// Read on from `buf` until it holds the whole preface, by `deadline` (the same the first
/// request head has), or stops looking like it. A connection that never finishes its
/// preface holds nothing past the header timeout.
async fn read_preface(stream: &mut Stream, mut buf: BytesMut, deadline: Instant) -> Preface {
    loop {
        if !starts_preface(&buf) {
            return Preface::Not(buf);
        }
        if buf.len() >= H2_PREFACE.len() {
            return Preface::Whole(buf);
        }
        buf.reserve(H2_PREFACE.len());
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Preface::Gone,
        }
    }
}

/// Read the rest of a request head whose first bytes are `buf`, until `head::check` says it
/// is whole (the bytes read, and which driver may serve it) or refuses it. The whole head
/// must be in by `deadline` (by default `limits.timeout` from now).
async fn read_head(
    stream: &mut Stream,
    mut buf: BytesMut,
    limits: &HeadLimits,
    deadline: Option<Instant>,
) -> Result<(BytesMut, Fit), Unread> {
    let mut deadline = deadline;
    loop {
        match head::check(&buf, limits) {
            Head::Complete { driver, .. } => return Ok((buf, driver)),
            Head::Refused(refusal) => return Err(Unread::Refused(refusal)),
            Head::Partial => {}
        }
        buf.reserve(FIRST_READ);
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + limits.timeout);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => {
                return Err(Unread::Refused(Refusal {
                    code: portico_plugins::ErrorCode::RequestTimeout,
                    detail: "the request head did not arrive within the header timeout",
                }))
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Unread::Closed),
            Ok(Ok(_)) => {}
        }
    }
}

/// Waits for the first bytes of the connection's next request, until `wait_until`: `None`
/// once that passes, when the client closes, or when the service starts shutting down (then
/// idle connections close at once, as Pingora closes its own, so clients move on to the
/// instance that takes over; a request already arriving is still served).
///
/// `idle` is the connection's timer. Moving a tokio timer later only updates its deadline,
/// where a new timer per wait costs a registration and a removal (callgrind: about 800
/// instructions per request).
async fn next_request(
    stream: &mut Stream,
    shutdown: &mut ShutdownWatch,
    mut idle: Pin<&mut Sleep>,
    wait_until: Instant,
) -> Option<BytesMut> {
    idle.as_mut().reset(wait_until);
    let read = first_bytes(stream);
    tokio::pin!(read);
    loop {
        tokio::select! {
            biased;
            read = &mut read => return read,
            () = idle.as_mut() => return None,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return None;
                }
            }
        }
    }
}

/// Waits until the client sends something and returns what one read got; `None` when the
/// client closed the connection or it failed. While waiting it holds no buffer: the read goes
/// to the stack and is copied out only when it got bytes.
async fn first_bytes(stream: &mut Stream) -> Option<BytesMut> {
    poll_fn(|cx| {
        let mut space = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut read = ReadBuf::uninit(&mut space);
        match Pin::new(&mut *stream).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(None),
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                let mut bytes = BytesMut::with_capacity(FIRST_READ);
                bytes.extend_from_slice(read.filled());
                Poll::Ready(Some(bytes))
            }
        }
    })
    .await
}
