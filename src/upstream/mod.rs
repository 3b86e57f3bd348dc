//! Upstream pools: named groups of targets, how a target is chosen, what a connection to it
//! may cost in time, and which targets are healthy.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod deadline;
pub mod discovery;
pub mod exchange;
pub mod health;
pub mod live;
pub mod load;
pub mod pool;
pub mod sweep;
pub mod tls;
pub mod tunnel;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::HeaderName;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_load_balancing::discovery::Static as StaticSet;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::{Backend, Backends};

use crate::config::{Balance, CircuitBreakerSpec, HealthCheckSpec, UpstreamSection};
use balance::Balancer;
use breaker::{Breaker, BreakerSettings, CircuitState, FailureSet, Outcome, Permit, Transition};
use budget::RetryBudget;
use pool::ConnectionPool;

/// What consistent hashing hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(HeaderName),
    Cookie(String),
    Claim(String),
}

impl HashKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("hash_key \"{text}\" must be ip, path, header:NAME, cookie:NAME or claim:NAME")
        };
        match text.split_once(':') {
            None if text == "ip" => Ok(HashKey::ClientIp),
            None if text == "path" => Ok(HashKey::Path),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| bad()),
            Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_string())),
            Some(("claim", name)) if !name.is_empty() => Ok(HashKey::Claim(name.to_string())),
            _ => Err(bad()),
        }
    }
}

/// One target of a pool, with what the proxy needs to reach it and count its load.
pub struct Target {
    /// `host:port` as configured: the `target` label in metrics and `/status`.
    pub label: Arc<str>,
    pub backend: Backend,
    /// Connection settings for this target, built once; cloned per request.
    pub peer: HttpPeer,
    pub weight: usize,
    pub in_flight: AtomicUsize,
    /// Its answer times, for `balance = "ewma"`.
    pub latency: load::PeakEwma,
    /// Since it joined the pool or last recovered, for `slow_start`.
    pub ramp: load::Ramp,
    /// The health checks' last verdict (healthy until one says otherwise): what the request
    /// path reads, and what a change is logged against.
    pub(crate) healthy: AtomicBool,
    /// Passive outlier detection, when the upstream configures `circuit_breaker`.
    pub breaker: Option<Breaker>,
    /// Every connection open to this target, and the idle ones kept for reuse.
    pub connections: ConnectionPool,
    /// SRV priority (lower is preferred); 0 for every other target.
    pub priority: u16,
    /// The active health check, made the way requests to this target are (its peer: TLS,
    /// SNI, protocol) with the check's own timeouts, and its consecutive results.
    check: Option<HttpHealthCheck>,
    streak: HealthStreak,
}

/// Consecutive health check results of one target: the verdict flips after `healthy`
/// passes or `unhealthy` failures in a row. Kept in the target, so a target that stays in a
/// changing set (service discovery) keeps its verdict and its count.
#[derive(Default)]
struct HealthStreak {
    passes: AtomicUsize,
    failures: AtomicUsize,
}

/// A target that discovery found: its address, weight and SRV priority, and the host name
/// it was found under (the default SNI).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub addr: SocketAddr,
    pub weight: usize,
    pub priority: u16,
    pub host: String,
}

/// What every target of a pool is built with, kept to build the targets that discovery
/// adds later.
#[derive(Clone)]
struct TargetSettings {
    tls: Option<tls::TlsMaterial>,
    breaker: Option<BreakerSettings>,
    max_idle: usize,
}

/// How requests to this upstream are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    pub attempts: u32,
    pub backoff: Duration,
}

/// The target chosen for one attempt.
pub struct Chosen {
    pub index: usize,
    permit: Option<Permit>,
}

/// Why no target could be chosen: every one is unhealthy, open, or already tried.
#[derive(Debug, Clone, Copy)]
pub struct Unavailable {
    /// When the earliest open circuit lets a probe through (at least 1 s).
    pub retry_after: Duration,
}

