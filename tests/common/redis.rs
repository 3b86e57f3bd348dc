//! Real Redis for tests, on free ports, stopped when dropped: a single `redis-server` (plain or
//! TLS) that can be killed and started again on the same port, the way an operator's Redis
//! fails and comes back; a Redis Cluster whose primaries can be killed (a replica is promoted)
//! and whose slots can be moved; and a Sentinel-watched primary and replica that fail over.
//!
//! Every process logs to a file in its own temp dir; when a start or a wait fails, the panic
//! shows the end of that log. Readiness is always polled with a deadline, never slept for.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::free_port;
use super::tls::TestCa;

/// How long a topology may take to come up, or to settle after a change: far more than it
/// takes (2-3 s for a start or a cluster failover, 3-4.5 s for a Sentinel failover), for a
/// loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

pub struct RedisServer {
    pub port: u16,
    node: Node,
    tls: Option<TlsMaterial>,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start one; fails the test loudly when `redis-server` is not installed (`make test`
    /// installs it).
    pub async fn start() -> RedisServer {
        RedisServer::launch(None).await
    }

    /// Start one that speaks only TLS (`--port 0`): its certificate is `tls.server_cert()`,
    /// and with `require_client_cert` it refuses clients without a certificate `tls.ca()`
    /// signed. The kit itself always presents `tls.client_cert()`.
    pub async fn start_tls(tls: &TlsMaterial, require_client_cert: bool) -> RedisServer {
        RedisServer::launch(Some((tls, require_client_cert))).await
    }

    async fn launch(tls: Option<(&TlsMaterial, bool)>) -> RedisServer {
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("a temp dir");
            let port = free_port();
            let args = data_node_args(port, dir.path(), tls);
            let mut node = Node::new("redis-server", port, dir.path(), args, link(tls));
            node.spawn();
            if node.ready().await {
                return RedisServer {
                    port,
                    node,
                    tls: tls.map(|(t, _)| t.clone()),
                    _dir: dir,
                };
            }
        }
        panic!("redis-server did not start on a free port three times");
    }

    /// `redis://127.0.0.1:PORT/0`, or `rediss://` for a TLS one.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}/0", scheme(&self.tls), self.port)
    }

    /// Kill it outright, as a crash would.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Start it again on the same port.
    pub async fn restart(&mut self) {
        self.node.spawn();
        assert!(
            self.node.ready().await,
            "redis-server could not restart on port {}; its log:\n{}",
            self.port,
            self.node.log_tail()
        );
    }

    /// Send one command and return the raw reply (RESP), or `None` if Redis is not there.
    pub async fn command(&self, args: &[&str]) -> Option<String> {
        exchange(self.port, &self.node.link, args)
            .await
            .map(|(_, raw)| String::from_utf8_lossy(&raw).into_owned())
    }
}

/// A Redis Cluster on 127.0.0.1: `primaries` masters (3 at least: `redis-cli --cluster create`
/// wants that many), each with `replicas_per_primary` replicas. The node timeout is 1 s and a
/// replica may always stand for election (`cluster-replica-validity-factor 0`), so a killed
/// primary's replica is promoted in 2-3 s. Every node is killed when it is dropped.
pub struct RedisCluster {
    nodes: Vec<Node>,
    seeds: Vec<u16>,
    /// For each primary killed by `kill_primary`, the replicas it had: those that may take
    /// over.
    orphans: Vec<(u16, Vec<u16>)>,
    tls: Option<TlsMaterial>,
    _dir: tempfile::TempDir,
}

/// One node as a cluster node sees it, from `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// The id of its master, for a replica.
    pub master: Option<String>,
    /// Its slots, as inclusive ranges (importing and migrating marks left out).
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }

    fn failing(&self) -> bool {
        self.flags
            .iter()
            .any(|f| matches!(f.as_str(), "fail" | "fail?" | "handshake" | "noaddr"))
    }
}

/// `CLUSTER NODES` parsed: `id ip:port@bus[,hostname] flags master ping pong epoch link
/// slots...`.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 8, "a CLUSTER NODES line: {line:?}");
            let addr = fields[1].split(['@', ',']).next().unwrap_or_default();
            let port = addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("a port in the CLUSTER NODES line {line:?}"));
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| {
                    let bound = |b: &str| -> u16 {
                        b.parse()
                            .unwrap_or_else(|_| panic!("a slot in the CLUSTER NODES line {line:?}"))
                    };
                    match s.split_once('-') {
                        Some((a, b)) => (bound(a), bound(b)),
                        None => (bound(s), bound(s)),
                    }
                })
                .collect();
            ClusterNode {
                id: fields[0].to_string(),
                port,
                flags: fields[2].split(',').map(str::to_string).collect(),
                master: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
            }
        })
        .collect()
}

impl RedisCluster {
    pub async fn start(primaries: usize, replicas_per_primary: usize) -> RedisCluster {
        RedisCluster::launch(primaries, replicas_per_primary, None).await
    }

