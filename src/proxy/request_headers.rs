//! Header fields of the client's request that could mean one thing to the gateway and
//! another to the upstream, dealt with in the identify phase, before anything reads them.
//!
//! - A name with `_`: many servers (nginx, CGI, Rack, PHP) read `Transfer_Encoding` or
//!   `Content_Length` as the header with a hyphen, which the gateway never saw as such.
//!   `server.underscore_headers` drops them (the default, as Envoy and nginx do at the edge),
//!   refuses the request (400), or lets them through.
//! - Two `Authorization` fields: the gateway would verify one and the upstream might read the
//!   other. Refused (400).
//! - A `Connection` option that is not a token, or that names a field meant for every
//!   recipient and that the gateway frames or routes by (`Host`, `Content-Length`,
//!   `Transfer-Encoding`), which RFC 9110 section 7.6.1 forbids a sender to list. Refused
//!   (400). Any other field a client names is hop-by-hop, and shaping drops it before the
//!   gateway sets its own headers (`forwarding::drop_connection_headers`).

use http::header::{AUTHORIZATION, CONNECTION};
use http::HeaderName;
use pingora_http::RequestHeader;

use crate::config::UnderscoreHeaders;

/// Why a request's headers are refused; the text goes into the 400's `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRejection {
    Underscore,
    DuplicateAuthorization,
    ConnectionOption,
}

impl HeaderRejection {
    pub fn detail(self) -> &'static str {
        match self {
            HeaderRejection::Underscore => "header names with \"_\" are not accepted",
            HeaderRejection::DuplicateAuthorization => {
                "the request has more than one Authorization header"
            }
            HeaderRejection::ConnectionOption => {
                "the Connection header lists something that cannot be hop-by-hop"
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
    for value in req.headers.get_all(CONNECTION) {
        if !value
            .as_bytes()
            .split(|b| *b == b',')
            .all(acceptable_option)
        {
            return Err(HeaderRejection::ConnectionOption);
        }
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

/// One `Connection` option: a token (RFC 9110 section 5.6.2), and not a field every
/// recipient needs. Empty list elements are allowed, as in any list.
fn acceptable_option(option: &[u8]) -> bool {
    let option = option.trim_ascii();
    let is_tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    option.iter().all(is_tchar)
        && !["host", "content-length", "transfer-encoding"]
            .iter()
            .any(|field| option.eq_ignore_ascii_case(field.as_bytes()))
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

    #[test]
    fn connection_options_must_be_tokens_and_never_a_field_every_recipient_needs() {
        for ok in [
            "close",
            "keep-alive, X-Private",
            "Authorization, X-Forwarded-For",
            "a,,b",
        ] {
            let mut req = request(&[("connection", ok)]);
            assert_eq!(check(&mut req, UnderscoreHeaders::Drop), Ok(()), "{ok}");
        }
        for bad in [
            "Host",
            "close, content-length",
            "Transfer-Encoding",
            "\"quoted\"",
            "a b",
        ] {
            let mut req = request(&[("connection", bad)]);
            assert_eq!(
                check(&mut req, UnderscoreHeaders::Drop),
                Err(HeaderRejection::ConnectionOption),
                "{bad}"
            );
        }
    }
}