/// A compiled `[upstreams.NAME]`. Kept across reloads when its config is unchanged, so health
/// state and pooled connections survive.
pub struct UpstreamPool {
    pub name: Arc<str>,
    /// The config it was built from, to decide reuse on reload.
    pub spec: UpstreamSection,
    /// Shared with the pool's other generations (service discovery builds a new one for
    /// each change of the set): a target that stays keeps its health, circuit, counters
    /// and connections.
    pub targets: Vec<Arc<Target>>,
    pub hash_key: Option<HashKey>,
    pub retry: Option<RetrySettings>,
    pub budget: RetryBudget,
    /// One balancer per SRV priority group, lowest number first (one group without SRV):
    /// weights are shares within a group, and a group not in use is not in any rotation.
    balancers: Vec<(u16, Balancer)>,
    health: Option<HealthSchedule>,
    /// Rotates the start of least-connections scans so ties spread out.
    tie_breaker: AtomicUsize,
    /// `slow_start`, when set and above zero.
    slow_start: Option<Duration>,
    settings: TargetSettings,
    /// Whether targets differ in priority (SRV), so `select` must find the group to use.
    prioritized: bool,
}

pub(crate) struct HealthSchedule {
    pub interval: Duration,
    pub next_due: Mutex<Instant>,
    pub running: AtomicBool,
}

impl UpstreamPool {
    /// Whether the TLS files this pool was built from still hold what they held: a reload
    /// that finds them changed builds the pool again, with new connections.
    pub fn tls_files_unchanged(&self, config_dir: &std::path::Path) -> bool {
        let now = tls::load(self.spec.protocol, self.spec.tls.as_ref(), config_dir);
        let built = self.settings.tls.as_ref().map(|m| m.fingerprint);
        now.ok().map(|m| m.map(|m| m.fingerprint)) == Some(built)
    }

    /// Build a pool from its config. Target host names are resolved here, once.
    pub fn build(
        name: &str,
        spec: &UpstreamSection,
        config_dir: &std::path::Path,
    ) -> Result<UpstreamPool, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let tls_material = match tls::load(spec.protocol, spec.tls.as_ref(), config_dir) {
            Ok(material) => material,
            Err(problems) => {
                errors.extend(problems);
                None
            }
        };
        match (&spec.discovery, spec.targets.is_empty()) {
            (None, true) => errors.push((
                "targets".to_string(),
                "needs at least one target, or discovery".to_string(),
            )),
            (Some(_), false) => errors.push((
                "discovery".to_string(),
                "an upstream has targets or discovery, not both".to_string(),
            )),
            (Some(d), true) => errors.extend(discovery::spec_errors(d)),
            (None, false) => {}
        }
        if spec.balance == Balance::ConsistentHash && spec.slow_start.is_some() {
            errors.push((
                "slow_start".into(),
                "does not apply to consistent_hash: each key stays on its target".into(),
            ));
        }
        let hash_key = match (&spec.balance, &spec.hash_key) {
            (Balance::ConsistentHash, None) => {
                errors.push((
                    "hash_key".into(),
                    "consistent_hash needs a hash_key (ip, path, header:NAME, cookie:NAME or claim:NAME)"
                        .into(),
                ));
                None
            }
            (Balance::ConsistentHash, Some(text)) => match HashKey::parse(text) {
                Ok(k) => Some(k),
                Err(e) => {
                    errors.push(("hash_key".into(), e));
                    None
                }
            },
            (_, Some(_)) => {
                errors.push((
                    "hash_key".into(),
                    "only used with balance = \"consistent_hash\"".into(),
                ));
                None
            }
            (_, None) => None,
        };
        for (key, d) in [
            ("connect_timeout", spec.connect_timeout),
            ("read_timeout", spec.read_timeout),
            ("idle_timeout", spec.idle_timeout),
        ] {
            if d.0.is_zero() {
                errors.push((key.into(), "must be greater than zero".into()));
            }
        }
        if spec.max_connections == 0 {
            errors.push(("max_connections".into(), "must be at least 1".into()));
        }
        let max_idle = spec
            .max_idle
            .unwrap_or(crate::config::file::DEFAULT_MAX_IDLE.min(spec.max_connections));
        if max_idle > spec.max_connections {
            errors.push((
                "max_idle".into(),
                format!("must be at most max_connections ({})", spec.max_connections),
            ));
        }
        if let Some(hc) = &spec.health_check {
            health_check_errors(hc, &mut errors);
        }
        let breaker = spec
            .circuit_breaker
            .as_ref()
            .and_then(|cb| breaker_settings(cb, &mut errors));
        if let Some(retry) = &spec.retry {
            if retry.attempts > 10 {
                errors.push(("retry.attempts".into(), "must be at most 10".into()));
            }
            if retry.budget_percent > 100 {
                errors.push(("retry.budget_percent".into(), "must be at most 100".into()));
            }
        }

