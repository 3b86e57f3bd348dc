//! The Redis that several gateway instances share (`[redis]`): one server, a Redis Cluster or a
//! Sentinel-managed primary, over TCP or TLS. One connection per gateway, multiplexed by every
//! plugin that uses it and reopened in the background when it fails.
//!
//! Every call is bounded by `redis.timeout`. After a failure the store counts as down for a
//! short back-off, so while Redis is away requests take their fallback at once instead of each
//! waiting out a timeout; the first request after the back-off probes it again. A request never
//! connects itself: it finds the connection open, or waits at most `redis.timeout` for the
//! background connect, so a Redis that cannot be reached (or whose certificate does not verify)
//! costs requests nothing but their fallback.

pub mod topology;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
pub use redis;

use topology::{Connection, Connector};
pub use topology::{TlsPem, Topology};

/// How long a failed store is left alone before a request tries it again.
const DOWN_FOR: Duration = Duration::from_millis(500);
/// The longest wait between two connection attempts while Redis stays unreachable.
const RECONNECT_AT_MOST: Duration = Duration::from_secs(2);

/// `[redis]` as the config compiled it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisSpec {
    pub topology: Topology,
    pub tls: Option<TlsPem>,
    pub timeout: Duration,
}

/// A handle on the shared connection; clones share it.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
    pub timeout: Duration,
}

struct Inner {
    spec: RedisSpec,
    connector: Connector,
    for_logs: String,
    current: ArcSwapOption<Connection>,
    /// Woken when a connection opens.
    opened: tokio::sync::Notify,
    /// A background connect is under way.
    connecting: AtomicBool,
    /// Nanoseconds after `epoch()` until which the store counts as down; 0: up.
    down_until: AtomicU64,
    /// The last failure was logged as such (so recovery is logged once).
    failing: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisStore({})", self.inner.for_logs)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis is down (backing off after an earlier failure)")]
    Down,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
}

