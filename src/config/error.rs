//! Config problems, each with the key path it is about and where it is in the file.

use std::fmt;

/// One problem with a config: `routes[2].upstream: no upstream named "user"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path in the file, like `upstreams.users.targets[1]`; empty for the whole file.
    pub path: String,
    pub message: String,
    /// 1-based line and column, when the problem can be pointed at.
    pub line_col: Option<(usize, usize)>,
}

/// Every problem found in one config file. A config with any problem is rejected whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file the problems are in, as the user named it.
    pub origin: String,
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn single(origin: &str, message: impl Into<String>) -> Self {
        ConfigErrors {
            origin: origin.to_string(),
            errors: vec![ConfigError {
                path: String::new(),
                message: message.into(),
                line_col: None,
            }],
        }
    }

    /// One line per problem, in file order, ready for a terminal or a log.
    pub fn lines(&self) -> Vec<String> {
        self.errors.iter().map(|e| self.render(e)).collect()
    }

    fn render(&self, e: &ConfigError) -> String {
        let place = match e.line_col {
            Some((line, col)) => format!("{}:{line}:{col}", self.origin),
            None => self.origin.clone(),
        };
        if e.path.is_empty() {
            format!("{place}: {}", e.message)
        } else {
            format!("{place}: {}: {}", e.path, e.message)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{} has {n} problem{}:",
            self.origin,
            if n == 1 { "" } else { "s" }
        )?;
        for line in self.lines() {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems while a config is read and compiled, pointing each at its place in the
/// file through the [`SourceMap`](super::source_map::SourceMap).
pub struct Problems<'a> {
    map: &'a super::source_map::SourceMap,
    errors: Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    pub fn new(map: &'a super::source_map::SourceMap) -> Self {
        Problems {
            map,
            errors: Vec::new(),
        }
    }

    /// How many problems so far.
    pub fn count(&self) -> usize {
        self.errors.len()
    }

    /// A problem about the value at `path`.
    pub fn at(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let line_col = self.map.locate_path(&path);
        self.errors.push(ConfigError {
            path,
            message: message.into(),
            line_col,
        });
    }

    /// A problem reported by the TOML deserializer inside the value at `path`: its span is
    /// more precise than the path, so the path is refined from it.
    pub fn from_toml(&mut self, path: &str, err: &toml_edit::de::Error) {
        let (path, line_col) = match err.span() {
            Some(span) => (
                self.map
                    .path_at(span.start)
                    .unwrap_or_else(|| path.to_string()),
                Some(self.map.line_col(span.start)),
            ),
            None => (path.to_string(), self.map.locate_path(path)),
        };
        self.errors.push(ConfigError {
            path,
            message: err.message().trim().to_string(),
            line_col,
        });
    }

    /// Start from problems found in an earlier stage, like parsing.
    pub fn extend(&mut self, earlier: Vec<ConfigError>) {
        self.errors.extend(earlier);
    }

    pub fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }

    pub fn finish(mut self, origin: &str) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        self.errors
            .sort_by_key(|e| e.line_col.unwrap_or((usize::MAX, usize::MAX)));
        Err(ConfigErrors {
            origin: origin.to_string(),
            errors: self.errors,
        })
    }
}
