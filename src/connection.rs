//! A client connection between its requests.
//!
//! Pingora's own loop over a keep-alive connection starts the next request's whole state (its
//! boxed `process_new_http` future, about 10 KB, and a 4 KiB header buffer) and only then
//! waits for the client to send something. An idle keep-alive connection pays for both for as
//! long as it stays open. This loop waits first, with nothing but the connection itself, and
//! builds the request's state once its first bytes have arrived; those bytes are handed to
//! Pingora's parser as the start of the request, so nothing is read twice.
//!
//! With the first bytes in hand it also chooses the request's path: the direct path
//! (`proxy::direct`) for a plain request without a body, Pingora's proxy for anything else.
//!
//! Portico's listeners speak plain HTTP/1.1. Anything else (TLS, h2c, a negotiated protocol)
//! is left to Pingora's own loop.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::Session;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::proxy::direct::{head, Direct, Handled};

/// How long a connection may sit idle before its next request: Pingora's own keep-alive
/// timeout, which its loop sets on every new connection.
const KEEPALIVE_SECONDS: u64 = 60;
const KEEPALIVE: Duration = Duration::from_secs(KEEPALIVE_SECONDS);

/// The most read while waiting: Pingora's initial header buffer. A longer request head is read
/// on by Pingora's parser.
const FIRST_READ: usize = 4096;

/// The HTTP/1.1 connection loop around an HTTP application (Portico's `HttpProxy`) and the
/// direct path.
pub struct Connections<A> {
    app: Arc<A>,
    direct: Direct,
}

impl<A> Connections<A> {
    pub fn new(app: A, direct: Direct) -> Self {
        Connections {
            app: Arc::new(app),
            direct,
        }
    }
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
        let h2c = self.app.server_options().is_some_and(|o| o.h2c);
        if h2c || stream.get_ssl_digest().is_some() || stream.selected_alpn_proto().is_some() {
            return self.app.process_new(stream, shutdown).await;
        }
        let reuse_limit = self
            .app
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        // What the previous request on this connection left for the next one. Pingora only
        // carries over bytes read past a request when pipelining is on, which Portico never
        // turns on, so the next request's bytes are always still in the socket.
        let mut carried: Option<HttpPersistentSettings> = None;
        let mut shutdown_watch = shutdown.clone();
        // One keep-alive timer for the whole connection, pushed back before each wait.
        let idle = tokio::time::sleep(KEEPALIVE);
        tokio::pin!(idle);
        loop {
            // Closed by the client, a read error, idle for too long, or the service shutting
            // down: as in Pingora's loop, the connection just ends.
            let first = next_request(&mut stream, &mut shutdown_watch, idle.as_mut()).await?;
            let direct = head::takes(&first) && self.direct.enabled();
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
                session.set_pipelined_prefix(first);
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

/// Waits for the first bytes of the connection's next request: `None` once the connection is
/// idle for longer than the keep-alive timeout, or when the service starts shutting down (then
/// idle connections close at once, as Pingora closes its own, so clients move on to the
/// instance that takes over; a request already arriving is still served).
///
/// `idle` is the connection's keep-alive timer. Moving a tokio timer later only updates its
/// deadline, where a new timer per wait costs a registration and a removal (callgrind: about
/// 800 instructions per request).
async fn next_request(
    stream: &mut Stream,
    shutdown: &mut ShutdownWatch,
    mut idle: Pin<&mut Sleep>,
) -> Option<BytesMut> {
    idle.as_mut().reset(Instant::now() + KEEPALIVE);
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
