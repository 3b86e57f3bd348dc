//! An operator puts `graphql_guard` in front of a GraphQL upstream: what passes reaches it
//! unchanged, what is over a limit (or off the persisted list) is answered at the edge in
//! GraphQL's own error format and never reaches it.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::gateway::validate_text;
use crate::common::http::parse;
use crate::common::{eventually, raw_request, spawn_upstream, Gateway, Reply, Upstream};

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

/// A GraphQL upstream: answers every request with a fixed `data`, as JSON.
async fn graphql_upstream() -> Upstream {
    spawn_upstream("graphql", |_| {
        Reply::With(
            200,
            vec![("content-type", "application/json".into())],
            r#"{"data":{"user":{"name":"Ada"}}}"#.into(),
        )
    })
    .await
}

async fn guarded(up: &Upstream, guard: &str, access_log: Option<&std::path::Path>) -> Gateway {
    let server = match access_log {
        Some(path) => format!(
            "[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\naccess_log = \"{}\"\n",
            path.display()
        ),
        None => String::new(),
    };
    Gateway::start(&format!(
        r#"{server}
[upstreams.gql]
targets = ["{}"]

[plugins.gql-guard]
kind = "graphql_guard"
{guard}

[[routes]]
name = "graphql"
path = "/graphql"
upstream = "gql"
plugins = ["gql-guard"]
"#,
        up.addr
    ))
    .await
}

const LIMITS: &str = r#"max_depth = 3
max_complexity = 50
max_aliases = 2
max_query_size = "1KiB""#;

