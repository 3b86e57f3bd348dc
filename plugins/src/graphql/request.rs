//! The GraphQL-over-HTTP request: what a GET's query string or a POST's body asks for, read
//! into one shape before any GraphQL is parsed. Only the transport is checked here; the query
//! itself is `limits::check`'s.

use async_graphql_parser::types::OperationType;
use serde_json::{Map, Value};

use super::{code, Refusal};

/// One GraphQL request, as the client sent it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraphqlRequest {
    /// The document; absent when the client sent only a persisted query's hash.
    pub query: Option<String>,
    pub operation_name: Option<String>,
    pub variables: Map<String, Value>,
    /// `extensions.persistedQuery.sha256Hash` (Apollo's APQ, version 1), lower-cased.
    pub persisted_hash: Option<String>,
}

/// The one version of Apollo's automatic persisted queries there is.
const APQ_VERSION: u64 = 1;

/// A GET request: `query`, `operationName`, and `variables` and `extensions` as URL-encoded
/// JSON (GraphQL over HTTP). GET may only run a query: once the operation is known, ask
/// [`runs_over_get`] and answer a mutation with 405.
pub fn from_get(query_string: &str) -> Result<GraphqlRequest, Refusal> {
    let mut request = GraphqlRequest::default();
    let mut extensions = None;
    for (key, value) in form_urlencoded::parse(query_string.as_bytes()) {
        match &*key {
            "query" => request.query = Some(value.into_owned()),
            "operationName" if !value.is_empty() => {
                request.operation_name = Some(value.into_owned())
            }
            "variables" if !value.is_empty() => {
                request.variables = json_object("variables", &value)?;
            }
            "extensions" if !value.is_empty() => {
                extensions = Some(json_object("extensions", &value)?)
            }
            // Other parameters are the upstream's business (a cache buster, say).
            _ => {}
        }
    }
    if let Some(extensions) = extensions {
        request.persisted_hash = persisted_hash(&extensions)?;
    }
    needs_a_query(request)
}

/// A POST request: a JSON object with `query`, `operationName`, `variables` and `extensions`
/// (`application/json`, or no type at all), or the document itself (`application/graphql`).
/// A JSON array is HTTP batching, which is refused: one request is one operation, so each is
/// checked, counted and logged as itself.
pub fn from_post(content_type: Option<&str>, body: &[u8]) -> Result<GraphqlRequest, Refusal> {
    let media = content_type
        .and_then(|t| t.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    let text = std::str::from_utf8(body)
        .map_err(|_| Refusal::new(code::BAD_REQUEST, "the request body is not UTF-8"))?;
    if media.eq_ignore_ascii_case("application/graphql") {
        return needs_a_query(GraphqlRequest {
            query: Some(text.to_owned()),
            ..GraphqlRequest::default()
        });
    }
    // A client that names no type is read as JSON, what every GraphQL client sends; any
    // other type (form posts, multipart uploads) is refused rather than passed on unchecked.
    let json_like = media.is_empty()
        || media.eq_ignore_ascii_case("application/json")
        || media.eq_ignore_ascii_case("application/graphql-response+json");
    if !json_like {
        return Err(Refusal::new(
            code::BAD_REQUEST,
            format!("content type \"{media}\" is not a GraphQL request: send application/json"),
        ));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Refusal::new(
            code::BAD_REQUEST,
            format!("the request body is not JSON: {e}"),
        )
    })?;
    let object =
        match value {
            Value::Object(object) => object,
            Value::Array(_) => return Err(Refusal::new(
                code::BAD_REQUEST,
                "batched requests (a JSON array) are not supported: send one operation per request",
            )),
            _ => {
                return Err(Refusal::new(
                    code::BAD_REQUEST,
                    "the request body must be a JSON object with a query",
                ))
            }
        };
    let mut request = GraphqlRequest::default();
    for (key, value) in object {
        match (key.as_str(), value) {
            (_, Value::Null) => {}
            ("query", Value::String(q)) => request.query = Some(q),
            ("operationName", Value::String(name)) => {
                request.operation_name = (!name.is_empty()).then_some(name)
            }
            ("variables", Value::Object(vars)) => request.variables = vars,
            ("extensions", Value::Object(ext)) => request.persisted_hash = persisted_hash(&ext)?,
            (field @ ("query" | "operationName"), _) => {
                return Err(Refusal::new(
                    code::BAD_REQUEST,
                    format!("\"{field}\" must be a string"),
                ))
            }
            (field @ ("variables" | "extensions"), _) => {
                return Err(Refusal::new(
                    code::BAD_REQUEST,
                    format!("\"{field}\" must be an object"),
                ))
            }
            // Unknown members are the upstream's to read or ignore.
            _ => {}
        }
    }
    needs_a_query(request)
}

/// Whether an operation of this type may run over GET: only queries, since GET must be safe
/// (GraphQL over HTTP answers a mutation over GET with 405).
pub fn runs_over_get(operation: OperationType) -> bool {
    operation == OperationType::Query
}

/// The refusal for an operation GET may not run (see [`runs_over_get`]).
pub fn refused_over_get(operation: OperationType) -> Refusal {
    Refusal::new(
        code::BAD_REQUEST,
        format!("a {operation} cannot be sent with GET: use POST"),
    )
}

fn json_object(name: &str, text: &str) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(Refusal::new(
            code::BAD_REQUEST,
            format!("\"{name}\" must be a JSON object"),
        )),
        Err(e) => Err(Refusal::new(
            code::BAD_REQUEST,
            format!("\"{name}\" is not JSON: {e}"),
        )),
    }
}

