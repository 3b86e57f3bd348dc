//! The GraphQL gateway's work per query before any call goes out: a 2 KiB query (fragments,
//! variables, aliases, nested lists) held to the edge limits against the served schema, then
//! validated and executed by async-graphql with no upstream calls (the fields read empty
//! parents), so what is measured is parsing, limits, validation and the engine's own walk.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may fail loudly on bad setup

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion};
use portico::graphql::{build, plan::Plans, sdl::Model};
use portico_plugins::graphql::{check, check_document, Limits};

const SDL: &str = include_str!("../conf/examples/shop.graphql");

/// About 2 KiB, as a client's dashboard screen would ask.
const QUERY: &str = r#"
query Dashboard($id: ID!, $other: ID!) {
  me: userDashboard(userId: $id) {
    userId
    user { ...UserCard orders { ...OrderLine products { ...ProductTile } } }
    recentOrders { ...OrderLine items { product_id quantity price } products { ...ProductTile } }
    recommendations { id name reason score based_on_orders }
  }
  them: userDashboard(userId: $other) {
    userId
    user { ...UserCard }
    recentOrders { ...OrderLine }
    recommendations { id name reason }
  }
  plain: user(id: $id) {
    id name email tier
    orders { id user_id total items { product_id quantity price } }
  }
  again: user(id: $other) {
    ...UserCard
    orders {
      id
      total
      items { product_id quantity }
      products { id name price currency in_stock }
    }
  }
}

fragment UserCard on User { id name email tier }

fragment OrderLine on Order {
  id
  user_id
  total
  items { product_id quantity price }
}

fragment ProductTile on Product {
  id
  name
  price
  currency
  in_stock
}
"#;

fn bench(c: &mut Criterion) {
    let model = Model::parse(SDL).expect("the shipped schema parses");
    let plans = Plans {
        resolvers: BTreeMap::new(),
        args_objects: BTreeMap::new(),
        captures: Vec::new(),
    };
    let schema = build::schema(&model, &plans, false, async_graphql::ValidationMode::Strict)
        .expect("the schema builds");
    let limits = Limits {
        max_complexity: 100_000,
        ..Limits::default()
    };
    let query = format!(
        "{QUERY}{}",
        " ".repeat(2048usize.saturating_sub(QUERY.len()))
    );
    assert!(query.len() >= 2048);
    let variables: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"id":"42","other":"7"}"#).unwrap();
    check(&query, None, &variables, &limits, Some(&model)).expect("within the limits");

    c.bench_function("graphql: parse and check a 2 KiB query", |b| {
        b.iter(|| check(&query, None, &variables, &limits, Some(&model)).unwrap())
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    c.bench_function(
        "graphql: parse, check, validate and run a 2 KiB query (no calls)",
        |b| {
            b.iter(|| {
                let checked = check(&query, None, &variables, &limits, Some(&model)).unwrap();
                let mut request = async_graphql::Request::new(query.clone()).variables(
                    async_graphql::Variables::from_json(serde_json::Value::Object(
                        variables.clone(),
                    )),
                );
                request.set_parsed_query(checked.document);
                let response = runtime.block_on(schema.execute(request));
                assert!(response.errors.is_empty(), "{:?}", response.errors);
            })
        },
    );
    // What a query text seen before costs (`graphql::documents`): its kept document cloned,
    // measured again, and run on the fast-validating schema.
    let fast = build::schema(&model, &plans, false, async_graphql::ValidationMode::Fast)
        .expect("the schema builds");
    let kept = check(&query, None, &variables, &limits, Some(&model))
        .unwrap()
        .document;
    c.bench_function(
        "graphql: the same 2 KiB query seen before: kept document, measured and run (no calls)",
        |b| {
            b.iter(|| {
                let checked =
                    check_document(kept.clone(), None, &variables, &limits, Some(&model)).unwrap();
                let mut request = async_graphql::Request::new(query.clone()).variables(
                    async_graphql::Variables::from_json(serde_json::Value::Object(
                        variables.clone(),
                    )),
                );
                request.set_parsed_query(checked.document);
                let response = runtime.block_on(fast.execute(request));
                assert!(response.errors.is_empty(), "{:?}", response.errors);
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
