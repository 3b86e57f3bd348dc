//! Which Redis the gateway talks to (`[redis]`: one server, a Cluster, or a Sentinel-managed
//! primary), over TCP or TLS, and how a connection to it is made. The redis crate does the
//! protocol work: the cluster client follows MOVED/ASK and refreshes its slot map after a node
//! fails; the sentinel client asks the sentinels for the current primary each time it connects.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, IntoConnectionInfo,
    Pipeline, RedisFuture, TlsCertificates, TlsMode, Value,
};

/// Where Redis is, as the config says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topology {
    /// `url`: one server.
    Single(String),
    /// `cluster`: seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
    /// `sentinel`: the primary named `master`, as the sentinels at `nodes` report it.
    Sentinel { master: String, nodes: Vec<String> },
}

impl Topology {
    pub fn urls(&self) -> &[String] {
        match self {
            Topology::Single(url) => std::slice::from_ref(url),
            Topology::Cluster(seeds) => seeds,
            Topology::Sentinel { nodes, .. } => nodes,
        }
    }

    pub fn uses_tls(&self) -> bool {
        self.urls().iter().any(|u| u.starts_with("rediss://"))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Topology::Single(_) => "server",
            Topology::Cluster(_) => "cluster",
            Topology::Sentinel { .. } => "sentinel",
        }
    }

    /// For logs: the URLs with any password masked.
    pub fn for_logs(&self) -> String {
        let urls: Vec<String> = self.urls().iter().map(|u| masked(u)).collect();
        match self {
            Topology::Single(_) => urls.join(","),
            Topology::Cluster(_) => format!("cluster {}", urls.join(",")),
            Topology::Sentinel { master, .. } => {
                format!("sentinel master {master:?} via {}", urls.join(","))
            }
        }
    }
}

/// Never log a password that may be in a URL.
fn masked(url: &str) -> String {
    match url.split_once('@') {
        Some((scheme_and_auth, host)) => {
            let scheme = scheme_and_auth.split("://").next().unwrap_or("redis");
            format!("{scheme}://***@{host}")
        }
        None => url.to_string(),
    }
}

/// `[redis] tls`: PEM bytes, read when the config is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsPem {
    /// Trust only this CA; without it, the system's roots.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its key, for servers that ask for one.
    pub cert_and_key: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsPem {
    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self
                .cert_and_key
                .as_ref()
                .map(|(cert, key)| ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        }
    }
}

/// Everything needed to open connections, built once per `[redis]` section.
pub enum Connector {
    Single(Client),
    Cluster {
        client: redis::cluster::ClusterClient,
        /// A plain client per seed, to subscribe on.
        seeds: Vec<Client>,
    },
    /// Behind a lock only because asking the sentinels takes `&mut`; only the connecting
    /// task uses it, never a request.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// One open connection: cheap to clone, multiplexed by every request.
#[derive(Clone)]
pub enum Connection {
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Plain(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Plain(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl Connector {
    /// Check the URLs and the TLS material; connects to nothing.
    pub fn new(topology: &Topology, tls: Option<&TlsPem>) -> Result<Connector, String> {
        // The redis crate builds its rustls config on the process's default provider: the
        // same ring provider the rest of the gateway uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = tls.map(TlsPem::certificates);
        let invalid = |e: redis::RedisError| format!("invalid Redis URL: {e}");
        if topology.urls().is_empty() {
            return Err(format!("{} lists no nodes", topology.kind()));
        }
        Ok(match topology {
            Topology::Single(url) => Connector::Single(single_client(url, certs.as_ref())?),
            Topology::Cluster(seeds) => {
                let mut builder = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                    // A node that fails is the caller's `on_store_error`, not a long retry.
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100);
                let mut nodes = Vec::with_capacity(seeds.len());
                for seed in seeds {
                    nodes.push(single_client(seed, certs.as_ref())?);
                }
                if let Some(certs) = certs.filter(|_| topology.uses_tls()) {
                    builder = builder.certs(certs);
                }
                Connector::Cluster {
                    client: builder.build().map_err(invalid)?,
                    seeds: nodes,
                }
            }
            Topology::Sentinel { master, nodes } => {
                let mut addrs = Vec::with_capacity(nodes.len());
                let mut auth = None;
                for node in nodes {
                    let info = node.as_str().into_connection_info().map_err(invalid)?;
                    if auth.is_none() {
                        let settings = info.redis_settings();
                        auth = Some((
                            settings.username().map(str::to_string),
                            settings.password().map(str::to_string),
                        ));
                    }
                    addrs.push(info.addr().clone());
                }
                let tls_mode = addrs
                    .iter()
                    .any(|a| matches!(a, ConnectionAddr::TcpTls { .. }))
                    .then_some(TlsMode::Secure);
                let mut builder =
                    SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                        .map_err(invalid)?;
                if let Some(mode) = tls_mode {
                    builder = builder
                        .set_client_to_sentinel_tls_mode(mode)
                        .set_client_to_redis_tls_mode(mode);
                    if let Some(certs) = certs {
                        builder = builder
                            .set_client_to_sentinel_certificates(certs.clone())
                            .set_client_to_redis_certificates(certs);
                    }
                }
                // The sentinels' credentials are the primary's too (one `requirepass` for all).
                if let Some((username, password)) = auth {
                    if let Some(username) = username {
                        builder = builder
                            .set_client_to_sentinel_username(&username)
                            .set_client_to_redis_username(&username);
                    }
                    if let Some(password) = password {
                        builder = builder
                            .set_client_to_sentinel_password(&password)
                            .set_client_to_redis_password(&password);
                    }
                }
                Connector::Sentinel(tokio::sync::Mutex::new(builder.build().map_err(invalid)?))
            }
        })
    }

    /// Open a connection: to the server, to the cluster (its slot map read from a seed), or
    /// to the primary the sentinels name now. Commands on it time out after `timeout`.
    pub async fn connect(
        &self,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> redis::RedisResult<Connection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(timeout));
        match self {
            Connector::Single(client) => Ok(Connection::Plain(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            )),
            Connector::Cluster { client, .. } => {
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
            Connector::Sentinel(client) => {
                let mut client = client.lock().await;
                Ok(Connection::Plain(
                    client.get_async_connection_with_config(&config).await?,
                ))
            }
        }
    }

    /// A client for one node to subscribe on. Classic publish/subscribe reaches every node
    /// of a cluster, so any reachable seed will do; `attempt` picks which, round robin.
    pub async fn subscriber_client(&self, attempt: usize) -> redis::RedisResult<Client> {
        match self {
            Connector::Single(client) => Ok(client.clone()),
            Connector::Cluster { seeds, .. } => Ok(seeds[attempt % seeds.len()].clone()),
            Connector::Sentinel(client) => client.lock().await.async_get_client().await,
        }
    }
}

fn single_client(url: &str, certs: Option<&TlsCertificates>) -> Result<Client, String> {
    match certs {
        Some(certs) if url.starts_with("rediss://") => {
            Client::build_with_tls(url, certs.clone()).map_err(|e| format!("Redis TLS: {e}"))
        }
        _ => Client::open(url).map_err(|e| format!("invalid Redis URL: {e}")),
    }
}
