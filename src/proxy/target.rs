//! The request target and `Host`, checked once before routing (RFC 9112 sections 3.2 and 7.2).
//!
//! Pingora's parser keeps a target that is not in origin form (`GET admin`, `GET
//! http://other/admin`) verbatim for the wire, and gives its URI either the path component or
//! `/`. Routing on the URI and forwarding the raw bytes would let a request be checked as one
//! path and read upstream as another: on a config with a catch-all `/` route, `GET admin`
//! would skip the `/admin` route's plugins and still reach an upstream that reads `/admin`.
//!
//! So a request target is accepted in exactly two forms: origin form (`/path?query`), and
//! absolute form (`http://host/path`) whose authority is the request's `Host`. Either way the
//! result is one origin-form URI, with its path after hygiene (`router::path`), which
//! replaces the client's in the request header. That one value is what routing, plugins, the
//! cache key, the access log and the upstream request all read; nothing reads the raw bytes
//! again.

use http::header::HOST;
use http::{Uri, Version};
use pingora_http::RequestHeader;

use crate::router::path::{normalize_path, PathRejection};

/// Why a request's target or `Host` was refused; the text goes into the 400's `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRejection {
    /// Neither origin form nor absolute form (`admin`, `a:b`, `//x` without a scheme).
    NotOriginForm,
    /// `*`: asks about the server itself, and Portico routes none of it.
    Asterisk,
    /// Absolute form with a scheme other than http or https.
    Scheme,
    /// Absolute form whose authority is not the `Host` header.
    AuthorityMismatch,
    /// A byte no request target may hold raw: a control, a space, non-ASCII, or `#`.
    BadCharacter,
    /// HTTP/1.1 without `Host`.
    MissingHost,
    /// More than one `Host`.
    DuplicateHost,
    /// A `Host` that is not `uri-host[:port]`.
    InvalidHost,
    Path(PathRejection),
}

impl TargetRejection {
    pub fn detail(self) -> &'static str {
        match self {
            TargetRejection::NotOriginForm => {
                "the request target must be a path starting with \"/\" (or an absolute http URL)"
            }
            TargetRejection::Asterisk => "the request target \"*\" is not served",
            TargetRejection::Scheme => "an absolute request target must use http or https",
            TargetRejection::AuthorityMismatch => {
                "the request target's authority does not match the Host header"
            }
            TargetRejection::BadCharacter => {
                "the request target has a character that must be percent-encoded"
            }
            TargetRejection::MissingHost => "an HTTP/1.1 request must have a Host header",
            TargetRejection::DuplicateHost => "the request has more than one Host header",
            TargetRejection::InvalidHost => "the Host header is not a valid host[:port]",
            TargetRejection::Path(path) => path.detail(),
        }
    }
}

impl From<PathRejection> for TargetRejection {
    fn from(path: PathRejection) -> Self {
        TargetRejection::Path(path)
    }
}

/// Check `req`'s target and `Host` and put the one target to route and forward in place.
/// An HTTP/2 request's `:authority` becomes its `Host` (RFC 9113 section 8.3.1), which
/// routing and the upstream request read; a `Host` that says otherwise is refused.
pub fn apply(req: &mut RequestHeader) -> Result<(), TargetRejection> {
    if req.version == Version::HTTP_2 {
        authority_as_host(req)?;
    }
    if let Some(uri) = check(req)? {
        req.set_uri(uri);
    }
    Ok(())
}

/// HTTP/2: `:authority`, when there is one, is the request's `Host`.
fn authority_as_host(req: &mut RequestHeader) -> Result<(), TargetRejection> {
    let Some(authority) = req.uri.authority() else {
        return Ok(());
    };
    let authority = authority.as_str().as_bytes();
    let mut hosts = req.headers.get_all(HOST).iter();
    match hosts.next() {
        None => {}
        Some(host) if host.as_bytes() == authority => return Ok(()),
        Some(_) => return Err(TargetRejection::AuthorityMismatch),
    }
    let host =
        http::HeaderValue::from_bytes(authority).map_err(|_| TargetRejection::InvalidHost)?;
    req.insert_header(HOST, host)
        .map_err(|_| TargetRejection::InvalidHost)
}

