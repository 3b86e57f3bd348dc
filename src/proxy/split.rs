//! `split`: a route's requests shared among several upstreams by weight, for A/B tests and
//! canaries. With `split_key` the same key always lands on the same variant: weighted
//! rendezvous hashing, so changing one variant's weight moves only the keys that must move,
//! and a variant that is out moves only its own keys. With `cookie:NAME` the variant is
//! remembered in a cookie Portico sets. Without a key (or without the key's value in a
//! request), each request is drawn by weight.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;

use crate::upstream::live::Upstream;

/// What makes a request sticky to a variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitKey {
    /// The variant named in this cookie; set by Portico when absent.
    Cookie(String),
    Header(HeaderName),
    Consumer,
    Ip,
}

impl SplitKey {
    /// `cookie:NAME` | `header:NAME` | `consumer` | `ip`.
    pub fn parse(text: &str) -> Result<SplitKey, String> {
        let valid_cookie = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        match text.split_once(':') {
            None if text == "consumer" => Ok(SplitKey::Consumer),
            None if text == "ip" => Ok(SplitKey::Ip),
            Some(("cookie", name)) if valid_cookie(name) => Ok(SplitKey::Cookie(name.into())),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(SplitKey::Header)
                .map_err(|_| format!("\"{name}\" is not a header name")),
            _ => Err(format!(
                "\"{text}\" is not one of cookie:NAME, header:NAME, consumer, ip"
            )),
        }
    }
}

/// The most variants a split may have (a bit each in a mask).
pub const MAX_VARIANTS: usize = 64;

pub struct Variant {
    pub upstream: Arc<Upstream>,
    weight: u32,
    /// The variant's own hash seed, from its upstream's name: every instance of the gateway
    /// sends a key to the same variant.
    seed: u64,
}

pub struct Split {
    variants: Vec<Variant>,
    key: Option<SplitKey>,
    /// The cookie's `Path`: the route's literal path prefix, so the cookie is the route's.
    cookie_path: String,
}

/// A request's variant, and the cookie to set when the key is a cookie the client lacked.
pub struct Choice {
    pub upstream: Arc<Upstream>,
    pub set_cookie: Option<HeaderValue>,
}

impl Split {
    /// `variants`: upstream and weight, in config order.
    pub fn new(
        variants: Vec<(Arc<Upstream>, u32)>,
        key: Option<SplitKey>,
        route_path: &str,
    ) -> Split {
        let variants = variants
            .into_iter()
            .map(|(upstream, weight)| Variant {
                seed: hash(0, upstream.name.as_bytes()),
                upstream,
                weight,
            })
            .collect();
        Split {
            variants,
            key,
            cookie_path: cookie_path(route_path),
        }
    }

    pub fn upstreams(&self) -> impl Iterator<Item = (&Arc<Upstream>, u32)> {
        self.variants.iter().map(|v| (&v.upstream, v.weight))
    }

    /// The variant for this request. `consumer` is who the route's plugins verified.
    pub fn choose(&self, req: &RequestHeader, consumer: Option<&str>, ip: IpAddr) -> Choice {
        // Variants that can take a request: a weight, and a healthy target. When none can,
        // all with a weight are in play, and the chosen one answers honestly (503).
        let weighted = self.mask(|v| v.weight > 0);
        let open = match self.mask(|v| v.weight > 0 && v.upstream.current().has_healthy_target()) {
            0 => weighted,
            open => open,
        };
        let ip_text;
        let key: Option<&[u8]> = match &self.key {
            None => None,
            Some(SplitKey::Cookie(name)) => {
                let named = cookie(req, name).and_then(|value| {
                    self.variants
                        .iter()
                        .position(|v| &*v.upstream.name == value)
                });
                return match named {
                    Some(i) if open & (1 << i) != 0 => self.chosen(i, None),
                    // The named variant is out for now: elsewhere, and the cookie stays, so
                    // the client goes back once it recovers.
                    Some(_) => self.chosen(self.draw(open), None),
                    None => {
                        let i = self.draw(open);
                        let cookie = self.cookie(name, &self.variants[i].upstream.name);
                        self.chosen(i, cookie)
                    }
                };
            }
            Some(SplitKey::Header(name)) => req.headers.get(name).map(HeaderValue::as_bytes),
            Some(SplitKey::Consumer) => consumer.map(str::as_bytes),
            Some(SplitKey::Ip) => {
                ip_text = ip.to_string();
                Some(ip_text.as_bytes())
            }
        };
        let i = match key {
            Some(key) => self.rendezvous(key, open),
            None => self.draw(open),
        };
        self.chosen(i, None)
    }

    fn chosen(&self, index: usize, set_cookie: Option<HeaderValue>) -> Choice {
        Choice {
            upstream: Arc::clone(&self.variants[index].upstream),
            set_cookie,
        }
    }

    /// A bit per variant (at most `MAX_VARIANTS`): set where `f` holds.
    fn mask(&self, f: impl Fn(&Variant) -> bool) -> u64 {
        self.variants
            .iter()
            .enumerate()
            .filter(|(_, v)| f(v))
            .fold(0, |mask, (i, _)| mask | 1 << i)
    }

