//! The upstream exchange: everything one request does with one upstream, whichever driver or
//! composition call sends it. One place decides, many places ask (Envoy's router filter,
//! linkerd2-proxy's stack):
//!
//! 1. choose a target ([`Exchange::next_attempt`]): after the retry backoff, within the
//!    deadline, healthy, its circuit letting the request through, not one already tried;
//! 2. admit it: a connection under the target's `max_connections`, from its one pool
//!    ([`Exchange::connection`]), or a slot for a connection Pingora's proxy makes itself
//!    ([`Exchange::admit_connection`]); a full pool waits up to `connect_timeout`, then 503;
//! 3. every connect, read and write timeout clamped to the deadline;
//! 4. the sender (the fast driver, Pingora's proxy, a composition call) sends;
//! 5. the outcome classified once ([`classify`]): success, http_5xx, connect_error, timeout,
//!    reset, or a stale reused connection;
//! 6. recorded once: the target's circuit breaker, `portico_upstream_requests_total`, the
//!    pool's counters;
//! 7. a retry decided once ([`Exchange::retry_after`]): attempts and the retry budget left,
//!    the deadline, and whether the request may have reached the upstream (then only an
//!    idempotent request whose body can be sent again). A stale reused connection is sent
//!    again at once, at no cost to the target or the budget.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, RetryType};
use prometheus::IntCounterVec;

use super::breaker::Outcome;
use super::pool::{Checkout, Slot};
use super::{InFlight, UpstreamPool};
use crate::trace::{AttemptSpan, AttemptTarget, SpanParent};

/// Attempts recorded as tried; past this (more than any config allows) a retry may go back
/// to a target already tried.
const MAX_TRIED: usize = 16;
/// Stale reused connections sent again per request: each costs nothing, but an upstream
/// that restarted may have left every idle connection dead, and the request must still end.
const MAX_STALE_RETRIES: u32 = 8;

/// Why no attempt could start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No target may take traffic (unhealthy, circuit open, all tried); one may be in this long.
    Unavailable(Duration),
    /// The target has `max_connections` open and none came free within `connect_timeout`.
    PoolFull,
    /// The route's deadline passed.
    DeadlinePassed,
}

/// How far an attempt got before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No connection was made: nothing reached the upstream.
    Connect,
    /// The request was (perhaps partly) sent on a connection.
    Sent,
}

/// The current attempt: the target it counts against, and the slot its connection holds.
struct Attempt {
    in_flight: InFlight,
    slot: Option<Slot>,
    reused: bool,
}

/// Targets already tried, kept inline: no allocation per request.
#[derive(Default)]
struct Tried {
    indices: [usize; MAX_TRIED],
    len: usize,
}

impl Tried {
    fn as_slice(&self) -> &[usize] {
        &self.indices[..self.len]
    }
    fn push(&mut self, index: usize) {
        if self.len < MAX_TRIED {
            self.indices[self.len] = index;
            self.len += 1;
        }
    }
    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }
}

pub struct Exchange {
    pool: Arc<UpstreamPool>,
    deadline: Option<Instant>,
    retries_left: u32,
    stale_retries_left: u32,
    /// The next attempt is a counted retry, so it waits `backoff` first.
    retry_pending: bool,
    tried: Tried,
    attempt: Option<Attempt>,
    /// The target of the last attempt, for the access log.
    last_target: Option<usize>,
    /// When the first attempt started.
    started: Option<Instant>,
    requests: IntCounterVec,
    /// A sampled request's server span: each attempt is a client span under it.
    trace: Option<SpanParent>,
    /// The current (or last, until it is written) attempt's span.
    span: Option<AttemptSpan>,
    /// Attempts started, for `http.request.resend_count`.
    attempts: u32,
}