/// Check `req`'s target and `Host`. `Ok(None)`: the target is already the origin-form URI to
/// route and forward (the common case, which allocates nothing). `Ok(Some(uri))`: put `uri`
/// in its place before anything reads it.
pub fn check(req: &RequestHeader) -> Result<Option<Uri>, TargetRejection> {
    if !req.raw_path_is_utf8() {
        return Err(TargetRejection::BadCharacter);
    }
    let hosts = req.headers.get_all(HOST).iter().map(|v| v.as_bytes());
    check_raw(req.version >= Version::HTTP_11, req.raw_path(), hosts)
}

/// `check` on the bytes of a request head: the request target as sent, and every `Host`
/// value. `version_11`: HTTP/1.1, which must have a `Host`.
pub fn check_raw<'h>(
    version_11: bool,
    raw: &[u8],
    hosts: impl Iterator<Item = &'h [u8]>,
) -> Result<Option<Uri>, TargetRejection> {
    let host = single_host(version_11, hosts)?;
    if raw
        .iter()
        .any(|&b| !(0x21..=0x7e).contains(&b) || b == b'#')
    {
        return Err(TargetRejection::BadCharacter);
    }
    let (path_and_query, absolute) = match raw.first() {
        Some(b'/') => (raw, false),
        Some(b'*') if raw.len() == 1 => return Err(TargetRejection::Asterisk),
        _ => (absolute_form(raw, host)?, true),
    };
    // Only visible ASCII is left, so the bytes are UTF-8.
    let text = std::str::from_utf8(path_and_query).map_err(|_| TargetRejection::BadCharacter)?;
    let (path, query) = match text.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (text, None),
    };
    let path = if absolute && path.is_empty() {
        std::borrow::Cow::Borrowed("/")
    } else {
        normalize_path(path)?
    };
    if !absolute && matches!(path, std::borrow::Cow::Borrowed(_)) {
        return Ok(None);
    }
    let target = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.into_owned(),
    };
    // Every byte is one a URI path and query may hold, so this parses.
    target
        .parse::<Uri>()
        .map(Some)
        .map_err(|_| TargetRejection::BadCharacter)
}

/// The request's one `Host` value (`None` for HTTP/1.0 without one), checked.
fn single_host<'h>(
    version_11: bool,
    mut hosts: impl Iterator<Item = &'h [u8]>,
) -> Result<Option<&'h [u8]>, TargetRejection> {
    let host = match (hosts.next(), hosts.next()) {
        (None, _) if version_11 => return Err(TargetRejection::MissingHost),
        (None, _) => return Ok(None),
        (Some(host), None) => host,
        (Some(_), Some(_)) => return Err(TargetRejection::DuplicateHost),
    };
    if !valid_host(host) {
        return Err(TargetRejection::InvalidHost);
    }
    Ok(Some(host))
}

/// The path and query of an absolute-form target (`http://host/path?q`), whose authority must
/// be `host`, the request's `Host` (RFC 9112 section 3.2.2: a client sends both, the same).
fn absolute_form<'t>(target: &'t [u8], host: Option<&[u8]>) -> Result<&'t [u8], TargetRejection> {
    let Some(colon) = target.iter().position(|&b| b == b':') else {
        return Err(TargetRejection::NotOriginForm);
    };
    let (scheme, rest) = (&target[..colon], &target[colon + 1..]);
    let Some(after) = rest.strip_prefix(b"//") else {
        return Err(TargetRejection::NotOriginForm);
    };
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return Err(TargetRejection::Scheme);
    }
    let end = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    let (authority, path_and_query) = after.split_at(end);
    // Byte for byte, as Pingora's parser compares them.
    match host {
        Some(host) if !authority.is_empty() && authority == host => Ok(path_and_query),
        _ => Err(TargetRejection::AuthorityMismatch),
    }
}

