//! Choosing a target within a pool: pingora-load-balancing's weighted round robin, weighted
//! random and Ketama consistent hashing (each skipping what the pool's `accept` refuses:
//! targets out of their health check, open circuits, targets already tried), and weighted
//! least-connections over our own in-flight counters.

use pingora_load_balancing::selection::consistent::KetamaHashing;
use pingora_load_balancing::selection::{Random, RoundRobin};
use pingora_load_balancing::{Backend, LoadBalancer};

use crate::config::Balance;

/// Bounds the search for a healthy target; far above any real pool size.
const MAX_ITERATIONS: usize = 256;

pub enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    ConsistentHash(LoadBalancer<KetamaHashing>),
    /// The choice is the pool's (least_conn, p2c, ewma: `UpstreamPool::select`); the
    /// balancer only holds the set.
    LeastConn(LoadBalancer<RoundRobin>),
}

impl Balancer {
    pub fn new(kind: Balance, backends: pingora_load_balancing::Backends) -> Balancer {
        match kind {
            Balance::RoundRobin => Balancer::RoundRobin(LoadBalancer::from_backends(backends)),
            Balance::Random => Balancer::Random(LoadBalancer::from_backends(backends)),
            Balance::ConsistentHash => {
                Balancer::ConsistentHash(LoadBalancer::from_backends(backends))
            }
            Balance::LeastConn | Balance::P2c | Balance::Ewma => {
                Balancer::LeastConn(LoadBalancer::from_backends(backends))
            }
        }
    }

    /// Publish the (static) target set to the selector. Static discovery never blocks.
    pub async fn update(&self) -> pingora_error::Result<()> {
        match self {
            Balancer::RoundRobin(lb) | Balancer::LeastConn(lb) => lb.update().await,
            Balancer::Random(lb) => lb.update().await,
            Balancer::ConsistentHash(lb) => lb.update().await,
        }
    }

    /// A healthy backend for `key` (used by consistent hashing only) that `accept` also
    /// takes, or `None` when there is none. Least-connections is decided by the pool, which
    /// owns the counters.
    pub fn select_with(&self, key: &[u8], accept: &dyn Fn(&Backend) -> bool) -> Option<Backend> {
        let accept = |b: &Backend, healthy: bool| healthy && accept(b);
        match self {
            Balancer::RoundRobin(lb) | Balancer::LeastConn(lb) => {
                lb.select_with(key, MAX_ITERATIONS, accept)
            }
            Balancer::Random(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
            Balancer::ConsistentHash(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
        }
    }
}