    /// The same over TLS only (`--port 0 --tls-port`): clients, the cluster bus and replication
    /// all speak TLS with `tls`'s certificates; `require_client_cert` as for
    /// `RedisServer::start_tls`.
    pub async fn start_tls(
        primaries: usize,
        replicas_per_primary: usize,
        tls: &TlsMaterial,
        require_client_cert: bool,
    ) -> RedisCluster {
        RedisCluster::launch(
            primaries,
            replicas_per_primary,
            Some((tls, require_client_cert)),
        )
        .await
    }

    async fn launch(
        primaries: usize,
        replicas_per_primary: usize,
        tls: Option<(&TlsMaterial, bool)>,
    ) -> RedisCluster {
        assert!(
            primaries >= 3,
            "redis-cli --cluster create needs 3 primaries at least, not {primaries}"
        );
        let count = primaries * (1 + replicas_per_primary);
        'attempt: for _ in 0..3 {
            let dir = tempfile::tempdir().expect("a temp dir");
            // A client port and a cluster bus port for each: the bus is not left at
            // port + 10000, which may be taken or past 65535.
            let ports = distinct_free_ports(2 * count);
            let mut nodes: Vec<Node> = (0..count)
                .map(|i| {
                    let (port, bus) = (ports[2 * i], ports[2 * i + 1]);
                    let node_dir = dir.path().join(format!("node-{port}"));
                    std::fs::create_dir(&node_dir).expect("a node's dir");
                    let mut args = data_node_args(port, &node_dir, tls);
                    args.extend(strs(&[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus.to_string(),
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-replica-validity-factor",
                        "0",
                        // A replica's first sync starts at once, not after the default 5 s.
                        "--repl-diskless-sync-delay",
                        "0",
                    ]));
                    args.push("--cluster-config-file".into());
                    args.push(node_dir.join("nodes.conf").into());
                    if tls.is_some() {
                        args.extend(strs(&["--tls-cluster", "yes"]));
                    }
                    Node::new("cluster node", port, &node_dir, args, link(tls))
                })
                .collect();
            for node in &mut nodes {
                node.spawn();
            }
            for node in &mut nodes {
                if !node.ready().await {
                    continue 'attempt; // a port was taken meanwhile: all again, on new ones
                }
            }
            let mut create = tokio::process::Command::new("redis-cli");
            if let Some((t, _)) = tls {
                create.args(t.cli_args());
            }
            create.args(["--cluster", "create"]);
            create.args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
            create.args([
                "--cluster-replicas",
                &replicas_per_primary.to_string(),
                "--cluster-yes",
            ]);
            let out = create
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); `make test` installs it"));
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && said.contains("All 16384 slots covered"),
                "redis-cli --cluster create failed ({}):\n{said}\nfirst node's log:\n{}",
                out.status,
                nodes[0].log_tail()
            );
            let mut cluster = RedisCluster {
                nodes,
                seeds: Vec::new(),
                orphans: Vec::new(),
                tls: tls.map(|(t, _)| t.clone()),
                _dir: dir,
            };
            let view = cluster.settled("the new cluster to settle").await;
            cluster.seeds = view
                .iter()
                .filter(|n| n.is_master())
                .map(|n| n.port)
                .collect();
            assert_eq!(
                cluster.seeds.len(),
                primaries,
                "the new cluster's primaries: {view:?}"
            );
            return cluster;
        }
        panic!("the Redis Cluster's nodes did not start on free ports three times");
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` over TLS) of each primary the cluster started
    /// with.
    pub fn seed_urls(&self) -> Vec<String> {
        self.seeds
            .iter()
            .map(|p| format!("{}://127.0.0.1:{p}", scheme(&self.tls)))
            .collect()
    }

    /// Every node's port, running or not.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The cluster as a running master sees it now.
    pub async fn view(&self) -> Vec<ClusterNode> {
        for node in self.live() {
            if let Some(reply) = node.call(&["CLUSTER", "NODES"]).await {
                let view = parse_cluster_nodes(&reply.text());
                if view
                    .iter()
                    .any(|n| n.port == node.port && n.is_master() && !n.slots.is_empty())
                {
                    return view;
                }
            }
        }
        panic!("no running primary of the cluster answered CLUSTER NODES");
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub async fn slot_for_key(&self, key: &str) -> u16 {
        let node = self.live().next().expect("a running cluster node");
        let reply = node.call(&["CLUSTER", "KEYSLOT", key]).await;
        match reply {
            Some(Resp::Int(slot)) => u16::try_from(slot).expect("a slot"),
            other => panic!("CLUSTER KEYSLOT {key} answered {other:?}"),
        }
    }

    /// The port of the primary that serves `key` now.
    pub async fn primary_for_key(&self, key: &str) -> u16 {
        let slot = self.slot_for_key(key).await;
        self.owner(slot).await.port
    }

    async fn owner(&self, slot: u16) -> ClusterNode {
        let view = self.view().await;
        view.into_iter()
            .find(|n| n.is_master() && n.owns(slot))
            .unwrap_or_else(|| panic!("no primary owns slot {slot}"))
    }

    /// The ports of the replicas of the primary on `port`, as it sees them.
    pub async fn replicas_of(&self, port: u16) -> Vec<u16> {
        let reply = self
            .node(port)
            .call(&["CLUSTER", "NODES"])
            .await
            .unwrap_or_else(|| panic!("cluster node {port} did not answer CLUSTER NODES"));
        let view = parse_cluster_nodes(&reply.text());
        let me = view
            .iter()
            .find(|n| n.flags.iter().any(|f| f == "myself"))
            .expect("a node sees itself");
        view.iter()
            .filter(|n| n.master.as_deref() == Some(&me.id))
            .map(|n| n.port)
            .collect()
    }

    /// Kill the primary on `port` outright (SIGKILL), as a crash would. Its replicas are
    /// noted for `wait_for_promotion`.
    pub async fn kill_primary(&mut self, port: u16) {
        let role = self.command(port, &["ROLE"]).await;
        assert!(
            role.starts_with("master"),
            "kill_primary({port}): that node is not a primary (ROLE: {role:?})"
        );
        let replicas = self.replicas_of(port).await;
        self.orphans.retain(|(p, _)| *p != port);
        self.orphans.push((port, replicas));
        self.node_mut(port).kill();
    }

    /// Kill any node outright (SIGKILL).
    pub fn kill_node(&mut self, port: u16) {
        self.node_mut(port).kill();
    }

    /// Start a killed node again on its ports, with its `nodes.conf`: it rejoins the
    /// cluster (a former primary as a replica of the one that took over).
    pub async fn restart_node(&mut self, port: u16) {
        let node = self.node_mut(port);
        node.spawn();
        assert!(
            node.ready().await,
            "cluster node {port} could not restart; its log:\n{}",
            node.log_tail()
        );
        self.settled(&format!("the cluster to settle with node {port} back"))
            .await;
    }

    /// Wait until a replica of the primary killed on `of_port` is a master, every running
    /// node says `cluster_state:ok`, and all of them agree on who serves which slots. Returns
    /// the new primary's port.
    pub async fn wait_for_promotion(&self, of_port: u16) -> u16 {
        let replicas = self
            .orphans
            .iter()
            .find(|(p, _)| *p == of_port)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("wait_for_promotion({of_port}): not killed by kill_primary"));
        assert!(
            !replicas.is_empty(),
            "wait_for_promotion({of_port}): that primary had no replica to promote"
        );
        let promoted = poll(
            &format!("a replica of killed primary {of_port} ({replicas:?}) to be promoted"),
            SETTLE,
            async || {
                for &port in &replicas {
                    let node = self.node(port);
                    if !node.running() {
                        continue;
                    }
                    let role = node.call(&["ROLE"]).await.map(|r| r.text());
                    if role.as_deref().is_some_and(|r| r.starts_with("master")) {
                        return Ok(port);
                    }
                }
                Err("no replica is a master yet".to_string())
            },
        )
        .await;
        self.settled(&format!("the cluster to settle after {promoted} took over"))
            .await;
        promoted
    }

    /// Move `slot`, with every key in it, from the primary that owns it to the primary on
    /// `to_port`, as an operator would: `SETSLOT IMPORTING` on the target, `MIGRATING` on the
    /// source, `GETKEYSINSLOT` + `MIGRATE` until the slot is empty there, then `SETSLOT
    /// NODE` on the target, the source and every other primary. Returns when all running
    /// nodes agree.
    pub async fn migrate_slot(&self, slot: u16, to_port: u16) {
        let from = self.owner(slot).await;
        assert_ne!(
            from.port, to_port,
            "migrate_slot({slot}, {to_port}): it already owns that slot"
        );
        let to_id = self.command(to_port, &["CLUSTER", "MYID"]).await;
        let s = slot.to_string();
        let ok = async |port: u16, args: &[&str]| {
            let reply = self.command(port, args).await;
            assert_eq!(reply, "OK", "{args:?} on cluster node {port}");
        };
        ok(to_port, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from.id]).await;
        ok(from.port, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]).await;
        loop {
            let keys = self
                .node(from.port)
                .call(&["CLUSTER", "GETKEYSINSLOT", &s, "100"])
                .await
                .unwrap_or_else(|| panic!("cluster node {} went away", from.port));
            let keys: Vec<String> = keys.items().iter().map(Resp::text).collect();
            if keys.is_empty() {
                break;
            }
            let to = to_port.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &to, "", "0", "10000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            ok(from.port, &migrate).await;
        }
        ok(to_port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]).await;
        ok(from.port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]).await;
        for node in self.view().await {
            if node.is_master() && !node.failing() && node.port != to_port && node.port != from.port
            {
                ok(node.port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]).await;
            }
        }
        let view = self
            .settled(&format!(
                "the cluster to settle with slot {slot} on {to_port}"
            ))
            .await;
        assert!(
            view.iter().any(|n| n.port == to_port && n.owns(slot)),
            "slot {slot} did not move to {to_port}: {view:?}"
        );
    }

    /// Send one command to the node on `port`; the reply as text (see `Resp::text`: an error
    /// such as `-MOVED 3999 127.0.0.1:PORT` keeps its `-`). Panics if the node does not answer.
    pub async fn command(&self, port: u16, args: &[&str]) -> String {
        self.node(port)
            .call(args)
            .await
            .unwrap_or_else(|| panic!("cluster node {port} did not answer {args:?}"))
            .text()
    }

    /// Kill every node.
    pub fn kill_all(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.running())
    }

    /// Wait until every running node says `cluster_state:ok` with all 16384 slots ok, none
    /// of them is failing or still in a handshake, all see the same roles and slots for the
    /// running nodes, and every running replica's link to its master is up. Returns that
    /// view (the running nodes only).
    async fn settled(&self, what: &str) -> Vec<ClusterNode> {
        let live_ports: Vec<u16> = self.live().map(|n| n.port).collect();
        poll(what, SETTLE, async || {
            let mut agreed: Option<(u16, Vec<ClusterNode>)> = None;
            for node in self.live() {
                let port = node.port;
                let info = node
                    .call(&["CLUSTER", "INFO"])
                    .await
                    .ok_or(format!("{port} did not answer CLUSTER INFO"))?
                    .text();
                for want in ["cluster_state:ok", "cluster_slots_ok:16384"] {
                    if !info.lines().any(|l| l.trim() == want) {
                        return Err(format!("{port} is not at {want}: {info}"));
                    }
                }
                let nodes = node
                    .call(&["CLUSTER", "NODES"])
                    .await
                    .ok_or(format!("{port} did not answer CLUSTER NODES"))?
                    .text();
                let parsed = parse_cluster_nodes(&nodes);
                let mut view: Vec<ClusterNode> = parsed
                    .iter()
                    .filter(|n| live_ports.contains(&n.port))
                    .map(|n| {
                        let mut n = n.clone();
                        n.flags.retain(|f| f != "myself");
                        n
                    })
                    .collect();
                view.sort_by_key(|n| n.port);
                if view.len() != live_ports.len() || view.iter().any(ClusterNode::failing) {
                    return Err(format!(
                        "{port} does not see all running nodes well:\n{nodes}"
                    ));
                }
                let me = parsed
                    .iter()
                    .find(|n| n.port == port)
                    .ok_or(format!("{port} does not list itself"))?;
                if !me.is_master() {
                    let repl = node
                        .call(&["INFO", "replication"])
                        .await
                        .ok_or(format!("{port} did not answer INFO"))?
                        .text();
                    if !repl.contains("master_link_status:up") {
                        return Err(format!("replica {port}'s link is not up:\n{repl}"));
                    }
                }
                match &agreed {
                    None => agreed = Some((port, view)),
                    Some((other, seen)) if *seen != view => {
                        return Err(format!("{other} and {port} disagree:\n{seen:?}\n{view:?}"));
                    }
                    Some(_) => {}
                }
            }
            agreed
                .map(|(_, view)| view)
                .ok_or_else(|| "no cluster node is running".to_string())
        })
        .await
    }
}