        let settings = TargetSettings {
            tls: tls_material,
            breaker,
            max_idle: max_idle as usize,
        };
        let mut targets = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, t) in spec.targets.iter().enumerate() {
            let path = format!("targets[{i}]");
            if t.weight == 0 {
                errors.push((path.clone(), "weight must be at least 1".into()));
                continue;
            }
            let addr = match t.addr.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(addr)) => addr,
                Ok(None) | Err(_) => {
                    errors.push((path, format!("cannot resolve \"{}\" as host:port", t.addr)));
                    continue;
                }
            };
            if !seen.insert(addr) {
                errors.push((path, format!("target {addr} is listed twice")));
                continue;
            }
            let found = Found {
                addr,
                weight: t.weight as usize,
                priority: 0,
                host: tls::host_of(&t.addr).to_string(),
            };
            targets.push(Arc::new(Target::new(
                t.addr.as_str().into(),
                &found,
                spec,
                &settings,
            )));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Self::assemble(name, spec, hash_key, settings, targets)
            .map_err(|e| vec![(String::new(), e)])
    }

    /// This upstream with the set that discovery found now: a target that stays (same
    /// address, weight and priority) is the same target, with its health, circuit,
    /// in-flight count and pooled connections; one that went is dropped with this
    /// generation, once the requests that hold it have finished.
    pub fn with_found(&self, found: &[Found]) -> Result<UpstreamPool, String> {
        let targets = found
            .iter()
            .map(|f| match self.targets.iter().find(|t| t.is(f)) {
                Some(t) => Arc::clone(t),
                None => {
                    let target =
                        Target::new(f.addr.to_string().into(), f, &self.spec, &self.settings);
                    // Joined a pool that serves: under slow_start it ramps up.
                    target.ramp.restart(Instant::now());
                    Arc::new(target)
                }
            })
            .collect();
        Self::assemble(
            &self.name,
            &self.spec,
            self.hash_key.clone(),
            self.settings.clone(),
            targets,
        )
    }

    fn assemble(
        name: &str,
        spec: &UpstreamSection,
        hash_key: Option<HashKey>,
        settings: TargetSettings,
        targets: Vec<Arc<Target>>,
    ) -> Result<UpstreamPool, String> {
        let priorities: BTreeSet<u16> = targets.iter().map(|t| t.priority).collect();
        let mut balancers = Vec::new();
        for priority in priorities {
            let set: BTreeSet<Backend> = targets
                .iter()
                .filter(|t| t.priority == priority)
                .map(|t| t.backend.clone())
                .collect();
            let balancer = Balancer::new(spec.balance, Backends::new(StaticSet::new(set)));
            // Static discovery completes without waiting; the selector is ready afterwards.
            match balancer.update().now_or_never() {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("target discovery did not complete".into()),
            }
            balancers.push((priority, balancer));
        }
        let prioritized = targets.windows(2).any(|w| w[0].priority != w[1].priority);
        Ok(UpstreamPool {
            name: name.into(),
            spec: spec.clone(),
            targets,
            hash_key,
            retry: spec.retry.as_ref().map(|r| RetrySettings {
                attempts: r.attempts,
                backoff: r.backoff.0,
            }),
            budget: spec.retry.as_ref().map_or_else(
                || RetryBudget::new(0.0, 0),
                |r| RetryBudget::new(f64::from(r.budget_percent) / 100.0, r.min_retries),
            ),
            balancers,
            health: spec.health_check.as_ref().map(|hc| HealthSchedule {
                interval: hc.interval.0,
                next_due: Mutex::new(Instant::now()),
                running: AtomicBool::new(false),
            }),
            tie_breaker: AtomicUsize::new(0),
            slow_start: spec.slow_start.map(|d| d.0).filter(|d| !d.is_zero()),
            settings,
            prioritized,
        })
    }

    /// Whether the active health check currently allows traffic to this target: one flag,
    /// set after each pass. Asking the balancer instead hashes the backend twice and looks it
    /// up in its readiness map, on every request (callgrind: most of `select`'s cost).
    pub fn is_healthy(&self, index: usize) -> bool {
        self.targets
            .get(index)
            .is_some_and(|t| t.healthy.load(Ordering::Relaxed))
    }

    /// Whether any target passes its health check (none does in an empty set).
    pub fn has_healthy_target(&self) -> bool {
        self.targets
            .iter()
            .any(|t| t.healthy.load(Ordering::Relaxed))
    }

    /// Choose a target for one attempt: healthy, its circuit allowing it, and not in
    /// `tried` (unless every allowed target was tried, as with a single target). `hash_input`
    /// is the consistent-hashing key (empty for the other algorithms).
    pub fn select(&self, hash_input: &[u8], tried: &[usize]) -> Result<Chosen, Unavailable> {
        let now = Instant::now();
        let group = self.preferred_priority();
        let soonest: Cell<Option<Duration>> = Cell::new(None);
        for allow_tried in [false, true] {
            if allow_tried && tried.is_empty() {
                break;
            }
            let permit: Cell<Option<Permit>> = Cell::new(None);
            let accept = |i: usize| {
                if !allow_tried && tried.contains(&i) {
                    return false;
                }
                if !self.is_healthy(i) || self.targets[i].priority != group {
                    return false;
                }
                match self.acquire(i, now) {
                    Ok(p) => {
                        permit.set(p);
                        true
                    }
                    Err(wait) => {
                        soonest.set(Some(soonest.get().map_or(wait, |s| s.min(wait))));
                        false
                    }
                }
            };
            let chosen = if self.targets.len() == 1 {
                // Nothing to balance: only whether the one target may take the request. The
                // balancer would answer the same through a dedup set and a backend clone.
                accept(0).then_some(0)
            } else if self.spec.balance == Balance::LeastConn {
                self.select_by_cost(accept, |i| self.load(i, now))
            } else if self.spec.balance == Balance::P2c {
                self.select_two_choices(accept, group, |i| self.load(i, now))
            } else if self.spec.balance == Balance::Ewma {
                let cost = |i: usize| self.targets[i].latency.estimate(now) * self.load(i, now);
                self.select_two_choices(accept, group, cost)
            } else if let Some((_, balancer)) = self.balancers.iter().find(|(p, _)| *p == group) {
                // Slow start for round robin and random: a ramping target turns away a
                // share of what it is offered, while a ramped one is there to take it.
                let ramping = self.slow_start.filter(|_| {
                    self.spec.balance != Balance::ConsistentHash
                        && (0..self.targets.len()).any(|i| {
                            self.is_healthy(i)
                                && self.targets[i].priority == group
                                && self.ramp(i, now) >= 1.0
                        })
                });
                let offered = |i: usize| {
                    ramping.is_none_or(|_| {
                        let f = self.ramp(i, now);
                        f >= 1.0 || fastrand::f64() < f
                    }) && accept(i)
                };
                balancer
                    .select_with(hash_input, &|backend| {
                        self.index_of(backend).is_some_and(offered)
                    })
                    .and_then(|backend| self.index_of(&backend))
            } else {
                None
            };
            if let Some(index) = chosen {
                return Ok(Chosen {
                    index,
                    permit: permit.get(),
                });
            }
        }
        Err(Unavailable {
            retry_after: soonest
                .get()
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_secs(1)),
        })
    }

    /// The SRV priority group requests go to: the lowest number with a healthy target
    /// (RFC 2782); a higher one only while every target of the lower ones is out. Every
    /// target is in group 0 unless discovery found SRV priorities.
    fn preferred_priority(&self) -> u16 {
        if !self.prioritized {
            return 0;
        }
        let healthy = (0..self.targets.len()).filter(|&i| self.is_healthy(i));
        healthy
            .map(|i| self.targets[i].priority)
            .min()
            .or_else(|| self.targets.iter().map(|t| t.priority).min())
            .unwrap_or(0)
    }

    fn index_of(&self, backend: &Backend) -> Option<usize> {
        self.targets
            .iter()
            .position(|t| t.backend.addr == backend.addr)
    }

    /// Whether the breaker lets a request through now: `Ok(None)` without a breaker.
    fn acquire(&self, index: usize, now: Instant) -> Result<Option<Permit>, Duration> {
        let Some(breaker) = self.targets.get(index).and_then(|t| t.breaker.as_ref()) else {
            return Ok(None);
        };
        let (permit, transition) = breaker.try_acquire(now)?;
        if let Some(t) = transition {
            self.log_transition(index, t);
        }
        Ok(Some(permit))
    }

    fn log_transition(&self, index: usize, t: Transition) {
        let target = &self.targets[index].label;
        match (t.to, t.open_for) {
            (CircuitState::Open, Some(d)) => log::warn!(
                "upstream {} target {target}: circuit open for {d:?}",
                self.name
            ),
            (CircuitState::HalfOpen, _) => log::info!(
                "upstream {} target {target}: circuit half-open, probing",
                self.name
            ),
            _ => log::info!("upstream {} target {target}: circuit closed", self.name),
        }
    }

    /// The healthy, accepted target with the fewest requests in flight per unit of weight.
    /// The healthy target of least `cost` that `accept` takes; ties rotate.
    fn select_by_cost(
        &self,
        accept: impl Fn(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let n = self.targets.len();
        let start = self.tie_breaker.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut candidates: Vec<(usize, f64)> = (0..n)
            .map(|offset| (start + offset) % n)
            .filter(|&i| self.is_healthy(i))
            .map(|i| (i, cost(i)))
            .collect();
        // Stable: ties keep the rotation.
        candidates.sort_by(|a, b| a.1.total_cmp(&b.1));
        candidates.into_iter().map(|(i, _)| i).find(|&i| accept(i))
    }

    /// Power of two choices: two distinct healthy targets of `group` at random, the one of
    /// lower `cost` if `accept` takes it, else the other (Envoy's least-request default). Only
    /// when neither will, every target by cost.
    fn select_two_choices(
        &self,
        accept: impl Fn(usize) -> bool,
        group: u16,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let n = self.targets.len();
        let candidate = |i: usize| self.is_healthy(i) && self.targets[i].priority == group;
        // A few random draws find two candidates unless most targets are out.
        let mut picked: [Option<usize>; 2] = [None, None];
        for _ in 0..8 {
            let i = fastrand::usize(..n);
            if !candidate(i) || picked[0] == Some(i) {
                continue;
            }
            if picked[0].is_none() {
                picked[0] = Some(i);
            } else {
                picked[1] = Some(i);
                break;
            }
        }
        if let [Some(a), Some(b)] = picked {
            let (first, second) = if cost(b) < cost(a) { (b, a) } else { (a, b) };
            if accept(first) {
                return Some(first);
            }
            if accept(second) {
                return Some(second);
            }
        }
        self.select_by_cost(accept, cost)
    }

    /// In-flight requests per unit of weight, the weight ramped under `slow_start`.
    fn load(&self, index: usize, now: Instant) -> f64 {
        let t = &self.targets[index];
        let weight = t.weight.max(1) as f64 * self.ramp(index, now);
        (t.in_flight.load(Ordering::Relaxed) + 1) as f64 / weight
    }

    /// How far the target has ramped under `slow_start` (1 without it).
    fn ramp(&self, index: usize, now: Instant) -> f64 {
        self.slow_start
            .map_or(1.0, |s| self.targets[index].ramp.factor(s, now))
    }

    /// A request is now in flight to the chosen target; the guard records how it ends.
    pub fn start_request(self: &Arc<Self>, chosen: Chosen) -> InFlight {
        if let Some(t) = self.targets.get(chosen.index) {
            t.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        InFlight {
            pool: Arc::clone(self),
            index: chosen.index,
            permit: chosen.permit,
            started: Instant::now(),
        }
    }

    /// Every target's circuit state now, for `/status` and the gauge.
    pub fn circuit(&self, index: usize) -> (CircuitState, u32) {
        self.targets
            .get(index)
            .and_then(|t| t.breaker.as_ref())
            .map_or((CircuitState::Closed, 0), |b| b.snapshot(Instant::now()))
    }

    pub(crate) fn health_schedule(&self) -> Option<&HealthSchedule> {
        self.health.as_ref()
    }
}

impl Target {
    fn new(
        label: Arc<str>,
        found: &Found,
        spec: &UpstreamSection,
        settings: &TargetSettings,
    ) -> Target {
        let addr = found.addr.to_string();
        // A socket address always parses as a backend.
        let mut backend =
            Backend::new_with_weight(&addr, found.weight).unwrap_or_else(|_| Backend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(found.addr),
                weight: found.weight,
                ext: http::Extensions::new(),
            });
        backend.weight = found.weight;
        let mut peer = peer_for(&backend, spec);
        tls::apply(&mut peer, spec.protocol, settings.tls.as_ref(), &found.host);
        let check = spec.health_check.as_ref().map(|hc| {
            let mut check = http_health_check(hc);
            let timeouts = check.peer_template.options.clone();
            check.peer_template = peer.clone();
            let options = &mut check.peer_template.options;
            options.connection_timeout = timeouts.connection_timeout;
            options.total_connection_timeout = timeouts.total_connection_timeout;
            options.read_timeout = timeouts.read_timeout;
            options.write_timeout = timeouts.write_timeout;
            options.custom_l4 = None;
            check
        });
        Target {
            label,
            peer,
            backend,
            weight: found.weight,
            in_flight: AtomicUsize::new(0),
            latency: load::PeakEwma::new(Instant::now()),
            ramp: load::Ramp::ramped(),
            healthy: AtomicBool::new(true),
            breaker: settings.breaker.map(|b| Breaker::new(b, Instant::now())),
            connections: ConnectionPool::new(spec.max_connections as usize, settings.max_idle),
            priority: found.priority,
            check,
            streak: HealthStreak::default(),
        }
    }

    /// Whether this is the target discovery found as `found`: the same address, weight
    /// and priority (a target that stays keeps its state across generations).
    fn is(&self, found: &Found) -> bool {
        self.backend.addr.as_inet() == Some(&found.addr)
            && self.weight == found.weight
            && self.priority == found.priority
    }

    /// Run this target's health check once and count it: the verdict after it, and whether
    /// this check changed it. Without a health check the target stays healthy.
    pub(crate) async fn run_check(&self, hc: &HealthCheckSpec) -> (bool, bool) {
        let Some(check) = &self.check else {
            return (self.healthy.load(Ordering::Relaxed), false);
        };
        let passed = check.check(&self.backend).await.is_ok();
        let was = self.healthy.load(Ordering::Relaxed);
        let (streak, other) = if passed {
            (&self.streak.passes, &self.streak.failures)
        } else {
            (&self.streak.failures, &self.streak.passes)
        };
        other.store(0, Ordering::Relaxed);
        let run = streak.fetch_add(1, Ordering::Relaxed) + 1;
        let threshold = if passed { hc.healthy } else { hc.unhealthy };
        let now = if passed != was && run >= threshold {
            passed
        } else {
            was
        };
        self.healthy.store(now, Ordering::Relaxed);
        if now && !was {
            // Back in rotation: under slow_start it ramps up again.
            self.ramp.restart(Instant::now());
        }
        (now, now != was)
    }
}

