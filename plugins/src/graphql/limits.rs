//! The limits a GraphQL operation is held to before anything runs: its size, its depth, its
//! aliases, its estimated cost, and whether it may introspect. Measured on the parsed
//! document with fragments expanded, so splitting a deep query into fragments does not hide
//! its depth.
//!
//! Cost: each field costs 1 plus its children; a list field multiplies its children's cost by
//! how many items it asks for (`first`, `last` or `limit`, literal or variable), or, when the
//! served schema says the field is a list and no count is given, by [`DEFAULT_LIST_SIZE`].
//! Without a schema (`graphql_guard` in front of an upstream) only a count argument marks a
//! list. It is the estimate GitHub's and Shopify's APIs publish: what a resolver would fetch.
//!
//! Each fragment is measured once and its measure reused wherever it is spread, so a document
//! that spreads fragments into each other (`...A ...A` in B, `...B ...B` in C) is measured in
//! linear time even though its expansion is exponential.

use std::collections::HashMap;

use async_graphql_parser::types::{
    DocumentOperations, ExecutableDocument, Field, OperationDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql_parser::Positioned;
use async_graphql_value::{ConstValue, Value};
use serde::Deserialize;
use serde_json::Map;

use super::{code, Refusal};
use crate::units::ByteSize;

/// How many items a list field without a count argument is taken to return.
pub const DEFAULT_LIST_SIZE: usize = 10;

/// The arguments that say how many items a list field returns (Relay's `first`/`last`, and the
/// common `limit`). With several, the largest counts.
const COUNT_ARGUMENTS: [&str; 3] = ["first", "last", "limit"];

/// How deep `{` and `[` may nest in the text before it is parsed at all. The parser is
/// recursive (pest, then its own tree builder, and dropping the tree): a 16 KiB query of
/// nothing but brackets would overflow the stack of the thread serving it. The parser itself
/// refuses selections nested deeper than 64, so no document it accepts is refused here.
const MAX_NESTING: usize = 128;

pub const DEFAULT_MAX_DEPTH: usize = 10;
pub const DEFAULT_MAX_COMPLEXITY: usize = 1000;
pub const DEFAULT_MAX_ALIASES: usize = 30;
pub const DEFAULT_MAX_QUERY_SIZE: usize = 16 * 1024;

/// The limits of one guard or one served schema, as the config spells them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Deepest field nesting; root fields are at depth 1.
    pub max_depth: usize,
    /// Highest estimated cost (see the module's doc).
    pub max_complexity: usize,
    /// Most aliased fields, fragments expanded.
    pub max_aliases: usize,
    /// Longest query text in bytes, written as a size (`"16KiB"`).
    #[serde(deserialize_with = "size_in_bytes")]
    pub max_query_size: usize,
    /// Whether `__schema` and `__type` may be queried. `__typename` always may.
    pub introspection: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_depth: DEFAULT_MAX_DEPTH,
            max_complexity: DEFAULT_MAX_COMPLEXITY,
            max_aliases: DEFAULT_MAX_ALIASES,
            max_query_size: DEFAULT_MAX_QUERY_SIZE,
            introspection: false,
        }
    }
}

fn size_in_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let ByteSize(bytes) = ByteSize::deserialize(d)?;
    usize::try_from(bytes).map_err(serde::de::Error::custom)
}

/// What the served schema knows about types, for the cost of list fields. A guard in front
/// of an upstream has no schema and passes `None`.
pub trait Shape {
    /// The root type of an operation type (`Query` for a query), if the schema has one.
    fn root(&self, op: OperationType) -> Option<&str>;
    /// The type a field of `parent_type` returns, if the schema has that field.
    fn field(&self, parent_type: &str, field: &str) -> Option<FieldShape<'_>>;
}

/// The type a field returns: its named type (`User` for `[User!]!`) and whether it is a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldShape<'a> {
    pub type_name: &'a str,
    pub list: bool,
}

