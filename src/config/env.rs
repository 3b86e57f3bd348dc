//! `${NAME}` in any config string is replaced by the environment variable NAME when the file
//! is read, so secrets never have to live in the file. An unset variable is a config error.

/// Expand every `${NAME}` in `text`. `$${` stands for a literal `${`.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in \"{text}\""))?;
            let name = &after[..end];
            let valid = name
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
            if name.is_empty() || !valid {
                return Err(format!(
                    "\"${{{name}}}\" is not a valid environment variable name"
                ));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A TOML basic string holding `text` on one line, so that replacing a literal in the file
/// with it never moves later lines.
pub fn toml_string_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr\"et".into()),
            "PORT" => Some("8080".into()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables_anywhere_in_a_string() {
        assert_eq!(expand("${SECRET}", env).unwrap(), "s3cr\"et");
        assert_eq!(expand("0.0.0.0:${PORT}", env).unwrap(), "0.0.0.0:8080");
        assert_eq!(
            expand("cost: $5 and $${PORT}", env).unwrap(),
            "cost: $5 and ${PORT}"
        );
    }

    #[test]
    fn unset_and_malformed_variables_are_errors() {
        assert!(expand("${MISSING}", env)
            .unwrap_err()
            .contains("MISSING is not set"));
        assert!(expand("${PORT", env).is_err());
        assert!(expand("${1X}", env).is_err());
        assert!(expand("${}", env).is_err());
    }

    #[test]
    fn literals_stay_on_one_line() {
        assert_eq!(toml_string_literal("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }
}
