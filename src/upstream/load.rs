//! What the load-aware balancers weigh a target by: its answer time as a peak-EWMA
//! (`balance = "ewma"`), and how far it has ramped up since it joined or recovered
//! (`slow_start`). Plain atomics: read and written per request by every worker thread, with
//! no lock; a lost update between two threads only blurs an estimate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How fast a latency estimate forgets (Finagle's and Linkerd's decay time).
const DECAY: Duration = Duration::from_secs(10);
/// A target's estimate before its first answer: about a LAN round trip and a quick handler
/// (Linkerd's default RTT). Zero would send a new target every request until it answered.
const DEFAULT_LATENCY: Duration = Duration::from_millis(10);
/// The least share a ramping target gets (Envoy's slow start `min_weight_percent`).
const MIN_RAMP: f64 = 0.1;

/// Nanoseconds since the first call: a clock an atomic can hold.
fn now_ns(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    now.saturating_duration_since(epoch).as_nanos() as u64
}

/// A peak-sensitive moving average of answer times: a slower answer than the estimate is
/// taken at once, a faster one moves it by how long since the last (`DECAY`). Reading it
/// decays it toward zero too, so a target once slow is tried again in time.
pub struct PeakEwma {
    /// Microseconds, as f64 bits.
    micros: AtomicU64,
    /// When `micros` was last written.
    stamp: AtomicU64,
}

impl PeakEwma {
    pub fn new(now: Instant) -> PeakEwma {
        PeakEwma {
            micros: AtomicU64::new((DEFAULT_LATENCY.as_micros() as f64).to_bits()),
            stamp: AtomicU64::new(now_ns(now)),
        }
    }

    /// One answer took `took`.
    pub fn observe(&self, took: Duration, now: Instant) {
        let sample = took.as_micros() as f64;
        let (current, weight) = self.current(now);
        let next = if sample > current {
            sample
        } else {
            current * weight + sample * (1.0 - weight)
        };
        self.micros.store(next.to_bits(), Ordering::Relaxed);
        self.stamp.store(now_ns(now), Ordering::Relaxed);
    }

    /// The estimate now, in microseconds.
    pub fn estimate(&self, now: Instant) -> f64 {
        self.current(now).0
    }

    /// The estimate decayed to `now`, and the decay factor used.
    fn current(&self, now: Instant) -> (f64, f64) {
        let value = f64::from_bits(self.micros.load(Ordering::Relaxed));
        let elapsed = now_ns(now).saturating_sub(self.stamp.load(Ordering::Relaxed));
        let weight = (-(elapsed as f64) / DECAY.as_nanos() as f64).exp();
        (value * weight, weight)
    }
}

/// `Ramp::since` of a target that is not ramping.
const RAMPED: u64 = u64::MAX;

/// When a target joined its pool or last recovered: its ramp under `slow_start` starts then.
pub struct Ramp {
    since: AtomicU64,
}

impl Ramp {
    /// Ramping from `now`.
    pub fn new(now: Instant) -> Ramp {
        Ramp {
            since: AtomicU64::new(now_ns(now)),
        }
    }

    /// Done ramping: a target of the set the config was loaded with. When the whole
    /// gateway starts there is no traffic yet for a new target to be spared.
    pub fn ramped() -> Ramp {
        Ramp {
            since: AtomicU64::new(RAMPED),
        }
    }

    /// Start again (the target just recovered).
    pub fn restart(&self, now: Instant) {
        self.since.store(now_ns(now), Ordering::Relaxed);
    }

    /// The share of its weight the target takes now: from `MIN_RAMP` up to 1 over
    /// `slow_start`.
    pub fn factor(&self, slow_start: Duration, now: Instant) -> f64 {
        let since = self.since.load(Ordering::Relaxed);
        if slow_start.is_zero() || since == RAMPED {
            return 1.0;
        }
        let elapsed = now_ns(now).saturating_sub(since);
        (elapsed as f64 / slow_start.as_nanos() as f64).clamp(MIN_RAMP, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_answer_counts_at_once_and_fast_ones_bring_it_down_over_time() {
        let _ = now_ns(Instant::now());
        let t0 = Instant::now();
        let ewma = PeakEwma::new(t0);
        assert!((ewma.estimate(t0) - 10_000.0).abs() < 1.0);
        ewma.observe(Duration::from_millis(200), t0);
        assert!(
            (ewma.estimate(t0) - 200_000.0).abs() < 1.0,
            "the peak, at once"
        );
        // A fast answer 1 s later: the estimate moves a tenth of a decay toward it.
        let t1 = t0 + Duration::from_secs(1);
        ewma.observe(Duration::from_millis(1), t1);
        let e = ewma.estimate(t1);
        assert!(e < 200_000.0 && e > 150_000.0, "{e}");
        // Unread for a minute, it has decayed far (the target is tried again).
        assert!(ewma.estimate(t1 + Duration::from_secs(60)) < 1_000.0);
    }

    #[test]
    fn a_ramp_goes_from_a_tenth_to_all_over_slow_start() {
        let _ = now_ns(Instant::now());
        let t0 = Instant::now();
        let ramp = Ramp::new(t0);
        let s = Duration::from_secs(30);
        assert_eq!(ramp.factor(s, t0), MIN_RAMP);
        assert!((ramp.factor(s, t0 + Duration::from_secs(15)) - 0.5).abs() < 1e-9);
        assert_eq!(ramp.factor(s, t0 + Duration::from_secs(31)), 1.0);
        assert_eq!(ramp.factor(Duration::ZERO, t0), 1.0);
        ramp.restart(t0 + Duration::from_secs(40));
        assert_eq!(ramp.factor(s, t0 + Duration::from_secs(40)), MIN_RAMP);
        assert_eq!(Ramp::ramped().factor(s, Instant::now()), 1.0);
    }
}
