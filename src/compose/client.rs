//! Sub-requests of a composition, through the same upstream pools as proxied traffic: the
//! same balancing, health checks, circuit breakers, retries (for these GETs, to another
//! target), and every timeout bounded by the call's deadline. Connections are pooled.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;
use portico_plugins::ErrorCode;

use crate::proxy::failure;
use crate::upstream::breaker::Outcome;
use crate::upstream::UpstreamPool;

/// Sub-responses larger than this are an error of their part.
pub const MAX_BODY: usize = 1 << 20;

/// Why one part failed; becomes its entry in `_errors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartError {
    /// The upstream's status, when it answered.
    pub status: Option<u16>,
    pub code: &'static str,
}

impl PartError {
    pub fn gateway(code: ErrorCode) -> PartError {
        PartError {
            status: Some(code.status()),
            code: code.as_str(),
        }
    }
    pub fn new(code: &'static str) -> PartError {
        PartError { status: None, code }
    }
}

/// One GET-like sub-request; `Ok` is a 2xx answer's body.
pub async fn send(
    connector: &Connector,
    pool: &Arc<UpstreamPool>,
    request: &RequestHeader,
    deadline: Instant,
    record: &(dyn Fn(&UpstreamPool, usize, Outcome) + Sync),
) -> Result<Bytes, PartError> {
    let attempts = 1 + pool.retry.map_or(0, |r| r.attempts);
    let mut tried = Vec::new();
    let mut last = PartError::gateway(ErrorCode::BadGateway);
    pool.budget.record_request(Instant::now());
    for attempt in 0..attempts {
        if attempt > 0 {
            // A retry, like a proxied one: within the upstream's budget, after its backoff.
            if !pool.budget.try_retry(Instant::now()) {
                return Err(last);
            }
            let backoff = pool.retry.map_or(std::time::Duration::ZERO, |r| r.backoff);
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PartError::gateway(ErrorCode::UpstreamTimeout));
        }
        // Consistent hashing keys a sub-request by its path.
        let chosen = pool
            .select(request.uri.path().as_bytes(), &tried)
            .map_err(|_| PartError::gateway(ErrorCode::UpstreamUnavailable))?;
        tried.push(chosen.index);
        let attempt = pool.start_request(chosen);
        let index = attempt.index();
        let mut peer = attempt.target().peer.clone();
        for timeout in [
            &mut peer.options.connection_timeout,
            &mut peer.options.total_connection_timeout,
            &mut peer.options.read_timeout,
            &mut peer.options.write_timeout,
        ] {
            *timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        let result = tokio::time::timeout(left, exchange(connector, &peer, request)).await;
        let outcome = match &result {
            Ok(Ok((status, _))) if *status >= 500 => Outcome::Status5xx,
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(e)) => failure::attempt_outcome(e).unwrap_or(Outcome::Reset),
            Err(_) => Outcome::Timeout,
        };
        record(pool, index, outcome);
        attempt.finish(outcome);
        match result {
            Ok(Ok((status, body))) if (200..300).contains(&status) => return Ok(body),
            Ok(Ok((status, _))) => {
                return Err(PartError {
                    status: Some(status),
                    code: "upstream_error",
                })
            }
            Ok(Err(e)) if e.etype() == &ErrorType::Custom("too_large") => {
                return Err(PartError::new("too_large"))
            }
            Ok(Err(e)) => {
                last = match failure::classify(&e, None) {
                    Some(code) => PartError::gateway(code),
                    None => PartError::gateway(ErrorCode::BadGateway),
                };
            }
            Err(_) => return Err(PartError::gateway(ErrorCode::UpstreamTimeout)),
        }
    }
    Err(last)
}

async fn exchange(
    connector: &Connector,
    peer: &pingora_core::upstreams::peer::HttpPeer,
    request: &RequestHeader,
) -> pingora_error::Result<(u16, Bytes)> {
    let (mut session, _reused) = connector.get_http_session(peer).await?;
    session
        .write_request_header(Box::new(request.clone()))
        .await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let status = session.response_header().map_or(0, |r| r.status.as_u16());
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_response_body().await? {
        if body.len() + chunk.len() > MAX_BODY {
            return Error::e_explain(ErrorType::Custom("too_large"), "sub-response over 1 MiB");
        }
        body.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(session, peer, peer.options.idle_timeout)
        .await;
    Ok((status, body.freeze()))
}
