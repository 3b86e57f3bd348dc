//! Portico: an API gateway and edge proxy on Pingora. The modules follow a request's path:
//! config → snapshot → router → proxy → upstream, with admin and lifecycle beside them.

pub mod access_log;
pub mod admin;
pub mod allocator;
pub mod cache;
pub mod compose;
pub mod config;
pub mod connection;
pub mod graphql;
pub mod lifecycle;
pub mod log_reopen;
pub mod metrics;
pub mod problem;
pub mod proxy;
pub mod redis_service;
pub mod reload;
pub mod router;
pub mod server;
pub mod signals;
pub mod snapshot;
pub mod state;
pub mod tls;
pub mod trace;
pub mod upstream;