/// A document that passed the limits: parsed, its operation chosen, and what was measured.
#[derive(Debug)]
pub struct Checked {
    pub document: ExecutableDocument,
    /// The chosen operation's name, if it has one.
    pub operation_name: Option<String>,
    pub operation_type: OperationType,
    pub depth: usize,
    pub complexity: usize,
    pub aliases: usize,
}

impl Checked {
    /// The chosen operation.
    pub fn operation(&self) -> Option<&OperationDefinition> {
        select(&self.document, self.operation_name.as_deref())
            .ok()
            .map(|op| &op.node)
    }
}

/// Parse `query`, choose the operation to run (`operation_name`, or the only one), and hold it
/// to `limits`. `variables` give the counts that list fields take from variables. The first
/// limit it is over refuses it, with the limit and the measured value in the message.
pub fn check(
    query: &str,
    operation_name: Option<&str>,
    variables: &Map<String, serde_json::Value>,
    limits: &Limits,
    shape: Option<&dyn Shape>,
) -> Result<Checked, Refusal> {
    check_named(query, operation_name, variables, limits, shape).1
}

/// Like [`check`], and also the chosen operation's name, which is known once the document
/// parsed and the operation was chosen, even when a limit then refuses it (for the logs).
pub fn check_named(
    query: &str,
    operation_name: Option<&str>,
    variables: &Map<String, serde_json::Value>,
    limits: &Limits,
    shape: Option<&dyn Shape>,
) -> (Option<String>, Result<Checked, Refusal>) {
    let document = match parse(query, limits) {
        Ok(document) => document,
        Err(refusal) => return (operation_name.map(str::to_owned), Err(refusal)),
    };
    let name = operation_name
        .map(str::to_owned)
        .or_else(|| single_name(&document));
    let checked = hold_to_limits(document, operation_name, variables, limits, shape);
    (name, checked)
}

/// Like [`check`], for a document parsed before (from a query text that was within the
/// limits' size then): only the operation's measure is taken again, since the variables, and
/// so the counts of list fields, may differ.
pub fn check_document(
    document: ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Map<String, serde_json::Value>,
    limits: &Limits,
    shape: Option<&dyn Shape>,
) -> Result<Checked, Refusal> {
    hold_to_limits(document, operation_name, variables, limits, shape)
}

/// The document, if it is within `max_query_size` and parses.
fn parse(query: &str, limits: &Limits) -> Result<ExecutableDocument, Refusal> {
    if query.len() > limits.max_query_size {
        return Err(Refusal::new(
            code::QUERY_TOO_LARGE,
            format!(
                "query size {} bytes exceeds max_query_size {}",
                query.len(),
                limits.max_query_size
            ),
        ));
    }
    if nesting_exceeds(query, MAX_NESTING) {
        return Err(Refusal::new(
            code::GRAPHQL_PARSE_FAILED,
            format!("the document nests brackets deeper than {MAX_NESTING}"),
        ));
    }
    async_graphql_parser::parse_query(query)
        .map_err(|e| Refusal::new(code::GRAPHQL_PARSE_FAILED, e.to_string()))
}

/// The chosen operation of `document`, measured and held to `limits`.
fn hold_to_limits(
    document: ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Map<String, serde_json::Value>,
    limits: &Limits,
    shape: Option<&dyn Shape>,
) -> Result<Checked, Refusal> {
    let operation = select(&document, operation_name)?;
    let operation_type = operation.node.ty;
    let measure = Measurer {
        document: &document,
        operation: &operation.node,
        variables,
        shape,
        fragments: HashMap::new(),
    }
    .operation()?;
    if !limits.introspection {
        if let Some(field) = measure.introspection {
            return Err(Refusal::new(
                code::INTROSPECTION_DISABLED,
                format!("introspection is disabled: the query selects {field}"),
            ));
        }
    }
    // In this order: the first limit a query is over is the one it is told about.
    for (code, what, measured, limit, name) in [
        (
            code::MAX_DEPTH_EXCEEDED,
            "depth",
            measure.depth,
            limits.max_depth,
            "max_depth",
        ),
        (
            code::MAX_ALIASES_EXCEEDED,
            "aliases",
            measure.aliases,
            limits.max_aliases,
            "max_aliases",
        ),
        (
            code::MAX_COMPLEXITY_EXCEEDED,
            "complexity",
            measure.complexity,
            limits.max_complexity,
            "max_complexity",
        ),
    ] {
        if measured > limit {
            return Err(Refusal::new(
                code,
                format!("query {what} {measured} exceeds {name} {limit}"),
            ));
        }
    }
    let operation_name = operation_name
        .map(str::to_owned)
        .or_else(|| single_name(&document));
    Ok(Checked {
        document,
        operation_name,
        operation_type,
        depth: measure.depth,
        complexity: measure.complexity,
        aliases: measure.aliases,
    })
}

