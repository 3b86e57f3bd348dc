//! The stable, machine-readable `code` of every answer the gateway makes itself (SPEC.md).

/// One kind of gateway-made error. Each has a fixed HTTP status and a fixed `code` string
/// that clients may match on; neither ever changes for a given variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NoRoute,
    MethodNotAllowed,
    BadRequest,
    Unauthorized,
    Forbidden,
    PayloadTooLarge,
    RateLimited,
    UpstreamUnavailable,
    BadGateway,
    UpstreamTimeout,
    Internal,
    /// The request head did not arrive within `server.header_timeout` (408).
    RequestTimeout,
    /// The request target is longer than `server.max_header_line` (414).
    UriTooLong,
    /// The request head, or one header line, is over its limit (431).
    HeaderTooLarge,
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::NoRoute => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::UpstreamUnavailable => 503,
            ErrorCode::BadGateway => 502,
            ErrorCode::UpstreamTimeout => 504,
            ErrorCode::Internal => 500,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::UriTooLong => 414,
            ErrorCode::HeaderTooLarge => 431,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NoRoute => "no_route",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::HeaderTooLarge => "header_too_large",
        }
    }

    /// The RFC 9457 `title`: the status's reason phrase.
    pub fn title(self) -> &'static str {
        match self {
            ErrorCode::NoRoute => "Not Found",
            ErrorCode::MethodNotAllowed => "Method Not Allowed",
            ErrorCode::BadRequest => "Bad Request",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::PayloadTooLarge => "Content Too Large",
            ErrorCode::RateLimited => "Too Many Requests",
            ErrorCode::UpstreamUnavailable => "Service Unavailable",
            ErrorCode::BadGateway => "Bad Gateway",
            ErrorCode::UpstreamTimeout => "Gateway Timeout",
            ErrorCode::Internal => "Internal Server Error",
            ErrorCode::RequestTimeout => "Request Timeout",
            ErrorCode::UriTooLong => "URI Too Long",
            ErrorCode::HeaderTooLarge => "Request Header Fields Too Large",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_status_the_spec_names() {
        let table = [
            (ErrorCode::NoRoute, 404, "no_route"),
            (ErrorCode::MethodNotAllowed, 405, "method_not_allowed"),
            (ErrorCode::BadRequest, 400, "bad_request"),
            (ErrorCode::Unauthorized, 401, "unauthorized"),
            (ErrorCode::Forbidden, 403, "forbidden"),
            (ErrorCode::PayloadTooLarge, 413, "payload_too_large"),
            (ErrorCode::RateLimited, 429, "rate_limited"),
            (ErrorCode::UpstreamUnavailable, 503, "upstream_unavailable"),
            (ErrorCode::BadGateway, 502, "bad_gateway"),
            (ErrorCode::UpstreamTimeout, 504, "upstream_timeout"),
            (ErrorCode::Internal, 500, "internal"),
            (ErrorCode::RequestTimeout, 408, "request_timeout"),
            (ErrorCode::UriTooLong, 414, "uri_too_long"),
            (ErrorCode::HeaderTooLarge, 431, "header_too_large"),
        ];
        for (code, status, name) in table {
            assert_eq!(code.status(), status, "{name}");
            assert_eq!(code.as_str(), name);
        }
    }
}
