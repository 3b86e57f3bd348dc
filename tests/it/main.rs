//! Integration tests: the real gateway binary, real upstreams on ephemeral ports.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may fail loudly on the spot

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod answers;
mod auth;
mod balancing;
mod cache;
mod compose;
mod compress;
mod config_cli;
mod connections;
mod consul;
mod demo;
mod discovery;
mod failures;
mod fallback;
mod graphql;
mod graphql_guard;
mod grpc;
mod headers;
mod heads;
mod health;
mod http2;
mod hygiene;
mod lifecycle;
mod mirror;
mod observability;
mod openapi;
mod policy;
mod rate_limit;
mod reload;
mod resilience;
mod rewrite;
mod routing;
mod scale_out;
mod shared_cache;
mod slow;
mod soak;
mod split;
mod status_page;
mod tls;
mod tracing;
mod upstream_pool;
mod upstream_protocols;
mod websocket;