/// The operation to run (GraphQL spec, GetOperation): the one named `operation_name`, or
/// the document's only operation when no name is given.
fn select<'d>(
    document: &'d ExecutableDocument,
    operation_name: Option<&str>,
) -> Result<&'d Positioned<OperationDefinition>, Refusal> {
    match (&document.operations, operation_name) {
        (DocumentOperations::Single(op), None) => Ok(op),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().ok_or_else(no_operation)
        }
        (DocumentOperations::Multiple(_), None) => Err(Refusal::new(
            code::BAD_REQUEST,
            "the document has several operations: operationName must say which to run",
        )),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).ok_or_else(|| {
            Refusal::new(
                code::BAD_REQUEST,
                format!("the document has no operation named \"{name}\""),
            )
        }),
        (DocumentOperations::Single(_), Some(name)) => Err(Refusal::new(
            code::BAD_REQUEST,
            format!("the document has no operation named \"{name}\" (its operation is anonymous)"),
        )),
    }
}

fn no_operation() -> Refusal {
    Refusal::new(code::BAD_REQUEST, "the document has no operation")
}

/// The name of a document's one named operation, when no `operationName` was sent.
fn single_name(document: &ExecutableDocument) -> Option<String> {
    match &document.operations {
        DocumentOperations::Multiple(ops) if ops.len() == 1 => {
            ops.keys().next().map(|name| name.to_string())
        }
        _ => None,
    }
}

/// What a selection set (or a fragment) adds up to.
#[derive(Debug, Clone, Copy, Default)]
struct Measure {
    depth: usize,
    complexity: usize,
    aliases: usize,
    /// The first introspection field selected (`__schema` or `__type`).
    introspection: Option<&'static str>,
}

impl Measure {
    /// Siblings: the deepest sets the depth, the rest add up.
    fn and(self, other: Measure) -> Measure {
        Measure {
            depth: self.depth.max(other.depth),
            complexity: self.complexity.saturating_add(other.complexity),
            aliases: self.aliases.saturating_add(other.aliases),
            introspection: self.introspection.or(other.introspection),
        }
    }
}

/// A fragment's measure, once known; `Expanding` while its own selections are walked, so a
/// spread of it from inside itself is a cycle.
#[derive(Clone, Copy)]
enum FragmentState {
    Expanding,
    Measured(Measure),
}

struct Measurer<'a> {
    document: &'a ExecutableDocument,
    operation: &'a OperationDefinition,
    variables: &'a Map<String, serde_json::Value>,
    shape: Option<&'a dyn Shape>,
    fragments: HashMap<&'a str, FragmentState>,
}

impl<'a> Measurer<'a> {
    fn operation(&mut self) -> Result<Measure, Refusal> {
        let root = self.shape.and_then(|s| s.root(self.operation.ty));
        self.selection_set(&self.operation.selection_set.node, root)
    }

    fn selection_set(
        &mut self,
        set: &'a SelectionSet,
        parent_type: Option<&'a str>,
    ) -> Result<Measure, Refusal> {
        let mut total = Measure::default();
        for selection in &set.items {
            let measure = match &selection.node {
                Selection::Field(field) => self.field(&field.node, parent_type)?,
                Selection::InlineFragment(inline) => {
                    let on = inline
                        .node
                        .type_condition
                        .as_ref()
                        .map(|c| c.node.on.node.as_str())
                        .or(parent_type);
                    self.selection_set(&inline.node.selection_set.node, on)?
                }
                Selection::FragmentSpread(spread) => {
                    self.fragment(spread.node.fragment_name.node.as_str())?
                }
            };
            total = total.and(measure);
        }
        Ok(total)
    }

