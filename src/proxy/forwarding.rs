//! Who the client is, and the headers that tell the upstream: client IP (believing
//! `X-Forwarded-For` only from trusted proxies), `X-Forwarded-*`, `X-Request-Id`, W3C
//! `traceparent`, and dropping headers the client named in `Connection`.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};
use ipnet::IpNet;
use pingora_error::{ErrorType::InvalidHTTPHeader, OrErr};
pub use portico_plugins::header_edit::{edit_request_headers, edit_response_headers};

// Built once, never parsed per request (`from_static` keeps custom names unallocated).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

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
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
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

/// A new request id: 32 random hex digits.
pub fn new_request_id() -> HeaderValue {
    let mut id = [0u8; 32];
    fill_hex(&mut id, fastrand::u128(..));
    hex_value(&id)
}

/// `out` filled with the low hex digits of `n`, zero-padded: a request id or trace id is made
/// on every request, and `format!("{:032x}")` costs ten times as much.
fn fill_hex(out: &mut [u8], n: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = out.len();
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
}

/// Hex digits and dashes as a header value. Always valid; the fallback is never taken.
fn hex_value(text: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
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
pub fn new_traceparent() -> HeaderValue {
    traceparent(fastrand::u128(1..), fastrand::u64(1..), 1)
}

/// The `traceparent` `00-<trace_id>-<span_id>-<flags>`, written by hand (see `fill_hex`).
pub fn traceparent(trace_id: u128, span_id: u64, flags: u8) -> HeaderValue {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    fill_hex(&mut out[3..35], trace_id);
    fill_hex(&mut out[36..52], u128::from(span_id));
    fill_hex(&mut out[53..55], u128::from(flags));
    hex_value(&out)
}

/// An address as a header value.
fn ip_value(ip: IpAddr) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    match ip {
        IpAddr::V4(v4) => {
            let (text, len) = ipv4_text(v4);
            HeaderValue::from_bytes(&text[..len])
        }
        IpAddr::V6(_) => HeaderValue::try_from(ip.to_string()),
    }
}

/// An IPv4 address in dotted decimal, written by hand: `to_string` goes through the formatter,
/// several times slower, and a request writes one for `X-Forwarded-For` and one for the access
/// log. Returns the buffer and how much of it is used.
pub fn ipv4_text(v4: std::net::Ipv4Addr) -> ([u8; 15], usize) {
    let mut buf = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for d in &digits[skip..] {
            buf[len] = b'0' + d;
            len += 1;
        }
    }
    (buf, len)
}

/// Set `X-Forwarded-For`, `-Proto` and `-Host` on a request going upstream (proxied or a
/// composition's sub-request): a trusted proxy's values are extended or kept, anyone
/// else's are replaced. `peer`: the direct peer's address; `host`: the client's Host.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer_ip: HeaderValue,
    host: Option<&HeaderValue>,
    peer_trusted: bool,
    tls: bool,
) -> pingora_error::Result<()> {
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(existing) if peer_trusted => {
            let mut joined = Vec::with_capacity(existing.len() + 2 + peer_ip.len());
            joined.extend_from_slice(existing);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer_ip.as_bytes());
            HeaderValue::from_bytes(&joined).or_err(InvalidHTTPHeader, "X-Forwarded-For")?
        }
        _ => peer_ip,
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    Ok(())
}

/// Drop the headers the client listed in `Connection` (hop-by-hop, RFC 9110 7.6.1) and the
/// hop-by-hop headers that never cross a proxy. `client` is the client's request headers:
/// what it named is read there, since Pingora's proxy takes `Connection` itself off the
/// upstream copy before shaping sees it. `Connection` and `Upgrade` themselves are left to
/// the driver, which manages the upstream connection.
pub fn drop_connection_headers(headers: &mut HeaderMap, client: &HeaderMap) {
    if client.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = client
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| {
                !name.is_empty() && !matches!(name.as_str(), "close" | "keep-alive" | "upgrade")
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(&name);
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::RequestHeader;

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
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(sane_request_id(id.as_bytes()));
        let mut hex = [0u8; 8];
        fill_hex(&mut hex, 0xab_cdef);
        assert_eq!(&hex, b"00abcdef");
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
        let client = req.headers.clone();
        edit_request_headers(&mut req, 0, |h| drop_connection_headers(h, &client));
        assert!(req.headers.get("x-secret").is_none());
        assert!(req.headers.get("keep-alive").is_none());
        assert!(req.headers.get("x-other").is_some());
    }
}

