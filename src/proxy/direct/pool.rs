//! The direct path's upstream keep-alive pool: idle connections on a stack per upstream
//! address.
//!
//! Pingora's pool spawns a task to watch each connection put back into it, and on each reuse
//! asks the kernel for the socket's peer address (`getpeername`) to rule out a hash collision:
//! together about 8,000 instructions a request, an eighth of the direct path's cost. Here a
//! connection goes back onto its address's stack as it is, and taking one checks only that the
//! upstream has neither closed it nor sent anything since. That check costs no syscall while
//! the runtime has seen nothing happen on the socket, which is the common case. One task per
//! pool, once a second, closes the connections past their idle timeout or closed by their
//! upstream, so none lingers half-closed (CLOSE_WAIT) when traffic stops. An upstream that
//! closes a connection in the instant between the check and the request fails it as a reused
//! connection, which the retry loop sends again at once without blaming the target
//! (`error_while_proxy`).
//!
//! Portico's peers are plain HTTP/1 to an address (`upstream::peer_for`), so the address is
//! all that makes two connections interchangeable. Upstream TLS, should it come, must join the
//! key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;

/// How often the sweeper looks for connections to close: the idle timeout is honoured to
/// within this.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct IdlePool {
    idle: Mutex<Idle>,
    /// Most idle connections kept, over all addresses; one more is closed, not kept.
    capacity: usize,
    sweeper: Once,
}

#[derive(Default)]
struct Idle {
    by_address: HashMap<SocketAddr, Vec<Parked>>,
    count: usize,
}

/// An idle connection and when it may no longer be used.
struct Parked {
    stream: Stream,
    expires: Option<Instant>,
}

impl Parked {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }
}

impl IdlePool {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(IdlePool {
            idle: Mutex::new(Idle::default()),
            capacity,
            sweeper: Once::new(),
        })
    }

    /// The most recently parked connection to `address` that is still usable, if any. The
    /// newest goes first: it is the least likely to have been closed by the upstream, and
    /// the older ones are left to time out when fewer are needed.
    pub fn take(&self, address: &SocketAddr) -> Option<Stream> {
        let now = Instant::now();
        loop {
            let mut parked = {
                let mut idle = self.lock();
                let stack = idle.by_address.get_mut(address)?;
                let parked = stack.pop()?;
                idle.count -= 1;
                parked
            };
            if !parked.expired(now) && quiet(&mut parked.stream) {
                return Some(parked.stream);
            }
        }
    }

    /// Keep `stream`, a connection to `address` with nothing left to read of its last
    /// answer, for the next request there; close it if the pool is full.
    pub fn put(
        self: &Arc<Self>,
        address: &SocketAddr,
        stream: Stream,
        idle_timeout: Option<Duration>,
    ) {
        self.sweeper.call_once(|| {
            tokio::spawn(sweep(Arc::downgrade(self)));
        });
        let parked = Parked {
            stream,
            expires: idle_timeout.map(|timeout| Instant::now() + timeout),
        };
        let mut idle = self.lock();
        if idle.count >= self.capacity {
            return;
        }
        idle.count += 1;
        match idle.by_address.get_mut(address) {
            Some(stack) => stack.push(parked),
            None => {
                idle.by_address.insert(address.clone(), vec![parked]);
            }
        }
    }

    #[cfg(test)]
    fn parked(&self) -> usize {
        self.lock().count
    }

    /// Close the connections that expired or that their upstream closed: taken out under the
    /// lock, closed after it, so requests taking and parking connections never wait on a close.
    fn sweep_once(&self) {
        let now = Instant::now();
        let mut closing = Vec::new();
        {
            let mut idle = self.lock();
            let Idle { by_address, count } = &mut *idle;
            for stack in by_address.values_mut() {
                let mut kept = Vec::with_capacity(stack.len());
                for mut parked in stack.drain(..) {
                    if !parked.expired(now) && quiet(&mut parked.stream) {
                        kept.push(parked);
                    } else {
                        closing.push(parked);
                    }
                }
                *stack = kept;
            }
            by_address.retain(|_, stack| !stack.is_empty());
            *count = by_address.values().map(Vec::len).sum();
        }
        drop(closing);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // The map is consistent after every statement, so a panic elsewhere leaves it usable.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sweep until the pool is dropped.
async fn sweep(pool: Weak<IdlePool>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep_once();
    }
}

