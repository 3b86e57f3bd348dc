//! Request path hygiene at the edge. Pingora does not normalise paths, and a route's policy
//! (auth, limits) must not be bypassed by spelling a path differently. So before routing:
//! percent-encoded unreserved characters are decoded (`/%61dmin` is `/admin`), other escapes
//! are upper-cased, and paths an upstream could read as a different path are rejected:
//! `.`/`..` segments (raw or encoded), encoded `/` or `\`, raw `\`, NUL and other control
//! characters, empty segments (`//`) and `;` path parameters. What is routed is exactly what
//! is sent upstream.

use std::borrow::Cow;

/// Why a path was refused; the text goes into the 400's `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRejection {
    NotOriginForm,
    BadEscape,
    DotSegment,
    EncodedSeparator,
    ControlCharacter,
    EmptySegment,
    PathParameter,
}

impl PathRejection {
    pub fn detail(self) -> &'static str {
        match self {
            PathRejection::NotOriginForm => "the request path must start with \"/\"",
            PathRejection::BadEscape => "the request path has a malformed percent-escape",
            PathRejection::DotSegment => "the request path has a \".\" or \"..\" segment",
            PathRejection::EncodedSeparator => {
                "the request path has an encoded or backslash path separator"
            }
            PathRejection::ControlCharacter => "the request path has a control character",
            PathRejection::EmptySegment => "the request path has an empty segment (\"//\")",
            PathRejection::PathParameter => "the request path has a \";\" path parameter",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The path to route on and to send upstream, or why it is refused.
/// Borrows when the path is already in normal form (the common case: no allocation).
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathRejection> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathRejection::NotOriginForm);
    }
    let needs_rewrite = bytes.contains(&b'%');
    let path: Cow<str> = if needs_rewrite {
        Cow::Owned(decode_unreserved(bytes)?)
    } else {
        Cow::Borrowed(raw)
    };
    check_segments(&path)?;
    Ok(path)
}

fn decode_unreserved(bytes: &[u8]) -> Result<String, PathRejection> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b as char);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathRejection::BadEscape);
        };
        let decoded = hi * 16 + lo;
        match decoded {
            b'/' | b'\\' => return Err(PathRejection::EncodedSeparator),
            0x00..=0x1f | 0x7f => return Err(PathRejection::ControlCharacter),
            d if is_unreserved(d) => out.push(d as char),
            d => {
                out.push('%');
                out.push(
                    char::from_digit(u32::from(d >> 4), 16)
                        .unwrap_or('0')
                        .to_ascii_uppercase(),
                );
                out.push(
                    char::from_digit(u32::from(d & 15), 16)
                        .unwrap_or('0')
                        .to_ascii_uppercase(),
                );
            }
        }
        i += 3;
    }
    Ok(out)
}

/// One pass over a path that starts with `/`: no control character, `\\` or `;`, no `.` or
/// `..` segment, and no empty segment but a trailing one.
fn check_segments(path: &str) -> Result<(), PathRejection> {
    let bytes = path.as_bytes();
    let mut segment_start = 1;
    for i in 1..=bytes.len() {
        // The end of the path closes the last segment, as a `/` would.
        let b = bytes.get(i).copied().unwrap_or(b'/');
        match b {
            0x00..=0x1f | 0x7f => return Err(PathRejection::ControlCharacter),
            b'\\' => return Err(PathRejection::EncodedSeparator),
            b';' => return Err(PathRejection::PathParameter),
            b'/' => {
                match &bytes[segment_start..i] {
                    b"." | b".." => return Err(PathRejection::DotSegment),
                    // A trailing slash is an empty last segment, and that is fine.
                    b"" if i < bytes.len() => return Err(PathRejection::EmptySegment),
                    _ => {}
                }
                segment_start = i + 1;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathRejection::*;

    #[test]
    fn clean_paths_pass_unchanged_without_allocating() {
        for path in ["/", "/api/v1/users", "/users/42/", "/a-b_c~d.e", "/%20x"] {
            let got = normalize_path(path).unwrap();
            assert_eq!(got, path);
        }
        assert!(matches!(
            normalize_path("/api/users").unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_uppercased() {
        assert_eq!(normalize_path("/%61dmin").unwrap(), "/admin");
        assert_eq!(normalize_path("/users/%7euser").unwrap(), "/users/~user");
        assert_eq!(normalize_path("/a%2bb%3f").unwrap(), "/a%2Bb%3F");
    }

    #[test]
    fn paths_that_could_mean_another_path_are_rejected() {
        let table = [
            ("/api/../admin", DotSegment),
            ("/api/./admin", DotSegment),
            ("/api/..", DotSegment),
            ("/api/%2e%2e/admin", DotSegment),
            ("/api/%2E%2e/admin", DotSegment),
            ("/api/.%2e/admin", DotSegment),
            ("/api/%2e/admin", DotSegment),
            ("/api%2fadmin", EncodedSeparator),
            ("/api%2Fadmin", EncodedSeparator),
            ("/api%5cadmin", EncodedSeparator),
            ("/api\\admin", EncodedSeparator),
            ("/api%00", ControlCharacter),
            ("/api\0", ControlCharacter),
            ("/api%0d%0a", ControlCharacter),
            ("//admin", EmptySegment),
            ("/api//admin", EmptySegment),
            ("/admin;x=1/secret", PathParameter),
            ("/api%zz", BadEscape),
            ("/api%2", BadEscape),
            ("api", NotOriginForm),
            ("*", NotOriginForm),
        ];
        for (path, want) in table {
            assert_eq!(normalize_path(path), Err(want), "{path}");
        }
    }
}
