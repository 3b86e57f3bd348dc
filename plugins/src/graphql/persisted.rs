//! Persisted queries: an allow-list of the operations a client may run, loaded from a JSON
//! file `{ "<sha256 hex>": "<query>", ... }` (what Apollo's and Relay's tooling extract from a
//! client's code). Anything else is refused, by full text or by Apollo APQ hash alike.
//!
//! Without a list, an APQ hash is only accepted with its query (and must match it): a guard
//! cannot check the limits of a query it cannot see, and clients fall back to sending the
//! query when told `PERSISTED_QUERY_NOT_SUPPORTED`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use async_graphql_parser::types::DocumentOperations;
use sha2::{Digest, Sha256};

use super::{code, GraphqlRequest, Refusal};

/// A persisted-query file that cannot serve, with what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum PersistedError {
    #[error("cannot read persisted queries {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("persisted queries {path}: not a JSON object of sha256 hash to query: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("persisted queries {path}: entry \"{hash}\": {why}")]
    Entry {
        path: String,
        hash: String,
        why: String,
    },
}

/// The allow-list, by lower-case hex sha256 of each query's exact text.
#[derive(Debug, Default)]
pub struct PersistedQueries {
    queries: HashMap<String, String>,
    /// The names of the listed operations: bounded by the list, so safe as metric labels.
    operation_names: HashSet<Arc<str>>,
}

/// The lower-case hex sha256 of `text`, as APQ and persisted-query files spell hashes.
pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl PersistedQueries {
    /// Read and check the file at `path`: every hash must be the sha256 of its query, and
    /// every query must parse.
    pub fn load(path: &Path) -> Result<PersistedQueries, PersistedError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| PersistedError::Read {
            path: shown.clone(),
            source,
        })?;
        PersistedQueries::from_json(&shown, &bytes)
    }

    /// Like `load`, from the file's contents; `path` names it in errors.
    pub fn from_json(path: &str, bytes: &[u8]) -> Result<PersistedQueries, PersistedError> {
        let entries: HashMap<String, String> =
            serde_json::from_slice(bytes).map_err(|source| PersistedError::Json {
                path: path.to_owned(),
                source,
            })?;
        let mut list = PersistedQueries::default();
        for (hash, query) in entries {
            let entry = |why: String| PersistedError::Entry {
                path: path.to_owned(),
                hash: hash.clone(),
                why,
            };
            let actual = sha256_hex(&query);
            if !hash.eq_ignore_ascii_case(&actual) {
                return Err(entry(format!(
                    "the hash is not the sha256 of its query (which is {actual})"
                )));
            }
            let document = async_graphql_parser::parse_query(&query)
                .map_err(|e| entry(format!("the query does not parse: {e}")))?;
            if let DocumentOperations::Multiple(ops) = &document.operations {
                list.operation_names
                    .extend(ops.keys().map(|name| Arc::from(name.as_str())));
            }
            list.queries.insert(actual, query);
        }
        Ok(list)
    }

    pub fn len(&self) -> usize {
        self.queries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    /// The query text a request runs, if the list allows it: the listed query for a known
    /// hash (and the request's own query, when it sends one, must be that same text), or the
    /// request's query when its sha256 is listed.
    pub fn resolve<'a>(&'a self, req: &'a GraphqlRequest) -> Result<&'a str, Refusal> {
        match (&req.query, &req.persisted_hash) {
            (Some(query), Some(hash)) => {
                check_hash(query, hash)?;
                self.listed(query)
            }
            (None, Some(hash)) => self.queries.get(hash).map(String::as_str).ok_or_else(|| {
                Refusal::new(
                    code::PERSISTED_QUERY_NOT_FOUND,
                    "PersistedQueryNotFound: no persisted query has this hash",
                )
            }),
            (Some(query), None) => self.listed(query),
            (None, None) => Err(no_query()),
        }
    }

    fn listed<'a>(&self, query: &'a str) -> Result<&'a str, Refusal> {
        if self.queries.contains_key(&sha256_hex(query)) {
            Ok(query)
        } else {
            Err(Refusal::new(
                code::PERSISTED_QUERY_NOT_IN_LIST,
                "this query is not on the persisted query list",
            ))
        }
    }

    /// The listed operation named `name`, shared, for a metric label.
    pub fn operation_name(&self, name: &str) -> Option<Arc<str>> {
        self.operation_names.get(name).cloned()
    }
}

/// The query `req` runs: from `list` when the config has one, else as
/// [`resolve_without_list`] says.
pub fn query_of<'a>(
    list: Option<&'a PersistedQueries>,
    req: &'a GraphqlRequest,
) -> Result<&'a str, Refusal> {
    match list {
        Some(list) => list.resolve(req),
        None => resolve_without_list(req),
    }
}

/// The query text of a request where no persisted list is configured: its own query, whose
/// APQ hash (if it sends one) must match it. A hash alone cannot be resolved.
pub fn resolve_without_list(req: &GraphqlRequest) -> Result<&str, Refusal> {
    match (&req.query, &req.persisted_hash) {
        (Some(query), Some(hash)) => check_hash(query, hash).map(|()| query.as_str()),
        (Some(query), None) => Ok(query),
        (None, Some(_)) => Err(Refusal::new(
            code::PERSISTED_QUERY_NOT_SUPPORTED,
            "PersistedQueryNotSupported: send the query with its hash",
        )),
        (None, None) => Err(no_query()),
    }
}