/// Counts one attempt in flight to one target for as long as it lives, so the count is
/// right however the request ends, and reports the attempt's outcome to the target's circuit
/// breaker once (`finish`); an attempt dropped unfinished (the client left) counts for nothing.
pub struct InFlight {
    pool: Arc<UpstreamPool>,
    index: usize,
    permit: Option<Permit>,
    started: Instant,
}

impl InFlight {
    pub fn index(&self) -> usize {
        self.index
    }

    /// Record how the attempt ended.
    pub fn finish(mut self, outcome: Outcome) {
        let now = Instant::now();
        // An answer, or none in time, says how fast the target is; a refused connection
        // does not (it would look fastest of all).
        if self.pool.spec.balance == Balance::Ewma
            && matches!(
                outcome,
                Outcome::Success | Outcome::Status5xx | Outcome::Timeout
            )
        {
            self.target().latency.observe(now - self.started, now);
        }
        if let (Some(permit), Some(breaker)) = (self.permit.take(), self.target().breaker.as_ref())
        {
            if let Some(t) = breaker.record(permit, outcome, now) {
                self.pool.log_transition(self.index, t);
            }
        }
    }

    pub fn pool(&self) -> &Arc<UpstreamPool> {
        &self.pool
    }
    pub fn target(&self) -> &Target {
        &self.pool.targets[self.index]
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(t) = self.pool.targets.get(self.index) {
            t.in_flight.fetch_sub(1, Ordering::Relaxed);
            if let (Some(permit), Some(breaker)) = (self.permit.take(), t.breaker.as_ref()) {
                breaker.release(permit);
            }
        }
    }
}