async fn post(gw: &Gateway, body: &Value, accept: Option<&str>) -> reqwest::Response {
    let mut req = gw
        .client
        .post(gw.url("/graphql"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    req.send().await.expect("an answer")
}

/// Status, content type and the first error's code.
async fn refusal(resp: reqwest::Response) -> (u16, String, String, Value) {
    let status = resp.status().as_u16();
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.expect("a JSON body");
    let code = body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
        .to_string();
    assert!(
        body.get("data").is_none(),
        "a request error has no data: {body}"
    );
    (status, content_type, code, body)
}

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_query_reaches_the_upstream_byte_for_byte_and_its_answer_comes_back() {
    let up = graphql_upstream().await;
    let gw = guarded(&up, LIMITS, None).await;
    // Odd spacing, key order and an unknown member: forwarded exactly as sent.
    let body = br#"{ "variables": {"id": "7"},  "query": "query User($id: ID!) { user(id: $id) { name } }",
  "operationName": "User", "x-client": 1 }"#;
    let resp = gw
        .client
        .post(gw.url("/graphql"))
        .header("content-type", "application/json")
        .header("accept", GRAPHQL_RESPONSE)
        .body(&body[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"data": {"user": {"name": "Ada"}}})
    );
    assert_eq!(up.hits(), 1);
    let seen = &up.seen()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(&seen.body[..], &body[..], "the body is forwarded unchanged");
    assert_eq!(
        seen.header("content-length"),
        Some(&*body.len().to_string())
    );

    // A chunked body, in several pieces, arrives whole too.
    let query = format!(
        r#"{{"query":"{{ user(id: \"1\") {{ {} }} }}"}}"#,
        "name ".repeat(150)
    );
    let big = Gateway::start(&format!(
        "[upstreams.gql]\ntargets = [\"{}\"]\n[plugins.g]\nkind = \"graphql_guard\"\nmax_complexity = 500\n[[routes]]\nname = \"graphql\"\npath = \"/graphql\"\nupstream = \"gql\"\nplugins = [\"g\"]\n",
        up.addr
    ))
    .await;
    let mut chunked = Vec::new();
    for piece in query.as_bytes().chunks(100) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_request(
        big.addr,
        "POST /graphql HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked",
        &chunked,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(up.hits(), 2);
    assert_eq!(&up.seen()[1].body[..], query.as_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_expects_100_continue_gets_it_and_its_body_goes_through() {
    let up = graphql_upstream().await;
    let gw = guarded(&up, LIMITS, None).await;
    let body = r#"{"query":"{ user(id: \"1\") { name } }"}"#;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&raw).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("a 100 Continue before the body is sent")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&rest).to_string();
    // Skip any further interim answers: the final one is what counts.
    let final_at = text.rfind("HTTP/1.1 ").unwrap_or(0);
    let resp = parse(&rest[final_at..]);
    assert_eq!(resp.status, 200, "{text}");
    assert_eq!(&up.seen()[0].body[..], body.as_bytes());
    assert_eq!(up.seen()[0].header("expect"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_over_a_limit_are_refused_in_graphql_format_and_never_reach_the_upstream() {
    let up = graphql_upstream().await;
    let gw = guarded(&up, LIMITS, None).await;
    let long = format!("{{ {} }}", "a ".repeat(600));
    let table = [
        (
            "{ a { b { c { d } } } }",
            "MAX_DEPTH_EXCEEDED",
            "query depth 4 exceeds max_depth 3",
        ),
        (
            "{ users(first: 20) { name friends(first: 5) { name } } }",
            "MAX_COMPLEXITY_EXCEEDED",
            "query complexity 141 exceeds max_complexity 50",
        ),
        (
            "{ x: a y: a z: a }",
            "MAX_ALIASES_EXCEEDED",
            "query aliases 3 exceeds max_aliases 2",
        ),
        (
            &long,
            "QUERY_TOO_LARGE",
            "query size 1204 bytes exceeds max_query_size 1024",
        ),
        ("{ a { ", "GRAPHQL_PARSE_FAILED", ""),
    ];
    for (query, code, message) in table {
        let body = json!({ "query": query });
        let (status, content_type, got, errors) =
            refusal(post(&gw, &body, Some(GRAPHQL_RESPONSE)).await).await;
        assert_eq!(
            (status, &*content_type, &*got),
            (400, GRAPHQL_RESPONSE, code),
            "{query}"
        );
        assert!(
            errors["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(message),
            "{errors}"
        );
        // The legacy media type says 200, with the same errors.
        for accept in [None, Some("application/json"), Some("*/*")] {
            let (status, content_type, got, _) = refusal(post(&gw, &body, accept).await).await;
            assert_eq!(
                (status, &*content_type, &*got),
                (200, "application/json", code),
                "{query} {accept:?}"
            );
        }
    }
    // A body over what the limit leaves room for is refused by its length, unread.
    let huge = json!({ "query": format!("{{ {} }}", "a ".repeat(5_000)) }).to_string();
    let resp = raw_request(
        gw.addr,
        &format!(
            "POST /graphql HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nAccept: {GRAPHQL_RESPONSE}\r\nContent-Length: {}",
            huge.len()
        ),
        huge.as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.json()["errors"][0]["extensions"]["code"],
        "QUERY_TOO_LARGE"
    );
    // A batch and a body that is not JSON are bad requests.
    let (status, _, code, _) =
        refusal(post(&gw, &json!([{"query": "{ a }"}]), Some(GRAPHQL_RESPONSE)).await).await;
    assert_eq!((status, &*code), (400, "BAD_REQUEST"));
    assert_eq!(up.hits(), 0, "nothing refused reaches the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_is_refused_when_off_and_allowed_when_on() {
    let up = graphql_upstream().await;
    let query = json!({ "query": "{ __schema { queryType { name } } }" });
    let off = guarded(&up, "", None).await;
    let (status, _, code, body) = refusal(post(&off, &query, Some(GRAPHQL_RESPONSE)).await).await;
    assert_eq!((status, &*code), (400, "INTROSPECTION_DISABLED"), "{body}");
    let typename = json!({ "query": "{ __typename }" });
    assert_eq!(post(&off, &typename, None).await.status(), 200);
    assert_eq!(up.hits(), 1, "only __typename went through");

    let on = guarded(&up, "introspection = true", None).await;
    assert_eq!(
        post(&on, &query, Some(GRAPHQL_RESPONSE)).await.status(),
        200
    );
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_persisted_list_lets_listed_queries_through_by_text_or_hash_and_nothing_else() {
    let up = graphql_upstream().await;
    let listed = "query User($id: ID!) { user(id: $id) { name } }";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("persisted.json");
    std::fs::write(&file, json!({ sha256(listed): listed }).to_string()).unwrap();
    let gw = guarded(
        &up,
        &format!("persisted_queries = \"{}\"", file.display()),
        None,
    )
    .await;
    let apq = |hash: String| json!({"persistedQuery": {"version": 1, "sha256Hash": hash}});

    let by_text = json!({ "query": listed, "variables": {"id": "1"} });
    assert_eq!(
        post(&gw, &by_text, Some(GRAPHQL_RESPONSE)).await.status(),
        200
    );
    let by_hash = json!({ "extensions": apq(sha256(listed)), "variables": {"id": "1"} });
    assert_eq!(
        post(&gw, &by_hash, Some(GRAPHQL_RESPONSE)).await.status(),
        200
    );
    assert_eq!(up.hits(), 2);
    // Forwarded unchanged: the hash alone, as the client sent it.
    let seen: Value = serde_json::from_slice(&up.seen()[1].body).unwrap();
    assert_eq!(seen, by_hash);

    let table = [
        (
            json!({ "query": "{ user(id: \"1\") { name } }" }),
            "PERSISTED_QUERY_NOT_IN_LIST",
        ),
        (
            json!({ "extensions": apq(sha256("{ other }")) }),
            "PERSISTED_QUERY_NOT_FOUND",
        ),
        (
            json!({ "query": "{ other }", "extensions": apq(sha256(listed)) }),
            "PERSISTED_QUERY_HASH_MISMATCH",
        ),
    ];
    for (body, code) in table {
        let (status, _, got, _) = refusal(post(&gw, &body, Some(GRAPHQL_RESPONSE)).await).await;
        assert_eq!((status, &*got), (400, code), "{body}");
    }
    assert_eq!(up.hits(), 2);

    // Without a list, a hash alone cannot be checked.
    let open = guarded(&up, "", None).await;
    let (_, _, code, _) = refusal(post(&open, &by_hash, None).await).await;
    assert_eq!(code, "PERSISTED_QUERY_NOT_SUPPORTED");
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_works_over_get_and_a_mutation_over_get_is_405() {
    let up = graphql_upstream().await;
    let gw = guarded(&up, LIMITS, None).await;
    let url = |query: &str| {
        reqwest::Url::parse_with_params(
            &gw.url("/graphql"),
            &[("query", query), ("variables", r#"{"id":"1"}"#)],
        )
        .unwrap()
    };
    let query = "query User($id: ID!) { user(id: $id) { name } }";
    let resp = gw.client.get(url(query)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.hits(), 1);
    let sent = url(query);
    let path_and_query = format!("{}?{}", sent.path(), sent.query().unwrap());
    assert_eq!(
        up.seen()[0].uri,
        path_and_query,
        "the query string is forwarded unchanged"
    );

    let deep = gw
        .client
        .get(url("{ a { b { c { d } } } }"))
        .send()
        .await
        .unwrap();
    assert_eq!(deep.status(), 200, "legacy JSON: a refusal is 200");
    assert_eq!(refusal(deep).await.2, "MAX_DEPTH_EXCEEDED");

    let mutation = gw
        .client
        .get(url("mutation { deleteUser(id: 1) }"))
        .header("accept", GRAPHQL_RESPONSE)
        .send()
        .await
        .unwrap();
    assert_eq!(mutation.status(), 405);
    assert_eq!(mutation.headers()["allow"], "POST");
    assert_eq!(refusal(mutation).await.2, "BAD_REQUEST");

    // A method GraphQL over HTTP does not have is not let through unchecked.
    let put = gw
        .client
        .put(gw.url("/graphql"))
        .body(r#"{"query":"{ a { b { c { d } } } }"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 405);
    assert_eq!(put.headers()["allow"], "GET, POST");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn operations_are_counted_by_result_and_logged_by_name() {
    let up = graphql_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = guarded(&up, LIMITS, Some(&log)).await;
    let ok = json!({ "query": "query UserName { user(id: \"1\") { name } }" });
    assert_eq!(post(&gw, &ok, None).await.status(), 200);
    let deep = json!({ "query": "query TooDeep { a { b { c { d } } } }" });
    assert_eq!(
        refusal(post(&gw, &deep, None).await).await.2,
        "MAX_DEPTH_EXCEEDED"
    );
    let broken = json!({ "query": "query Broken {" });
    assert_eq!(
        refusal(post(&gw, &broken, None).await).await.2,
        "GRAPHQL_PARSE_FAILED"
    );

    let text = gw
        .metrics_showing(&[
            r#"portico_graphql_operations_total{operation="UserName",result="ok",route="graphql"} 1"#,
            // A refused name never had a label: its refusals are counted as "".
            r#"portico_graphql_operations_total{operation="",result="refused",route="graphql"} 1"#,
            r#"portico_graphql_operations_total{operation="",result="invalid",route="graphql"} 1"#,
        ])
        .await;
    assert!(
        text.contains("# HELP portico_graphql_operations_total"),
        "{text}"
    );

    let mut lines = String::new();
    eventually(
        "three access log lines",
        Duration::from_secs(5),
        async || {
            lines = std::fs::read_to_string(&log).unwrap_or_default();
            lines.lines().count() == 3
        },
    )
    .await;
    // Lines are written as requests finish, which need not be the order they were sent in.
    let lines: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let named = |name: &str| {
        lines
            .iter()
            .find(|l| l["operation"] == name)
            .unwrap_or_else(|| panic!("no line for {name}: {lines:?}"))
    };
    assert_eq!(named("UserName")["upstream"], "gql");
    assert_eq!(named("UserName")["status"], 200);
    assert_eq!(
        named("TooDeep")["upstream"],
        Value::Null,
        "refused at the edge"
    );
    let unnamed = lines
        .iter()
        .filter(|l| l.get("operation").is_none())
        .count();
    assert_eq!(unnamed, 1, "the unparsable one has no name: {lines:?}");
}

#[test]
fn a_persisted_list_whose_hash_is_not_its_query_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("persisted.json");
    let wrong = sha256("{ a }");
    std::fs::write(&file, json!({ &wrong: "{ b }" }).to_string()).unwrap();
    let (code, out) = validate_text(&format!(
        r#"[upstreams.gql]
targets = ["127.0.0.1:1"]

[plugins.gql-guard]
kind = "graphql_guard"
persisted_queries = "{}"

[[routes]]
name = "graphql"
path = "/graphql"
upstream = "gql"
plugins = ["gql-guard"]
"#,
        file.display()
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&file.display().to_string()), "{out}");
    assert!(out.contains(&wrong), "the entry is named: {out}");
    assert!(out.contains("plugins.gql-guard"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_gets_the_body_the_guard_read() {
    let up = graphql_upstream().await;
    let shadow = graphql_upstream().await;
    let gw = Gateway::start(&format!(
        r#"[upstreams.gql]
targets = ["{}"]

[upstreams.shadow]
targets = ["{}"]

[plugins.gql-guard]
kind = "graphql_guard"

[[routes]]
name = "graphql"
path = "/graphql"
upstream = "gql"
mirror = {{ upstream = "shadow", percent = 100 }}
plugins = ["gql-guard"]
"#,
        up.addr, shadow.addr
    ))
    .await;
    let body = json!({ "query": "{ user(id: \"1\") { name } }" });
    assert_eq!(post(&gw, &body, None).await.status(), 200);
    eventually(
        "the mirror got its copy",
        Duration::from_secs(5),
        async || shadow.hits() == 1,
    )
    .await;
    assert_eq!(&shadow.seen()[0].body[..], body.to_string().as_bytes());
    assert_eq!(&up.seen()[0].body[..], body.to_string().as_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_persisted_list_rewritten_in_place_is_read_again_on_reload() {
    let up = graphql_upstream().await;
    let (old, new) = ("query Old { a }", "query New { b }");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("persisted.json");
    std::fs::write(&file, json!({ sha256(old): old }).to_string()).unwrap();
    let gw = guarded(
        &up,
        &format!("persisted_queries = \"{}\"", file.display()),
        None,
    )
    .await;
    let by_hash = |q: &str| json!({ "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256(q)}} });
    assert_eq!(
        post(&gw, &by_hash(old), Some(GRAPHQL_RESPONSE))
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&gw, &by_hash(new), Some(GRAPHQL_RESPONSE))
            .await
            .status(),
        400
    );

    std::fs::write(&file, json!({ sha256(new): new }).to_string()).unwrap();
    assert_eq!(gw.reload().await.status(), 200);
    assert_eq!(
        post(&gw, &by_hash(new), Some(GRAPHQL_RESPONSE))
            .await
            .status(),
        200
    );
    let (_, _, code, _) = refusal(post(&gw, &by_hash(old), Some(GRAPHQL_RESPONSE)).await).await;
    assert_eq!(code, "PERSISTED_QUERY_NOT_FOUND");
}