/// Whether an idle connection has nothing to read: neither the upstream's close nor bytes it
/// should not have sent. One read that must not wait; if the runtime has not seen the socket
/// become readable, it answers without a syscall.
fn quiet(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: a read refused by the task's cooperative budget would look quiet.
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use pingora_core::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the gateway's end, and the upstream's end.
    async fn connection(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let ours = TcpStream::connect(listener.local_addr().unwrap());
        let (ours, theirs) = tokio::join!(ours, listener.accept());
        (ours.unwrap(), theirs.unwrap().0)
    }

    fn stream(ours: TcpStream) -> Stream {
        Box::new(L4Stream::from(ours))
    }

    fn address(listener: &TcpListener) -> SocketAddr {
        SocketAddr::Inet(listener.local_addr().unwrap())
    }

    /// Whether a pooled stream is the connection whose upstream end is `theirs`: write
    /// through one, read from the other.
    async fn same_connection(ours: &mut Stream, theirs: &mut TcpStream) -> bool {
        ours.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), theirs.read(&mut byte));
        matches!(read.await, Ok(Ok(1)))
    }

    #[tokio::test]
    async fn the_newest_connection_is_taken_first_and_only_for_its_address() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdlePool::new(8);
        let (older, _older_end) = connection(&upstream).await;
        let (newer, mut newer_end) = connection(&upstream).await;
        pool.put(&address(&upstream), stream(older), None);
        pool.put(&address(&upstream), stream(newer), None);

        assert!(pool.take(&address(&elsewhere)).is_none());
        let mut taken = pool.take(&address(&upstream)).expect("a parked connection");
        assert!(same_connection(&mut taken, &mut newer_end).await);
        assert_eq!(pool.parked(), 1);
    }

    #[tokio::test]
    async fn a_full_pool_closes_what_it_cannot_keep() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdlePool::new(2);
        let mut ends = Vec::new();
        for _ in 0..3 {
            let (ours, theirs) = connection(&upstream).await;
            pool.put(&address(&upstream), stream(ours), None);
            ends.push(theirs);
        }
        assert_eq!(pool.parked(), 2);
        let mut byte = [0u8; 1];
        assert_eq!(
            ends[2].read(&mut byte).await.unwrap(),
            0,
            "the third is closed"
        );
    }

    #[tokio::test]
    async fn a_connection_past_its_idle_timeout_is_not_taken() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdlePool::new(8);
        let (ours, _theirs) = connection(&upstream).await;
        pool.put(&address(&upstream), stream(ours), Some(Duration::ZERO));
        assert!(pool.take(&address(&upstream)).is_none());
        assert_eq!(pool.parked(), 0);
    }

    /// Two parked connections to one upstream, under a newer one that upstream has closed
    /// and a newer still that it has written to out of turn, both parked once the runtime
    /// has seen what happened to them. Returns the upstream's ends of the good two.
    async fn two_good_under_two_bad(
        pool: &Arc<IdlePool>,
        upstream: &TcpListener,
    ) -> [TcpStream; 2] {
        let (first, first_end) = connection(upstream).await;
        let (second, second_end) = connection(upstream).await;
        let (closed, closed_end) = connection(upstream).await;
        let (chatty, mut chatty_end) = connection(upstream).await;
        drop(closed_end);
        chatty_end.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        closed.readable().await.unwrap();
        chatty.readable().await.unwrap();
        for ours in [first, second, closed, chatty] {
            pool.put(&address(upstream), stream(ours), None);
        }
        [first_end, second_end]
    }

    #[tokio::test]
    async fn taking_skips_and_closes_connections_the_upstream_closed_or_wrote_to() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdlePool::new(8);
        let [_first_end, mut second_end] = two_good_under_two_bad(&pool, &upstream).await;
        let mut taken = pool.take(&address(&upstream)).expect("a good connection");
        assert!(same_connection(&mut taken, &mut second_end).await);
        assert_eq!(pool.parked(), 1);
    }

    #[tokio::test]
    async fn sweeping_closes_connections_the_upstream_closed_or_wrote_to() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdlePool::new(8);
        let [mut first_end, mut second_end] = two_good_under_two_bad(&pool, &upstream).await;
        pool.sweep_once();
        assert_eq!(pool.parked(), 2);
        let mut taken = pool.take(&address(&upstream)).unwrap();
        assert!(same_connection(&mut taken, &mut second_end).await);
        let mut taken = pool.take(&address(&upstream)).unwrap();
        assert!(same_connection(&mut taken, &mut first_end).await);
    }
}