fn breaker_settings(
    cb: &CircuitBreakerSpec,
    errors: &mut Vec<(String, String)>,
) -> Option<BreakerSettings> {
    let mut failure_on = FailureSet {
        connect: false,
        timeout: false,
        reset: false,
        status_5xx: false,
    };
    for (i, name) in cb.failure_on.iter().enumerate() {
        match name.as_str() {
            "connect" => failure_on.connect = true,
            "timeout" => failure_on.timeout = true,
            "reset" => failure_on.reset = true,
            "5xx" => failure_on.status_5xx = true,
            other => errors.push((
                format!("circuit_breaker.failure_on[{i}]"),
                format!("\"{other}\" is not connect, timeout, reset or 5xx"),
            )),
        }
    }
    let mut ok = true;
    if cb.failures == 0 || cb.half_open_requests == 0 {
        errors.push((
            "circuit_breaker".into(),
            "failures and half_open_requests must be at least 1".into(),
        ));
        ok = false;
    }
    if cb.open_for.0.is_zero() || cb.max_open_for.0 < cb.open_for.0 {
        errors.push((
            "circuit_breaker.max_open_for".into(),
            "open_for must be above zero and max_open_for at least open_for".into(),
        ));
        ok = false;
    }
    ok.then_some(BreakerSettings {
        failures: cb.failures,
        open_for: cb.open_for.0,
        max_open_for: cb.max_open_for.0,
        half_open_requests: cb.half_open_requests,
        failure_on,
    })
}