fn check_hash(query: &str, hash: &str) -> Result<(), Refusal> {
    if sha256_hex(query).eq_ignore_ascii_case(hash) {
        Ok(())
    } else {
        Err(Refusal::new(
            code::PERSISTED_QUERY_HASH_MISMATCH,
            "the persisted query hash is not the sha256 of the query sent with it",
        ))
    }
}

fn no_query() -> Refusal {
    Refusal::new(code::BAD_REQUEST, "a GraphQL request needs a query")
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "query User($id: ID!) { user(id: $id) { name } }";

    fn list() -> PersistedQueries {
        let json = serde_json::json!({ sha256_hex(USER): USER, sha256_hex("{ a }"): "{ a }" });
        PersistedQueries::from_json("p.json", json.to_string().as_bytes()).unwrap()
    }

    fn req(query: Option<&str>, hash: Option<String>) -> GraphqlRequest {
        GraphqlRequest {
            query: query.map(str::to_owned),
            persisted_hash: hash,
            ..GraphqlRequest::default()
        }
    }

    #[test]
    fn sha256_is_lower_case_hex() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_listed_query_runs_by_text_or_by_hash() {
        let list = list();
        assert_eq!(list.len(), 2);
        assert_eq!(list.resolve(&req(Some(USER), None)), Ok(USER));
        assert_eq!(list.resolve(&req(None, Some(sha256_hex(USER)))), Ok(USER));
        assert_eq!(
            list.resolve(&req(Some(USER), Some(sha256_hex(USER)))),
            Ok(USER)
        );
        assert_eq!(list.operation_name("User").as_deref(), Some("User"));
        assert_eq!(list.operation_name("Other"), None);
    }

    #[test]
    fn anything_else_is_refused_with_its_own_code() {
        let list = list();
        let table = [
            (req(Some("{ b }"), None), code::PERSISTED_QUERY_NOT_IN_LIST),
            (
                req(Some("{ b }"), Some(sha256_hex("{ b }"))),
                code::PERSISTED_QUERY_NOT_IN_LIST,
            ),
            (
                req(None, Some(sha256_hex("{ b }"))),
                code::PERSISTED_QUERY_NOT_FOUND,
            ),
            (
                req(Some("{ b }"), Some(sha256_hex(USER))),
                code::PERSISTED_QUERY_HASH_MISMATCH,
            ),
            (req(None, None), code::BAD_REQUEST),
        ];
        for (request, code) in table {
            assert_eq!(
                list.resolve(&request).unwrap_err().code,
                code,
                "{request:?}"
            );
        }
    }

    #[test]
    fn without_a_list_a_hash_needs_its_query() {
        assert_eq!(resolve_without_list(&req(Some(USER), None)), Ok(USER));
        assert_eq!(
            resolve_without_list(&req(Some(USER), Some(sha256_hex(USER)))),
            Ok(USER)
        );
        let table = [
            (
                req(None, Some(sha256_hex(USER))),
                code::PERSISTED_QUERY_NOT_SUPPORTED,
            ),
            (
                req(Some("{ b }"), Some(sha256_hex(USER))),
                code::PERSISTED_QUERY_HASH_MISMATCH,
            ),
            (req(None, None), code::BAD_REQUEST),
        ];
        for (request, code) in table {
            assert_eq!(resolve_without_list(&request).unwrap_err().code, code);
        }
    }

    #[test]
    fn a_bad_file_names_the_entry() {
        let wrong = format!(r#"{{"{}": "{{ b }}"}}"#, sha256_hex("{ a }"));
        let err = PersistedQueries::from_json("p.json", wrong.as_bytes()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("p.json") && text.contains(&sha256_hex("{ a }")),
            "{text}"
        );
        assert!(text.contains("not the sha256"), "{text}");

        let broken = format!(r#"{{"{}": "{{ a"}}"#, sha256_hex("{ a"));
        let err = PersistedQueries::from_json("p.json", broken.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("does not parse"), "{err}");

        for bad in [&b"[]"[..], b"{\"x\": 1}", b"nope"] {
            let err = PersistedQueries::from_json("p.json", bad).unwrap_err();
            assert!(matches!(err, PersistedError::Json { .. }), "{err}");
        }
        let missing = PersistedQueries::load(Path::new("/nonexistent/p.json")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/p.json"),
            "{missing}"
        );
    }

    #[test]
    fn upper_case_hashes_in_the_file_are_accepted() {
        let json = format!(r#"{{"{}": "{{ a }}"}}"#, sha256_hex("{ a }").to_uppercase());
        let list = PersistedQueries::from_json("p.json", json.as_bytes()).unwrap();
        assert_eq!(
            list.resolve(&req(None, Some(sha256_hex("{ a }")))),
            Ok("{ a }")
        );
    }
}
