//! One target's connections: the idle ones kept for reuse, and the limit on how many may be
//! open at once (SPEC.md: `max_connections`, busy and idle together; `max_idle`;
//! `idle_timeout`). Every connection Portico opens to a target is counted here, whichever
//! driver or composition call opened it, so `/status` and the metrics see all of them and no
//! upstream sees more than `max_idle` idle connections per target from one instance.
//!
//! Idle connections sit on a stack, newest on top. Pingora's own pool spawns a task to watch
//! each connection put back into it, and on each reuse asks the kernel for the socket's peer
//! address (`getpeername`) to rule out a hash collision: together about 8,000 instructions a
//! request, an eighth of the fast driver's cost (callgrind, loadtest/RESULTS.md). Here a
//! connection goes back onto its target's stack as it is, and taking one checks only that the
//! upstream has neither closed it nor sent anything since; that check costs no syscall while
//! the runtime has seen nothing happen on the socket, which is the common case. The sweeper
//! (`upstream::sweep`, once a second) closes connections past their idle timeout or closed by
//! their upstream, so none lingers half-closed (CLOSE_WAIT) when traffic stops. An upstream
//! that closes a connection in the instant between the check and the request fails it as a
//! stale reused connection, which the exchange sends again at once without blaming the target.
//!
//! A pool belongs to one target of one build of its upstream: its address, TLS identity
//! (SNI, CA, client certificate) and protocol are fixed for the pool's life, and a reload that
//! changes any of them (the TLS files' contents included) builds a new pool. So the target is
//! all that makes two connections interchangeable. HTTP/1.1 over TLS is pooled here like plain
//! HTTP/1.1. HTTP/2 targets (`protocol = "h2"`, `"h2c"`) are multiplexed by Pingora's connector,
//! many streams on one connection; there a slot counts a request in flight.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// What `/status` shows of a target's connections (SPEC.md: `pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub idle: usize,
    pub busy: usize,
    pub opened: u64,
    pub closed: u64,
    pub connect_errors: u64,
}

#[derive(Default)]
struct Counters {
    busy: AtomicUsize,
    opened: AtomicU64,
    closed: AtomicU64,
    connect_errors: AtomicU64,
}

pub struct ConnectionPool {
    idle: Mutex<Vec<Parked>>,
    max_idle: usize,
    /// One permit per open connection, busy or idle: `max_connections` of them.
    slots: Arc<Semaphore>,
    /// Rung when a connection is parked, for requests waiting on a full pool, and how many
    /// wait (so parking rings only when someone listens).
    parked: Notify,
    waiting: AtomicUsize,
    counters: Arc<Counters>,
}

/// An idle connection, the slot it holds, and when it may no longer be used.
struct Parked {
    stream: Stream,
    permit: OwnedSemaphorePermit,
    expires: Instant,
}

/// Every slot is taken and none came free in time: the target is at `max_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolFull;