/// Every timeout set: Pingora's defaults are none, which turns a hung upstream into a hung
/// client.
fn peer_for(backend: &Backend, spec: &UpstreamSection) -> HttpPeer {
    let mut peer = HttpPeer::new(backend.addr.clone(), false, String::new());
    let read = spec.read_timeout.0;
    peer.options.connection_timeout = Some(spec.connect_timeout.0);
    peer.options.total_connection_timeout = Some(spec.connect_timeout.0);
    peer.options.read_timeout = Some(read);
    peer.options.write_timeout = Some(spec.write_timeout.map_or(read, |w| w.0));
    peer.options.idle_timeout = Some(spec.idle_timeout.0);
    // Pingora's proxy would refuse a request whose `Connection` names a forwarding field
    // (400, before any hook runs); Portico drops what a client names itself, before it sets
    // its own forwarding headers, the same on both drivers (`proxy::request_headers`).
    peer.options
        .http_upstream_request_policy
        .strip_connection_nominated = false;
    peer
}

fn health_check_errors(hc: &HealthCheckSpec, errors: &mut Vec<(String, String)>) {
    if !hc.path.starts_with('/') {
        errors.push(("health_check.path".into(), "must start with \"/\"".into()));
    }
    if hc.interval.0 < Duration::from_millis(10) {
        errors.push((
            "health_check.interval".into(),
            "must be at least 10ms".into(),
        ));
    }
    if hc.timeout.0.is_zero() {
        errors.push((
            "health_check.timeout".into(),
            "must be greater than zero".into(),
        ));
    }
    if hc.healthy == 0 || hc.unhealthy == 0 {
        errors.push((
            "health_check".into(),
            "healthy and unhealthy thresholds must be at least 1".into(),
        ));
    }
}

fn http_health_check(hc: &HealthCheckSpec) -> HttpHealthCheck {
    let host = hc.host.as_deref().unwrap_or("localhost");
    let mut check = HttpHealthCheck::new(host, false);
    if let Ok(mut req) = RequestHeader::build("GET", hc.path.as_bytes(), None) {
        // The path was validated above; a failure here keeps the default `/`.
        if req.insert_header("Host", host).is_ok()
            && req
                .insert_header("User-Agent", "portico-health-check")
                .is_ok()
        {
            check.req = req;
        }
    }
    check.consecutive_success = hc.healthy;
    check.consecutive_failure = hc.unhealthy;
    check.peer_template.options.connection_timeout = Some(hc.timeout.0);
    check.peer_template.options.total_connection_timeout = Some(hc.timeout.0);
    check.peer_template.options.read_timeout = Some(hc.timeout.0);
    check.peer_template.options.write_timeout = Some(hc.timeout.0);
    check
}
