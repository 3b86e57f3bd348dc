//! Cache keys. The primary key is the whole request identity: method, scheme, host, path and
//! query (a path-only key lets one host's answer be served for another: CVE-2026-2836), then
//! the values of the route's `key_headers`. Each part is length-prefixed, so no two different
//! requests can frame into the same bytes. `Vary` is handled apart, as pingora-cache's variance.

use http::HeaderName;
use pingora_cache::key::{hash_key, HashBinary};
use pingora_cache::CacheKey;
use pingora_http::RequestHeader;

/// The hash of a request URL without the route's extra key parts, carried in the key's
/// extensions so the store can purge every entry of a URL.
#[derive(Debug, Clone, Copy)]
pub struct UrlHash(pub HashBinary);

/// The parts of a request the key is made of.
pub struct RequestIdentity<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl<'a> RequestIdentity<'a> {
    /// What a proxied request is cached as. A HEAD is answered from the GET entry (it is a
    /// GET without the body), so both share one key; `path` is the normalized path routed.
    pub fn of(req: &'a RequestHeader, path: &'a str) -> Self {
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host())
            .unwrap_or("");
        let method = if req.method == http::Method::HEAD {
            "GET"
        } else {
            req.method.as_str()
        };
        RequestIdentity {
            method,
            scheme: "http",
            host,
            path,
            query: req.uri.query(),
        }
    }

    fn url_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.path.len());
        part(&mut out, self.method.as_bytes());
        part(&mut out, self.scheme.as_bytes());
        part(&mut out, self.host.to_ascii_lowercase().as_bytes());
        part(&mut out, self.path.as_bytes());
        match self.query {
            // "?" with nothing after it is a different URL from none at all.
            Some(q) => {
                out.push(b'?');
                part(&mut out, q.as_bytes());
            }
            None => out.push(b'-'),
        }
        out
    }

    /// The URL's own hash: what purge by URL looks for.
    pub fn url_hash(&self) -> HashBinary {
        hash_key(self.url_bytes())
    }

    /// The full key of a request on `route`, with the values of `key_headers` in it, and
    /// on a split route the chosen variant's upstream.
    pub fn cache_key(
        &self,
        route: &str,
        key_headers: &[HeaderName],
        variant: Option<&str>,
        req: &RequestHeader,
    ) -> CacheKey {
        let mut primary = self.url_bytes();
        let url = UrlHash(hash_key(&primary));
        if let Some(upstream) = variant {
            primary.push(b'@');
            part(&mut primary, upstream.as_bytes());
        }
        for name in key_headers {
            part(&mut primary, name.as_str().as_bytes());
            let mut values = req.headers.get_all(name).iter().peekable();
            if values.peek().is_none() {
                primary.push(b'-');
            }
            for value in values {
                primary.push(b'=');
                part(&mut primary, value.as_bytes());
            }
        }
        let mut key = CacheKey::new(primary, route);
        key.extensions.insert(url);
        key
    }
}

fn part(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::key::CacheHashKey;

    fn request(method: &str, uri: &str, host: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, uri.as_bytes(), None).unwrap();
        req.insert_header("host", host).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn key_of(req: &RequestHeader, key_headers: &[HeaderName]) -> HashBinary {
        RequestIdentity::of(req, req.uri.path())
            .cache_key("r", key_headers, None, req)
            .primary_bin()
    }

    #[test]
    fn every_part_of_the_url_separates_keys() {
        let base = key_of(&request("GET", "/a?x=1", "api.example.com", &[]), &[]);
        let others = [
            request("GET", "/a?x=1", "other.example.com", &[]),
            request("GET", "/a?x=2", "api.example.com", &[]),
            request("GET", "/a", "api.example.com", &[]),
            request("GET", "/a?", "api.example.com", &[]),
            request("GET", "/b?x=1", "api.example.com", &[]),
            request("POST", "/a?x=1", "api.example.com", &[]),
        ];
        for other in &others {
            assert_ne!(key_of(other, &[]), base, "{} {}", other.method, other.uri);
        }
        // Host names are case-insensitive; HEAD is answered from GET's entry.
        assert_eq!(
            key_of(&request("GET", "/a?x=1", "API.example.com", &[]), &[]),
            base
        );
        assert_eq!(
            key_of(&request("HEAD", "/a?x=1", "api.example.com", &[]), &[]),
            base
        );
    }

    #[test]
    fn framing_cannot_be_forged_by_moving_bytes_between_parts() {
        let a = key_of(&request("GET", "/x?y", "ab", &[]), &[]);
        let b = key_of(&request("GET", "/x?y", "a", &[]), &[]);
        assert_ne!(a, b);
    }

    #[test]
    fn key_headers_join_the_key_and_the_url_hash_ignores_them() {
        let lang = [HeaderName::from_static("accept-language")];
        let en = request("GET", "/a", "h", &[("accept-language", "en")]);
        let de = request("GET", "/a", "h", &[("accept-language", "de")]);
        let none = request("GET", "/a", "h", &[]);
        assert_ne!(key_of(&en, &lang), key_of(&de, &lang));
        assert_ne!(key_of(&en, &lang), key_of(&none, &lang));
        let url = |r: &RequestHeader| {
            RequestIdentity::of(r, r.uri.path())
                .cache_key("r", &lang, None, r)
                .extensions
                .get::<UrlHash>()
                .unwrap()
                .0
        };
        assert_eq!(url(&en), url(&de));
        assert_eq!(url(&en), RequestIdentity::of(&none, "/a").url_hash());
    }
}
