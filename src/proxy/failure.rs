//! Turning what went wrong into the one error code the client sees: the single place where
//! transport errors become problem+json codes.

use pingora_error::{Error, ErrorSource, ErrorType};
use portico_plugins::ErrorCode;

use crate::upstream::breaker::Outcome;

/// The code for a failed request, or `None` when the client is gone and nothing can be sent.
pub fn classify(e: &Error, decided: Option<ErrorCode>) -> Option<ErrorCode> {
    if let Some(code) = decided {
        return Some(code);
    }
    use ErrorType::*;
    let code = match e.etype() {
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

/// What a failed attempt says about the target, or `None` when it was not the target's
/// doing (the client went away, the gateway refused the request).
pub fn attempt_outcome(e: &Error) -> Option<Outcome> {
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
            (err(ReadTimedout, Downstream), None),
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
            assert_eq!(classify(&e, None), want, "{e}");
        }
        let e = err(ConnectRefused, Upstream);
        assert_eq!(
            classify(&e, Some(ErrorCode::UpstreamUnavailable)),
            Some(ErrorCode::UpstreamUnavailable)
        );
    }
}
