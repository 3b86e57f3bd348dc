//! A GraphQL schema served at the edge, resolved from REST services: a client asks for a
//! user's dashboard in one query and Portico makes the calls, in parallel where it can, after
//! what they need where it must, batched and deduplicated, and answers honestly when a
//! service fails.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::gateway::validate_text;
use crate::common::{eventually, spawn_upstream, Gateway, Reply, Upstream};
use crate::demo::{on_demo_backends, replace_once};

const SCHEMA: &str = r#"
type Query {
  user(id: ID!): User
  mustUser(id: ID!): User!
  userDashboard(userId: ID!): UserDashboard
  status: String
}

type User {
  id: ID!
  name: String!
  email: String
  orders(first: Int = 10): [Order!]!
}

type Order {
  id: ID!
  total: Float!
  products: [Product]
  mustProducts: [Product!]
}

type Product {
  product_id: ID!
  name: String!
}

type Recommendation {
  product_id: ID!
  reason: String!
}

type UserDashboard {
  userId: ID!
  user: User
  recentOrders: [Order!]
  recommendations: [Recommendation!]
}
"#;

const RESOLVERS: &str = r#"
resolvers = [
  { field = "Query.user", upstream = "shop", path = "/users/{args.id}" },
  { field = "Query.mustUser", upstream = "shop", path = "/users/{args.id}" },
  { field = "Query.status", upstream = "shop", path = "/down" },
  { field = "User.orders", upstream = "shop", path = "/orders/user/{parent.id}" },
  { field = "Order.products", upstream = "shop", path = "/products", query = { ids = "{keys}" }, batch = { keys = "parent.product_ids", key = "product_id", max = 50 } },
  { field = "Order.mustProducts", upstream = "shop", path = "/products", query = { ids = "{keys}" }, batch = { keys = "parent.product_ids", key = "product_id" } },
  { field = "Query.userDashboard", object = "args" },
  { field = "UserDashboard.user", upstream = "shop", path = "/users/{parent.userId}" },
  { field = "UserDashboard.recentOrders", upstream = "shop", path = "/orders/user/{parent.userId}" },
  { field = "UserDashboard.recommendations", upstream = "shop", method = "POST", path = "/recommendations", body = { userId = "{parent.userId}", orders = "{sibling.recentOrders}" }, after = ["recentOrders"] },
]
"#;

/// The services behind the schema: users, their orders (user "many" has 20 of 5 products
/// each), products by id (a batch endpoint that knows no product 13), recommendations made
/// from the orders they are sent, and a broken one. Slow paths answer after 150 ms, so a
/// call that waits for another shows in the timing.
async fn shop() -> Upstream {
    spawn_upstream("shop", |s| {
        let (path, query) = s.uri.split_once('?').unwrap_or((&s.uri, ""));
        let json = |v: Value| Reply::Body(200, v.to_string());
        match path.split('/').collect::<Vec<_>>()[1..] {
            ["users", "missing"] => Reply::Status(404, "no such user"),
            ["users", id] => json(json!({ "id": id, "name": format!("User {id}"), "email": format!("{id}@example.com") })),
            ["orders", "user", "many"] => json(Value::Array(
                (0..20)
                    .map(|o| json!({ "id": o, "total": 10.5, "product_ids": (0..5).map(|p| 100 + (o * 5 + p) % 40).collect::<Vec<_>>() }))
                    .collect(),
            )),
            ["orders", "user", id] => Reply::DelayBody(
                Duration::from_millis(150),
                200,
                json!([
                    { "id": format!("{id}-1"), "total": 9.5, "product_ids": [1, 2] },
                    { "id": format!("{id}-2"), "total": 20, "product_ids": [2, 13] },
                ])
                .to_string(),
            ),
            ["products"] => {
                let ids = query.strip_prefix("ids=").unwrap_or("");
                let items: Vec<Value> = ids
                    .split(',')
                    .filter(|id| !id.is_empty() && *id != "13")
                    .map(|id| json!({ "product_id": id.parse::<u64>().unwrap(), "name": format!("Product {id}") }))
                    .collect();
                json(Value::Array(items))
            }
            ["recommendations"] => {
                let sent: Value = serde_json::from_slice(&s.body).unwrap_or(Value::Null);
                let orders = sent["orders"].as_array().map_or(0, Vec::len);
                json(json!([{ "product_id": 7, "reason": format!("for {} after {orders} orders", sent["userId"].as_str().unwrap_or("?")) }]))
            }
            ["down"] => Reply::Status(503, "busy"),
            _ => Reply::Status(404, "nope"),
        }
    })
    .await
}

