//! The upstream side of an upgraded connection (WebSocket): cut when no byte has passed
//! either way for the route's `tunnel_idle_timeout`, and by nothing else.
//!
//! Every byte of a tunnel crosses the upstream connection, the client's on their way up and
//! the upstream's on their way down, so that connection's own activity is the tunnel's.
//! `upstream_peer` gives a WebSocket upgrade a connector (`PeerOptions::custom_l4`) that wraps
//! the TCP connection in a timer pushed back by every read and write that moves bytes; when it
//! fires, the waiting read or write fails and Pingora's proxy ends both sides. Until the
//! upstream's first bytes arrive (the 101 answer), the limit is the upstream's `read_timeout`
//! instead, as for any request. Pingora's own per-read timeouts are off for the tunnel: they
//! would cut a WebSocket that is quiet in one direction while busy in the other.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::Result;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::deadline::tcp_connect;

/// Connects for one WebSocket upgrade.
#[derive(Debug)]
pub struct TunnelConnect {
    /// The route's `tunnel_idle_timeout`.
    pub idle: Duration,
    /// The upstream's `read_timeout`: how long its answer to the upgrade may take.
    pub head: Duration,
    pub connect_timeout: Duration,
}

#[async_trait]
impl L4Connect for TunnelConnect {
    async fn connect(&self, addr: &SocketAddr) -> Result<L4Stream> {
        let stream = tcp_connect(addr, self.connect_timeout).await?;
        let socket = TunnelSocket {
            stream,
            timer: Box::pin(tokio::time::sleep(self.head)),
            limit: self.head,
            idle: self.idle,
        };
        Ok(L4Stream::from(VirtualSocketStream::new(Box::new(socket))))
    }
}

#[derive(Debug)]
struct TunnelSocket {
    stream: TcpStream,
    timer: Pin<Box<Sleep>>,
    /// What the timer is pushed back by: `head` until the upstream first answers, then `idle`.
    limit: Duration,
    idle: Duration,
}

impl TunnelSocket {
    /// Bytes moved: the tunnel is not idle.
    fn moved(&mut self) {
        let deadline = Instant::now() + self.limit;
        self.timer.as_mut().reset(deadline);
    }

    /// The error the waiting read or write gets once the timer fired. Polling the timer also
    /// makes it wake the task when it fires, bytes or not.
    fn idle_for_too_long(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.timer.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "no bytes either way for the tunnel's idle timeout",
            )
        })
    }
}

impl VirtualSocket for TunnelSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.stream.set_nodelay(true),
            _ => Ok(()),
        }
    }
}

impl AsyncRead for TunnelSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    // The upstream has answered: from now on the tunnel's idle limit.
                    self.limit = self.idle;
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.idle_for_too_long(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for TunnelSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.idle_for_too_long(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn bytes_either_way_keep_it_open_and_silence_closes_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = SocketAddr::Inet(listener.local_addr().unwrap());
        let connect = TunnelConnect {
            idle: Duration::from_millis(300),
            head: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(1),
        };
        let (stream, accepted) = tokio::join!(connect.connect(&addr), listener.accept());
        let mut stream = stream.unwrap();
        let (mut upstream, _) = accepted.unwrap();
        upstream.write_all(b"101").await.unwrap();
        let mut byte = [0u8; 3];
        stream.read_exact(&mut byte).await.unwrap();
        // Writing only (the upstream says nothing) for longer than the idle limit.
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(900) {
            stream.write_all(b"x").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Then nothing either way: the waiting read fails.
        let error = stream.read(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(upstream);
    }
}
