//! `bare-pingora`: the framework's floor for `make bench`.
//!
//! A Pingora reverse proxy with nothing on top: one worker thread, every request goes to one
//! fixed upstream over pooled keep-alive connections, no routing, no plugins, no logging, no
//! metrics. Whatever Portico spends beyond this is Portico's own cost; whatever this spends is
//! Pingora's.
//!
//!   bare-pingora LISTEN_ADDR UPSTREAM_ADDR      e.g. bare-pingora 127.0.0.1:8081 127.0.0.1:3001

use std::process::ExitCode;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

const USAGE: &str = "usage: bare-pingora LISTEN_ADDR UPSTREAM_ADDR";

/// The same timeouts as the Portico configs bench.sh writes, so neither side gets an edge.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(peer(&self.upstream)))
    }
}

fn peer(upstream: &str) -> HttpPeer {
    let mut peer = HttpPeer::new(upstream, false, String::new());
    peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
    peer.options.total_connection_timeout = Some(CONNECT_TIMEOUT);
    peer.options.read_timeout = Some(READ_TIMEOUT);
    peer.options.write_timeout = Some(READ_TIMEOUT);
    // Without an idle timeout a pooled upstream connection is kept until the upstream closes it.
    peer.options.idle_timeout = Some(IDLE_TIMEOUT);
    peer
}

/// `Ok(None)` means `--help`.
fn parse_args(args: &[String]) -> Result<Option<(String, String)>, String> {
    match args {
        [flag] if flag == "-h" || flag == "--help" => Ok(None),
        [listen, upstream] => {
            for addr in [listen, upstream] {
                addr.parse::<std::net::SocketAddr>()
                    .map_err(|e| format!("{addr:?} is not an ip:port address: {e}"))?;
            }
            Ok(Some((listen.clone(), upstream.clone())))
        }
        _ => Err("expected two arguments".to_owned()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream) = match parse_args(&args) {
        Ok(Some(addrs)) => addrs,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("bare-pingora: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let conf = ServerConf {
        threads: 1,
        daemon: false,
        // A benchmark peer has nothing to drain: SIGTERM should end it at once, not after
        // Pingora's default grace period.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: false,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Bare { upstream },
        "bare pingora",
    );
    proxy.add_tcp(&listen);
    proxy.threads = Some(1);
    server.add_service(proxy);
    // bench.sh waits for this line, then for the port to answer.
    println!("bare-pingora: listening on {listen}");
    server.run_forever()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(String, String)>, String> {
        let args: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        parse_args(&args)
    }

    #[test]
    fn args() {
        assert_eq!(
            parse("127.0.0.1:8081 127.0.0.1:3001"),
            Ok(Some(("127.0.0.1:8081".into(), "127.0.0.1:3001".into())))
        );
        assert_eq!(parse("--help"), Ok(None));
        assert!(parse("").is_err());
        assert!(parse("127.0.0.1:8081").is_err());
        assert!(parse("localhost:80 127.0.0.1:3001").is_err());
        assert!(parse("a b c").is_err());
    }

    #[test]
    fn peer_has_every_timeout() {
        let peer = peer("127.0.0.1:3001");
        assert_eq!(peer.options.connection_timeout, Some(CONNECT_TIMEOUT));
        assert_eq!(peer.options.read_timeout, Some(READ_TIMEOUT));
        assert_eq!(peer.options.write_timeout, Some(READ_TIMEOUT));
        assert_eq!(peer.options.idle_timeout, Some(IDLE_TIMEOUT));
    }
}
