//! An upstream as routes see it: the pool generation serving now, replaced whole when service
//! discovery finds a new set of targets. A request takes the generation current when it
//! starts and keeps it to its end, so a change of the set never moves a request mid-way;
//! targets that stay are shared between generations (`UpstreamPool::with_found`).

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::UpstreamPool;
use crate::config::file::{ConsulSection, DiscoverySpec, DnsSection};

pub struct Upstream {
    pub name: Arc<str>,
    /// What consistent hashing hashes on: the config's, the same in every generation.
    pub hash_key: Option<super::HashKey>,
    /// What the targets speak: the config's, the same in every generation.
    pub protocol: crate::config::UpstreamProtocol,
    current: ArcSwap<UpstreamPool>,
    /// Where the targets come from, when not from the config.
    pub discovery: Option<Discovery>,
}

/// An upstream's discovery: what it asks, and how the last lookups went.
pub struct Discovery {
    pub spec: DiscoverySpec,
    /// The `[dns]` and `[consul]` sections it was started with: a reload that changes them
    /// builds the upstream again.
    pub dns: DnsSection,
    pub consul: Option<ConsulSection>,
    /// Read by `/status` and written by the discovery task, never on the request path.
    status: Mutex<DiscoveryStatus>,
    /// Whether its discovery task was started (once per upstream).
    pub(crate) started: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Default)]
pub struct DiscoveryStatus {
    /// When a lookup last succeeded.
    pub last_refresh: Option<SystemTime>,
    /// What the last lookup failed with; cleared by the next success.
    pub last_error: Option<String>,
}

impl Upstream {
    pub fn new(pool: UpstreamPool, discovery: Option<Discovery>) -> Upstream {
        Upstream {
            name: Arc::clone(&pool.name),
            hash_key: pool.hash_key.clone(),
            protocol: pool.spec.protocol,
            current: ArcSwap::from_pointee(pool),
            discovery,
        }
    }

    /// The generation serving now.
    pub fn current(&self) -> Arc<UpstreamPool> {
        self.current.load_full()
    }

    /// Serve `pool` from now on; requests already started keep the generation they took.
    pub fn replace(&self, pool: UpstreamPool) {
        self.current.store(Arc::new(pool));
    }
}

impl Discovery {
    pub fn new(spec: DiscoverySpec, dns: DnsSection, consul: Option<ConsulSection>) -> Self {
        Discovery {
            spec,
            dns,
            consul,
            status: Mutex::new(DiscoveryStatus::default()),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn status(&self) -> DiscoveryStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn record(&self, result: Result<(), String>) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                status.last_refresh = Some(SystemTime::now());
                status.last_error = None;
            }
            Err(e) => status.last_error = Some(e),
        }
    }
}
