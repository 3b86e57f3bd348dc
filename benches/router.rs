//! Routing on the request path: the request target's checks and path hygiene, and choosing
//! among a realistic route table.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may fail loudly on bad setup

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use portico::router::path::normalize_path;
use portico::router::{HostMatch, PathPattern, RouteMatch, RouteMatcher, RouteTable};

fn table() -> RouteTable<Arc<str>> {
    let mut routes = Vec::new();
    for service in [
        "users",
        "orders",
        "products",
        "payments",
        "search",
        "inventory",
        "reviews",
        "carts",
    ] {
        for (suffix, methods) in [
            ("", None),
            ("/{id}", Some(vec![Method::GET, Method::PUT])),
            ("/{id}/history", None),
        ] {
            let path = format!("/api/v1/{service}{suffix}");
            routes.push((
                RouteMatcher {
                    host: HostMatch::Any,
                    path: PathPattern::parse(&path).expect("pattern"),
                    methods: methods.clone(),
                    headers: Vec::new(),
                },
                Arc::from(path.as_str()),
            ));
        }
    }
    routes.push((
        RouteMatcher {
            host: HostMatch::parse("admin.example.com").expect("host"),
            path: PathPattern::parse("/").expect("pattern"),
            methods: None,
            headers: Vec::new(),
        },
        Arc::from("admin"),
    ));
    RouteTable::build(routes).expect("unambiguous")
}

fn bench(c: &mut Criterion) {
    let table = table();
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("router");
    group.bench_function("normalize_clean_path", |b| {
        b.iter(|| {
            normalize_path(std::hint::black_box("/api/v1/orders/12345/history")).expect("clean")
        })
    });
    group.bench_function("normalize_escaped_path", |b| {
        b.iter(|| {
            normalize_path(std::hint::black_box("/api/v1/%6Frders/12345/h%69story")).expect("clean")
        })
    });
    let mut req = pingora_http::RequestHeader::build("GET", b"/api/v1/orders/12345/history", None)
        .expect("request");
    req.insert_header("host", "api.example.com").expect("host");
    req.insert_header("user-agent", "bench/1.0").expect("ua");
    group.bench_function("check_target_and_host", |b| {
        b.iter(|| portico::proxy::target::check(std::hint::black_box(&req)).expect("clean"))
    });
    group.bench_function("match_25_routes", |b| {
        b.iter(|| {
            let found = table.match_request(
                Some("api.example.com"),
                &Method::GET,
                "/api/v1/reviews/987/history",
                &headers,
            );
            assert!(matches!(found, RouteMatch::Found(_)));
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
