//! A circuit breaker per upstream target: passive outlier detection from real traffic.
//!
//! Closed → Open after `failures` consecutive failed requests. Open: the target gets no
//! traffic at all for `open_for`. Then Half-Open: `half_open_requests` probes go through;
//! a successful probe closes the circuit, a failed one opens it again for twice as long as
//! the last time (capped at `max_open_for`). Which outcomes count as failures is
//! configurable (`failure_on`: connect, timeout, reset, 5xx).
//!
//! Time is passed in, never read here, so the state machine is tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }

    /// The `portico_circuit_breaker_state` gauge value (SPEC.md).
    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

/// How one attempt at a target ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Connect,
    Timeout,
    /// The connection was reset or closed, or the answer was not valid HTTP.
    Reset,
    Status5xx,
}

/// Which outcomes count as failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FailureSet {
    pub connect: bool,
    pub timeout: bool,
    pub reset: bool,
    pub status_5xx: bool,
}

impl FailureSet {
    pub fn counts(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Success => false,
            Outcome::Connect => self.connect,
            Outcome::Timeout => self.timeout,
            Outcome::Reset => self.reset,
            Outcome::Status5xx => self.status_5xx,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BreakerSettings {
    pub failures: u32,
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub half_open_requests: u32,
    pub failure_on: FailureSet,
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    consecutive_failures: u32,
    open_until: Instant,
    /// Trips since the circuit was last closed; each one doubles the open time.
    trips: u32,
    probes_in_flight: u32,
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

/// Permission to send one request; says whether it is a half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    pub probe: bool,
}

/// A state change, for the log and the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub to: CircuitState,
    pub open_for: Option<Duration>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings, now: Instant) -> Breaker {
        Breaker {
            settings,
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                consecutive_failures: 0,
                open_until: now,
                trips: 0,
                probes_in_flight: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request go to this target now? An open circuit whose time is up becomes
    /// half-open here, and then lets through at most `half_open_requests` probes at once.
    pub fn try_acquire(&self, now: Instant) -> Result<(Permit, Option<Transition>), Duration> {
        let mut inner = self.lock();
        let mut transition = None;
        if inner.state == CircuitState::Open {
            if now < inner.open_until {
                return Err(inner.open_until - now);
            }
            inner.state = CircuitState::HalfOpen;
            inner.probes_in_flight = 0;
            transition = Some(Transition {
                to: CircuitState::HalfOpen,
                open_for: None,
            });
        }
        match inner.state {
            CircuitState::Closed => Ok((Permit { probe: false }, transition)),
            CircuitState::HalfOpen if inner.probes_in_flight < self.settings.half_open_requests => {
                inner.probes_in_flight += 1;
                Ok((Permit { probe: true }, transition))
            }
            // Probes are out; the others wait for their verdict. Retry soon.
            _ => Err(Duration::from_secs(1)),
        }
    }

    /// Record how a permitted request ended.
    pub fn record(&self, permit: Permit, outcome: Outcome, now: Instant) -> Option<Transition> {
        let failed = self.settings.failure_on.counts(outcome);
        let mut inner = self.lock();
        if permit.probe {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
        // An outcome that is neither a success nor a counted failure changes nothing.
        if !failed && outcome != Outcome::Success {
            return None;
        }
        match (inner.state, failed) {
            (CircuitState::Closed, false) => {
                inner.consecutive_failures = 0;
                None
            }
            (CircuitState::Closed, true) => {
                inner.consecutive_failures += 1;
                (inner.consecutive_failures >= self.settings.failures)
                    .then(|| self.open(&mut inner, now))
            }
            (CircuitState::HalfOpen, false) if permit.probe => {
                inner.state = CircuitState::Closed;
                inner.consecutive_failures = 0;
                inner.trips = 0;
                Some(Transition {
                    to: CircuitState::Closed,
                    open_for: None,
                })
            }
            (CircuitState::HalfOpen, true) if permit.probe => Some(self.open(&mut inner, now)),
            // A request that started before the circuit changed says nothing new.
            _ => None,
        }
    }

    /// A permitted request that never reached an outcome (the client left): free its slot.
    pub fn release(&self, permit: Permit) {
        if permit.probe {
            let mut inner = self.lock();
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) -> Transition {
        let factor = 1u32.checked_shl(inner.trips.min(16)).unwrap_or(u32::MAX);
        let open_for = self
            .settings
            .open_for
            .saturating_mul(factor)
            .min(self.settings.max_open_for);
        inner.state = CircuitState::Open;
        inner.open_until = now + open_for;
        inner.trips = inner.trips.saturating_add(1);
        inner.probes_in_flight = 0;
        Transition {
            to: CircuitState::Open,
            open_for: Some(open_for),
        }
    }

    /// State and consecutive failures, for `/status`.
    pub fn snapshot(&self, now: Instant) -> (CircuitState, u32) {
        let inner = self.lock();
        let state = match inner.state {
            CircuitState::Open if now >= inner.open_until => CircuitState::HalfOpen,
            s => s,
        };
        (state, inner.consecutive_failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(now: Instant) -> Breaker {
        Breaker::new(
            BreakerSettings {
                failures: 3,
                open_for: Duration::from_secs(10),
                max_open_for: Duration::from_secs(25),
                half_open_requests: 1,
                failure_on: FailureSet {
                    connect: true,
                    timeout: true,
                    reset: true,
                    status_5xx: true,
                },
            },
            now,
        )
    }

    fn fail(b: &Breaker, now: Instant) -> Option<Transition> {
        let (permit, _) = b.try_acquire(now).expect("allowed");
        b.record(permit, Outcome::Connect, now)
    }

    #[test]
    fn the_full_cycle_trip_wait_probe_close() {
        let t0 = Instant::now();
        let b = breaker(t0);
        assert_eq!(fail(&b, t0), None);
        assert_eq!(fail(&b, t0), None);
        let trip = fail(&b, t0).unwrap();
        assert_eq!(trip.to, CircuitState::Open);
        assert_eq!(trip.open_for, Some(Duration::from_secs(10)));

        // Open: no traffic at all, and the caller learns how long.
        assert_eq!(
            b.try_acquire(t0 + Duration::from_secs(4)).unwrap_err(),
            Duration::from_secs(6)
        );

        // Time is up: one probe, and only one.
        let t1 = t0 + Duration::from_secs(10);
        let (probe, became) = b.try_acquire(t1).unwrap();
        assert!(probe.probe);
        assert_eq!(became.unwrap().to, CircuitState::HalfOpen);
        assert!(
            b.try_acquire(t1).is_err(),
            "a second request waits for the probe's verdict"
        );

        let closed = b.record(probe, Outcome::Success, t1).unwrap();
        assert_eq!(closed.to, CircuitState::Closed);
        assert!(!b.try_acquire(t1).unwrap().0.probe);
        assert_eq!(b.snapshot(t1), (CircuitState::Closed, 0));
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let t0 = Instant::now();
        let b = breaker(t0);
        for _ in 0..3 {
            fail(&b, t0);
        }
        let mut now = t0;
        for expected in [20, 25, 25] {
            now += Duration::from_secs(30);
            let (probe, _) = b.try_acquire(now).unwrap();
            let again = b.record(probe, Outcome::Timeout, now).unwrap();
            assert_eq!(again.open_for, Some(Duration::from_secs(expected)));
        }
    }

    #[test]
    fn successes_reset_the_count_and_uncounted_outcomes_are_ignored() {
        let t0 = Instant::now();
        let mut settings = breaker(t0).settings;
        settings.failure_on.status_5xx = false;
        let b = Breaker::new(settings, t0);
        fail(&b, t0);
        fail(&b, t0);
        let (p, _) = b.try_acquire(t0).unwrap();
        b.record(p, Outcome::Success, t0);
        fail(&b, t0);
        fail(&b, t0);
        for _ in 0..10 {
            let (p, _) = b.try_acquire(t0).unwrap();
            assert_eq!(
                b.record(p, Outcome::Status5xx, t0),
                None,
                "5xx is not counted here"
            );
        }
        assert_eq!(b.snapshot(t0), (CircuitState::Closed, 2));
    }

    #[test]
    fn an_abandoned_probe_frees_its_slot() {
        let t0 = Instant::now();
        let b = breaker(t0);
        for _ in 0..3 {
            fail(&b, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        let (probe, _) = b.try_acquire(t1).unwrap();
        b.release(probe);
        assert!(b.try_acquire(t1).unwrap().0.probe);
    }
}