/// What `run` sends.
enum Call<'a> {
    Script(redis::ScriptInvocation<'a>),
    Command(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
}

/// What a subscription delivers.
pub enum Event<'a> {
    Message(&'a [u8]),
    /// Subscribed again after the subscription was lost: messages may have been missed.
    Resubscribed,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64
}

impl RedisStore {
    /// Check the URLs and TLS material now; connect later, in the background.
    pub fn new(spec: RedisSpec) -> Result<RedisStore, String> {
        let connector = Connector::new(&spec.topology, spec.tls.as_ref())?;
        let for_logs = spec.topology.for_logs();
        Ok(RedisStore {
            timeout: spec.timeout,
            inner: Arc::new(Inner {
                spec,
                connector,
                for_logs,
                current: ArcSwapOption::empty(),
                opened: tokio::sync::Notify::new(),
                connecting: AtomicBool::new(false),
                down_until: AtomicU64::new(0),
                failing: AtomicBool::new(false),
            }),
        })
    }

    /// One server at `url` without TLS (benchmarks, tests).
    pub fn single(url: &str, timeout: Duration) -> Result<RedisStore, String> {
        RedisStore::new(RedisSpec {
            topology: Topology::Single(url.to_string()),
            tls: None,
            timeout,
        })
    }

    pub fn spec(&self) -> &RedisSpec {
        &self.inner.spec
    }

    pub fn for_logs(&self) -> &str {
        &self.inner.for_logs
    }

    pub fn is_down(&self) -> bool {
        let until = self.inner.down_until.load(Ordering::Relaxed);
        until != 0 && nanos_since_epoch(Instant::now()) < until
    }

    /// Connected, and the last call did not fail: what `/status` reports.
    pub fn is_up(&self) -> bool {
        self.inner.current.load().is_some() && !self.is_down()
    }

    /// Open the connection now (at start and after a reload), so a Redis that cannot be
    /// reached is logged before the first request needs it. Must run inside a Tokio runtime.
    pub fn connect_now(&self) {
        if self.inner.current.load().is_none() {
            self.connect_in_background();
        }
    }

    fn mark(&self, outcome: Result<(), &dyn std::fmt::Display>) {
        let inner = &self.inner;
        match outcome {
            // Read before writing: every successful call lands here, from every worker.
            Ok(()) => {
                if inner.down_until.load(Ordering::Relaxed) != 0 {
                    inner.down_until.store(0, Ordering::Relaxed);
                }
                if inner.failing.load(Ordering::Relaxed)
                    && inner.failing.swap(false, Ordering::Relaxed)
                {
                    log::info!(
                        "Redis {} is back; shared rate limits and the shared cache resume",
                        inner.for_logs
                    );
                }
            }
            Err(error) => {
                let until = nanos_since_epoch(Instant::now() + DOWN_FOR).max(1);
                inner.down_until.store(until, Ordering::Relaxed);
                if !inner.failing.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "Redis {} failed ({error}); rate limits take their on_store_error \
                         fallback and the shared cache tier misses until it is back",
                        inner.for_logs
                    );
                }
            }
        }
    }

    /// Start the background connect unless one is under way. It retries with a growing
    /// back-off, logging every failure, until a connection opens or the store is dropped.
    fn connect_in_background(&self) {
        if self.inner.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.connecting.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let timeout = self.timeout;
        runtime.spawn(connect_loop(weak, timeout));
    }

    /// The open connection, or (after starting a connect) one that opens within the timeout.
    async fn connection(&self) -> Result<Arc<Connection>, StoreError> {
        if let Some(c) = self.inner.current.load_full() {
            return Ok(c);
        }
        let opened = self.inner.opened.notified();
        tokio::pin!(opened);
        opened.as_mut().enable();
        self.connect_in_background();
        // Only the first connect is worth waiting for: once one has failed, the background
        // loop retries on its own and requests take their fallback meanwhile.
        if self.inner.failing.load(Ordering::Relaxed) {
            return Err(StoreError::Down);
        }
        if let Some(c) = self.inner.current.load_full() {
            return Ok(c);
        }
        let _ = tokio::time::timeout(self.timeout, opened).await;
        self.inner.current.load_full().ok_or(StoreError::Down)
    }

    /// Run `call` on the connection, bounded by the timeout; track whether Redis is healthy.
    async fn run<T: redis::FromRedisValue>(&self, call: Call<'_>) -> Result<T, StoreError> {
        if self.is_down() {
            return Err(StoreError::Down);
        }
        let opened = self.connection().await?;
        let mut connection = (*opened).clone();
        let sent = async {
            match call {
                Call::Script(invocation) => {
                    invocation
                        .invoke_async::<redis::Value>(&mut connection)
                        .await
                }
                Call::Command(cmd) => cmd.query_async::<redis::Value>(&mut connection).await,
                Call::Pipeline(pipeline) => {
                    pipeline.query_async::<redis::Value>(&mut connection).await
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(value)) => {
                redis::from_redis_value(value).map_err(|e| StoreError::Redis(e.into()))
            }
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        match &result {
            Ok(_) => self.mark(Ok(())),
            Err(error) => {
                self.mark(Err(error));
                if should_reopen(&connection, error) {
                    self.reopen(&opened);
                }
            }
        }
        result
    }

    /// Drop a connection that failed and open another: after a failover the sentinels name
    /// a new primary, and a server that hangs may be gone for good. (The cluster client
    /// follows its nodes by itself.)
    /// Only the connection that failed: another request may have replaced it already.
    fn reopen(&self, failed: &Arc<Connection>) {
        let previous = self
            .inner
            .current
            .compare_and_swap(failed, None::<Arc<Connection>>);
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, failed)) {
            self.connect_in_background();
        }
    }

    /// Run a script, bounded by the timeout, and track whether Redis is healthy. In a
    /// cluster, the script runs on the node owning the first key's slot.
    pub async fn run_script<T: redis::FromRedisValue + Send>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[u64],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        self.run(Call::Script(invocation)).await
    }

    /// One command.
    pub async fn query<T: redis::FromRedisValue + Send>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.run(Call::Command(cmd)).await
    }

    /// Commands sent together. In a cluster every key must live in one slot.
    pub async fn pipeline<T: redis::FromRedisValue + Send>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        self.run(Call::Pipeline(pipeline)).await
    }

    /// Deliver every message on `channel` to `handler` until the store is dropped, subscribing
    /// again (on the next node of a cluster, on the new primary after a failover) whenever the
    /// subscription is lost.
    pub async fn subscribe(&self, channel: &str, handler: impl Fn(Event<'_>)) {
        let weak = Arc::downgrade(&self.inner);
        let timeout = self.timeout;
        subscribe_loop(weak, timeout, channel, handler).await;
    }
}

