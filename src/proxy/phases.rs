//! The phases of a request, the one list both drivers follow.
//!
//! | phase | what happens | Pingora's proxy calls | the fast driver calls |
//! |---|---|---|---|
//! | identify | request id, client IP, trace context; target and `Host` checked (`target`) | `request_filter` | `Portico::request_filter` |
//! | route | the route, from the one checked target | `request_filter` | the same |
//! | plugins | the route's plugins, in order; a composition route is answered here | `request_filter` | the same |
//! | choose target | the exchange picks and admits a target (`upstream::exchange`) | `upstream_peer` | `Portico::upstream_peer` |
//! | upstream request | path rewrite, forwarding and identity headers, plugins' edits | `upstream_request_filter` | `Portico::upstream_request_filter` |
//! | response | 101 check, request id, plugins in reverse; the body deadline | `upstream_response_filter`, `response_filter`, `upstream_response_body_filter` | the same |
//! | record | breaker, metrics, access log, once however the request ended | `logging` | `Portico::logging` |
//!
//! Failed attempts go to the exchange, which decides a retry (`fail_to_connect`,
//! `error_while_proxy` for Pingora's proxy; `Exchange::retry_after` directly for the fast
//! driver), and a failed request becomes a problem in one place (`fail_to_proxy`).
//!
//! Which driver runs which request (`connection::head`):
//! - the fast driver (`proxy::direct`): plain HTTP/1.1 requests whose head leaves nothing to
//!   interpret, and HTTP/2 streams, to routes that do not cache and whose upstream speaks
//!   HTTP/1.1. It is where the speed comes from: no task channels, no cache state machine,
//!   Portico's own pool.
//! - Pingora's proxy: everything else (caching routes, HTTP/2 upstreams, upgrades, requests
//!   the fast driver's gate refuses), and every request when `server.fast_path = false`.
//!
//! Each phase marks itself in the request's [`PhasesRun`]; the record phase checks, in debug
//! builds (every test run), that no phase a proxied answer needs was skipped, so a driver
//! that forgets one fails the integration suite, which runs on both drivers.

/// One phase of the chart above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Identify = 1,
    Route = 1 << 1,
    Plugins = 1 << 2,
    ChooseTarget = 1 << 3,
    UpstreamRequest = 1 << 4,
    Response = 1 << 5,
    Record = 1 << 6,
}

/// The phases one request has run, as bits: marking one is a single OR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhasesRun(u8);

impl PhasesRun {
    pub fn mark(&mut self, phase: Phase) {
        self.0 |= phase as u8;
    }

    pub fn ran(self, phase: Phase) -> bool {
        self.0 & phase as u8 != 0
    }

    /// The phases a request that ended as `ending` should have run and did not.
    pub fn missing(self, ending: Ending) -> Vec<Phase> {
        let needed: &[Phase] = match ending {
            Ending::BeforeRouting => &[Phase::Identify],
            Ending::Answered => &[Phase::Identify, Phase::Route, Phase::Plugins],
            Ending::UpstreamAnswered => &[
                Phase::Identify,
                Phase::Route,
                Phase::Plugins,
                Phase::ChooseTarget,
                Phase::UpstreamRequest,
                Phase::Response,
            ],
        };
        needed.iter().copied().filter(|p| !self.ran(*p)).collect()
    }
}

/// How a request ended, for what it must have gone through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Refused or failed before it had a route.
    BeforeRouting,
    /// A routed request answered by the gateway (a plugin's refusal, a composition) or
    /// from the cache.
    Answered,
    /// A routed request that the upstream answered, whole.
    UpstreamAnswered,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxied_answer_needs_every_phase_but_record() {
        let mut run = PhasesRun::default();
        for phase in [
            Phase::Identify,
            Phase::Route,
            Phase::Plugins,
            Phase::ChooseTarget,
        ] {
            run.mark(phase);
        }
        assert_eq!(
            run.missing(Ending::UpstreamAnswered),
            [Phase::UpstreamRequest, Phase::Response]
        );
        run.mark(Phase::UpstreamRequest);
        run.mark(Phase::Response);
        assert!(run.missing(Ending::UpstreamAnswered).is_empty());
        assert!(PhasesRun::default().missing(Ending::BeforeRouting) == [Phase::Identify]);
    }
}
