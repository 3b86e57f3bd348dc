//! What went wrong, and the one error code the client sees for it. A decision the gateway
//! makes itself (no target available, the deadline passed, a body too large) travels as the
//! typed cause of the error it becomes ([`GatewayError`]); everything else is a transport
//! error, mapped here. This is the single place where errors become problem+json codes.

use std::time::Duration;

use pingora_error::{Error, ErrorSource, ErrorType};
use portico_plugins::ErrorCode;

use crate::upstream::exchange::Refused;

/// A decision of the gateway's, carried as the cause of the Pingora error it travels in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayError {
    pub code: ErrorCode,
    /// For a 503: when a target may take traffic again.
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code.as_str())
    }
}

impl std::error::Error for GatewayError {}

impl GatewayError {
    pub fn new(code: ErrorCode) -> Self {
        GatewayError {
            code,
            retry_after: None,
        }
    }

    /// This decision as an error that is never retried.
    pub fn into_error(self, why: impl Into<String>) -> Box<Error> {
        let etype = ErrorType::HTTPStatus(self.code.status());
        let mut e = Error::because(etype, why.into(), self);
        e.set_retry(false);
        e
    }
}

impl From<Refused> for GatewayError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Unavailable(retry_after) => GatewayError {
                code: ErrorCode::UpstreamUnavailable,
                retry_after: Some(retry_after),
            },
            Refused::PoolFull => GatewayError {
                code: ErrorCode::UpstreamUnavailable,
                retry_after: Some(Duration::from_secs(1)),
            },
            Refused::DeadlinePassed => GatewayError::new(ErrorCode::UpstreamTimeout),
        }
    }
}

/// The gateway's own decision inside `e`, if it carries one.
pub fn decision(e: &Error) -> Option<GatewayError> {
    let mut cause = e.cause.as_deref();
    while let Some(c) = cause {
        if let Some(decision) = c.downcast_ref::<GatewayError>() {
            return Some(*decision);
        }
        // Context added on the way (`more_context`) wraps the error, boxed once more.
        let inner = c
            .downcast_ref::<Error>()
            .or_else(|| c.downcast_ref::<Box<Error>>().map(|b| &**b));
        cause = inner.and_then(|e| e.cause.as_deref());
    }
    None
}

/// The code for a failed request, or `None` when the client is gone and nothing can be sent.
pub fn classify(e: &Error) -> Option<ErrorCode> {
    if let Some(decision) = decision(e) {
        return Some(decision.code);
    }
    use ErrorType::*;
    let code = match e.etype() {
        // A client too slow to send its body gets a 408; one too slow to read its answer
        // cannot be told anything.
        ReadTimedout if e.esource() == &ErrorSource::Downstream => ErrorCode::RequestTimeout,
        ConnectTimedout | ReadTimedout | WriteTimedout => match e.esource() {
            ErrorSource::Downstream => return None,
            _ => ErrorCode::UpstreamTimeout,
        },
        HTTPStatus(status) => from_status(*status),
        _ => match e.esource() {
            ErrorSource::Upstream => ErrorCode::BadGateway,
            ErrorSource::Downstream => match e.etype() {
                ReadError | WriteError | ConnectionClosed => return None,
                _ => ErrorCode::BadRequest,
            },
            ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError
                | ConnectProxyFailure => ErrorCode::BadGateway,
                _ => ErrorCode::Internal,
            },
        },
    };
    Some(code)
}

/// The `detail` of the problem a failed request gets.
pub fn detail(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadGateway => "the upstream failed to answer",
        ErrorCode::UpstreamTimeout => "the upstream did not answer in time",
        ErrorCode::UpstreamUnavailable => "no upstream target can take the request now",
        ErrorCode::PayloadTooLarge => "the request body is larger than the gateway accepts",
        ErrorCode::BadRequest => "the request is malformed",
        ErrorCode::RequestTimeout => "the request body did not arrive in time",
        _ => "the gateway failed to process the request",
    }
}

fn from_status(status: u16) -> ErrorCode {
    match status {
        400 => ErrorCode::BadRequest,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NoRoute,
        405 => ErrorCode::MethodNotAllowed,
        413 => ErrorCode::PayloadTooLarge,
        429 => ErrorCode::RateLimited,
        502 => ErrorCode::BadGateway,
        503 => ErrorCode::UpstreamUnavailable,
        504 => ErrorCode::UpstreamTimeout,
        s if (400..500).contains(&s) => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(t: ErrorType, s: ErrorSource) -> Box<Error> {
        let mut e = Error::new(t);
        e.esource = s;
        e
    }

    #[test]
    fn transport_errors_map_to_honest_codes() {
        use ErrorSource::*;
        use ErrorType::*;
        let cases = [
            (err(ConnectRefused, Upstream), Some(ErrorCode::BadGateway)),
            (err(ConnectRefused, Internal), Some(ErrorCode::BadGateway)),
            (
                err(ConnectTimedout, Upstream),
                Some(ErrorCode::UpstreamTimeout),
            ),
            (
                err(ReadTimedout, Upstream),
                Some(ErrorCode::UpstreamTimeout),
            ),
            (
                err(InvalidHTTPHeader, Upstream),
                Some(ErrorCode::BadGateway),
            ),
            (err(ConnectionClosed, Upstream), Some(ErrorCode::BadGateway)),
            (err(ReadError, Downstream), None),
            (
                err(ReadTimedout, Downstream),
                Some(ErrorCode::RequestTimeout),
            ),
            (err(WriteTimedout, Downstream), None),
            (
                err(InvalidHTTPHeader, Downstream),
                Some(ErrorCode::BadRequest),
            ),
            (
                err(HTTPStatus(413), Downstream),
                Some(ErrorCode::PayloadTooLarge),
            ),
            (err(InternalError, Internal), Some(ErrorCode::Internal)),
        ];
        for (e, want) in cases {
            assert_eq!(classify(&e), want, "{e}");
        }
    }

    #[test]
    fn a_decision_travels_as_the_cause_and_wins() {
        let decided = GatewayError::from(Refused::Unavailable(Duration::from_secs(7)))
            .into_error("no target");
        assert_eq!(classify(&decided), Some(ErrorCode::UpstreamUnavailable));
        assert_eq!(
            decision(&decided).and_then(|d| d.retry_after),
            Some(Duration::from_secs(7))
        );
        assert!(!decided.retry());
        // Context added on the way keeps the cause.
        let wrapped = decided.more_context("peer 127.0.0.1:1");
        assert_eq!(
            decision(&wrapped).map(|d| d.code),
            Some(ErrorCode::UpstreamUnavailable)
        );
        let timeout = GatewayError::from(Refused::DeadlinePassed).into_error("late");
        assert_eq!(classify(&timeout), Some(ErrorCode::UpstreamTimeout));
    }
}