/// `extensions.persistedQuery.sha256Hash`, when there is a `persistedQuery`.
fn persisted_hash(extensions: &Map<String, Value>) -> Result<Option<String>, Refusal> {
    let Some(persisted) = extensions.get("persistedQuery") else {
        return Ok(None);
    };
    let bad = |why: &str| {
        Refusal::new(
            code::BAD_REQUEST,
            format!("extensions.persistedQuery {why}"),
        )
    };
    let persisted = persisted
        .as_object()
        .ok_or_else(|| bad("must be an object"))?;
    match persisted.get("version").and_then(Value::as_u64) {
        Some(APQ_VERSION) => {}
        _ => return Err(bad("must have version 1")),
    }
    let hash = persisted
        .get("sha256Hash")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("needs a sha256Hash"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("sha256Hash must be 64 hex digits"));
    }
    Ok(Some(hash.to_ascii_lowercase()))
}

fn needs_a_query(request: GraphqlRequest) -> Result<GraphqlRequest, Refusal> {
    if request.query.is_none() && request.persisted_hash.is_none() {
        return Err(Refusal::new(
            code::BAD_REQUEST,
            "a GraphQL request needs a query (or a persisted query's hash)",
        ));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HASH: &str = "ecf4edb46db40b5132295c0291d62fb65d6759a9eedfa4d5d612dd5ec54a6b38";

    #[test]
    fn a_get_reads_the_query_string() {
        let req = from_get(
            "query=query%20Q(%24id%3AID)%7Buser(id%3A%24id)%7Bname%7D%7D&operationName=Q&variables=%7B%22id%22%3A%227%22%7D&cb=1",
        )
        .unwrap();
        assert_eq!(
            req.query.as_deref(),
            Some("query Q($id:ID){user(id:$id){name}}")
        );
        assert_eq!(req.operation_name.as_deref(), Some("Q"));
        assert_eq!(req.variables["id"], "7");
        assert_eq!(req.persisted_hash, None);
        // `+` is a space in a query string.
        let req = from_get("query=%7B+me+%7B+id+%7D+%7D").unwrap();
        assert_eq!(req.query.as_deref(), Some("{ me { id } }"));
    }

    #[test]
    fn a_get_with_only_an_apq_hash_is_a_request() {
        let ext = json!({"persistedQuery": {"version": 1, "sha256Hash": HASH.to_uppercase()}});
        let qs: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("extensions", &ext.to_string())
            .finish();
        let req = from_get(&qs).unwrap();
        assert_eq!(req.query, None);
        assert_eq!(req.persisted_hash.as_deref(), Some(HASH));
    }

    #[test]
    fn bad_gets_are_bad_requests() {
        for qs in [
            "",
            "operationName=Q",
            "query={a}&variables=not-json",
            "query={a}&variables=[1]",
            "extensions=%7B%22persistedQuery%22%3A%7B%22version%22%3A2%2C%22sha256Hash%22%3A%22ab%22%7D%7D",
        ] {
            let err = from_get(qs).unwrap_err();
            assert_eq!(err.code, code::BAD_REQUEST, "{qs}: {err}");
        }
    }

    #[test]
    fn a_post_reads_json_or_a_raw_document() {
        let body = json!({
            "query": "query Q { a }",
            "operationName": "Q",
            "variables": {"n": 3},
            "extensions": {"persistedQuery": {"version": 1, "sha256Hash": HASH}},
            "somethingElse": true,
        });
        let req = from_post(
            Some("application/json; charset=utf-8"),
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(req.query.as_deref(), Some("query Q { a }"));
        assert_eq!(req.operation_name.as_deref(), Some("Q"));
        assert_eq!(req.variables["n"], 3);
        assert_eq!(req.persisted_hash.as_deref(), Some(HASH));

        let nulls = br#"{"query":"{ a }","operationName":null,"variables":null,"extensions":null}"#;
        let req = from_post(None, nulls).unwrap();
        assert_eq!(req.query.as_deref(), Some("{ a }"));
        assert!(req.variables.is_empty());

        let req = from_post(Some("application/graphql"), b"{ a }").unwrap();
        assert_eq!(req.query.as_deref(), Some("{ a }"));
    }

    #[test]
    fn bad_posts_are_bad_requests_and_say_why() {
        let table: [(&str, &[u8], &str); 8] = [
            ("application/json", br#"[{"query":"{a}"}]"#, "batched"),
            ("application/json", b"{", "not JSON"),
            ("application/json", b"\"{a}\"", "JSON object"),
            ("application/json", br#"{"query": 5}"#, "must be a string"),
            (
                "application/json",
                br#"{"query":"{a}","variables":[]}"#,
                "must be an object",
            ),
            ("application/json", br#"{"variables":{}}"#, "needs a query"),
            (
                "multipart/form-data; boundary=x",
                b"--x",
                "not a GraphQL request",
            ),
            ("application/json", b"\xff", "UTF-8"),
        ];
        for (ct, body, why) in table {
            let err = from_post(Some(ct), body).unwrap_err();
            assert_eq!(err.code, code::BAD_REQUEST);
            assert!(err.message.contains(why), "{ct} {body:?}: {}", err.message);
        }
    }

    #[test]
    fn only_queries_run_over_get() {
        assert!(runs_over_get(OperationType::Query));
        assert!(!runs_over_get(OperationType::Mutation));
        assert!(!runs_over_get(OperationType::Subscription));
        assert_eq!(
            refused_over_get(OperationType::Mutation).message,
            "a mutation cannot be sent with GET: use POST"
        );
    }
}
