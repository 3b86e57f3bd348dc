//! GraphQL limits on the request path: parsing a realistic 2 KiB query (fragments, variables,
//! aliases, nested lists) and measuring it, which `graphql_guard` pays on every request.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may fail loudly on bad setup

use criterion::{criterion_group, criterion_main, Criterion};
use portico_plugins::graphql::{check, Limits};
use serde_json::json;

/// A storefront page: the viewer, their recent orders with products, recommendations, and
/// two aliased product lookups, sharing fragments.
const QUERY: &str = r#"
query StorefrontPage($userId: ID!, $orders: Int = 5, $products: Int!, $locale: String = "en-GB") {
  viewer: user(id: $userId) {
    ...UserSummary
    addresses(first: 3) { ...AddressFields }
    orders(first: $orders) {
      edges {
        cursor
        node {
          id
          status
          placedAt
          total { ...MoneyFields }
          shipping: address { ...AddressFields }
          lines(first: 10) {
            quantity
            unitPrice { ...MoneyFields }
            product { ...ProductCard }
          }
        }
      }
      pageInfo { hasNextPage endCursor }
    }
  }
  recommended: recommendations(userId: $userId, limit: $products, locale: $locale) {
    score
    reason
    product { ...ProductCard variants(first: 4) { sku name price { ...MoneyFields } inStock } }
  }
  featured: product(id: "p-1001") { ...ProductCard description(locale: $locale) }
  runnerUp: product(id: "p-2002") { ...ProductCard description(locale: $locale) }
  categories(first: 8) {
    id
    name
    children(first: 6) { id name productCount }
  }
  cart: basket(userId: $userId) {
    id
    updatedAt
    subtotal { ...MoneyFields }
    discounts(first: 3) { code description amount { ...MoneyFields } }
    items(first: 20) { quantity product { ...ProductCard } addedAt }
  }
  notifications(first: 5, unreadOnly: true) {
    edges { node { id kind title body createdAt link { href label } } }
    totalCount
  }
  __typename
}

fragment UserSummary on User {
  id
  name
  email
  memberSince
  tier
  avatar(size: 64) { url width height }
}

fragment AddressFields on Address {
  line1
  line2
  city
  postcode
  country
}

fragment MoneyFields on Money {
  amount
  currency
  formatted
}

fragment ProductCard on Product {
  id
  slug
  title
  brand { id name }
  price { ...MoneyFields }
  rating { average count }
  images(first: 2) { url alt width height }
}
"#;

fn limits(c: &mut Criterion) {
    let variables = json!({ "userId": "u-42", "products": 6 })
        .as_object()
        .cloned()
        .unwrap();
    let limits = Limits {
        max_complexity: 100_000,
        ..Limits::default()
    };
    let checked = check(QUERY, None, &variables, &limits, None).expect("the bench query passes");
    assert!(
        QUERY.len() > 1800 && QUERY.len() < 2400,
        "{} bytes",
        QUERY.len()
    );
    assert!(checked.depth >= 6 && checked.aliases >= 4);
    c.bench_function("graphql_limits_check_2KiB", |b| {
        b.iter(|| check(QUERY, None, &variables, &limits, None).unwrap())
    });
}

criterion_group!(benches, limits);
criterion_main!(benches);
