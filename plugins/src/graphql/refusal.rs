//! A request-level GraphQL error: the request is refused as a whole, before anything runs,
//! and answered with `{"errors":[..]}` and no `data` (GraphQL over HTTP). Its code is written
//! as `extensions.code`, in the SCREAMING_SNAKE spelling Apollo's clients and servers use, so
//! a client that reacts to a code (an APQ client to `PERSISTED_QUERY_NOT_FOUND`) works behind
//! Portico unchanged.

/// The stable `extensions.code` values. They are part of the contract with clients: add new
/// ones, never rename one.
pub mod code {
    /// The HTTP request is not a GraphQL request: no query, a body that is not JSON, a batch,
    /// an unknown `operationName`, a mutation over GET.
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    /// The query is not a GraphQL document.
    pub const GRAPHQL_PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
    /// The document cannot run: against the served schema (unknown fields, wrong arguments),
    /// and at the edge only for fragments that cannot be expanded (unknown or cyclic).
    pub const GRAPHQL_VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";
    /// Fields nested deeper than `max_depth` (root fields are at depth 1).
    pub const MAX_DEPTH_EXCEEDED: &str = "MAX_DEPTH_EXCEEDED";
    /// The estimated cost is over `max_complexity` (see `limits`).
    pub const MAX_COMPLEXITY_EXCEEDED: &str = "MAX_COMPLEXITY_EXCEEDED";
    /// More aliased fields than `max_aliases`, fragments expanded.
    pub const MAX_ALIASES_EXCEEDED: &str = "MAX_ALIASES_EXCEEDED";
    /// The query text, or the request body that carries it, is over `max_query_size`.
    pub const QUERY_TOO_LARGE: &str = "QUERY_TOO_LARGE";
    /// `__schema` or `__type` selected while `introspection = false`.
    pub const INTROSPECTION_DISABLED: &str = "INTROSPECTION_DISABLED";
    /// An APQ hash without its query, and the hash is not known: send the query with it.
    pub const PERSISTED_QUERY_NOT_FOUND: &str = "PERSISTED_QUERY_NOT_FOUND";
    /// An APQ hash without its query where no persisted list is configured: send the query.
    pub const PERSISTED_QUERY_NOT_SUPPORTED: &str = "PERSISTED_QUERY_NOT_SUPPORTED";
    /// A query that is not on the configured persisted list (the allow-list).
    pub const PERSISTED_QUERY_NOT_IN_LIST: &str = "PERSISTED_QUERY_NOT_IN_LIST";
    /// The request's query and its APQ hash disagree.
    pub const PERSISTED_QUERY_HASH_MISMATCH: &str = "PERSISTED_QUERY_HASH_MISMATCH";
}

/// A request-level GraphQL error: a stable code (one of [`code`]) and a message for people.
/// The message never holds a secret; it names the limit and what was measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// Whether the request was not a GraphQL request one could check at all (`invalid` in
    /// `portico_graphql_operations_total`), rather than a well-formed one that a limit or
    /// the persisted list refused (`refused`).
    pub fn is_invalid(&self) -> bool {
        matches!(
            self.code,
            code::BAD_REQUEST | code::GRAPHQL_PARSE_FAILED | code::GRAPHQL_VALIDATION_FAILED
        )
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_requests_are_invalid_and_limits_are_refusals() {
        assert!(Refusal::new(code::GRAPHQL_PARSE_FAILED, "x").is_invalid());
        assert!(Refusal::new(code::BAD_REQUEST, "x").is_invalid());
        assert!(!Refusal::new(code::MAX_DEPTH_EXCEEDED, "x").is_invalid());
        assert!(!Refusal::new(code::PERSISTED_QUERY_NOT_IN_LIST, "x").is_invalid());
        assert_eq!(
            Refusal::new(code::QUERY_TOO_LARGE, "too big").to_string(),
            "QUERY_TOO_LARGE: too big"
        );
    }
}
