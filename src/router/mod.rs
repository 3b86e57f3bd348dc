//! Choosing a route for a request. The most specific route wins: exact host over wildcard
//! host over no host, then the longer path pattern (literal segments over captures), then a
//! route that names methods, then the one with more header conditions. Two routes that could
//! take the same request with the same specificity are rejected when the config is compiled.

pub mod path;
pub mod pattern;

use std::borrow::Cow;
use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

pub use pattern::{Captures, PathPattern};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// A lower-case host name without port.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`; matches any depth of subdomain.
    Wildcard(String),
}

impl HostMatch {
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|label| {
                    !label.is_empty()
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        };
        if let Some(suffix) = lower.strip_prefix("*.") {
            if valid_name(suffix) {
                return Ok(HostMatch::Wildcard(format!(".{suffix}")));
            }
        } else if valid_name(&lower) {
            return Ok(HostMatch::Exact(lower));
        }
        Err(format!(
            "host \"{text}\" must be a host name like \"api.example.com\" or \"*.example.com\" (no port)"
        ))
    }
}

/// What a route asks of a request.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    pub host: HostMatch,
    pub path: PathPattern,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl RouteMatcher {
    fn specificity(&self) -> (usize, Vec<bool>, bool, usize) {
        let (len, literals) = self.path.specificity();
        (len, literals, self.methods.is_some(), self.headers.len())
    }

    fn accepts_method(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    fn accepts_headers(&self, headers: &HeaderMap) -> bool {
        self.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }

    /// Whether some request could be taken by both routes at the same specificity.
    fn ambiguous_with(&self, other: &RouteMatcher) -> bool {
        let methods_overlap = match (&self.methods, &other.methods) {
            (None, None) => true,
            (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
            _ => false,
        };
        let headers_compatible = self.headers.len() == other.headers.len()
            && self.headers.iter().all(|(name, value)| {
                other
                    .headers
                    .iter()
                    .all(|(other_name, other_value)| other_name != name || other_value == value)
            });
        self.host == other.host
            && self.path.same_shape(&other.path)
            && methods_overlap
            && headers_compatible
    }
}

/// The outcome of routing one request.
#[derive(Debug)]
pub enum RouteMatch<'a, T> {
    Found(&'a T),
    /// A route took the host and path, but not the method: 405 with these in `Allow`.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// Routes indexed by host, each list ordered most specific first.
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Vec<(RouteMatcher, T)>,
    exact: HashMap<String, Vec<usize>>,
    /// Longest suffix first, so `*.eu.example.com` beats `*.example.com`.
    wildcards: Vec<(String, Vec<usize>)>,
    any: Vec<usize>,
}

/// Two routes that could take the same request: the indices of both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguity {
    pub first: usize,
    pub second: usize,
}

impl<T> RouteTable<T> {
    /// Index the routes (in file order), or name every pair that is ambiguous.
    pub fn build(routes: Vec<(RouteMatcher, T)>) -> Result<Self, Vec<Ambiguity>> {
        let mut ambiguities = Vec::new();
        for (i, (a, _)) in routes.iter().enumerate() {
            for (j, (b, _)) in routes.iter().enumerate().skip(i + 1) {
                if a.ambiguous_with(b) {
                    ambiguities.push(Ambiguity {
                        first: i,
                        second: j,
                    });
                }
            }
        }
        if !ambiguities.is_empty() {
            return Err(ambiguities);
        }
        let mut table = RouteTable {
            routes,
            exact: HashMap::new(),
            wildcards: Vec::new(),
            any: Vec::new(),
        };
        for (i, (matcher, _)) in table.routes.iter().enumerate() {
            match &matcher.host {
                HostMatch::Exact(host) => table.exact.entry(host.clone()).or_default().push(i),
                HostMatch::Wildcard(suffix) => {
                    match table.wildcards.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, list)) => list.push(i),
                        None => table.wildcards.push((suffix.clone(), vec![i])),
                    }
                }
                HostMatch::Any => table.any.push(i),
            }
        }
        let routes = &table.routes;
        let by_specificity = |list: &mut Vec<usize>| {
            list.sort_by(|&a, &b| routes[b].0.specificity().cmp(&routes[a].0.specificity()));
        };
        table.exact.values_mut().for_each(by_specificity);
        table
            .wildcards
            .iter_mut()
            .for_each(|(_, l)| by_specificity(l));
        by_specificity(&mut table.any);
        table
            .wildcards
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Ok(table)
    }

    /// Every route with its matcher, in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&RouteMatcher, &T)> {
        self.routes.iter().map(|(m, t)| (m, t))
    }

    /// Choose the route for a request. `host` is the Host header or authority as sent (a
    /// port and letter case are ignored); `path` must be normalized.
    pub fn match_request(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> RouteMatch<'_, T> {
        let host = host.map(normalize_host);
        let host = host.as_deref();
        let exact = host.and_then(|h| self.exact.get(h)).map(Vec::as_slice);
        let wildcards = self
            .wildcards
            .iter()
            .filter(move |(suffix, _)| {
                host.is_some_and(|h| h.len() > suffix.len() && h.ends_with(suffix.as_str()))
            })
            .map(|(_, list)| list.as_slice());
        let candidates = exact
            .into_iter()
            .chain(wildcards)
            .chain(std::iter::once(self.any.as_slice()));

        let mut allowed: Vec<Method> = Vec::new();
        for list in candidates {
            for &i in list {
                let (matcher, route) = &self.routes[i];
                if !matcher.path.matches(path) || !matcher.accepts_headers(headers) {
                    continue;
                }
                if matcher.accepts_method(method) {
                    return RouteMatch::Found(route);
                }
                for m in matcher.methods.iter().flatten() {
                    if !allowed.contains(m) {
                        allowed.push(m.clone());
                    }
                }
            }
        }
        if allowed.is_empty() {
            RouteMatch::NotFound
        } else {
            RouteMatch::MethodNotAllowed(allowed)
        }
    }
}