/// A primary and its replica watched by three Sentinels (quorum 2, down after 2 s), under
/// the master name `portico`. A killed primary is replaced in 3-4 s.
pub struct RedisSentinel {
    /// The data nodes: the first primary, then its replica.
    data: Vec<Node>,
    sentinels: Vec<Node>,
    primary: u16,
    tls: Option<TlsMaterial>,
    _dir: tempfile::TempDir,
}

const MASTER_NAME: &str = "portico";

impl RedisSentinel {
    pub async fn start() -> RedisSentinel {
        RedisSentinel::launch(None).await
    }

    /// The same over TLS only: the data nodes and the Sentinels listen on TLS ports alone,
    /// replication and the Sentinels' own links are TLS (`tls-replication yes`).
    pub async fn start_tls(tls: &TlsMaterial, require_client_cert: bool) -> RedisSentinel {
        RedisSentinel::launch(Some((tls, require_client_cert))).await
    }

    async fn launch(tls: Option<(&TlsMaterial, bool)>) -> RedisSentinel {
        'attempt: for _ in 0..3 {
            let dir = tempfile::tempdir().expect("a temp dir");
            let ports = distinct_free_ports(5);
            let (primary, replica) = (ports[0], ports[1]);
            let mut data = Vec::new();
            for (port, replica_of) in [(primary, None), (replica, Some(primary))] {
                let node_dir = dir.path().join(format!("data-{port}"));
                std::fs::create_dir(&node_dir).expect("a node's dir");
                let mut args = data_node_args(port, &node_dir, tls);
                args.extend(strs(&["--repl-diskless-sync-delay", "0"]));
                if let Some(of) = replica_of {
                    args.extend(strs(&["--replicaof", "127.0.0.1", &of.to_string()]));
                }
                data.push(Node::new("data node", port, &node_dir, args, link(tls)));
            }
            let sentinels: Vec<Node> = ports[2..]
                .iter()
                .map(|&port| {
                    let node_dir = dir.path().join(format!("sentinel-{port}"));
                    std::fs::create_dir(&node_dir).expect("a sentinel's dir");
                    let conf = node_dir.join("sentinel.conf");
                    std::fs::write(&conf, sentinel_conf(port, primary, &node_dir, tls))
                        .expect("write a sentinel's config");
                    let args = vec![conf.into_os_string(), "--sentinel".into()];
                    Node::new("sentinel", port, &node_dir, args, link(tls))
                })
                .collect();
            let mut topology = RedisSentinel {
                data,
                sentinels,
                primary,
                tls: tls.map(|(t, _)| t.clone()),
                _dir: dir,
            };
            // The Sentinels only once the replica is in sync: a Sentinel learns of replicas
            // from the master's INFO, which it asks for on connecting and then only every
            // 10 s.
            for node in &mut topology.data {
                node.spawn();
            }
            for node in &mut topology.data {
                if !node.ready().await {
                    continue 'attempt;
                }
            }
            topology.wait_replica_synced(replica).await;
            for node in &mut topology.sentinels {
                node.spawn();
            }
            for node in &mut topology.sentinels {
                if !node.ready().await {
                    continue 'attempt;
                }
            }
            topology.wait_watched().await;
            return topology;
        }
        panic!("the Sentinel topology did not start on free ports three times");
    }

    /// Wait until the data node on `port` is a replica in sync with its master.
    async fn wait_replica_synced(&self, port: u16) {
        let replica = self
            .data
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"));
        poll(&format!("replica {port} to sync"), SETTLE, async || {
            let repl = replica
                .call(&["INFO", "replication"])
                .await
                .ok_or("no answer to INFO")?
                .text();
            if repl.contains("role:slave") && repl.contains("master_link_status:up") {
                Ok(())
            } else {
                Err(repl)
            }
        })
        .await;
    }

    /// Wait until every Sentinel sees the master up, its replica and the two other
    /// Sentinels.
    async fn wait_watched(&self) {
        for sentinel in &self.sentinels {
            poll(
                &format!(
                    "sentinel {} to see the master, its replica and the other sentinels",
                    sentinel.port
                ),
                SETTLE,
                async || {
                    let master = sentinel
                        .call(&["SENTINEL", "MASTER", MASTER_NAME])
                        .await
                        .ok_or("no answer to SENTINEL MASTER")?;
                    answered(&master)?;
                    let replicas = sentinel
                        .call(&["SENTINEL", "REPLICAS", MASTER_NAME])
                        .await
                        .ok_or("no answer to SENTINEL REPLICAS")?;
                    let good = replicas
                        .items()
                        .iter()
                        .filter(|r| {
                            field(r, "flags").as_deref() == Some("slave")
                                && field(r, "master-link-status").as_deref() == Some("ok")
                        })
                        .count();
                    let others = sentinel
                        .call(&["SENTINEL", "SENTINELS", MASTER_NAME])
                        .await
                        .ok_or("no answer to SENTINEL SENTINELS")?;
                    let known = others
                        .items()
                        .iter()
                        .filter(|s| field(s, "flags").as_deref() == Some("sentinel"))
                        .count();
                    if good == 1 && known == 2 {
                        Ok(())
                    } else {
                        Err(format!(
                            "{good} replica(s) up, {known} other sentinel(s) known"
                        ))
                    }
                },
            )
            .await;
        }
    }

    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` over TLS) of each Sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("{}://127.0.0.1:{}", scheme(&self.tls), s.port))
            .collect()
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The primary's port: the first one, or the one `wait_for_failover` saw take over.
    pub fn primary_port(&self) -> u16 {
        self.primary
    }

    /// The replica's port (the data node that is not the primary).
    pub fn replica_port(&self) -> u16 {
        self.data
            .iter()
            .map(|n| n.port)
            .find(|&p| p != self.primary)
            .expect("two data nodes")
    }

    /// Kill the primary outright (SIGKILL).
    pub fn kill_primary(&mut self) {
        let primary = self.primary;
        self.data_mut(primary).kill();
    }

    /// Start a killed data node again on its port and wait until it is a replica in sync
    /// with the current primary. A former primary comes back a master: Sentinel turns it
    /// into a replica once it reads that from the node's INFO, which can take 10 s.
    pub async fn restart_node(&mut self, port: u16) {
        let node = self.data_mut(port);
        node.spawn();
        assert!(
            node.ready().await,
            "data node {port} could not restart; its log:\n{}",
            node.log_tail()
        );
        self.wait_replica_synced(port).await;
    }

    /// Wait until every Sentinel names another primary (`SENTINEL GET-MASTER-ADDR-BY-NAME`),
    /// that node says `role:master`, and every Sentinel has had a reply from it. Returns its
    /// port.
    pub async fn wait_for_failover(&mut self) -> u16 {
        let old = self.primary;
        let new = poll(
            &format!("the sentinels to fail over from primary {old}"),
            SETTLE,
            async || {
                let mut named = Vec::new();
                for sentinel in self.sentinels.iter().filter(|s| s.running()) {
                    let addr = sentinel
                        .call(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
                        .await
                        .ok_or(format!("sentinel {} did not answer", sentinel.port))?;
                    let port: u16 = addr
                        .items()
                        .get(1)
                        .and_then(|p| p.text().parse().ok())
                        .ok_or(format!("sentinel {} answered {addr:?}", sentinel.port))?;
                    named.push(port);
                }
                let first = named[0];
                if first == old || named.iter().any(|&p| p != first) {
                    return Err(format!("the sentinels name {named:?}"));
                }
                let node = self
                    .data
                    .iter()
                    .find(|n| n.port == first)
                    .ok_or(format!("the sentinels name a stranger: {first}"))?;
                let repl = node
                    .call(&["INFO", "replication"])
                    .await
                    .ok_or(format!("{first} did not answer"))?
                    .text();
                if !repl.contains("role:master") {
                    return Err(format!("{first} is not a master yet"));
                }
                for sentinel in self.sentinels.iter().filter(|s| s.running()) {
                    let master = sentinel
                        .call(&["SENTINEL", "MASTER", MASTER_NAME])
                        .await
                        .ok_or(format!("sentinel {} did not answer", sentinel.port))?;
                    answered(&master).map_err(|e| format!("sentinel {}: {e}", sentinel.port))?;
                }
                Ok(first)
            },
        )
        .await;
        self.primary = new;
        new
    }

    /// Send one command to the data node or Sentinel on `port`; the reply as text (see
    /// `Resp::text`). Panics if it does not answer.
    pub async fn command(&self, port: u16, args: &[&str]) -> String {
        self.reply(port, args).await.text()
    }

    /// `command`, with the reply as it came (for Sentinel's arrays of fields).
    pub async fn reply(&self, port: u16, args: &[&str]) -> Resp {
        let node = self
            .data
            .iter()
            .chain(&self.sentinels)
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no data node or sentinel on port {port}"));
        node.call(args)
            .await
            .unwrap_or_else(|| panic!("{} {port} did not answer {args:?}", node.what))
    }

    pub fn kill_all(&mut self) {
        for node in self.data.iter_mut().chain(&mut self.sentinels) {
            node.kill();
        }
    }

    fn data_mut(&mut self, port: u16) -> &mut Node {
        self.data
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }
}

/// A Sentinel's config file: Sentinel rewrites it, so each has its own.
fn sentinel_conf(port: u16, primary: u16, dir: &Path, tls: Option<(&TlsMaterial, bool)>) -> String {
    let mut conf = format!(
        "bind 127.0.0.1\ndir {}\nlogfile {}\n",
        dir.display(),
        dir.join("redis.log").display()
    );
    match tls {
        None => conf.push_str(&format!("port {port}\n")),
        Some((t, require)) => conf.push_str(&format!(
            "port 0\ntls-port {port}\ntls-replication yes\ntls-cert-file {}\ntls-key-file {}\n\
             tls-client-cert-file {}\ntls-client-key-file {}\ntls-ca-cert-file {}\n\
             tls-auth-clients {}\n",
            t.server_cert().display(),
            t.server_key().display(),
            t.client_cert().display(),
            t.client_key().display(),
            t.ca().display(),
            if require { "yes" } else { "no" }
        )),
    }
    // resolve-hostnames before monitor: the monitor line is read with it. Down after 2 s,
    // not 1: a Sentinel pings every second, and the first ping to a master it just switched
    // to goes out a second after the switch, so with 1 s it can find the new master down
    // before its first reply, and fail over again (to an empty old primary come back).
    conf.push_str(&format!(
        "sentinel resolve-hostnames no\n\
         sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
         sentinel down-after-milliseconds {MASTER_NAME} 2000\n\
         sentinel failover-timeout {MASTER_NAME} 5000\n\
         sentinel parallel-syncs {MASTER_NAME} 1\n"
    ));
    conf
}

/// Whether a Sentinel's `SENTINEL MASTER` reply shows the master up (flags just `master`)
/// and its last ping answered (`last-ping-sent` 0): after a switch, a Sentinel counts the
/// new master as pinged but unanswered until its first PONG.
fn answered(master: &Resp) -> Result<(), String> {
    let (flags, ping) = (field(master, "flags"), field(master, "last-ping-sent"));
    if flags.as_deref() == Some("master") && ping.as_deref() == Some("0") {
        Ok(())
    } else {
        Err(format!(
            "the master's flags {flags:?}, last-ping-sent {ping:?}"
        ))
    }
}

/// One field of a Sentinel reply given as a flat array of names and values.
fn field(reply: &Resp, name: &str) -> Option<String> {
    reply
        .items()
        .chunks(2)
        .find(|kv| kv.len() == 2 && kv[0].text() == name)
        .map(|kv| kv[1].text())
}

/// Certificates for Redis over TLS, as PEM files in a temp dir: a CA, a server certificate
/// it signs for `127.0.0.1` and `localhost`, a client certificate it signs, and a second,
/// unrelated CA (trusting it instead must fail). Cloning shares the files, which live as
/// long as any clone (a topology keeps one for its restarts).
#[derive(Clone)]
pub struct TlsMaterial {
    dir: Arc<tempfile::TempDir>,
    client: Arc<rustls::ClientConfig>,
}

impl TlsMaterial {
    pub fn generate() -> TlsMaterial {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca = TestCa::new("Portico test Redis CA");
        let other = TestCa::new("An unrelated CA");
        std::fs::write(dir.path().join("ca.crt"), &ca.pem).expect("write the CA");
        std::fs::write(dir.path().join("other-ca.crt"), &other.pem).expect("write the other CA");
        ca.server(&["127.0.0.1", "localhost"])
            .write(dir.path(), "server");
        let client = ca.client("portico");
        client.write(dir.path(), "client");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("the CA's PEM"))
            .expect("the CA as a root");
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(client.cert.as_bytes())
                .collect::<Result<_, _>>()
                .expect("the client certificate's PEM");
        let key = PrivateKeyDer::from_pem_slice(client.key.as_bytes()).expect("the client key");
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("the client certificate");
        TlsMaterial {
            dir: Arc::new(dir),
            client: Arc::new(config),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// A rustls client config that trusts `ca()` and presents the client certificate.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.client)
    }

    /// `redis-cli`'s flags to connect as the kit does: `--tls --cacert --cert --key`.
    pub fn cli_args(&self) -> Vec<OsString> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.ca().into(),
            "--cert".into(),
            self.client_cert().into(),
            "--key".into(),
            self.client_key().into(),
        ]
    }
}

/// A reply in RESP2.
#[derive(Clone, Debug, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text, much as `redis-cli --no-raw` would not quite print it: a string's
    /// content, an integer in decimal, an error with its leading `-` (`-MOVED ...`), a nil
    /// as `(nil)`, an array's items one per line.
    pub fn text(&self) -> String {
        match self {
            Resp::Simple(s) | Resp::Bulk(Some(s)) => s.clone(),
            Resp::Error(e) => format!("-{e}"),
            Resp::Int(i) => i.to_string(),
            Resp::Bulk(None) | Resp::Array(None) => "(nil)".to_string(),
            Resp::Array(Some(items)) => items.iter().map(Resp::text).collect::<Vec<_>>().join("\n"),
        }
    }

    /// An array's items; none for anything else.
    pub fn items(&self) -> &[Resp] {
        match self {
            Resp::Array(Some(items)) => items,
            _ => &[],
        }
    }
}

/// Parse one whole reply from the start of `buf`: the reply and the bytes it took, or `None`
/// while it is incomplete.
fn parse_resp(buf: &[u8]) -> Option<(Resp, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    let after = end + 2;
    let number = || -> i64 {
        line.parse()
            .unwrap_or_else(|_| panic!("a malformed RESP length or integer: {line:?}"))
    };
    match buf.first()? {
        b'+' => Some((Resp::Simple(line), after)),
        b'-' => Some((Resp::Error(line), after)),
        b':' => Some((Resp::Int(number()), after)),
        b'$' => {
            let Ok(len) = usize::try_from(number()) else {
                return Some((Resp::Bulk(None), after));
            };
            if buf.len() < after + len + 2 {
                return None;
            }
            let text = String::from_utf8_lossy(&buf[after..after + len]).into_owned();
            Some((Resp::Bulk(Some(text)), after + len + 2))
        }
        b'*' => {
            let Ok(count) = usize::try_from(number()) else {
                return Some((Resp::Array(None), after));
            };
            let mut items = Vec::with_capacity(count);
            let mut at = after;
            for _ in 0..count {
                let (item, used) = parse_resp(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((Resp::Array(Some(items)), at))
        }
        other => panic!("not a RESP reply: starts with {:?}", *other as char),
    }
}

/// How the kit reaches a node: plain TCP, or TLS trusting the test CA and presenting its
/// client certificate.
#[derive(Clone)]
enum Link {
    Plain,
    Tls(Arc<rustls::ClientConfig>),
}

fn link(tls: Option<(&TlsMaterial, bool)>) -> Link {
    match tls {
        None => Link::Plain,
        Some((t, _)) => Link::Tls(t.client_config()),
    }
}

fn scheme(tls: &Option<TlsMaterial>) -> &'static str {
    if tls.is_some() {
        "rediss"
    } else {
        "redis"
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One command on a fresh connection: the parsed reply and its raw bytes, or `None` when the
/// node is not there (or says nothing within 15 s; `MIGRATE` is given 10).
async fn exchange(port: u16, link: &Link, args: &[&str]) -> Option<(Resp, Vec<u8>)> {
    let talk = async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut stream: Box<dyn Io> = match link {
            Link::Plain => Box::new(tcp),
            Link::Tls(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(
                    IpAddr::V4(Ipv4Addr::LOCALHOST).into(),
                );
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                Box::new(connector.connect(name, tcp).await.ok()?)
            }
        };
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            request.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            request.extend_from_slice(a.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        stream.write_all(&request).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some((reply, used)) = parse_resp(&buf) {
                buf.truncate(used);
                return Some((reply, buf));
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(15), talk)
        .await
        .ok()
        .flatten()
}

/// A `redis-server` process: its arguments, kept for a restart on the same ports, and its
/// dir, where it logs. Killed when dropped.
struct Node {
    what: &'static str,
    port: u16,
    args: Vec<OsString>,
    dir: PathBuf,
    link: Link,
    child: Option<Child>,
}

impl Node {
    fn new(what: &'static str, port: u16, dir: &Path, args: Vec<OsString>, link: Link) -> Node {
        Node {
            what,
            port,
            args,
            dir: dir.to_path_buf(),
            link,
            child: None,
        }
    }

    fn spawn(&mut self) {
        // Before the log file is open, a bad argument is reported on stderr.
        let stderr = std::fs::File::create(self.dir.join("stderr")).expect("a stderr file");
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}); `make test` installs it"));
        self.child = Some(child);
    }

    /// Poll `PING` until `PONG`; false if the process exited first (its port was taken).
    async fn ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = self.log_tail();
                // Only a port taken by someone else is worth another try.
                assert!(
                    log.contains("Address already in use"),
                    "{} on port {} exited ({status}); its log:\n{log}",
                    self.what,
                    self.port
                );
                return false;
            }
            if self
                .call(&["PING"])
                .await
                .is_some_and(|r| r == Resp::Simple("PONG".into()))
            {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "{} on port {} never answered PING; its log:\n{}",
                self.what,
                self.port,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    async fn call(&self, args: &[&str]) -> Option<Resp> {
        exchange(self.port, &self.link, args).await.map(|(r, _)| r)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of its stderr and its log.
    fn log_tail(&self) -> String {
        let mut text = String::new();
        for file in ["stderr", "redis.log"] {
            let content = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            text.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
            text.push('\n');
        }
        text
    }
}

impl Drop for Node {
    /// Killed; and when the test is failing, the end of its log shown with the failure.
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} on port {}: the end of its log\n{}",
                self.what,
                self.port,
                self.log_tail()
            );
        }
    }
}

/// The arguments every data node gets: its port (a TLS port alone for TLS), 127.0.0.1, no
/// persistence, its dir and log file.
fn data_node_args(port: u16, dir: &Path, tls: Option<(&TlsMaterial, bool)>) -> Vec<OsString> {
    let mut args = strs(&["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    args.push("--dir".into());
    args.push(dir.into());
    args.push("--logfile".into());
    args.push(dir.join("redis.log").into());
    match tls {
        None => args.extend(strs(&["--port", &port.to_string()])),
        Some((t, require)) => {
            args.extend(strs(&["--port", "0", "--tls-port", &port.to_string()]));
            for (flag, path) in [
                ("--tls-cert-file", t.server_cert()),
                ("--tls-key-file", t.server_key()),
                // What a node presents when it connects to another (replication, the bus).
                ("--tls-client-cert-file", t.client_cert()),
                ("--tls-client-key-file", t.client_key()),
                ("--tls-ca-cert-file", t.ca()),
            ] {
                args.push(flag.into());
                args.push(path.into());
            }
            args.extend(strs(&[
                "--tls-auth-clients",
                if require { "yes" } else { "no" },
                "--tls-replication",
                "yes",
            ]));
        }
    }
    args
}

fn strs(items: &[&str]) -> Vec<OsString> {
    items.iter().map(OsString::from).collect()
}

/// `n` distinct free ports, all held until all are chosen.
fn distinct_free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port on 127.0.0.1"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

/// Poll `check` every 20 ms until it gives `Ok`; past `timeout`, panic naming `what` and the
/// state the last try found.
async fn poll<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