/// A place for one busy connection under the target's limit. Counted busy while it lives;
/// when it ends, the connection it stood for is counted closed (unless it was parked or
/// never opened).
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    counters: Arc<Counters>,
    open: bool,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, counters: &Arc<Counters>, open: bool) -> Slot {
        counters.busy.fetch_add(1, Ordering::Relaxed);
        Slot {
            permit: Some(permit),
            counters: Arc::clone(counters),
            open,
        }
    }

    /// The connection for this slot is now open.
    pub fn opened(&mut self) {
        if !self.open {
            self.open = true;
            self.counters.opened.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Making the connection for this slot failed; the slot is given up.
    pub fn connect_failed(self) {
        self.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The permit, for a connection that goes back to the idle stack: no longer busy, and
    /// not closed.
    fn into_permit(mut self) -> Option<OwnedSemaphorePermit> {
        self.open = false;
        self.permit.take()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters.busy.fetch_sub(1, Ordering::Relaxed);
        if self.open {
            self.counters.closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a checkout gives: an idle connection to reuse, or a slot to open a new one in.
pub enum Checkout {
    Reused(Stream, Slot),
    New(Slot),
}

impl ConnectionPool {
    pub fn new(max_connections: usize, max_idle: usize) -> ConnectionPool {
        ConnectionPool {
            idle: Mutex::new(Vec::new()),
            max_idle,
            slots: Arc::new(Semaphore::new(max_connections)),
            parked: Notify::new(),
            waiting: AtomicUsize::new(0),
            counters: Arc::default(),
        }
    }

    /// A connection for the next request: the newest idle one still usable, else a slot
    /// for a new one, else whichever comes first within `wait` (a connection parked or a slot
    /// freed by a close).
    pub async fn checkout(&self, wait: Duration) -> Result<Checkout, PoolFull> {
        if let Some(checkout) = self.try_checkout() {
            return Ok(checkout);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let _waiting = Waiting::new(&self.waiting);
        loop {
            // Registered before looking again, so a connection parked in between still wakes
            // this request.
            let parked = self.parked.notified();
            tokio::pin!(parked);
            parked.as_mut().enable();
            if let Some(checkout) = self.try_checkout() {
                return Ok(checkout);
            }
            tokio::select! {
                permit = Arc::clone(&self.slots).acquire_owned() => {
                    let permit = permit.map_err(|_| PoolFull)?;
                    return Ok(Checkout::New(Slot::new(permit, &self.counters, false)));
                }
                () = &mut parked => {}
                () = tokio::time::sleep_until(deadline) => return Err(PoolFull),
            }
        }
    }

    fn try_checkout(&self) -> Option<Checkout> {
        if let Some((stream, permit)) = self.take_idle() {
            return Some(Checkout::Reused(
                stream,
                Slot::new(permit, &self.counters, true),
            ));
        }
        let permit = Arc::clone(&self.slots).try_acquire_owned().ok()?;
        Some(Checkout::New(Slot::new(permit, &self.counters, false)))
    }

    /// A slot for a connection made by someone else (Pingora's proxy, which keeps none
    /// idle): a free one, or one taken from the oldest idle connection, which is closed,
    /// or the first to come free within `wait`.
    pub async fn slot_for_new(&self, wait: Duration) -> Result<Slot, PoolFull> {
        let deadline = tokio::time::Instant::now() + wait;
        let _waiting = Waiting::new(&self.waiting);
        loop {
            if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
                return Ok(Slot::new(permit, &self.counters, false));
            }
            let oldest = {
                let mut idle = self.lock();
                (!idle.is_empty()).then(|| idle.remove(0))
            };
            if let Some(parked) = oldest {
                self.counters.closed.fetch_add(1, Ordering::Relaxed);
                return Ok(Slot::new(parked.permit, &self.counters, false));
            }
            let parked = self.parked.notified();
            tokio::pin!(parked);
            parked.as_mut().enable();
            tokio::select! {
                permit = Arc::clone(&self.slots).acquire_owned() => {
                    let permit = permit.map_err(|_| PoolFull)?;
                    return Ok(Slot::new(permit, &self.counters, false));
                }
                () = &mut parked => {}
                () = tokio::time::sleep_until(deadline) => return Err(PoolFull),
            }
        }
    }

    /// The newest idle connection that is still usable, with its slot. The newest goes first:
    /// it is the least likely to have been closed by the upstream, and the older ones are
    /// left to time out when fewer are needed.
    fn take_idle(&self) -> Option<(Stream, OwnedSemaphorePermit)> {
        let now = Instant::now();
        loop {
            let mut parked = self.lock().pop()?;
            if now < parked.expires && quiet(&mut parked.stream) {
                return Some((parked.stream, parked.permit));
            }
            self.counters.closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Keep `stream`, a connection with nothing left to read of its last answer, for the
    /// next request; close it when `max_idle` are idle already.
    pub fn park(&self, stream: Stream, slot: Slot, idle_timeout: Duration) {
        let Some(permit) = slot.into_permit() else {
            return;
        };
        let parked = Parked {
            stream,
            permit,
            expires: Instant::now() + idle_timeout,
        };
        let refused = {
            let mut idle = self.lock();
            if idle.len() < self.max_idle {
                idle.push(parked);
                None
            } else {
                Some(parked)
            }
        };
        match refused {
            Some(parked) => {
                self.counters.closed.fetch_add(1, Ordering::Relaxed);
                drop(parked);
            }
            None if self.waiting.load(Ordering::Acquire) > 0 => self.parked.notify_one(),
            None => {}
        }
    }

    /// Close the idle connections that expired or that their upstream closed: taken out
    /// under the lock, closed after it, so requests taking and parking connections never
    /// wait on a close.
    pub fn sweep(&self, now: Instant) {
        let mut closing = Vec::new();
        {
            let mut idle = self.lock();
            let mut kept = Vec::with_capacity(idle.len());
            for mut parked in idle.drain(..) {
                if now < parked.expires && quiet(&mut parked.stream) {
                    kept.push(parked);
                } else {
                    closing.push(parked);
                }
            }
            *idle = kept;
        }
        self.counters
            .closed
            .fetch_add(closing.len() as u64, Ordering::Relaxed);
        drop(closing);
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            idle: self.lock().len(),
            busy: self.counters.busy.load(Ordering::Relaxed),
            opened: self.counters.opened.load(Ordering::Relaxed),
            closed: self.counters.closed.load(Ordering::Relaxed),
            connect_errors: self.counters.connect_errors.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Parked>> {
        // The stack is consistent after every statement, so a panic elsewhere leaves it usable.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts a request waiting for a connection for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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

    const LONG: Duration = Duration::from_secs(60);

    /// A connected pair: the gateway's end, and the upstream's end.
    async fn connection(listener: &TcpListener) -> (Stream, TcpStream) {
        let ours = TcpStream::connect(listener.local_addr().unwrap());
        let (ours, theirs) = tokio::join!(ours, listener.accept());
        (Box::new(L4Stream::from(ours.unwrap())), theirs.unwrap().0)
    }

    /// Check out a slot for a new connection, open one, and return both.
    async fn open(pool: &ConnectionPool, upstream: &TcpListener) -> (Stream, Slot, TcpStream) {
        let Checkout::New(mut slot) = pool.checkout(Duration::ZERO).await.unwrap() else {
            panic!("expected a slot for a new connection");
        };
        let (ours, theirs) = connection(upstream).await;
        slot.opened();
        (ours, slot, theirs)
    }

    /// Whether a pooled stream is the connection whose upstream end is `theirs`: write
    /// through one, read from the other.
    async fn same_connection(ours: &mut Stream, theirs: &mut TcpStream) -> bool {
        ours.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), theirs.read(&mut byte));
        matches!(read.await, Ok(Ok(1)))
    }

    fn reused(checkout: Checkout) -> (Stream, Slot) {
        match checkout {
            Checkout::Reused(stream, slot) => (stream, slot),
            Checkout::New(_) => panic!("expected an idle connection"),
        }
    }

    #[tokio::test]
    async fn the_newest_idle_connection_is_taken_first() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = ConnectionPool::new(8, 8);
        let (older, older_slot, _older_end) = open(&pool, &upstream).await;
        let (newer, newer_slot, mut newer_end) = open(&pool, &upstream).await;
        pool.park(older, older_slot, LONG);
        pool.park(newer, newer_slot, LONG);
        let (mut taken, _slot) = reused(pool.checkout(Duration::ZERO).await.unwrap());
        assert!(same_connection(&mut taken, &mut newer_end).await);
        let stats = pool.stats();
        assert_eq!((stats.idle, stats.busy, stats.opened), (1, 1, 2));
    }

    #[tokio::test]
    async fn past_max_idle_a_connection_is_closed_not_kept() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = ConnectionPool::new(8, 2);
        let mut ends = Vec::new();
        let mut opened = Vec::new();
        for _ in 0..3 {
            let (ours, slot, theirs) = open(&pool, &upstream).await;
            opened.push((ours, slot));
            ends.push(theirs);
        }
        for (ours, slot) in opened {
            pool.park(ours, slot, LONG);
        }
        assert_eq!(pool.stats().idle, 2);
        let mut byte = [0u8; 1];
        assert_eq!(
            ends[2].read(&mut byte).await.unwrap(),
            0,
            "the third is closed"
        );
        assert_eq!(pool.stats().closed, 1);
    }

    #[tokio::test]
    async fn a_connection_past_its_idle_timeout_is_not_taken() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = ConnectionPool::new(8, 8);
        let (ours, slot, _theirs) = open(&pool, &upstream).await;
        pool.park(ours, slot, Duration::ZERO);
        assert!(matches!(
            pool.checkout(Duration::ZERO).await.unwrap(),
            Checkout::New(_)
        ));
        assert_eq!(pool.stats().closed, 1);
    }

    /// Two idle connections to one upstream, under a newer one that upstream has closed and
    /// a newer still that it has written to out of turn, both parked once the runtime has
    /// seen what happened to them. Returns the upstream's ends of the good two.
    async fn two_good_under_two_bad(
        pool: &ConnectionPool,
        upstream: &TcpListener,
    ) -> [TcpStream; 2] {
        let (first, first_slot, first_end) = open(pool, upstream).await;
        let (second, second_slot, second_end) = open(pool, upstream).await;
        let (closed, closed_slot, closed_end) = open(pool, upstream).await;
        let (mut chatty, chatty_slot, mut chatty_end) = open(pool, upstream).await;
        drop(closed_end);
        chatty_end.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let mut closed = closed;
        // Let the runtime see both events before the connections are parked.
        let mut byte = [0u8; 1];
        assert_eq!(closed.read(&mut byte).await.unwrap(), 0);
        // One byte of what it sent is read; the rest stays, and the runtime knows it.
        chatty.read_exact(&mut byte).await.unwrap();
        pool.park(first, first_slot, LONG);
        pool.park(second, second_slot, LONG);
        pool.park(closed, closed_slot, LONG);
        pool.park(chatty, chatty_slot, LONG);
        [first_end, second_end]
    }

    #[tokio::test]
    async fn taking_skips_and_closes_connections_the_upstream_closed_or_wrote_to() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = ConnectionPool::new(8, 8);
        let [_first_end, mut second_end] = two_good_under_two_bad(&pool, &upstream).await;
        let (mut taken, _slot) = reused(pool.checkout(Duration::ZERO).await.unwrap());
        assert!(same_connection(&mut taken, &mut second_end).await);
        assert_eq!(pool.stats().idle, 1);
        assert_eq!(pool.stats().closed, 2);
    }

    #[tokio::test]
    async fn sweeping_closes_connections_the_upstream_closed_or_wrote_to() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = ConnectionPool::new(8, 8);
        let [mut first_end, mut second_end] = two_good_under_two_bad(&pool, &upstream).await;
        pool.sweep(Instant::now());
        assert_eq!(pool.stats().idle, 2);
        let (mut taken, _a) = reused(pool.checkout(Duration::ZERO).await.unwrap());
        assert!(same_connection(&mut taken, &mut second_end).await);
        let (mut taken, _b) = reused(pool.checkout(Duration::ZERO).await.unwrap());
        assert!(same_connection(&mut taken, &mut first_end).await);
        pool.sweep(Instant::now() + LONG);
        assert_eq!(pool.stats().idle, 0);
    }

    #[tokio::test]
    async fn at_max_connections_a_checkout_waits_for_a_parked_connection() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(ConnectionPool::new(1, 1));
        let (ours, slot, mut theirs) = open(&pool, &upstream).await;
        assert_eq!(
            pool.checkout(Duration::from_millis(20)).await.err(),
            Some(PoolFull),
            "the one slot is busy"
        );
        let waiting = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { reused(pool.checkout(LONG).await.unwrap()).0 }
        });
        tokio::task::yield_now().await;
        pool.park(ours, slot, LONG);
        let mut handed_over = waiting.await.unwrap();
        assert!(same_connection(&mut handed_over, &mut theirs).await);
    }

    #[tokio::test]
    async fn at_max_connections_a_close_frees_a_slot_for_a_waiting_checkout() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(ConnectionPool::new(1, 1));
        let (ours, slot, _theirs) = open(&pool, &upstream).await;
        let waiting = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { matches!(pool.checkout(LONG).await, Ok(Checkout::New(_))) }
        });
        tokio::task::yield_now().await;
        drop((ours, slot));
        assert!(waiting.await.unwrap());
        assert_eq!(pool.stats().closed, 1);
    }

    #[tokio::test]
    async fn a_slot_for_a_connection_made_elsewhere_closes_an_idle_one_when_full() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = ConnectionPool::new(1, 1);
        let (ours, slot, mut theirs) = open(&pool, &upstream).await;
        pool.park(ours, slot, LONG);
        let mut elsewhere = pool.slot_for_new(Duration::ZERO).await.unwrap();
        elsewhere.opened();
        let mut byte = [0u8; 1];
        assert_eq!(
            theirs.read(&mut byte).await.unwrap(),
            0,
            "the idle one closed"
        );
        let stats = pool.stats();
        assert_eq!(
            (stats.idle, stats.busy, stats.opened, stats.closed),
            (0, 1, 2, 1)
        );
        assert_eq!(
            pool.slot_for_new(Duration::ZERO).await.err(),
            Some(PoolFull)
        );
        elsewhere.connect_failed();
        assert_eq!(pool.stats().connect_errors, 1);
        assert_eq!(pool.stats().busy, 0);
    }
}