impl Exchange {
    /// An exchange with `pool` for one request, its attempts bounded by `deadline`.
    /// `requests` is `portico_upstream_requests_total`.
    pub fn new(
        pool: Arc<UpstreamPool>,
        deadline: Option<Instant>,
        requests: &IntCounterVec,
    ) -> Self {
        let retries_left = pool.retry.map_or(0, |r| r.attempts);
        Exchange {
            pool,
            deadline,
            retries_left,
            stale_retries_left: MAX_STALE_RETRIES,
            retry_pending: false,
            tried: Tried::default(),
            attempt: None,
            last_target: None,
            started: None,
            requests: requests.clone(),
            trace: None,
            span: None,
            attempts: 0,
        }
    }

    /// Record each attempt as a client span under `parent` (a sampled request's).
    pub fn traced(mut self, parent: Option<SpanParent>) -> Self {
        self.trace = parent;
        self
    }

    /// The `traceparent` the current attempt's request carries: its own span's, when the
    /// request is traced.
    pub fn traceparent(&self) -> Option<http::HeaderValue> {
        Some(self.trace.as_ref()?.attempt_header(self.span.as_ref()?))
    }

    /// Write the last attempt's span, if it is still open.
    fn end_span(&mut self) {
        let (Some(parent), Some(span)) = (&self.trace, self.span.take()) else {
            return;
        };
        let Some(target) = self.last_target.and_then(|i| self.pool.targets.get(i)) else {
            return;
        };
        parent.end_attempt(
            span,
            &AttemptTarget {
                upstream: &self.pool.name,
                target: &target.label,
                address: target.peer._address.as_inet().copied(),
                resend_count: self.attempts.saturating_sub(1),
            },
        );
    }

    pub fn pool(&self) -> &Arc<UpstreamPool> {
        &self.pool
    }

    /// The upstream and target of the last attempt, for the access log.
    pub fn last_target(&self) -> Option<(&Arc<str>, &Arc<str>)> {
        let target = self.pool.targets.get(self.last_target?)?;
        Some((&self.pool.name, &target.label))
    }

