//! HTTP/2 toward clients: what Pingora's HTTP/2 loop is started with when `server.http2` is
//! on. The h2 crate and Pingora close most HTTP/2 abuse on their own (a CONTINUATION flood
//! runs into the header-list limit, a zero window increment and a stream past
//! `max_concurrent_streams` are protocol errors, a content-length that disagrees with the
//! DATA, a `transfer-encoding` or a forbidden byte in `:path` reset the stream, a bad
//! `:authority` gets a 400); these settings bound the rest to what an API's clients need.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora_core::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::Session;

use crate::proxy::direct::Direct;
use crate::snapshot::ServerSettings;

/// Streams one connection may have open at once; past it new ones are refused
/// (REFUSED_STREAM). nginx's default is 128, Envoy's edge guidance 100.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// Streams a client may reset before the gateway accepted them, at once: past it the
/// connection gets GOAWAY (the "rapid reset" attack, CVE-2023-44487). The h2 crate's
/// default.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Streams the gateway itself had to reset because the client broke the protocol on them,
/// over the connection's life: past it the connection gets GOAWAY.
const MAX_LOCAL_ERROR_RESETS: usize = 100;

/// What the response side of one stream may buffer before its writer waits for the client
/// to open its window: bounds the memory a client that never reads can hold.
const MAX_SEND_BUFFER: usize = 256 << 10;

/// An HTTP/2 connection with no stream open this long is closed, as an idle HTTP/1.1
/// keep-alive connection is.
const IDLE_TIMEOUT: Duration = Duration::from_secs(super::KEEPALIVE_SECONDS);

/// h2c with prior knowledge on plain listeners (Portico's loop tells it from the first bytes
/// and hands only those connections over), and the idle timeout.
pub fn server_options() -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    options.h2_idle_timeout = Some(IDLE_TIMEOUT);
    options
}

/// The HTTP/2 settings of every client connection: the request head limit of HTTP/1.1
/// (`server.max_header_size`) as the header-list limit, and the bounds above.
pub fn options(server: &ServerSettings) -> H2Options {
    let mut options = default_h2_options();
    let header_list = u32::try_from(server.head.max_size).unwrap_or(u32::MAX);
    options
        .max_header_list_size(header_list)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(MAX_SEND_BUFFER);
    options
}

/// What Pingora's HTTP/2 loop runs each stream through: the fast driver when the stream's
/// route allows (so HTTP/2 clients get the exchange's pooled HTTP/1.1 upstream connections,
/// as HTTP/1.1 clients do), Pingora's proxy otherwise. Both run the one pipeline.
pub struct Streams<A> {
    app: Arc<A>,
    direct: Direct,
}

impl<A> Streams<A> {
    pub fn new(app: Arc<A>, direct: Direct) -> Self {
        Streams { app, direct }
    }
}

#[async_trait]
impl<A> HttpServerApp for Streams<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let session = if self.direct.enabled() {
            self.direct.serve_stream(session).await?
        } else {
            session
        };
        self.app.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.app.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.app.server_options()
    }

    async fn http_cleanup(&self) {
        self.app.http_cleanup().await
    }
}

/// A proxy session around an HTTP/2 stream (a constructor `vendor/pingora-proxy` adds:
/// Pingora builds these for itself but offers others only an HTTP/1 constructor).
pub fn session_for(stream: ServerSession) -> Session {
    Session::from_downstream(Box::new(stream))
}
