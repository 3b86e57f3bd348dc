//! The integration test kit: real upstream servers on ephemeral ports, the real `portico`
//! binary started per test on free ports (stopped when dropped), and small HTTP helpers.
//! No fixed ports, no sleeps for readiness: everything waits by polling with a deadline.
#![allow(dead_code)]

pub mod browser;
pub mod consul;
pub mod dns;
pub mod faults;
pub mod gateway;
pub mod grpc;
pub mod h2;
pub mod http;
pub mod origin;
pub mod otlp;
pub mod redis;
pub mod tls;
pub mod traffic;
pub mod upstream;
pub mod wire;

pub use gateway::Gateway;
pub use http::raw_request;
pub use upstream::{spawn_upstream, Reply, Seen, Upstream};

use std::time::{Duration, Instant};

/// The smallest useful config: upstream `name` with one target (plus `upstream_extra` keys
/// in its table), and one route of the same name on `path` to it.
pub fn one_route(
    name: &str,
    target: std::net::SocketAddr,
    upstream_extra: &str,
    path: &str,
) -> String {
    format!(
        "[upstreams.{name}]\ntargets = [\"{target}\"]\n{upstream_extra}\n\n[[routes]]\nname = \"{name}\"\npath = \"{path}\"\nupstream = \"{name}\"\n"
    )
}

/// Poll `check` every 10 ms until it returns true; panic with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `N` distinct free TCP ports on 127.0.0.1, released for a child process to bind. All are
/// held until all are chosen, so they differ; the gateway kit retries with new ports if
/// another process takes one first.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port on 127.0.0.1"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("a bound address").port())
}

pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// A port on 127.0.0.1 where connections are refused, for as long as this lives: a socket is
/// bound there and never listens. A port that was merely free a moment ago will not do for a
/// dead target: another test's server may take it, and the dead target answers.
pub struct RefusedPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

pub fn refused_port() -> RefusedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("a free port on 127.0.0.1");
    let port = socket.local_addr().expect("a bound address").port();
    RefusedPort {
        port,
        _socket: socket,
    }
}