    /// When the first attempt started.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    /// Time left before the deadline (all the time in the world without one).
    pub fn time_left(&self) -> Duration {
        self.deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        })
    }

    /// The route's deadline over every attempt, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn deadline_passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Choose the target of the next attempt and start it: the peer to send to, its
    /// timeouts clamped to the deadline. A counted retry waits the upstream's `backoff`
    /// first. `hash_input` is the consistent-hashing key (empty for other balancers).
    pub async fn next_attempt(&mut self, hash_input: &[u8]) -> Result<HttpPeer, Refused> {
        // An attempt still open here ended without a word (a driver that moved on): it says
        // nothing about its target.
        self.attempt = None;
        self.end_span();
        if self.retry_pending {
            self.retry_pending = false;
            let backoff = self.pool.retry.map_or(Duration::ZERO, |r| r.backoff);
            tokio::time::sleep(backoff.min(self.time_left())).await;
        } else if self.tried.len == 0 {
            self.pool.budget.record_request(Instant::now());
        }
        if self.deadline_passed() {
            return Err(Refused::DeadlinePassed);
        }
        let chosen = self
            .pool
            .select(hash_input, self.tried.as_slice())
            .map_err(|unavailable| Refused::Unavailable(unavailable.retry_after))?;
        self.tried.push(chosen.index);
        self.last_target = Some(chosen.index);
        let in_flight = self.pool.start_request(chosen);
        let mut peer = in_flight.target().peer.clone();
        if self.deadline.is_some() {
            // No single connect, read or write may outlast the deadline.
            let left = self.time_left();
            let options = &mut peer.options;
            for timeout in [
                &mut options.connection_timeout,
                &mut options.total_connection_timeout,
                &mut options.read_timeout,
                &mut options.write_timeout,
            ] {
                *timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
        }
        self.started.get_or_insert_with(Instant::now);
        self.attempts += 1;
        self.span = self.trace.as_ref().map(SpanParent::attempt);
        self.attempt = Some(Attempt {
            in_flight,
            slot: None,
            reused: false,
        });
        Ok(peer)
    }

    /// How long a request may wait for a connection under the target's limit: its
    /// `connect_timeout`, within the deadline.
    fn connection_wait(&self) -> Duration {
        self.pool.spec.connect_timeout.0.min(self.time_left())
    }

    /// A connection to the current attempt's target: an idle one from its pool, or a new one
    /// made with `transport` under its `max_connections`. `Ok((stream, reused))`.
    pub async fn connection(
        &mut self,
        transport: &TransportConnector,
        peer: &HttpPeer,
    ) -> Result<(Stream, bool), ConnectFailure> {
        let wait = self.connection_wait();
        let Some(attempt) = self.attempt.as_mut() else {
            return Err(ConnectFailure::Refused(Refused::DeadlinePassed));
        };
        let target = attempt.in_flight.target();
        match target.connections.checkout(wait).await {
            Err(_) => Err(ConnectFailure::Refused(Refused::PoolFull)),
            Ok(Checkout::Reused(stream, slot)) => {
                attempt.slot = Some(slot);
                attempt.reused = true;
                Ok((stream, true))
            }
            // Boxed: connecting (TLS included) is a future of about 8 KB that only a new
            // connection needs; inline, every request's future and every idle client
            // connection's would carry it.
            Ok(Checkout::New(mut slot)) => match Box::pin(transport.new_stream(peer)).await {
                Ok(stream) => {
                    slot.opened();
                    attempt.slot = Some(slot);
                    Ok((stream, false))
                }
                Err(e) => {
                    slot.connect_failed();
                    Err(ConnectFailure::Failed(e))
                }
            },
        }
    }

    /// A slot under the target's `max_connections` for the connection Pingora's proxy is
    /// about to make for the current attempt (it keeps none idle, so it never reuses one).
    pub async fn admit_connection(&mut self) -> Result<(), Refused> {
        let wait = self.connection_wait();
        let Some(attempt) = self.attempt.as_mut() else {
            return Err(Refused::DeadlinePassed);
        };
        let slot = attempt
            .in_flight
            .target()
            .connections
            .slot_for_new(wait)
            .await
            .map_err(|_| Refused::PoolFull)?;
        attempt.slot = Some(slot);
        Ok(())
    }

    /// The connection admitted with `admit_connection` is open.
    pub fn connection_opened(&mut self) {
        if let Some(slot) = self.attempt.as_mut().and_then(|a| a.slot.as_mut()) {
            slot.opened();
        }
    }

    /// The connection admitted with `admit_connection` could not be made.
    pub fn connection_failed(&mut self) {
        if let Some(slot) = self.attempt.as_mut().and_then(|a| a.slot.take()) {
            slot.connect_failed();
        }
    }

    /// Give the current attempt's connection back to its target's pool for the next request.
    pub fn give_back(&mut self, stream: Stream) {
        let Some(attempt) = self.attempt.as_mut() else {
            return;
        };
        let Some(slot) = attempt.slot.take() else {
            return;
        };
        let target = attempt.in_flight.target();
        target
            .connections
            .park(stream, slot, self.pool.spec.idle_timeout.0);
    }

    /// The current attempt got an answer with `status`: record it. Whether the answer was a
    /// success is the upstream's to say, so this ends the exchange.
    pub fn answered(&mut self, status: u16) {
        if let Some(span) = self.span.as_mut() {
            span.status = Some(status);
        }
        let outcome = if status >= 500 {
            Outcome::Status5xx
        } else {
            Outcome::Success
        };
        self.record(Some(outcome));
    }

    /// The current attempt failed with `error` at `stage`. Records it and decides whether
    /// another attempt goes out. `replayable`: the request could be sent again whole (an
    /// idempotent method, its body still at hand) and nothing of an answer reached the
    /// client yet.
    pub fn retry_after(&mut self, error: &Error, stage: Stage, replayable: bool) -> bool {
        let reused = self.attempt.as_ref().is_some_and(|a| a.reused);
        if stage == Stage::Sent && reused && stale(error) && self.stale_retries_left > 0 {
            // The upstream had closed the idle connection: the request never reached it.
            self.stale_retries_left -= 1;
            self.attempt = None;
            if let Some(span) = self.span.as_mut() {
                span.error = Some("stale_connection");
            }
            self.end_span();
            self.tried.pop();
            return true;
        }
        // A failure once the deadline has passed is the deadline's doing.
        let outcome = match classify(error) {
            Some(Outcome::Reset) if self.deadline_passed() => Some(Outcome::Timeout),
            other => other,
        };
        self.record(outcome);
        let may_resend = match stage {
            Stage::Connect => true,
            Stage::Sent => replayable && error.esource() == &ErrorSource::Upstream,
        };
        may_resend && self.may_retry()
    }

    /// The exchange ended without a retry decision (the request ended, however): an
    /// attempt still open is recorded as `error` or `status` say.
    pub fn end(&mut self, error: Option<&Error>, status: u16) {
        if self.attempt.is_some() {
            match error {
                Some(e) => self.record(classify(e)),
                None => self.answered(status),
            }
        }
        self.end_span();
    }

    /// Whether another attempt may go out: attempts left, the deadline, the retry budget.
    fn may_retry(&mut self) -> bool {
        if self.retries_left == 0 || self.deadline_passed() {
            return false;
        }
        if !self.pool.budget.try_retry(Instant::now()) {
            log::warn!(
                "upstream {}: retry budget spent, not retrying",
                self.pool.name
            );
            return false;
        }
        self.retries_left -= 1;
        self.retry_pending = true;
        true
    }

    /// End the current attempt: tell the target's breaker and count it. `None`: the attempt
    /// says nothing about the target (the client left, the gateway refused the request).
    fn record(&mut self, outcome: Option<Outcome>) {
        let Some(attempt) = self.attempt.take() else {
            return;
        };
        // An answered attempt's span stays open while its body comes; a failed one ends here.
        if let Some(span) = self.span.as_mut() {
            match outcome {
                Some(Outcome::Success | Outcome::Status5xx) => {}
                Some(failure) => {
                    span.error = Some(outcome_label(failure));
                    self.end_span();
                }
                None => {
                    span.error = Some("cancelled");
                    self.end_span();
                }
            }
        }
        let Some(outcome) = outcome else { return };
        let target = attempt.in_flight.target();
        self.requests
            .with_label_values(&[&self.pool.name, &target.label, outcome_label(outcome)])
            .inc();
        attempt.in_flight.finish(outcome);
    }
}