/// Lower-case, without port or trailing dot; borrows when nothing changes.
fn normalize_host(raw: &str) -> Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(host, _)| host)
    };
    let host = without_port.strip_suffix('.').unwrap_or(without_port);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, path: &str, methods: &[&str]) -> RouteMatcher {
        RouteMatcher {
            host: host.map_or(HostMatch::Any, |h| HostMatch::parse(h).unwrap()),
            path: PathPattern::parse(path).unwrap(),
            methods: (!methods.is_empty())
                .then(|| methods.iter().map(|m| m.parse().unwrap()).collect()),
            headers: Vec::new(),
        }
    }

    fn table(routes: Vec<(RouteMatcher, &'static str)>) -> RouteTable<&'static str> {
        RouteTable::build(routes).unwrap()
    }

    fn pick(t: &RouteTable<&'static str>, host: &str, method: &str, path: &str) -> String {
        match t.match_request(
            Some(host),
            &method.parse().unwrap(),
            path,
            &HeaderMap::new(),
        ) {
            RouteMatch::Found(name) => name.to_string(),
            RouteMatch::MethodNotAllowed(m) => format!("405 {m:?}"),
            RouteMatch::NotFound => "404".into(),
        }
    }

    #[test]
    fn the_most_specific_route_wins() {
        let t = table(vec![
            (route(None, "/", &[]), "catch-all"),
            (route(None, "/api", &[]), "api"),
            (route(None, "/api/users", &[]), "users"),
            (route(None, "/api/users/{id}", &[]), "user"),
            (route(None, "/api/users/me", &[]), "me"),
            (route(None, "/api/users", &["POST"]), "create-user"),
            (route(Some("*.example.com"), "/", &[]), "wildcard-host"),
            (route(Some("admin.example.com"), "/", &[]), "admin-host"),
        ]);
        let table_cases = [
            ("other.test", "GET", "/", "catch-all"),
            ("other.test", "GET", "/apix", "catch-all"),
            ("other.test", "GET", "/api/orders", "api"),
            ("other.test", "GET", "/api/users", "users"),
            ("other.test", "POST", "/api/users", "create-user"),
            ("other.test", "GET", "/api/users/42", "user"),
            ("other.test", "GET", "/api/users/me", "me"),
            ("other.test", "GET", "/api/users/me/x", "me"),
            ("shop.example.com", "GET", "/api/users", "wildcard-host"),
            ("a.b.example.com:8080", "GET", "/", "wildcard-host"),
            ("ADMIN.Example.com:443", "GET", "/api", "admin-host"),
            ("example.com", "GET", "/api", "api"),
        ];
        for (host, method, path, want) in table_cases {
            assert_eq!(pick(&t, host, method, path), want, "{method} {host}{path}");
        }
    }

    #[test]
    fn a_route_that_takes_the_path_but_not_the_method_answers_405() {
        let t = table(vec![(route(None, "/users", &["GET", "POST"]), "users")]);
        assert_eq!(pick(&t, "h", "DELETE", "/users/1"), "405 [GET, POST]");
        assert_eq!(pick(&t, "h", "GET", "/orders"), "404");
    }

    #[test]
    fn header_conditions_select_among_routes() {
        let mut v2 = route(None, "/api", &[]);
        v2.headers = vec![(
            HeaderName::from_static("x-version"),
            HeaderValue::from_static("2"),
        )];
        let t = table(vec![(route(None, "/api", &[]), "v1"), (v2, "v2")]);
        let mut headers = HeaderMap::new();
        let get = Method::GET;
        assert!(matches!(
            t.match_request(None, &get, "/api", &headers),
            RouteMatch::Found(&"v1")
        ));
        headers.insert("x-version", HeaderValue::from_static("2"));
        assert!(matches!(
            t.match_request(None, &get, "/api", &headers),
            RouteMatch::Found(&"v2")
        ));
    }

    #[test]
    fn routes_that_could_take_the_same_request_are_rejected() {
        let ambiguous = [
            (route(None, "/a", &[]), route(None, "/a/", &[])),
            (route(None, "/u/{id}", &[]), route(None, "/u/{name}", &[])),
            (
                route(None, "/a", &["GET", "PUT"]),
                route(None, "/a", &["PUT"]),
            ),
            (
                route(Some("x.io"), "/a", &[]),
                route(Some("X.io"), "/a", &[]),
            ),
        ];
        for (a, b) in ambiguous {
            let err = RouteTable::build(vec![(a, 1), (b, 2)]).unwrap_err();
            assert_eq!(
                err,
                vec![Ambiguity {
                    first: 0,
                    second: 1
                }]
            );
        }
        let distinct = [
            (route(None, "/a", &["GET"]), route(None, "/a", &["POST"])),
            (route(None, "/a", &[]), route(None, "/a", &["POST"])),
            (route(None, "/u/me", &[]), route(None, "/u/{id}", &[])),
            (route(Some("x.io"), "/a", &[]), route(None, "/a", &[])),
        ];
        for (a, b) in distinct {
            assert!(RouteTable::build(vec![(a, 1), (b, 2)]).is_ok());
        }
    }
}