/// Whether `value` is `uri-host [ ":" port ]` (RFC 3986 section 3.2.2; RFC 9110 section 7.2).
/// Empty is valid: a client sends an empty `Host` for a target without an authority.
pub fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(close) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..close];
        let ip_literal = !literal.is_empty()
            && literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
            && std::str::from_utf8(literal)
                .is_ok_and(|text| text.parse::<std::net::Ipv6Addr>().is_ok());
        if !ip_literal {
            return false;
        }
        match &value[close + 1..] {
            [] => (&value[..0], None),
            [b':', port @ ..] => (&value[..0], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    port_ok && reg_name(host)
}

/// The bytes a `reg-name` holds as they are: unreserved and sub-delims (RFC 3986).
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// RFC 3986 `reg-name` (which an IPv4 address also is): unreserved, sub-delims and
/// percent-escapes; no `@` (userinfo), `/`, `:` or whitespace.
fn reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        let b = host[i];
        if REG_NAME[b as usize] {
            i += 1;
        } else if b == b'%'
            && host
                .get(i + 1..i + 3)
                .is_some_and(|e| e.iter().all(u8::is_ascii_hexdigit))
        {
            i += 3;
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetRejection::*;

    fn request(target: &[u8], hosts: &[&str]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target, None).unwrap();
        for host in hosts {
            req.append_header("host", *host).unwrap();
        }
        req
    }

    fn checked(target: &str, host: &str) -> Result<Option<String>, TargetRejection> {
        check(&request(target.as_bytes(), &[host])).map(|uri| uri.map(|u| u.to_string()))
    }

    #[test]
    fn origin_form_in_normal_form_is_left_as_it_is() {
        for target in ["/", "/api/v1/users?x=1&y=%2F", "/a-b_c~d.e/", "/q?a=|b"] {
            assert_eq!(checked(target, "api.example.com"), Ok(None), "{target}");
        }
    }

    #[test]
    fn the_routed_and_forwarded_target_is_one_normal_origin_form_uri() {
        let table = [
            ("/%61dmin?q=%2e", "/admin?q=%2e"),
            ("http://t/admin", "/admin"),
            ("HTTP://t/admin/x?y=1", "/admin/x?y=1"),
            ("https://t", "/"),
            ("http://t?q=1", "/?q=1"),
            ("http://t/%61dmin", "/admin"),
        ];
        for (target, want) in table {
            assert_eq!(checked(target, "t"), Ok(Some(want.to_string())), "{target}");
        }
    }

    #[test]
    fn targets_that_are_not_origin_form_or_our_own_absolute_form_are_refused() {
        let table = [
            ("admin", NotOriginForm),
            ("admin/secret", NotOriginForm),
            ("t:80", NotOriginForm),
            ("a:b", NotOriginForm),
            ("*", Asterisk),
            ("ftp://t/admin", Scheme),
            ("foo:bar://t/admin", NotOriginForm),
            ("http://other/admin", AuthorityMismatch),
            ("http://user@t/admin", AuthorityMismatch),
            ("http:///admin", AuthorityMismatch),
            ("http://t:81/admin", AuthorityMismatch),
            ("http://T/admin", AuthorityMismatch),
            ("http://t/../admin", Path(PathRejection::DotSegment)),
        ];
        for (target, want) in table {
            assert_eq!(checked(target, "t"), Err(want), "{target}");
        }
        let non_ascii = request(b"/admin\xff", &["t"]);
        assert_eq!(check(&non_ascii), Err(BadCharacter));
    }

    #[test]
    fn host_must_be_one_valid_uri_host_and_port() {
        for host in [
            "t",
            "api.example.com:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[2001:db8::1]",
            "",
            "x_y.internal",
        ] {
            assert_eq!(checked("/", host), Ok(None), "{host:?}");
        }
        for host in [
            "a:b:c", "a/b", "a\tb", "user@t", "t:80x", "t:123456", "[::1", "[zz]", "[::1]x", "a b",
            "%zz",
        ] {
            assert_eq!(checked("/", host), Err(InvalidHost), "{host:?}");
        }
        assert_eq!(check(&request(b"/", &[])), Err(MissingHost));
        assert_eq!(check(&request(b"/", &["a", "a"])), Err(DuplicateHost));
        let mut http10 = request(b"/", &[]);
        http10.set_version(Version::HTTP_10);
        assert_eq!(check(&http10), Ok(None));
    }
}
