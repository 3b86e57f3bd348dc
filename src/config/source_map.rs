//! Where each key of a parsed TOML file is, so that every config problem can be reported
//! with its key path and line:column, whether serde or our own validation found it.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// Key paths (`routes[2].upstream`) with the byte ranges of their keys and values.
#[derive(Debug, Default)]
pub struct SourceMap {
    entries: Vec<Entry>,
    line_starts: Vec<usize>,
}

#[derive(Debug)]
struct Entry {
    path: String,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

impl SourceMap {
    pub fn build(doc: &ImDocument<String>) -> Self {
        let source = doc.raw();
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        let mut map = SourceMap {
            entries: Vec::new(),
            line_starts,
        };
        map.walk_table("", doc.as_table());
        map
    }

    fn walk_table(&mut self, prefix: &str, table: &Table) {
        for (key, item) in table.iter() {
            let path = join(prefix, key);
            let key_span = table.key(key).and_then(|k| k.span());
            self.walk_item(path, key_span, item);
        }
    }

    fn walk_item(&mut self, path: String, key: Option<Range<usize>>, item: &Item) {
        self.entries.push(Entry {
            path: path.clone(),
            key,
            value: item.span(),
        });
        match item {
            Item::Table(t) => self.walk_table(&path, t),
            Item::ArrayOfTables(tables) => {
                for (i, t) in tables.iter().enumerate() {
                    let element = format!("{path}[{i}]");
                    self.entries.push(Entry {
                        path: element.clone(),
                        key: None,
                        value: t.span(),
                    });
                    self.walk_table(&element, t);
                }
            }
            Item::Value(v) => self.walk_value(&path, v),
            Item::None => {}
        }
    }

    fn walk_value(&mut self, path: &str, value: &Value) {
        match value {
            Value::Array(array) => {
                for (i, v) in array.iter().enumerate() {
                    let element = format!("{path}[{i}]");
                    self.entries.push(Entry {
                        path: element.clone(),
                        key: None,
                        value: v.span(),
                    });
                    self.walk_value(&element, v);
                }
            }
            Value::InlineTable(table) => {
                for (key, v) in table.iter() {
                    let child = join(path, key);
                    let key_span = table.key(key).and_then(|k| k.span());
                    self.entries.push(Entry {
                        path: child.clone(),
                        key: key_span,
                        value: v.span(),
                    });
                    self.walk_value(&child, v);
                }
            }
            _ => {}
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        (line, offset - self.line_starts[line - 1] + 1)
    }

    /// Where the value at `path` is written, or its nearest written ancestor (a missing key
    /// is reported at the table that should have had it).
    pub fn locate_path(&self, path: &str) -> Option<(usize, usize)> {
        let mut candidate = path;
        loop {
            if let Some(entry) = self.entries.iter().find(|e| e.path == candidate) {
                if let Some(start) = entry.value.as_ref().or(entry.key.as_ref()).map(|r| r.start) {
                    return Some(self.line_col(start));
                }
            }
            candidate = parent(candidate)?;
        }
    }

    /// The most specific key path whose key or value covers a byte offset.
    pub fn path_at(&self, offset: usize) -> Option<String> {
        let covers = |r: &Option<Range<usize>>| r.as_ref().is_some_and(|r| r.contains(&offset));
        self.entries
            .iter()
            .filter(|e| covers(&e.key) || covers(&e.value))
            .max_by_key(|e| e.path.len())
            .map(|e| e.path.clone())
    }
}

fn join(prefix: &str, key: &str) -> String {
    let needs_quotes = key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if needs_quotes {
        format!("\"{key}\"")
    } else {
        key.to_string()
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(src: &str) -> SourceMap {
        SourceMap::build(&ImDocument::parse(src.to_string()).unwrap())
    }

    #[test]
    fn finds_keys_in_tables_arrays_and_inline_tables() {
        let m = map("[server]\nthreads = 2\n\n[[routes]]\nname = \"a\"\n\n[[routes]]\nname = \"b\"\nupstream = \"x\"\n\n[upstreams.u]\ntargets = [\"a:1\", { addr = \"b:2\", weight = 3 }]\n");
        assert_eq!(m.locate_path("server.threads"), Some((2, 11)));
        assert_eq!(m.locate_path("routes[1].upstream"), Some((9, 12)));
        assert_eq!(
            m.locate_path("upstreams.u.targets[1].weight"),
            Some((12, 44))
        );
        // A key that is not written is reported where its table is.
        assert_eq!(m.locate_path("routes[1].path"), m.locate_path("routes[1]"));
    }

    #[test]
    fn a_byte_offset_maps_back_to_the_deepest_key() {
        let src = "[upstreams.u]\ntargets = [\"a:1\"]\nbalance = \"nope\"\n";
        let m = map(src);
        let offset = src.find("\"nope\"").unwrap();
        assert_eq!(m.path_at(offset).as_deref(), Some("upstreams.u.balance"));
    }
}