#[cfg(test)]
mod edit_tests {
    use super::*;

    #[test]
    fn gateway_headers_names_every_header_the_gateway_sets() {
        let mut set = HeaderMap::new();
        let ids = (HeaderValue::from_static("id"), new_traceparent());
        let host = HeaderValue::from_static("t");
        let ip = Some([10, 0, 0, 1].into());
        let who = Who {
            peer: ip,
            client: ip,
            peer_trusted: false,
            tls: false,
        };
        set_gateway_headers(&mut set, who, Some(&host), ids).unwrap();
        let mut names: Vec<&str> = set.keys().map(HeaderName::as_str).collect();
        let mut listed: Vec<&str> = GATEWAY_HEADERS.iter().map(HeaderName::as_str).collect();
        names.sort_unstable();
        listed.sort_unstable();
        assert_eq!(names, listed);
    }

    #[test]
    fn addresses_are_written_as_to_string_writes_them() {
        for text in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_value(ip).unwrap(), text);
        }
    }

    #[test]
    fn forwarded_headers_replace_an_untrusted_clients_and_extend_a_trusted_proxys() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let host = HeaderValue::from_static("api.example.com");
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("evil"));
        set_forwarded(&mut h, ip_value(peer).unwrap(), Some(&host), false, false).unwrap();
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1");
        assert_eq!(h[X_FORWARDED_HOST], "api.example.com");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        set_forwarded(&mut h, ip_value(peer).unwrap(), Some(&host), true, false).unwrap();
        assert_eq!(h[X_FORWARDED_FOR], "1.2.3.4, 10.0.0.1");
    }
}

/// A `Content-Length` sent as a list of equal values, or more than once (which the head
/// check let through only when every value is the same), goes upstream as one value: an
/// upstream that reads only the first, or refuses a list, sees the length the gateway framed
/// the body by.
pub fn one_content_length(headers: &mut HeaderMap) {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let (Some(first), second) = (values.next(), values.next()) else {
        return;
    };
    if second.is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    let length = first
        .as_bytes()
        .split(|b| *b == b',')
        .next()
        .map(<[u8]>::trim_ascii)
        .and_then(|n| HeaderValue::from_bytes(n).ok());
    if let Some(length) = length {
        headers.insert(http::header::CONTENT_LENGTH, length);
    }
}

/// Whether `req` is an HTTP/1.1 request to upgrade to WebSocket (`Upgrade: websocket`).
/// Routes take one only with `websocket = true`.
pub fn is_websocket_upgrade(req: &pingora_http::RequestHeader) -> bool {
    req.headers
        .get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            let name = p.trim().split('/').next().unwrap_or_default();
            name.eq_ignore_ascii_case("websocket")
        })
}

/// Whether `req` asks to switch protocols (`Upgrade`, named in `Connection`). Only then may
/// an upstream's 101 reach the client; any other 101 is the upstream's error.
pub fn asks_upgrade(req: &pingora_http::RequestHeader) -> bool {
    req.headers.contains_key(http::header::UPGRADE)
        && req
            .headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Every header `gateway_request_headers` sets. A composition call copies exactly these from
/// the client's request as the gateway shaped it, so its parts tell their upstreams what a
/// proxied request would (a test holds the two together).
pub static GATEWAY_HEADERS: [HeaderName; 6] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_REAL_IP,
    X_REQUEST_ID,
    TRACEPARENT,
];

/// The headers every request going upstream gets from the gateway: X-Forwarded-*, the
/// request id and the trace context.
pub fn gateway_request_headers(
    headers: &mut HeaderMap,
    session: &pingora_proxy::Session,
    ctx: &super::RequestCtx,
) -> pingora_error::Result<()> {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let host = session
        .req_header()
        .headers
        .get(http::header::HOST)
        .cloned();
    let ids = (ctx.request_id.clone(), ctx.upstream_traceparent());
    let who = Who {
        peer,
        client: ctx.client_ip,
        peer_trusted: ctx.peer_trusted,
        tls: ctx.tls,
    };
    set_gateway_headers(headers, who, host.as_ref(), ids)
}

/// Who sent a request: the TCP peer, the client as Portico determined it (through trusted
/// proxies' `X-Forwarded-For`), and whether the peer is a trusted proxy.
#[derive(Debug, Clone, Copy)]
pub struct Who {
    pub peer: Option<IpAddr>,
    pub client: Option<IpAddr>,
    pub peer_trusted: bool,
    /// The request came over TLS: `X-Forwarded-Proto: https`.
    pub tls: bool,
}

