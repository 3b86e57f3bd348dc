//! Active health checks: one background service that walks the pools of whatever snapshot is
//! serving, so it outlives reloads and a pool kept across a reload keeps its schedule.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::UpstreamPool;
use crate::state::GatewayState;

/// The longest the service sleeps: how late it notices a pool that a reload added. Otherwise
/// it wakes when the next check is due, not on a fixed tick: an idle gateway should not wake
/// up tens of times a second on the core that serves requests.
const LONGEST_SLEEP: Duration = Duration::from_secs(1);

pub struct HealthChecks {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let snapshot = self.state.current();
            let pools: Vec<_> = snapshot.pools.values().map(|u| u.current()).collect();
            for pool in &pools {
                if claim_due_pass(pool) {
                    let pool = Arc::clone(pool);
                    let state = Arc::clone(&self.state);
                    tokio::spawn(async move { run_pass(&pool, &state).await });
                }
            }
            let now = Instant::now();
            let wake = pools
                .iter()
                .filter_map(|pool| pool.health_schedule())
                .map(|s| *s.next_due.lock().unwrap_or_else(|p| p.into_inner()))
                // A pass that is running sets its next time when it ends: look again soon.
                .map(|due| due.max(now + Duration::from_millis(20)))
                .fold(now + LONGEST_SLEEP, Instant::min);
            drop(snapshot);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}

/// True (and marks the pass as running) when the pool has a check due and none running.
fn claim_due_pass(pool: &UpstreamPool) -> bool {
    let Some(schedule) = pool.health_schedule() else {
        return false;
    };
    let due = *schedule.next_due.lock().unwrap_or_else(|p| p.into_inner()) <= Instant::now();
    due && schedule
        .running
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
}

async fn run_pass(pool: &UpstreamPool, state: &GatewayState) {
    let Some(hc) = pool.spec.health_check.as_ref() else {
        return;
    };
    // Every target at once: one slow target must not delay the verdict on the others.
    let verdicts =
        futures_util::future::join_all(pool.targets.iter().map(|t| t.run_check(hc))).await;
    for (target, (healthy, changed)) in pool.targets.iter().zip(verdicts) {
        state
            .metrics
            .upstream_target_healthy
            .with_label_values(&[&pool.name, &target.label])
            .set(i64::from(healthy));
        if !changed {
            continue;
        }
        if healthy {
            log::info!(
                "upstream {} target {} is healthy again",
                pool.name,
                target.label
            );
        } else {
            log::warn!(
                "upstream {} target {} failed its health check and is out",
                pool.name,
                target.label
            );
        }
    }
    if let Some(schedule) = pool.health_schedule() {
        *schedule.next_due.lock().unwrap_or_else(|p| p.into_inner()) =
            Instant::now() + schedule.interval;
        schedule.running.store(false, Ordering::Release);
    }
}