impl Drop for Exchange {
    /// An answered attempt's span ends with the exchange (a composition call's, say).
    fn drop(&mut self) {
        self.end_span();
    }
}

/// Why `Exchange::connection` has no connection.
pub enum ConnectFailure {
    Refused(Refused),
    Failed(Box<Error>),
}

/// A failure on a reused connection before any answer came: the upstream closed it while it
/// sat idle (Pingora marks these retryable on reused connections only).
fn stale(error: &Error) -> bool {
    matches!(error.retry, RetryType::ReusedOnly)
}

/// What a failed attempt says about its target, or `None` when it was not the target's
/// doing (the client went away, the gateway refused the request).
pub fn classify(e: &Error) -> Option<Outcome> {
    use ErrorType::*;
    let outcome = match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout => Outcome::Timeout,
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError
        | BindError => Outcome::Connect,
        HTTPStatus(_) => return None,
        _ => Outcome::Reset,
    };
    match e.esource() {
        ErrorSource::Downstream => None,
        _ => Some(outcome),
    }
}

/// The `outcome` label of `portico_upstream_requests_total`.
pub fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::Status5xx => "http_5xx",
        Outcome::Connect => "connect_error",
        Outcome::Timeout => "timeout",
        Outcome::Reset => "reset",
    }
}