/// `gateway_request_headers` on plain values: `ids` are the request id and traceparent.
fn set_gateway_headers(
    headers: &mut HeaderMap,
    who: Who,
    host: Option<&HeaderValue>,
    (request_id, traceparent): (HeaderValue, HeaderValue),
) -> pingora_error::Result<()> {
    if !who.peer_trusted {
        drop_override_headers(headers);
    }
    // The peer's address is written once, for both headers that carry it.
    let peer_ip = match who.peer {
        Some(ip) => ip_value(ip).or_err(InvalidHTTPHeader, "X-Forwarded-For")?,
        None => HeaderValue::from_static(""),
    };
    let real_ip = match who.client {
        Some(client) if Some(client) == who.peer => Some(peer_ip.clone()),
        Some(client) => ip_value(client).ok(),
        None => None,
    };
    match real_ip {
        Some(ip) => {
            headers.insert(X_REAL_IP, ip);
        }
        None => {
            headers.remove(&X_REAL_IP);
        }
    }
    set_forwarded(headers, peer_ip, host, who.peer_trusted, who.tls)?;
    headers.insert(X_REQUEST_ID, request_id);
    headers.insert(TRACEPARENT, traceparent);
    Ok(())
}

/// Headers a proxy in front may set to tell a backend the original URL, scheme, port or
/// client, and that some frameworks believe: from anyone but a trusted proxy they are the
/// client's say-so, and an upstream (or an answer cached by what they say) could be fooled.
/// The ones Portico sets itself (`X-Forwarded-For`, `-Proto`, `-Host`, `X-Real-IP`) are
/// replaced rather than dropped. `Forwarded` (RFC 7239) is dropped, not built: it says what
/// `X-Forwarded-*` says, and a trusted proxy's copy passes as it was sent (its `for` is the
/// client), while building one per request cost more than the rest of the identity headers.
fn is_override_header(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-forwarded-scheme"
            | "x-forwarded-server"
            | "x-forwarded-ssl"
            | "x-forwarded-uri"
            | "x-forwarded-path"
            | "x-forwarded-by"
            | "x-forwarded-protocol"
            | "x-original-url"
            | "x-original-uri"
            | "x-original-host"
            | "x-original-forwarded-for"
            | "x-rewrite-url"
            | "x-url-scheme"
            | "x-host"
            | "x-client-ip"
            | "x-cluster-client-ip"
            | "true-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
            | "front-end-https"
    )
}

fn drop_override_headers(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| is_override_header(name.as_str())) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_override_header(name.as_str()))
        .cloned()
        .collect();
    for name in named {
        headers.remove(&name);
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6;host=evil;proto=https"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("true-client-ip", "6.6.6.6"),
            ("x-other", "kept"),
        ] {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        h
    }

    fn shaped(peer: &str, client: &str, trusted: bool) -> HeaderMap {
        let mut h = spoofed();
        let who = Who {
            peer: peer.parse().ok(),
            client: client.parse().ok(),
            peer_trusted: trusted,
            tls: false,
        };
        let ids = (HeaderValue::from_static("id"), new_traceparent());
        let host = HeaderValue::from_static("api.example.com:8080");
        set_gateway_headers(&mut h, who, Some(&host), ids).unwrap();
        h
    }

    #[test]
    fn an_untrusted_clients_identity_and_url_headers_are_replaced_or_dropped() {
        let h = shaped("203.0.113.7", "203.0.113.7", false);
        assert_eq!(h["x-real-ip"], "203.0.113.7");
        for dropped in [
            "forwarded",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-original-url",
            "x-rewrite-url",
            "true-client-ip",
        ] {
            assert!(!h.contains_key(dropped), "{dropped}");
        }
        assert_eq!(h["x-other"], "kept");
        let v6 = shaped("2001:db8::7", "2001:db8::7", false);
        assert_eq!(v6["x-real-ip"], "2001:db8::7");
    }

    #[test]
    fn a_trusted_proxys_headers_are_kept_and_extended() {
        let h = shaped("10.0.0.1", "198.51.100.4", true);
        assert_eq!(h["x-real-ip"], "198.51.100.4");
        assert_eq!(h["forwarded"], "for=6.6.6.6;host=evil;proto=https");
        assert_eq!(h["x-forwarded-prefix"], "/admin");
    }
}
