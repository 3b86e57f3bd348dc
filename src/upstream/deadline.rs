//! Upstream connections whose reads and writes fail once the route's deadline has passed,
//! for the attempts Pingora's proxy makes itself.
//!
//! Pingora's HTTP/1 client times each read on its own (`read_timeout`), and its proxy gives
//! Portico no hook between sending the request and the answer's head arriving, so an upstream
//! that trickles its head a byte at a time would never be cut off by the route's `timeout`.
//! The fast driver bounds the head with a timer of its own; for Pingora's proxy the bound is
//! in the connection: `upstream_peer` gives each attempt with a deadline a connector
//! (`PeerOptions::custom_l4`) that makes a plain TCP connection and wraps it so that, at the
//! deadline, the read or write waiting on it fails. The answer is then a 504 when nothing was
//! sent to the client yet, and a cut connection otherwise (`Portico::answer_failure`).
//! These connections are never pooled: Pingora's proxy keeps none (see `upstream::pool`).

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
use pingora_error::{Error, ErrorType, OrErr, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Connects as Pingora would, for one attempt, with every later read and write bounded by
/// `deadline`.
#[derive(Debug)]
pub struct DeadlineConnect {
    pub deadline: Instant,
    pub connect_timeout: Duration,
}

#[async_trait]
impl L4Connect for DeadlineConnect {
    async fn connect(&self, addr: &SocketAddr) -> Result<L4Stream> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let stream = tcp_connect(addr, self.connect_timeout.min(left)).await?;
        let socket = DeadlineSocket {
            stream,
            deadline: Box::pin(tokio::time::sleep_until(self.deadline)),
        };
        Ok(L4Stream::from(VirtualSocketStream::new(Box::new(socket))))
    }
}

/// A TCP connection to `addr` within `wait`, with Nagle off, as Pingora makes them.
pub(super) async fn tcp_connect(addr: &SocketAddr, wait: Duration) -> Result<TcpStream> {
    let Some(inet) = addr.as_inet() else {
        return Error::e_explain(ErrorType::ConnectError, "not an IP address");
    };
    let stream = match tokio::time::timeout(wait, TcpStream::connect(inet)).await {
        Ok(connected) => connected.or_err(ErrorType::ConnectRefused, "connecting")?,
        Err(_) => return Error::e_explain(ErrorType::ConnectTimedout, "connecting"),
    };
    stream
        .set_nodelay(true)
        .or_err(ErrorType::SocketError, "setting TCP_NODELAY")?;
    Ok(stream)
}

/// A TCP connection that stops at a deadline.
#[derive(Debug)]
struct DeadlineSocket {
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineSocket {
    /// Past the deadline: the error the waiting read or write gets. Polling the timer also
    /// makes it wake the task at the deadline, data or not.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.deadline
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| io::Error::new(io::ErrorKind::TimedOut, "the route's timeout passed"))
    }
}

impl VirtualSocket for DeadlineSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.stream.set_nodelay(true),
            _ => Ok(()),
        }
    }
}

impl AsyncRead for DeadlineSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for DeadlineSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
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
    async fn reads_fail_at_the_deadline_however_the_bytes_trickle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = SocketAddr::Inet(listener.local_addr().unwrap());
        let connect = DeadlineConnect {
            deadline: Instant::now() + Duration::from_millis(300),
            connect_timeout: Duration::from_secs(1),
        };
        let (stream, accepted) = tokio::join!(connect.connect(&addr), listener.accept());
        let mut stream = stream.unwrap();
        let (mut upstream, _) = accepted.unwrap();
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if upstream.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut got = 0;
        let mut byte = [0u8; 1];
        let error = loop {
            match stream.read(&mut byte).await {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(got > 0 && got < 100, "{got} bytes before the deadline");
        trickle.abort();
    }
}
