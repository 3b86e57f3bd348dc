//! Route path patterns: `/api/v1/users` or `/dashboard/{user_id}`. A pattern matches a path
//! prefix that ends on a segment boundary, and `{name}` captures one segment.

use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture(Arc<str>),
}

#[derive(Debug, Clone)]
pub struct PathPattern {
    segments: Vec<Segment>,
}

/// The segments a pattern captured, by name.
pub type Captures = Vec<(Arc<str>, String)>;

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("path \"{text}\" must start with \"/\""));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut segments = Vec::new();
        if rest.is_empty() {
            return Ok(PathPattern { segments });
        }
        for segment in rest.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(format!(
                    "path \"{text}\" has an empty or dot segment; write it in normal form"
                ));
            }
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!(
                        "\"{{{name}}}\" in \"{text}\" is not a valid capture name"
                    ));
                }
                if segments.contains(&Segment::Capture(name.into())) {
                    return Err(format!(
                        "capture \"{{{name}}}\" appears twice in \"{text}\""
                    ));
                }
                segments.push(Segment::Capture(name.into()));
            } else if segment.contains('*') {
                // `/api/**` would be a literal segment `**`, matching nothing a user meant.
                return Err(format!(
                    "\"{segment}\" in \"{text}\": routes have no wildcards; a path matches by prefix, so \"/{}\" already covers everything under it",
                    text.trim_start_matches('/').split("/*").next().unwrap_or_default()
                ));
            } else if segment.contains(['{', '}', '%', ';', '\\', '?', '#']) {
                return Err(format!(
                    "segment \"{segment}\" in \"{text}\" has a character routes cannot match"
                ));
            } else {
                segments.push(Segment::Literal(segment.to_string()));
            }
        }
        Ok(PathPattern { segments })
    }

    /// Whether the pattern is a prefix of `path` ending on a segment boundary. `path` must
    /// be normalized (see `path::normalize_path`).
    pub fn matches(&self, path: &str) -> bool {
        self.match_segments(path, |_, _| ())
    }

    /// Like `matches`, and collects the captured segments.
    pub fn captures(&self, path: &str) -> Option<Captures> {
        let mut captures = Vec::new();
        self.match_segments(path, |name, value| {
            captures.push((name.clone(), value.to_string()))
        })
        .then_some(captures)
    }

    fn match_segments(&self, path: &str, mut on_capture: impl FnMut(&Arc<str>, &str)) -> bool {
        let mut parts = path[1.min(path.len())..].split('/');
        for segment in &self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Capture(name) if !part.is_empty() => on_capture(name, part),
                _ => return false,
            }
        }
        true
    }

    /// The names of the segments this pattern captures.
    pub fn capture_names(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Capture(name) => Some(name.to_string()),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Whether `prefix` is a leading part of this pattern (capture names aside).
    pub fn starts_with(&self, prefix: &PathPattern) -> bool {
        prefix.segments.len() <= self.segments.len()
            && PathPattern {
                segments: self.segments[..prefix.segments.len()].to_vec(),
            }
            .same_shape(prefix)
    }

    /// Orders patterns from least to most specific: more segments first, then literals over
    /// captures position by position.
    pub fn specificity(&self) -> (usize, Vec<bool>) {
        (
            self.segments.len(),
            self.segments
                .iter()
                .map(|s| matches!(s, Segment::Literal(_)))
                .collect(),
        )
    }

    /// Patterns that match exactly the same paths (capture names aside).
    pub fn same_shape(&self, other: &PathPattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    (Segment::Capture(_), Segment::Capture(_)) => true,
                    _ => false,
                })
    }
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for segment in &self.segments {
            match segment {
                Segment::Literal(s) => write!(f, "/{s}")?,
                Segment::Capture(name) => write!(f, "/{{{name}}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn prefixes_match_on_segment_boundaries_only() {
        let users = p("/api/v1/users");
        for path in ["/api/v1/users", "/api/v1/users/", "/api/v1/users/42"] {
            assert!(users.matches(path), "{path}");
        }
        for path in ["/api/v1/usersX", "/api/v1", "/api/v2/users", "/"] {
            assert!(!users.matches(path), "{path}");
        }
        assert!(p("/").matches("/anything/at/all"));
        assert!(p("/api/").matches("/api"));
    }

    #[test]
    fn captures_take_one_non_empty_segment() {
        let d = p("/dashboard/{user_id}/orders/{order}");
        let got = d.captures("/dashboard/42/orders/7/items").unwrap();
        assert_eq!(got[0].0.as_ref(), "user_id");
        assert_eq!(got[0].1, "42");
        assert_eq!(got[1].1, "7");
        assert!(d.captures("/dashboard//orders/7").is_none());
        assert!(d.captures("/dashboard/42").is_none());
    }

    #[test]
    fn bad_patterns_are_named() {
        for bad in [
            "api", "/a//b", "/a/../b", "/{}", "/{a-b}", "/{x}/{x}", "/a%2f", "/a;b", "/api/**",
            "/api/*/x",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
        let wildcard = PathPattern::parse("/api/v1/**").unwrap_err();
        assert!(
            wildcard.contains("\"/api/v1\" already covers"),
            "{wildcard}"
        );
    }

    #[test]
    fn literals_are_more_specific_than_captures() {
        assert!(p("/users/me").specificity() > p("/users/{id}").specificity());
        assert!(p("/users/{id}").specificity() > p("/users").specificity());
        assert!(p("/users/{a}").same_shape(&p("/users/{b}")));
        assert!(!p("/users/me").same_shape(&p("/users/{b}")));
    }
}
