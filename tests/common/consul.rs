//! What stands in for Consul in the tests: no Consul server can be installed here (it is in
//! no package registry this project can use), so this small HTTP server implements the part
//! of Consul's documented HTTP API that Portico uses, faithfully: `GET
//! /v1/health/service/NAME` with `passing`, `tag` and `dc`, the `X-Consul-Index` header, and
//! blocking on `index` and `wait` (held until the catalog changes or `wait` passes). The test
//! registers and deregisters instances, fails their checks, moves the index backwards, takes
//! the agent down, and reads back the tokens and queries it saw.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub addr: SocketAddr,
    pub tags: Vec<String>,
    pub passing: bool,
}

impl Instance {
    pub fn new(id: &str, service: &str, addr: SocketAddr, tags: &[&str]) -> Instance {
        Instance {
            id: id.to_string(),
            service: service.to_string(),
            addr,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            passing: true,
        }
    }
}

struct Catalog {
    datacenter: String,
    instances: Vec<Instance>,
    tokens: Vec<String>,
}

struct Shared {
    catalog: Mutex<Catalog>,
    /// The catalog's index, raised by every change; watchers block on it.
    index: watch::Sender<u64>,
    /// Bumped when the index is reset: Consul abandons every held query then (a snapshot
    /// restore), answering them at once with the new, lower index.
    abandon: watch::Sender<u64>,
    up: AtomicBool,
    /// Bumped when the agent goes down: open queries end without an answer.
    down: watch::Sender<u64>,
    queries: AtomicUsize,
    open: AtomicUsize,
}

pub struct FakeConsul {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeConsul {
    pub async fn start(datacenter: &str) -> FakeConsul {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Consul");
        let addr = listener.local_addr().expect("an address");
        let shared = Arc::new(Shared {
            catalog: Mutex::new(Catalog {
                datacenter: datacenter.to_string(),
                instances: Vec::new(),
                tokens: Vec::new(),
            }),
            index: watch::channel(1).0,
            abandon: watch::channel(0).0,
            up: AtomicBool::new(true),
            down: watch::channel(0).0,
            queries: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
        });
        let task = tokio::spawn(serve(listener, Arc::clone(&shared)));
        FakeConsul { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn change(&self, edit: impl FnOnce(&mut Vec<Instance>)) {
        edit(&mut self.shared.catalog.lock().expect("catalog").instances);
        self.shared.index.send_modify(|i| *i += 1);
    }

    pub fn register(&self, instance: Instance) {
        self.change(|all| {
            all.retain(|i| i.id != instance.id);
            all.push(instance);
        });
    }

    pub fn deregister(&self, id: &str) {
        self.change(|all| all.retain(|i| i.id != id));
    }

    pub fn set_passing(&self, id: &str, passing: bool) {
        self.change(|all| {
            for i in all.iter_mut().filter(|i| i.id == id) {
                i.passing = passing;
            }
        });
    }

    /// The index goes back to `to`, as after a Consul server's snapshot restore; the
    /// queries being held are answered at once.
    pub fn reset_index(&self, to: u64) {
        self.shared.index.send_replace(to);
        self.shared.abandon.send_modify(|n| *n += 1);
    }

    /// Refuse connections and drop the queries being held.
    pub fn go_down(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        self.shared.down.send_modify(|n| *n += 1);
    }

    pub fn come_back(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
    }

    /// Every `X-Consul-Token` sent (an empty string for a query without one).
    pub fn tokens(&self) -> Vec<String> {
        self.shared.catalog.lock().expect("catalog").tokens.clone()
    }

    /// Queries answered or being held, since the start.
    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }

    /// Queries being held now.
    pub fn open_queries(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if !shared.up.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        let shared = Arc::clone(&shared);
        let mut down = shared.down.subscribe();
        down.mark_unchanged();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(answer(req, &shared).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = down.changed() => {}
            }
        });
    }
}

fn reply(status: u16, index: Option<u64>, body: String) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(index) = index {
        builder = builder.header("x-consul-index", index.to_string());
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .expect("a response")
}

/// Consul's `wait`: `10s`, `500ms`, `5m`; 5 minutes when absent, at most 10.
fn parse_wait(text: Option<&str>) -> Duration {
    let Some(text) = text else {
        return Duration::from_secs(300);
    };
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number.parse().unwrap_or(0);
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(60 * n),
        _ => Duration::from_secs(n),
    };
    d.min(Duration::from_secs(600))
}

async fn answer(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let Some(service) = path.strip_prefix("/v1/health/service/") else {
        return reply(404, None, "unknown endpoint".into());
    };
    let params: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let token = req
        .headers()
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    {
        let mut catalog = shared.catalog.lock().expect("catalog");
        catalog.tokens.push(token);
        if let Some(dc) = param("dc") {
            if dc != catalog.datacenter {
                return reply(500, None, format!("No path to datacenter {dc}"));
            }
        }
    }
    shared.queries.fetch_add(1, Ordering::SeqCst);

    // Blocking, as Consul: with an index, hold the query until the catalog's index is
    // greater than it, the query is abandoned, or `wait` passes.
    let asked: u64 = param("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    if asked > 0 {
        let mut index = shared.index.subscribe();
        let mut abandon = shared.abandon.subscribe();
        abandon.mark_unchanged();
        shared.open.fetch_add(1, Ordering::SeqCst);
        let wait = parse_wait(param("wait"));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = index.wait_for(|now| *now > asked) => {}
            _ = abandon.changed() => {}
        }
        shared.open.fetch_sub(1, Ordering::SeqCst);
    }

    let index = *shared.index.borrow();
    let passing_only = param("passing").is_some_and(|p| p != "false");
    let tag = param("tag");
    let catalog = shared.catalog.lock().expect("catalog");
    let entries: Vec<serde_json::Value> = catalog
        .instances
        .iter()
        .filter(|i| i.service == service)
        .filter(|i| !passing_only || i.passing)
        .filter(|i| tag.is_none_or(|t| i.tags.iter().any(|x| x == t)))
        .map(|i| {
            json!({
                "Node": { "Node": format!("node-{}", i.id), "Address": "127.0.0.1", "Datacenter": catalog.datacenter },
                "Service": {
                    "ID": i.id, "Service": i.service, "Tags": i.tags,
                    "Address": i.addr.ip().to_string(), "Port": i.addr.port(),
                    "Weights": { "Passing": 1, "Warning": 1 },
                },
                "Checks": [{ "CheckID": "serfHealth", "Status": if i.passing { "passing" } else { "critical" } }],
            })
        })
        .collect();
    reply(
        200,
        Some(index),
        serde_json::Value::Array(entries).to_string(),
    )
}
