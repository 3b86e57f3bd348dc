//! `rewrite = { pattern, to }`: a route's path rewritten by a regular expression before it
//! goes upstream, `$1` / `$name` / `${name}` in `to` standing for the pattern's captures.
//! Compiled when the config is, with every reference in `to` checked against the pattern's
//! groups (the regex crate would put an empty string for a group that does not exist). The
//! rewritten path goes through the same checks as a client's path (`router::path`): a
//! rewrite cannot produce a dot segment, an encoded slash or a raw byte a target may not hold.

use regex::Regex;

use crate::router::path::{normalize_path, PathRejection};

#[derive(Debug)]
pub struct Rewrite {
    pattern: Regex,
    to: String,
}

impl Rewrite {
    pub fn compile(pattern: &str, to: &str) -> Result<Rewrite, String> {
        let regex = Regex::new(pattern).map_err(|e| format!("pattern: {e}"))?;
        if !to.starts_with('/') && !to.starts_with('$') {
            return Err("to must be a path starting with \"/\" (or with a capture)".into());
        }
        for reference in references(to) {
            let known = match reference.parse::<usize>() {
                Ok(n) => n < regex.captures_len(),
                Err(_) => regex
                    .capture_names()
                    .flatten()
                    .any(|name| name == reference),
            };
            if !known {
                return Err(format!(
                    "to names ${reference}, which the pattern does not capture"
                ));
            }
        }
        Ok(Rewrite {
            pattern: regex,
            to: to.to_string(),
        })
    }

    /// The upstream target for `path` when the pattern matches it (`None`: it does not, and
    /// the path goes as it is): the rewritten path, checked, and the query `to` wrote, if
    /// any, before the client's.
    pub fn apply(&self, path: &str, query: Option<&str>) -> Result<Option<String>, PathRejection> {
        let Some(captures) = self.pattern.captures(path) else {
            return Ok(None);
        };
        let mut out = String::with_capacity(path.len() + self.to.len());
        if let Some(m) = captures.get(0) {
            // What the pattern did not match stays as it was, as with `Regex::replace`.
            out.push_str(&path[..m.start()]);
            captures.expand(&self.to, &mut out);
            out.push_str(&path[m.end()..]);
        }
        let (new_path, new_query) = match out.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (out.as_str(), None),
        };
        let mut target = normalize_path(new_path)?.into_owned();
        let queries: Vec<&str> = [new_query, query]
            .into_iter()
            .flatten()
            .filter(|q| !q.is_empty())
            .collect();
        if !queries.is_empty() {
            target.push('?');
            target.push_str(&queries.join("&"));
        }
        Ok(Some(target))
    }
}

/// The group names and numbers `to` refers to (`$1`, `$name`, `${name}`; `$$` is a `$`).
fn references(to: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = to;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            rest = after;
            continue;
        }
        let name: String = if let Some(braced) = rest.strip_prefix('{') {
            braced.split('}').next().unwrap_or_default().to_string()
        } else {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_by_number_and_name_and_the_rest_of_the_path_stays() {
        let r = Rewrite::compile("^/api/v1/(.*)$", "/v1/$1").unwrap();
        assert_eq!(
            r.apply("/api/v1/users/42", None).unwrap().as_deref(),
            Some("/v1/users/42")
        );
        assert_eq!(r.apply("/other", None).unwrap(), None);
        let named = Rewrite::compile("^/u/(?P<id>[0-9]+)", "/users/${id}/profile").unwrap();
        assert_eq!(
            named.apply("/u/7/x", None).unwrap().as_deref(),
            Some("/users/7/profile/x")
        );
        let query = Rewrite::compile("^/u/([0-9]+)$", "/users?id=$1").unwrap();
        assert_eq!(
            query.apply("/u/7", Some("a=b")).unwrap().as_deref(),
            Some("/users?id=7&a=b")
        );
    }

    #[test]
    fn a_rewrite_cannot_make_a_path_a_client_could_not_send() {
        let r = Rewrite::compile("^/x/(.*)$", "/$1/..").unwrap();
        assert_eq!(r.apply("/x/a", None), Err(PathRejection::DotSegment));
        let r = Rewrite::compile("^/x/(.*)$", "/a%2f$1").unwrap();
        assert!(r.apply("/x/b", None).is_err());
    }

    #[test]
    fn references_must_be_groups_of_the_pattern() {
        assert!(Rewrite::compile("^/a/(.*)$", "/b/$2").is_err());
        assert!(Rewrite::compile("^/a/(?P<id>.*)$", "/b/$name").is_err());
        assert!(Rewrite::compile("^/a/(?P<id>.*)$", "/b/${id}$$").is_ok());
        assert!(Rewrite::compile("^/a/(", "/b").is_err());
        assert!(Rewrite::compile("^/a", "b").is_err());
    }
}