    /// One variant drawn by weight among the open ones.
    fn draw(&self, open: u64) -> usize {
        let total: u64 = self.open_weights(open).map(|(_, w)| w).sum();
        let mut ticket = fastrand::u64(0..total.max(1));
        for (i, weight) in self.open_weights(open) {
            if ticket < weight {
                return i;
            }
            ticket -= weight;
        }
        0
    }

    /// The open variant with the best weighted rendezvous score for `key`. Each variant wins a share of keys in proportion to its weight, and a change to one
    /// variant moves only keys to or from that variant.
    fn rendezvous(&self, key: &[u8], open: u64) -> usize {
        let mut best = (0, f64::NEG_INFINITY);
        for (i, weight) in self.open_weights(open) {
            let score = score(self.variants[i].seed, weight, key);
            if score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }

    fn open_weights(&self, open: u64) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.variants
            .iter()
            .enumerate()
            .filter(move |(i, _)| open & (1 << i) != 0)
            .map(|(i, v)| (i, u64::from(v.weight)))
    }

    fn cookie(&self, name: &str, value: &str) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "{name}={value}; Path={}; HttpOnly; SameSite=Lax",
            self.cookie_path
        ))
        .ok()
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

/// The literal start of a route's path pattern, up to its first parameter: `/api/posts` for
/// `/api/posts`, `/users` for `/users/:id/orders`.
fn cookie_path(route_path: &str) -> String {
    let literal: Vec<&str> = route_path
        .split('/')
        .take_while(|segment| !segment.starts_with(':'))
        .filter(|segment| !segment.is_empty())
        .collect();
    format!("/{}", literal.join("/"))
}

/// A variant's rendezvous score for `key`: `weight / -ln(u)`, `u` uniform in (0, 1] from
/// the key's hash with the variant's seed.
fn score(seed: u64, weight: u64, key: &[u8]) -> f64 {
    let u = ((hash(seed, key) >> 11) + 1) as f64 / (1u64 << 53) as f64;
    weight as f64 / -u.ln()
}

/// FNV-1a over `bytes` from `seed`, then a SplitMix64 finish so every bit depends on every
/// byte. Fixed (not std's hasher, which may change between Rust releases): instances built
/// at different times must agree on a key's variant.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_bad_ones_are_named() {
        assert_eq!(
            SplitKey::parse("cookie:portico_variant"),
            Ok(SplitKey::Cookie("portico_variant".into()))
        );
        assert_eq!(
            SplitKey::parse("header:x-user"),
            Ok(SplitKey::Header(HeaderName::from_static("x-user")))
        );
        assert_eq!(SplitKey::parse("consumer"), Ok(SplitKey::Consumer));
        assert_eq!(SplitKey::parse("ip"), Ok(SplitKey::Ip));
        for bad in ["cookie:", "cookie:a b", "header:a b", "user", "claim:sub"] {
            assert!(SplitKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cookie_belongs_to_the_routes_literal_prefix() {
        assert_eq!(cookie_path("/api/posts"), "/api/posts");
        assert_eq!(cookie_path("/users/:id/orders"), "/users");
        assert_eq!(cookie_path("/"), "/");
        assert_eq!(cookie_path("/:tenant"), "/");
    }

    #[test]
    fn a_cookie_is_found_among_others() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("cookie", "a=1; v=posts-b").unwrap();
        req.append_header("cookie", "c=3").unwrap();
        assert_eq!(cookie(&req, "v"), Some("posts-b"));
        assert_eq!(cookie(&req, "c"), Some("3"));
        assert_eq!(cookie(&req, "x"), None);
    }

    /// The share of 10,000 keys each weight vector gives variant 0..n, by rendezvous alone.
    fn owners(weights: &[u32]) -> Vec<usize> {
        let seeds: Vec<u64> = (0..weights.len())
            .map(|i| hash(0, format!("v{i}").as_bytes()))
            .collect();
        (0..10_000u32)
            .map(|k| {
                let key = k.to_string();
                let mut best = (0, f64::NEG_INFINITY);
                for (i, &w) in weights.iter().enumerate() {
                    let score = score(seeds[i], u64::from(w), key.as_bytes());
                    if score > best.1 {
                        best = (i, score);
                    }
                }
                best.0
            })
            .collect()
    }

    #[test]
    fn rendezvous_shares_follow_the_weights_and_a_weight_change_moves_few_keys() {
        let before = owners(&[90, 10]);
        let b = before.iter().filter(|&&i| i == 1).count();
        assert!((800..1200).contains(&b), "variant b got {b} of 10,000 keys");
        // b from 10 to 20: keys only move to b (about 1,000 of them), none from b to a.
        let after = owners(&[90, 20]);
        let moved_to_b = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| **x == 0 && **y == 1);
        let moved_to_a = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| **x == 1 && **y == 0);
        assert_eq!(moved_to_a.count(), 0);
        let n = moved_to_b.count();
        assert!((600..1400).contains(&n), "{n} keys moved");
    }
}