/// A gateway serving the shop schema at `/graphql`, with `extra` in its `[graphql.shop]`.
async fn gateway(shop: &Upstream, extra: &str) -> (Gateway, tempfile::TempDir) {
    gateway_with(shop, extra, "").await
}

/// The same, with `head` (a `[server]` section, say) at the top of the config.
async fn gateway_with(shop: &Upstream, extra: &str, head: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sdl = dir.path().join("shop.graphql");
    std::fs::write(&sdl, SCHEMA).unwrap();
    let gw = Gateway::start(&format!(
        "{head}\n[upstreams.shop]\ntargets = [\"{}\"]\n\n[graphql.shop]\nschema = \"{}\"\n{extra}\n{RESOLVERS}\n\n[[routes]]\nname = \"graphql\"\npath = \"/graphql\"\ngraphql = \"shop\"\n",
        shop.addr,
        sdl.display()
    ))
    .await;
    (gw, dir)
}

/// POST a query, accepting the GraphQL response media type; the status and the document.
async fn ask(gw: &Gateway, query: &str) -> (u16, Value) {
    ask_with(
        gw,
        json!({ "query": query }),
        "application/graphql-response+json",
    )
    .await
}

async fn ask_with(gw: &Gateway, body: Value, accept: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(gw.url("/graphql"))
        .header("accept", accept)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn paths_seen(shop: &Upstream) -> Vec<String> {
    shop.seen().into_iter().map(|s| s.uri).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dashboard_query_calls_each_service_once_and_recommendations_after_the_orders() {
    let shop = shop().await;
    let (gw, _dir) = gateway(&shop, "").await;
    let started = Instant::now();
    let (status, body) = ask(
        &gw,
        r#"query Dashboard { userDashboard(userId: "42") {
            userId
            user { name email }
            recentOrders { id total }
            recommendations { product_id reason }
        } }"#,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    let dash = &body["data"]["userDashboard"];
    assert_eq!(dash["userId"], "42");
    assert_eq!(
        dash["user"],
        json!({ "name": "User 42", "email": "42@example.com" })
    );
    assert_eq!(
        dash["recentOrders"][1],
        json!({ "id": "42-2", "total": 20.0 })
    );
    // The recommendations service was sent the orders the orders service gave.
    assert_eq!(
        dash["recommendations"],
        json!([{ "product_id": "7", "reason": "for 42 after 2 orders" }])
    );
    let seen = paths_seen(&shop);
    assert_eq!(
        seen.iter()
            .filter(|p| p.starts_with("/orders/user/42"))
            .count(),
        1,
        "recentOrders and the wait for it share one call: {seen:?}"
    );
    assert_eq!(seen.len(), 3, "user, orders, recommendations: {seen:?}");
    let recs = shop
        .seen()
        .into_iter()
        .find(|s| s.uri == "/recommendations")
        .unwrap();
    assert_eq!(recs.method, "POST");
    assert_eq!(recs.header("content-type"), Some("application/json"));
    // The orders call takes 150 ms; the user call ran beside it, recommendations after it.
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(
        recs.header("x-request-id").is_some(),
        "calls carry the request id"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_orders_of_five_products_resolve_with_one_products_call() {
    let shop = shop().await;
    let (gw, _dir) = gateway(&shop, "max_complexity = 5000").await;
    let (status, body) = ask(
        &gw,
        r#"{ user(id: "many") { name orders { id products { product_id name } } } }"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    let orders = body["data"]["user"]["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 20);
    for (o, order) in orders.iter().enumerate() {
        let products = order["products"].as_array().unwrap();
        assert_eq!(products.len(), 5);
        let want = 100 + (o * 5) % 40;
        assert_eq!(products[0]["product_id"], want.to_string());
        assert_eq!(products[0]["name"], format!("Product {want}"));
    }
    let product_calls: Vec<String> = paths_seen(&shop)
        .into_iter()
        .filter(|p| p.starts_with("/products"))
        .collect();
    assert_eq!(product_calls.len(), 1, "{product_calls:?}");
    // 100 product ids, 40 of them distinct: each asked once.
    let ids = product_calls[0].split_once("ids=").unwrap().1;
    assert_eq!(ids.split(',').count(), 40, "{ids}");
    assert_eq!(shop.hits(), 3, "user, orders, one products call");
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_calls_in_one_query_are_made_once() {
    let shop = shop().await;
    let (gw, _dir) = gateway(&shop, "").await;
    let (status, body) = ask(
        &gw,
        r#"{ a: user(id: "7") { name } b: user(id: "7") { email } c: user(id: "8") { name } }"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["a"]["name"], "User 7");
    assert_eq!(body["data"]["b"]["email"], "7@example.com");
    assert_eq!(body["data"]["c"]["name"], "User 8");
    let mut seen = paths_seen(&shop);
    seen.sort();
    assert_eq!(seen, ["/users/7", "/users/8"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_service_is_a_null_with_an_error_at_its_path_and_the_rest_still_answers() {
    let shop = shop().await;
    let (gw, _dir) = gateway(&shop, "").await;
    let (status, body) = ask(
        &gw,
        r#"{ status user(id: "1") { name orders { id products { product_id name } } } }"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], Value::Null);
    assert_eq!(body["data"]["user"]["name"], "User 1");
    let errors = body["errors"].as_array().unwrap();
    let down = errors
        .iter()
        .find(|e| e["path"] == json!(["status"]))
        .unwrap();
    assert_eq!(down["extensions"]["code"], "UPSTREAM_ERROR");
    assert_eq!(down["extensions"]["status"], 503);
    let text = body.to_string();
    assert!(!text.contains("127.0.0.1"), "no internal address in {text}");
    // The batch has no product 13: that item is null, with an error at its list.
    let second = &body["data"]["user"]["orders"][1]["products"];
    assert_eq!(second[0]["product_id"], "2");
    assert_eq!(second[1], Value::Null);
    let missing = errors
        .iter()
        .find(|e| e["extensions"]["code"] == "BATCH_KEY_MISSING")
        .unwrap();
    assert_eq!(missing["path"], json!(["user", "orders", 1, "products"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_null_failure_propagates_to_the_nearest_nullable_parent() {
    let shop = shop().await;
    let (gw, _dir) = gateway(&shop, "").await;
    // mustProducts is [Product!]: the missing product 13 nulls the list, not just the item.
    let (_, body) = ask(
        &gw,
        r#"{ user(id: "1") { orders { id mustProducts { name } } } }"#,
    )
    .await;
    assert_eq!(
        body["data"]["user"]["orders"][0]["mustProducts"][1]["name"],
        "Product 2"
    );
    assert_eq!(
        body["data"]["user"]["orders"][1]["mustProducts"],
        Value::Null
    );
    // mustUser is User!: its failure nulls the whole of data.
    let (status, body) = ask(&gw, r#"{ mustUser(id: "missing") { name } }"#).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"], Value::Null, "{body}");
    assert_eq!(body["errors"][0]["path"], json!(["mustUser"]));
    assert_eq!(body["errors"][0]["extensions"]["status"], 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_refuse_a_query_before_any_upstream_is_called() {
    let shop = shop().await;
    let (gw, _dir) = gateway(
        &shop,
        "max_depth = 3\nmax_complexity = 50\nmax_aliases = 2\nmax_query_size = \"300B\"",
    )
    .await;
    let cases = [
        (
            r#"{ user(id: "1") { orders { products { name } } } }"#,
            "MAX_DEPTH_EXCEEDED",
        ),
        (
            r#"{ user(id: "1") { orders(first: 100) { id } } }"#,
            "MAX_COMPLEXITY_EXCEEDED",
        ),
        (
            r#"{ a: user(id: "1") { name } b: user(id: "2") { name } c: user(id: "3") { name } }"#,
            "MAX_ALIASES_EXCEEDED",
        ),
    ];
    for (query, code) in cases {
        let (status, body) = ask(&gw, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], code, "{body}");
        assert!(
            body.get("data").is_none(),
            "a request error has no data: {body}"
        );
    }
    let long = format!("{{ user(id: \"{}\") {{ name }} }}", "x".repeat(400));
    let (status, body) = ask(&gw, &long).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["extensions"]["code"], "QUERY_TOO_LARGE");
    // A client that accepts only application/json is told with a 200, as the spec says.
    let (status, body) = ask_with(&gw, json!({ "query": cases[0].0 }), "application/json").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "MAX_DEPTH_EXCEEDED"
    );
    assert_eq!(shop.hits(), 0, "nothing reached the services");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            r#"portico_graphql_operations_total{operation="",result="refused",route="graphql"} 5"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_queries_are_graphql_errors_and_valid_ones_are_counted_by_name() {
    let shop = shop().await;
    let (gw, _dir) = gateway(&shop, "").await;
    let (status, body) = ask(&gw, "{ user(id: 1) { nosuchfield } }").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("nosuchfield"));
    let (status, body) = ask(&gw, "{ user(id: ").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "GRAPHQL_PARSE_FAILED"
    );
    // GET works for queries, with variables.
    let resp = reqwest::Client::new()
        .get(gw.url("/graphql"))
        .query(&[
            ("query", "query One($id: ID!) { user(id: $id) { name } }"),
            ("variables", r#"{"id":"5"}"#),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["user"]["name"], "User 5");
    assert_eq!(shop.hits(), 1);
    gw.metrics_showing(&[
        r#"portico_graphql_operations_total{operation="One",result="ok",route="graphql"} 1"#,
        r#"portico_graphql_operations_total{operation="",result="invalid",route="graphql"} 2"#,
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_names_the_operation() {
    let shop = shop().await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let server = format!(
        "[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\naccess_log = \"{}\"\n",
        log.display()
    );
    let (gw, _dir) = gateway_with(&shop, "", &server).await;
    let (status, _) = ask(&gw, r#"query Who { user(id: "3") { name } }"#).await;
    assert_eq!(status, 200);
    let mut text = String::new();
    eventually("the access log line", Duration::from_secs(5), async || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        !text.is_empty()
    })
    .await;
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["operation"], "Who", "{line}");
    assert_eq!(line["route"], "graphql");
    assert_eq!(line["status"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_is_off_unless_turned_on() {
    let shop = shop().await;
    let (gw, _dir) = gateway(&shop, "").await;
    let (status, body) = ask(&gw, "{ __schema { queryType { name } } }").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "INTROSPECTION_DISABLED"
    );
    let (_, body) = ask(&gw, "{ __typename }").await;
    assert_eq!(body["data"]["__typename"], "Query");

    let (gw, _dir) = gateway(&shop, "introspection = true").await;
    let (status, body) = ask(&gw, "{ __schema { queryType { name } } }").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], "Query");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_has_one_deadline_for_all_its_calls() {
    let shop = shop().await;
    let dir = tempfile::tempdir().unwrap();
    let sdl = dir.path().join("s.graphql");
    std::fs::write(&sdl, "type Query { orders: [Order] fast: Who }\ntype Order { id: ID }\ntype Who { name: String }").unwrap();
    let gw = Gateway::start(&format!(
        "[upstreams.shop]\ntargets = [\"{}\"]\n\n[graphql.s]\nschema = \"{}\"\nresolvers = [\n  {{ field = \"Query.orders\", upstream = \"shop\", path = \"/orders/user/1\" }},\n  {{ field = \"Query.fast\", upstream = \"shop\", path = \"/users/1\" }},\n]\n\n[[routes]]\nname = \"graphql\"\npath = \"/graphql\"\ngraphql = \"s\"\ntimeout = \"50ms\"\n",
        shop.addr,
        sdl.display()
    ))
    .await;
    let started = Instant::now();
    let (status, body) = ask(&gw, "{ orders { id } fast { name } }").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(140),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 200);
    assert_eq!(body["data"]["orders"], Value::Null);
    assert_eq!(
        body["data"]["fast"]["name"], "User 1",
        "the quick call still answered"
    );
    assert_eq!(body["errors"][0]["path"], json!(["orders"]));
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UPSTREAM_TIMEOUT",
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mistakes_in_a_schema_or_its_resolvers_are_config_errors_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let sdl = dir.path().join("shop.graphql");
    std::fs::write(&sdl, SCHEMA).unwrap();
    let config = format!(
        r#"[upstreams.shop]
targets = ["127.0.0.1:1"]

[graphql.shop]
schema = "{}"
resolvers = [
  {{ field = "Query.user", upstream = "shop", path = "/users/{{args.uid}}" }},
  {{ field = "Query.nobody", upstream = "shop", path = "/x" }},
  {{ field = "User.orders", upstream = "shop", path = "/orders/{{sibling.name}}" }},
  {{ field = "Order.products", upstream = "nowhere", path = "/p/{{keys}}" }},
]

[[routes]]
name = "graphql"
path = "/graphql"
graphql = "shop"
"#,
        sdl.display()
    );
    let (code, out) = validate_text(&config);
    assert_ne!(code, 0);
    for expected in [
        "graphql.shop.resolvers[0].path",
        "Query.user has no argument \"uid\"",
        "Query has no field \"nobody\"",
        "list \"name\" in after",
        "no upstream named \"nowhere\"",
        "{keys} is only known in a batched call",
        "Query.mustUser",
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }
    // Each with its line and column in the config.
    let line = out
        .lines()
        .find(|l| l.contains("resolvers[0].path"))
        .unwrap();
    let place = line.split("portico.toml:").nth(1).unwrap();
    let (row, rest) = place.split_once(':').unwrap();
    assert!(
        row.parse::<u32>().is_ok() && rest.split(':').next().unwrap().parse::<u32>().is_ok(),
        "{line}"
    );

    std::fs::write(&sdl, "type Query { user: Usr }").unwrap();
    let (code, out) = validate_text(&config);
    assert_ne!(code, 0);
    assert!(
        out.contains("shop.graphql:1:14") && out.contains("Usr"),
        "{out}"
    );
}

/// The shipped example (`conf/examples/graphql.toml`) on the real demo backends, served in
/// this process, with only its addresses changed (and `introspection` as asked).
async fn shipped_example(introspection: bool) -> (Gateway, Vec<tokio::task::JoinHandle<()>>) {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/examples");
    let config = std::fs::read_to_string(examples.join("graphql.toml")).unwrap();
    let backends = [
        ("users", 3001),
        ("orders", 3002),
        ("products", 3003),
        ("recs", 3004),
    ];
    let (mut config, backends) = on_demo_backends(config, &backends).await;
    let schema = examples.join("shop.graphql");
    config = replace_once(
        &config,
        "schema = \"shop.graphql\"",
        &format!("schema = \"{}\"", schema.display()),
    );
    config = replace_once(
        &config,
        "introspection = false",
        &format!("introspection = {introspection}"),
    );
    (Gateway::start(&config).await, backends)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_example_answers_the_seeds_dashboard_from_the_demo_backends() {
    let (gw, _backends) = shipped_example(false).await;
    let (status, body) = ask(
        &gw,
        r#"{ userDashboard(userId: "42") { user { name tier } recentOrders { id total } recommendations { name reason based_on_orders } } }"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    let dash = &body["data"]["userDashboard"];
    assert_eq!(dash["user"]["name"], "User 42");
    let orders = dash["recentOrders"].as_array().unwrap();
    assert!(!orders.is_empty());
    let recs = dash["recommendations"].as_array().unwrap();
    assert_eq!(recs.len(), 3);
    // The recommendations service was sent the orders the orders service gave.
    assert_eq!(recs[0]["based_on_orders"], orders.len());

    let (status, body) = ask(
        &gw,
        r#"{ user(id: "7") { orders { id items { product_id } products { id name } } } }"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    for order in body["data"]["user"]["orders"].as_array().unwrap() {
        let want: Vec<&Value> = order["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &i["product_id"])
            .collect();
        let got: Vec<&Value> = order["products"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["id"])
            .collect();
        assert_eq!(
            got, want,
            "each order's products, matched back from the batch"
        );
    }
    // Introspection is off in the shipped example.
    let (status, body) = ask(&gw, "{ __schema { types { name } } }").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "INTROSPECTION_DISABLED"
    );
}

/// graphql-core (Python's reference port of graphql-js), which scripts/ensure-deps.sh
/// installs into target/tools.
fn graphql_core(script: &str, input: &str) -> String {
    use std::io::Write;
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/tools/graphql-core/bin/python");
    assert!(
        python.exists(),
        "graphql-core is not installed at {}: run scripts/ensure-deps.sh",
        python.display()
    );
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "graphql-core: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_third_party_graphql_implementation_builds_the_schema_from_introspection() {
    let (gw, _backends) = shipped_example(true).await;
    let query = graphql_core(
        "from graphql import get_introspection_query; print(get_introspection_query(descriptions=True))",
        "",
    );
    let (status, body) = ask(&gw, &query).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    let sdl = graphql_core(
        "import json, sys\n\
         from graphql import build_client_schema, print_schema\n\
         print(print_schema(build_client_schema(json.load(sys.stdin)['data'])))",
        &body.to_string(),
    );
    for expected in [
        "type Query {",
        "userDashboard(userId: ID!): UserDashboard",
        "orders: [Order!]!",
        "recommendations: [Recommendation!]",
        "\"\"\"A user, by id.\"\"\"",
    ] {
        assert!(sdl.contains(expected), "{expected:?} not in:\n{sdl}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_persisted_list_lets_only_its_queries_run_by_text_or_by_hash() {
    let shop = shop().await;
    let listed = r#"query Who { user(id: "9") { name } }"#;
    let hash = portico_plugins::graphql::persisted::sha256_hex(listed);
    let lists = tempfile::tempdir().unwrap();
    let list = lists.path().join("persisted.json");
    std::fs::write(&list, json!({ &hash: listed }).to_string()).unwrap();
    let (gw, _dir) = gateway(
        &shop,
        &format!("persisted_queries = \"{}\"", list.display()),
    )
    .await;

    let (status, body) = ask(&gw, listed).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["user"]["name"], "User 9");
    // Apollo's APQ form: the hash alone.
    let apq = json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } });
    let (status, body) = ask_with(&gw, apq, "application/graphql-response+json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["user"]["name"], "User 9");

    let (status, body) = ask(&gw, r#"{ user(id: "9") { email } }"#).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_IN_LIST"
    );
    let unknown = json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": "ab".repeat(32) } } });
    let (_, body) = ask_with(&gw, unknown, "application/graphql-response+json").await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_FOUND"
    );
    assert_eq!(shop.hits(), 2, "only the listed query reached the service");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_seen_before_is_held_to_the_limits_with_its_new_variables() {
    let shop = shop().await;
    let (gw, _dir) = gateway(&shop, "max_complexity = 100").await;
    let query = r#"query Orders($n: Int) { user(id: "1") { name orders(first: $n) { id } } }"#;
    let asked = |n: u32| json!({ "query": query, "variables": { "n": n } });
    let graphql = "application/graphql-response+json";
    for _ in 0..3 {
        // Parsed and validated the first time, from the kept document after.
        let (status, body) = ask_with(&gw, asked(2), graphql).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["user"]["orders"][1]["id"], "1-2");
    }
    let (status, body) = ask_with(&gw, asked(500), graphql).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "MAX_COMPLEXITY_EXCEEDED"
    );
    // A text that failed validation is not kept: it fails the same way each time.
    for _ in 0..2 {
        let (status, body) = ask(&gw, r#"{ user(id: "1") { nosuch } }"#).await;
        assert_eq!(status, 400);
        assert_eq!(
            body["errors"][0]["extensions"]["code"],
            "GRAPHQL_VALIDATION_FAILED"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_body_is_read_as_the_guard_reads_it_100_continue_and_a_bound() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let shop = shop().await;
    let (gw, _dir) = gateway(&shop, "").await;
    // A client that waits for 100 Continue gets it, then its answer.
    let body = r#"{"query":"{ user(id: \"4\") { name } }"}"#;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut first))
        .await
        .expect("a 100 Continue before the body is sent")
        .unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 100"));
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("HTTP/1.1 200") && text.contains("User 4"),
        "{text}"
    );

    // A body declared over the bound is refused unread, and the connection closes: what
    // follows on it is not a request.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /graphql HTTP/1.1\r\nHost: t\r\nAccept: application/graphql-response+json\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the connection closes after the refusal")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 400") && text.contains("QUERY_TOO_LARGE"),
        "{text}"
    );
    assert_eq!(shop.hits(), 1);
}
