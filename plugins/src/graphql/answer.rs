//! Writing GraphQL answers as the GraphQL over HTTP spec says: the media type from the
//! client's `Accept`, the status a request error gets in it, and the errors document.
//!
//! The two media types differ in what the status means. `application/graphql-response+json`
//! says a request that never ran is a 4xx; the legacy `application/json` answers 200 whatever
//! happened, because older clients read a non-2xx as a transport failure and drop the body.

use serde_json::{json, Value};

use super::Refusal;

/// The media type of a GraphQL answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `application/graphql-response+json`: request errors are 4xx.
    GraphqlResponse,
    /// `application/json`, the legacy type: always 200 once a request reached GraphQL.
    Json,
}

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";
const JSON: &str = "application/json";

impl MediaType {
    /// The media type to answer in, from the request's `Accept`.
    ///
    /// `application/graphql-response+json` when the client names it (with a non-zero q, and
    /// no lower than its q for `application/json`); otherwise `application/json`. A missing
    /// `Accept`, wildcards (`*/*`, `application/*`: curl, browsers, old clients) and types
    /// GraphQL cannot answer in all get `application/json`: the spec lets a server treat a
    /// request without `Accept` as `application/json`, and answering anything at all beats a
    /// 406 for a client that would not read one.
    pub fn from_accept(accept: Option<&str>) -> MediaType {
        let Some(accept) = accept else {
            return MediaType::Json;
        };
        let mut graphql_q: Option<f32> = None;
        let mut json_q: Option<f32> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if media.eq_ignore_ascii_case(GRAPHQL_RESPONSE) {
                graphql_q = Some(graphql_q.map_or(q, |old| old.max(q)));
            } else if media.eq_ignore_ascii_case(JSON) {
                json_q = Some(json_q.map_or(q, |old| old.max(q)));
            }
        }
        match graphql_q {
            Some(q) if q > 0.0 && json_q.is_none_or(|j| q >= j) => MediaType::GraphqlResponse,
            _ => MediaType::Json,
        }
    }

    /// The `Content-Type` of the answer.
    pub fn content_type(self) -> &'static str {
        match self {
            MediaType::GraphqlResponse => GRAPHQL_RESPONSE,
            MediaType::Json => JSON,
        }
    }
}

/// The status of an answer to a request refused before it ran (parse failure, a limit, the
/// persisted list): 400 in `application/graphql-response+json`, 200 in `application/json`.
pub fn refusal_status(media: MediaType) -> u16 {
    match media {
        MediaType::GraphqlResponse => 400,
        MediaType::Json => 200,
    }
}

/// The status for a mutation sent over GET, whatever the media type: GraphQL over HTTP says
/// 405, since GET must be safe.
pub const MUTATION_OVER_GET_STATUS: u16 = 405;

/// `{"errors":[{"message":..,"extensions":{"code":..}}]}`: a request error has no `data` key.
pub fn errors_body(errors: &[Refusal]) -> Vec<u8> {
    let errors: Vec<Value> = errors
        .iter()
        .map(|e| json!({"message": e.message, "extensions": {"code": e.code}}))
        .collect();
    // Serializing a Value of strings cannot fail; an empty body would still be better than a
    // panic on the request path.
    serde_json::to_vec(&json!({ "errors": errors })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graphql::code;

    #[test]
    fn the_media_type_follows_accept() {
        let table = [
            (None, MediaType::Json),
            (Some("application/json"), MediaType::Json),
            (Some("*/*"), MediaType::Json),
            (Some("application/*"), MediaType::Json),
            (Some("text/html"), MediaType::Json),
            (
                Some("application/graphql-response+json"),
                MediaType::GraphqlResponse,
            ),
            (
                Some("application/graphql-response+json, application/json;q=0.9"),
                MediaType::GraphqlResponse,
            ),
            (
                Some("application/json, application/graphql-response+json"),
                MediaType::GraphqlResponse,
            ),
            (
                Some("Application/GraphQL-Response+JSON; charset=utf-8"),
                MediaType::GraphqlResponse,
            ),
            (
                Some("application/graphql-response+json;q=0.5, application/json"),
                MediaType::Json,
            ),
            (
                Some("application/graphql-response+json;q=0"),
                MediaType::Json,
            ),
            (
                Some("application/graphql-response+json; q=0.8, */*"),
                MediaType::GraphqlResponse,
            ),
        ];
        for (accept, want) in table {
            assert_eq!(MediaType::from_accept(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn refusals_are_400_in_the_new_type_and_200_in_the_legacy_one() {
        assert_eq!(refusal_status(MediaType::GraphqlResponse), 400);
        assert_eq!(refusal_status(MediaType::Json), 200);
        assert_eq!(
            MediaType::GraphqlResponse.content_type(),
            "application/graphql-response+json"
        );
        assert_eq!(MediaType::Json.content_type(), "application/json");
    }

    #[test]
    fn the_errors_document_has_codes_and_no_data() {
        let body = errors_body(&[
            Refusal::new(
                code::MAX_DEPTH_EXCEEDED,
                "query depth 12 exceeds max_depth 10",
            ),
            Refusal::new(code::BAD_REQUEST, "a \"quoted\" word"),
        ]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"errors": [
                {"message": "query depth 12 exceeds max_depth 10", "extensions": {"code": "MAX_DEPTH_EXCEEDED"}},
                {"message": "a \"quoted\" word", "extensions": {"code": "BAD_REQUEST"}},
            ]})
        );
        assert!(v.get("data").is_none());
    }
}
