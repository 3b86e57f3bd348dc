//! A retry budget per upstream: retries may add at most `ratio` extra requests over the last
//! ten seconds (plus a small floor so a quiet upstream can still retry), so that during an
//! outage retries cannot multiply the load on the upstream that is failing.

use std::sync::Mutex;
use std::time::Instant;

const BUCKETS: usize = 10;

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// Retries always allowed per 10 s, however quiet the upstream.
    floor: u64,
    inner: Mutex<Buckets>,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Buckets {
    second: u64,
    requests: [u64; BUCKETS],
    retries: [u64; BUCKETS],
}

impl Buckets {
    fn advance(&mut self, second: u64) {
        if second <= self.second {
            return;
        }
        let steps = (second - self.second).min(BUCKETS as u64);
        for s in 1..=steps {
            let slot = ((self.second + s) % BUCKETS as u64) as usize;
            self.requests[slot] = 0;
            self.retries[slot] = 0;
        }
        self.second = second;
    }

    fn slot(&self) -> usize {
        (self.second % BUCKETS as u64) as usize
    }
}

impl RetryBudget {
    pub fn new(ratio: f64, floor: u64) -> RetryBudget {
        RetryBudget {
            ratio,
            floor,
            inner: Mutex::new(Buckets::default()),
            epoch: Instant::now(),
        }
    }

    fn buckets(&self, now: Instant) -> std::sync::MutexGuard<'_, Buckets> {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        b.advance(now.duration_since(self.epoch).as_secs());
        b
    }

    /// A first attempt of a request.
    pub fn record_request(&self, now: Instant) {
        let mut b = self.buckets(now);
        let slot = b.slot();
        b.requests[slot] += 1;
    }

    /// May one more retry go out now? Counts it when it may.
    pub fn try_retry(&self, now: Instant) -> bool {
        let mut b = self.buckets(now);
        let requests: u64 = b.requests.iter().sum();
        let retries: u64 = b.retries.iter().sum();
        let allowed = ((requests as f64 * self.ratio) as u64).max(self.floor);
        if retries >= allowed {
            return false;
        }
        let slot = b.slot();
        b.retries[slot] += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_are_capped_at_the_ratio_of_recent_requests() {
        let budget = RetryBudget::new(0.2, 3);
        let now = budget.epoch;
        for _ in 0..100 {
            budget.record_request(now);
        }
        let granted = (0..100).filter(|_| budget.try_retry(now)).count();
        assert_eq!(granted, 20);
        // Ten seconds later the old requests no longer pay for retries; the floor remains.
        let later = now + Duration::from_secs(11);
        let granted = (0..100).filter(|_| budget.try_retry(later)).count();
        assert_eq!(granted, 3);
    }
}
