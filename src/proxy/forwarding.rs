//! Who the client is, and the headers that tell the upstream: client IP (believing
//! `X-Forwarded-For` only from trusted proxies), `X-Forwarded-*`, `X-Request-Id`, W3C
//! `traceparent`, and dropping headers the client named in `Connection`.

use std::net::IpAddr;

use http::header::{HeaderMap, CONNECTION};
use ipnet::IpNet;
use pingora_http::RequestHeader;

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
pub const X_REQUEST_ID: &str = "x-request-id";
pub const TRACEPARENT: &str = "traceparent";

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client's address. A peer that is a trusted proxy speaks for the client through
/// `X-Forwarded-For`: walk it from the right, past further trusted proxies, to the first
/// address not trusted. Anyone else's `X-Forwarded-For` changes nothing.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for part in text.rsplit(',') {
            let Ok(ip) = part.trim().parse::<IpAddr>() else {
                return client;
            };
            client = ip;
            if !is_trusted(ip, trusted) {
                return client;
            }
        }
    }
    client
}

/// A client-sent request id is kept when it is sane: 1 to 128 visible, header-safe
/// characters. Anything else is replaced, so it cannot smuggle junk into logs.
pub fn sane_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'=' | b'/')
        })
}

pub fn new_request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id_of(traceparent: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(traceparent).ok()?;
    let mut parts = text.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    valid.then_some(trace)
}

/// Start a trace: a new `traceparent`, sampled.
pub fn new_traceparent() -> String {
    format!(
        "00-{:032x}-{:016x}-01",
        fastrand::u128(1..),
        fastrand::u64(1..)
    )
}

/// Set `X-Forwarded-For`, `-Proto` and `-Host` on a request going upstream (proxied or a
/// composition's sub-request): a trusted proxy's values are extended or kept, anyone
/// else's are replaced.
pub fn set_forwarded(
    upstream: &mut RequestHeader,
    session: &pingora_proxy::Session,
    peer_trusted: bool,
) -> pingora_error::Result<()> {
    let peer_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let forwarded_for = match upstream
        .headers
        .get(X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(existing) if peer_trusted => format!("{existing}, {peer_ip}"),
        _ => peer_ip,
    };
    upstream.insert_header(X_FORWARDED_FOR, forwarded_for)?;
    if !(peer_trusted && upstream.headers.contains_key(X_FORWARDED_PROTO)) {
        upstream.insert_header(X_FORWARDED_PROTO, "http")?;
    }
    if !(peer_trusted && upstream.headers.contains_key(X_FORWARDED_HOST)) {
        match session
            .req_header()
            .headers
            .get(http::header::HOST)
            .cloned()
        {
            Some(host) => upstream.insert_header(X_FORWARDED_HOST, host)?,
            None => {
                upstream.remove_header(X_FORWARDED_HOST);
            }
        }
    }
    Ok(())
}

/// Drop the headers the client listed in `Connection` (hop-by-hop, RFC 9110 7.6.1) and the
/// hop-by-hop headers that never cross a proxy. `Connection` and `Upgrade` themselves are
/// left to Pingora, which manages the upstream connection.
pub fn drop_connection_headers(req: &mut RequestHeader) {
    let named: Vec<String> = req
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| {
            !name.is_empty() && !matches!(name.as_str(), "close" | "keep-alive" | "upgrade")
        })
        .collect();
    for name in named {
        req.remove_header(&name);
    }
    req.remove_header("keep-alive");
    req.remove_header("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            ("203.0.113.9", vec!["1.2.3.4"], "203.0.113.9"),
            ("10.0.0.1", vec!["1.2.3.4"], "1.2.3.4"),
            ("10.0.0.1", vec!["9.9.9.9, 1.2.3.4, 10.0.0.7"], "1.2.3.4"),
            ("10.0.0.1", vec!["9.9.9.9", "1.2.3.4"], "1.2.3.4"),
            ("10.0.0.1", vec!["10.1.1.1, 10.0.0.2"], "10.1.1.1"),
            ("10.0.0.1", vec!["junk, 1.2.3.4"], "1.2.3.4"),
            ("10.0.0.1", vec!["1.2.3.4, junk"], "10.0.0.1"),
            ("10.0.0.1", vec![], "10.0.0.1"),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(
                client_ip(ip(peer), &headers(&xff), &trusted),
                ip(want),
                "{peer} {xff:?}"
            );
        }
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        assert!(sane_request_id(b"6f1c-abc_1.2"));
        assert!(!sane_request_id(b""));
        assert!(!sane_request_id(b"has space"));
        assert!(!sane_request_id(b"quote\""));
        assert!(!sane_request_id(&[b'a'; 129]));
        assert_eq!(new_request_id().len(), 32);
    }

    #[test]
    fn traceparent_is_validated() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id_of(good), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(trace_id_of(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(trace_id_of(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none());
        assert!(trace_id_of(b"garbage").is_none());
        assert!(trace_id_of(new_traceparent().as_bytes()).is_some());
    }

    #[test]
    fn headers_named_in_connection_are_dropped() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("connection", "keep-alive, X-Secret")
            .unwrap();
        req.insert_header("x-secret", "1").unwrap();
        req.insert_header("keep-alive", "timeout=5").unwrap();
        req.insert_header("x-other", "2").unwrap();
        drop_connection_headers(&mut req);
        assert!(req.headers.get("x-secret").is_none());
        assert!(req.headers.get("keep-alive").is_none());
        assert!(req.headers.get("x-other").is_some());
    }
}