    fn field(
        &mut self,
        field: &'a Field,
        parent_type: Option<&'a str>,
    ) -> Result<Measure, Refusal> {
        let name = field.name.node.as_str();
        let shape = self
            .shape
            .zip(parent_type)
            .and_then(|(shape, parent)| shape.field(parent, name));
        let children = self.selection_set(&field.selection_set.node, shape.map(|s| s.type_name))?;
        let count = self
            .count(field)
            .or_else(|| shape.filter(|s| s.list).map(|_| DEFAULT_LIST_SIZE));
        let children_cost = children.complexity.saturating_mul(count.unwrap_or(1));
        let introspection = match name {
            "__schema" => Some("__schema"),
            "__type" => Some("__type"),
            _ => None,
        };
        // An introspection field is answered from the schema, with no upstream call, and the
        // standard introspection query alone is 15 deep: when introspection is allowed it
        // costs one field, bounded instead by max_query_size and the engine's own nesting
        // limit. (When it is not, the refusal above names it.)
        if introspection.is_some() {
            return Ok(Measure {
                depth: 1,
                complexity: 1,
                aliases: children
                    .aliases
                    .saturating_add(usize::from(field.alias.is_some())),
                introspection,
            });
        }
        Ok(Measure {
            depth: children.depth.saturating_add(1),
            complexity: children_cost.saturating_add(1),
            aliases: children
                .aliases
                .saturating_add(usize::from(field.alias.is_some())),
            introspection: introspection.or(children.introspection),
        })
    }

    /// How many items the field asks for, from its count arguments. Zero counts as one, so a
    /// `first: 0` does not make its selections free; a count that is not a non-negative
    /// integer is ignored (the upstream will refuse it).
    fn count(&self, field: &Field) -> Option<usize> {
        field
            .arguments
            .iter()
            .filter(|(name, _)| COUNT_ARGUMENTS.contains(&name.node.as_str()))
            .filter_map(|(_, value)| self.integer(&value.node))
            .max()
            .map(|n| n.max(1))
    }

    fn integer(&self, value: &Value) -> Option<usize> {
        let n = match value {
            Value::Number(n) => n.as_u64(),
            Value::Variable(var) => match self.variables.get(var.as_str()) {
                Some(v) => v.as_u64(),
                None => self
                    .operation
                    .variable_definitions
                    .iter()
                    .find(|d| d.node.name.node == *var)
                    .and_then(|d| d.node.default_value.as_ref())
                    .and_then(|d| match &d.node {
                        ConstValue::Number(n) => n.as_u64(),
                        _ => None,
                    }),
            },
            _ => None,
        }?;
        Some(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn fragment(&mut self, name: &'a str) -> Result<Measure, Refusal> {
        match self.fragments.get(name) {
            Some(FragmentState::Measured(measure)) => return Ok(*measure),
            Some(FragmentState::Expanding) => {
                return Err(Refusal::new(
                    code::GRAPHQL_VALIDATION_FAILED,
                    format!("fragment \"{name}\" spreads itself"),
                ))
            }
            None => {}
        }
        let Some((key, definition)) = self.document.fragments.get_key_value(name) else {
            return Err(Refusal::new(
                code::GRAPHQL_VALIDATION_FAILED,
                format!("unknown fragment \"{name}\""),
            ));
        };
        let key = key.as_str();
        self.fragments.insert(key, FragmentState::Expanding);
        let on = definition.node.type_condition.node.on.node.as_str();
        let measure = self.selection_set(&definition.node.selection_set.node, Some(on))?;
        self.fragments.insert(key, FragmentState::Measured(measure));
        Ok(measure)
    }
}

/// Whether `{` and `[` nest deeper than `max` in `text`, outside strings and comments. A
/// cheap scan that stands in front of the recursive parser.
fn nesting_exceeds(text: &str, max: usize) -> bool {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                // A block string ends at the next `"""` not escaped as `\"""`.
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests;
