//! A real DNS server for tests: dnsmasq (Debian's, installed by `make test`) on a free port,
//! answering from a hosts file the test rewrites (re-read on SIGHUP) and from SRV records
//! given at start, every answer with a TTL of one second. Stopped when dropped; it can be
//! killed, the way an operator's resolver goes away.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use super::free_port;

/// One SRV record: `name` points at `host:port` with `priority` and `weight`.
pub struct Srv<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    hosts: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl DnsServer {
    /// Start dnsmasq with `hosts` (`(ip, name)` lines) and `srv` records; fails the test
    /// loudly when dnsmasq is not installed (`make test` installs it).
    pub async fn start(hosts: &[(&str, &str)], srv: &[Srv<'_>]) -> DnsServer {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("hosts");
        let mut server = DnsServer {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            hosts: path,
            child: None,
            _dir: dir,
        };
        server.set_hosts_file(hosts);
        for _ in 0..3 {
            server.addr.set_port(free_port());
            if server.spawn(srv).await {
                return server;
            }
        }
        panic!("dnsmasq did not start on a free port three times");
    }

    async fn spawn(&mut self, srv: &[Srv<'_>]) -> bool {
        let mut command = Command::new("dnsmasq");
        command
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg(format!("--addn-hosts={}", self.hosts.display()))
            .arg(format!("--port={}", self.addr.port()))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--local-ttl=1")
            .arg("--user=root")
            .arg("--pid-file=")
            .arg("--log-facility=-");
        for r in srv {
            command.arg(format!(
                "--srv-host={},{},{},{},{}",
                r.name, r.host, r.port, r.priority, r.weight
            ));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run dnsmasq ({e}); `make test` installs it"));
        self.child = Some(child);
        let resolver = self.resolver();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some()
            {
                self.child = None;
                return false;
            }
            // Any answer, even "no such name", means it is serving.
            match resolver.lookup_ip("ready.invalid.").await {
                Ok(_) => return true,
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => return true,
                Err(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq on {} never answered",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A resolver that asks only this server and caches nothing, for readiness.
    fn resolver(&self) -> TokioResolver {
        let mut udp = ConnectionConfig::new(ProtocolConfig::Udp);
        udp.port = self.addr.port();
        let server = NameServerConfig::new(self.addr.ip(), true, vec![udp]);
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), vec![server]),
            TokioRuntimeProvider::default(),
        );
        builder.options_mut().cache_size = 0;
        builder.options_mut().timeout = Duration::from_millis(200);
        builder.build().expect("a resolver")
    }

    /// Rewrite the hosts file and tell dnsmasq to read it again.
    pub fn set_hosts(&self, hosts: &[(&str, &str)]) {
        self.set_hosts_file(hosts);
        let pid = self.child.as_ref().expect("dnsmasq is running").id();
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -HUP dnsmasq failed");
    }

    fn set_hosts_file(&self, hosts: &[(&str, &str)]) {
        let text: String = hosts
            .iter()
            .map(|(ip, name)| {
                assert!(ip.parse::<IpAddr>().is_ok(), "{ip} is not an IP address");
                format!("{ip} {name}\n")
            })
            .collect();
        std::fs::write(&self.hosts, text).expect("write the hosts file");
    }

    /// The resolver goes away.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