/// Whether a failed call's connection should be replaced.
fn should_reopen(connection: &Connection, error: &StoreError) -> bool {
    if matches!(connection, Connection::Cluster(_)) {
        return false;
    }
    match error {
        StoreError::Down => false,
        StoreError::Timeout(_) => true,
        StoreError::Redis(e) => {
            e.is_io_error()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error()
                // A former primary, demoted by a failover, refuses writes.
                || e.code() == Some("READONLY")
        }
    }
}

/// How long a connection attempt may take: a TLS handshake and a cluster's slot map need
/// more than one command's timeout, and no request waits for it.
fn connect_timeout(timeout: Duration) -> Duration {
    (timeout * 4).max(Duration::from_secs(1))
}

async fn connect_loop(weak: Weak<Inner>, timeout: Duration) {
    let mut wait = DOWN_FOR;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let store = RedisStore {
            inner: Arc::clone(&inner),
            timeout,
        };
        let attempt = tokio::time::timeout(
            connect_timeout(timeout),
            inner.connector.connect(connect_timeout(timeout), timeout),
        )
        .await;
        let error = match attempt {
            Ok(Ok(connection)) => {
                inner.current.store(Some(Arc::new(connection)));
                inner.connecting.store(false, Ordering::Release);
                inner.opened.notify_waiters();
                log::info!(
                    "Redis {} connected ({})",
                    inner.for_logs,
                    inner.spec.topology.kind()
                );
                store.mark(Ok(()));
                return;
            }
            Ok(Err(e)) => describe(&inner.spec, &e),
            Err(_) => format!("no connection within {:?}", connect_timeout(timeout)),
        };
        // Logged on every attempt: an operator fixing a certificate wants to see each retry.
        log::warn!(
            "Redis {}: cannot connect: {error}; it counts as down, next try in {wait:?}",
            inner.for_logs
        );
        store.mark(Err(&error));
        let until = nanos_since_epoch(Instant::now() + wait).max(1);
        inner.down_until.store(until, Ordering::Relaxed);
        drop((store, inner));
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RECONNECT_AT_MOST);
    }
}

/// A connection error in words an operator can act on; TLS failures say so.
fn describe(spec: &RedisSpec, error: &redis::RedisError) -> String {
    let text = error.to_string();
    let lower = text.to_ascii_lowercase();
    if spec.topology.uses_tls()
        && (lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake"))
    {
        let trusted = if spec.tls.as_ref().is_some_and(|t| t.ca.is_some()) {
            "redis.tls.ca"
        } else {
            "the system's roots"
        };
        format!("TLS handshake failed, the server's certificate did not verify against {trusted}: {text}")
    } else {
        text
    }
}

async fn subscribe_loop(
    weak: Weak<Inner>,
    timeout: Duration,
    channel: &str,
    handler: impl Fn(Event<'_>),
) {
    let mut attempt = 0usize;
    let mut subscribed_before = false;
    let mut wait = DOWN_FOR;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let connecting = async {
            let client = inner.connector.subscriber_client(attempt).await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = match tokio::time::timeout(connect_timeout(timeout), connecting).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                log::warn!(
                    "Redis {}: cannot subscribe to {channel}: {}; next try in {wait:?}",
                    inner.for_logs,
                    describe(&inner.spec, &e)
                );
                drop(inner);
                attempt += 1;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECONNECT_AT_MOST);
                continue;
            }
            Err(_) => {
                drop(inner);
                attempt += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        drop(inner);
        wait = DOWN_FOR;
        if subscribed_before {
            handler(Event::Resubscribed);
        }
        subscribed_before = true;
        let mut messages = pubsub.into_on_message();
        loop {
            // Look up now and then whether the store still exists: a reload may drop it.
            match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
                Ok(Some(message)) => handler(Event::Message(message.get_payload_bytes())),
                Ok(None) => break,
                Err(_) if weak.strong_count() == 0 => return,
                Err(_) => {}
            }
        }
        attempt += 1;
    }
}
