//! Header fields of the client's request that could mean one thing to the gateway and
//! another to the upstream, dealt with in the identify phase, before anything reads them.
//!
//! - A name with `_`: many servers (nginx, CGI, Rack, PHP) read `Transfer_Encoding` or
//!   `Content_Length` as the header with a hyphen, which the gateway never saw as such.
//!   `server.underscore_headers` drops them (the default, as Envoy and nginx do at the edge),
//!   refuses the request (400), or lets them through.
//! - Two `Authorization` fields: the gateway would verify one and the upstream might read the
//!   other. Refused (400).

use http::header::AUTHORIZATION;
use http::HeaderName;
use pingora_http::RequestHeader;

use crate::config::UnderscoreHeaders;

/// Why a request's headers are refused; the text goes into the 400's `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRejection {
    Underscore,
    DuplicateAuthorization,
}

impl HeaderRejection {
    pub fn detail(self) -> &'static str {
        match self {
            HeaderRejection::Underscore => "header names with \"_\" are not accepted",
            HeaderRejection::DuplicateAuthorization => {
                "the request has more than one Authorization header"
            }
        }
    }
}

/// Refuse or clean `req`'s headers. Looks at each name once, and changes the header only
/// when there is something to drop.
pub fn check(
    req: &mut RequestHeader,
    underscores: UnderscoreHeaders,
) -> Result<(), HeaderRejection> {
    let mut values = req.headers.get_all(AUTHORIZATION).iter();
    if values.next().is_some() && values.next().is_some() {
        return Err(HeaderRejection::DuplicateAuthorization);
    }
    if underscores == UnderscoreHeaders::Allow {
        return Ok(());
    }
    let has_underscore = |name: &HeaderName| name.as_str().contains('_');
    if !req.headers.keys().any(has_underscore) {
        return Ok(());
    }
    if underscores == UnderscoreHeaders::Reject {
        return Err(HeaderRejection::Underscore);
    }
    let dropped: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|n| has_underscore(n))
        .cloned()
        .collect();
    for name in dropped {
        req.remove_header(&name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    #[test]
    fn underscored_names_are_dropped_refused_or_kept_as_configured() {
        let headers = [
            ("host", "t"),
            ("transfer_encoding", "chunked"),
            ("content_length", "5"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x-fine", "1"),
        ];
        let mut dropped = request(&headers);
        assert_eq!(check(&mut dropped, UnderscoreHeaders::Drop), Ok(()));
        let names: Vec<&str> = dropped.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["host", "x-fine"]);

        let mut refused = request(&headers);
        assert_eq!(
            check(&mut refused, UnderscoreHeaders::Reject),
            Err(HeaderRejection::Underscore)
        );
        let mut kept = request(&headers);
        assert_eq!(check(&mut kept, UnderscoreHeaders::Allow), Ok(()));
        assert_eq!(kept.headers.len(), 5);
    }

    #[test]
    fn a_second_authorization_is_refused() {
        let mut two = request(&[("authorization", "Bearer a"), ("Authorization", "Bearer b")]);
        assert_eq!(
            check(&mut two, UnderscoreHeaders::Drop),
            Err(HeaderRejection::DuplicateAuthorization)
        );
        let mut one = request(&[("authorization", "Bearer a")]);
        assert_eq!(check(&mut one, UnderscoreHeaders::Drop), Ok(()));
    }
}
