//! The connection to the Redis that several gateway instances share (`[redis]`). One per
//! gateway, multiplexed by every plugin that uses it and reconnected automatically. Every
//! call is bounded by `redis.timeout`; after a failure the store counts as down for a short
//! back-off, so while Redis is away requests take their fallback at once instead of each
//! waiting out a timeout, and the first request after the back-off probes it again.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long a failed store is left alone before a request tries it again.
const DOWN_FOR: Duration = Duration::from_millis(500);

pub struct RedisStore {
    client: redis::Client,
    pub url_for_logs: String,
    pub timeout: Duration,
    connection: OnceLock<ConnectionManager>,
    down_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisStore({})", self.url_for_logs)
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

impl RedisStore {
    /// Check the URL now; connect on first use (inside the proxy's runtime).
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
        // Never log a password that may be in the URL.
        let url_for_logs = match url.split_once('@') {
            Some((scheme_and_auth, host)) => {
                let scheme = scheme_and_auth.split("://").next().unwrap_or("redis");
                format!("{scheme}://***@{host}")
            }
            None => url.to_string(),
        };
        Ok(RedisStore {
            client,
            url_for_logs,
            timeout,
            connection: OnceLock::new(),
            down_until: Mutex::new(None),
        })
    }

    pub fn is_down(&self) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        down.is_some_and(|until| Instant::now() < until)
    }

    fn mark(&self, ok: bool) {
        let mut down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        let was_down = down.is_some();
        *down = if ok {
            None
        } else {
            Some(Instant::now() + DOWN_FOR)
        };
        match (was_down, ok) {
            (false, false) => log::warn!(
                "Redis {} failed; rate limits use their on_store_error fallback",
                self.url_for_logs
            ),
            (true, true) => log::info!(
                "Redis {} is back; shared rate limiting resumes",
                self.url_for_logs
            ),
            _ => {}
        }
    }

    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.connection.get() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(DOWN_FOR);
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.connection.get_or_init(|| manager).clone())
    }

    /// Run a script, bounded by the timeout, and track whether Redis is healthy.
    pub async fn run_script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[u64],
    ) -> Result<T, StoreError> {
        if self.is_down() {
            return Err(StoreError::Down);
        }
        let mut connection = self.connection()?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let result = match tokio::time::timeout(
            self.timeout,
            invocation.invoke_async(&mut connection),
        )
        .await
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        self.mark(result.is_ok());
        result
    }
}
