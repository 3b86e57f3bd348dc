//! Upstream servers for tests: a real HTTP/1.1 server on 127.0.0.1:0 whose answers a test
//! chooses, which records every request it sees, and which can be taken down (connections
//! refused at accept and dropped) and brought back on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, exactly as received.
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body_len: usize,
    /// The body, exactly as received.
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How the upstream answers a request.
pub enum Reply {
    /// Status and body, with `x-upstream: NAME` added.
    Status(u16, &'static str),
    /// Status and a body made for this request (a JWKS that rotates, say).
    Body(u16, String),
    /// Wait, then answer 200.
    Delay(Duration),
    /// Wait, then answer this status and body.
    DelayBody(Duration, u16, String),
    /// Never answer.
    Hang,
    /// Status, extra headers (Cache-Control, Vary, ...) and body.
    With(u16, Vec<(&'static str, String)>, String),
    /// Wait, then answer like `With`.
    DelayWith(Duration, u16, Vec<(&'static str, String)>, String),
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    up: Arc<AtomicBool>,
    /// Tells open connections to close when the upstream goes down.
    down_tx: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// Start an upstream named `name` (sent back as `x-upstream`), answering with `handler`.
pub async fn spawn_upstream(
    name: &str,
    handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an upstream");
    spawn_upstream_on(listener, name, handler)
}

/// An upstream answering 200 with its name on `addr` (another loopback address, the same
/// port: the targets of a DNS name share their port), or `None` when it is taken.
pub async fn spawn_ok_at(addr: SocketAddr, name: &str) -> Option<Upstream> {
    let listener = TcpListener::bind(addr).await.ok()?;
    Some(spawn_upstream_on(listener, name, |_| {
        Reply::Status(200, "ok")
    }))
}

fn spawn_upstream_on(
    listener: TcpListener,
    name: &str,
    handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
) -> Upstream {
    let addr = listener.local_addr().expect("upstream address");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = Arc::new(AtomicBool::new(true));
    let (down_tx, down_rx) = watch::channel(0u64);
    let handler: Handler = Arc::new(handler);
    let task = tokio::spawn(serve(
        listener,
        name.to_string(),
        handler,
        Arc::clone(&seen),
        Arc::clone(&up),
        down_rx,
    ));
    Upstream {
        name: name.to_string(),
        addr,
        seen,
        up,
        down_tx,
        task,
    }
}

/// An upstream that answers 200 with its name to everything.
pub async fn spawn_ok(name: &str) -> Upstream {
    spawn_upstream(name, |_| Reply::Status(200, "ok")).await
}

/// The addresses of `ups` as `/status` labels them, sorted (`Gateway::targets_of`).
pub fn labels(ups: &[&Upstream]) -> Vec<String> {
    let mut list: Vec<String> = ups.iter().map(|u| u.addr.to_string()).collect();
    list.sort();
    list
}

impl Upstream {
    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().expect("seen lock").len()
    }

    /// Refuse new connections (accepted and closed at once) and close the open ones.
    pub fn go_down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.down_tx.send_modify(|n| *n += 1);
    }

    pub fn come_back(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    name: String,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
    up: Arc<AtomicBool>,
    down_rx: watch::Receiver<u64>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if !up.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        let (name, handler, seen) = (name.clone(), Arc::clone(&handler), Arc::clone(&seen));
        let mut down_rx = down_rx.clone();
        down_rx.mark_unchanged();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (name, handler, seen) = (name.clone(), Arc::clone(&handler), Arc::clone(&seen));
                async move { Ok::<_, Infallible>(answer(req, &name, &handler, &seen).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = down_rx.changed() => {}
            }
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    handler: &Handler,
    seen: &Mutex<Vec<Seen>>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let record = Seen {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body_len: body.len(),
        body,
    };
    seen.lock().expect("seen lock").push(record.clone());
    let mut extra = Vec::new();
    let (status, body) = match handler(&record) {
        Reply::With(status, headers, body) => {
            extra = headers;
            (status, Bytes::from(body))
        }
        Reply::Status(status, body) => (status, Bytes::from_static(body.as_bytes())),
        Reply::Body(status, body) => (status, Bytes::from(body)),
        Reply::Delay(d) => {
            tokio::time::sleep(d).await;
            (200, Bytes::from_static(b"ok"))
        }
        Reply::DelayBody(d, status, body) => {
            tokio::time::sleep(d).await;
            (status, Bytes::from(body))
        }
        Reply::DelayWith(d, status, headers, body) => {
            tokio::time::sleep(d).await;
            extra = headers;
            (status, Bytes::from(body))
        }
        Reply::Hang => {
            std::future::pending::<()>().await;
            (200, Bytes::new())
        }
    };
    let mut builder = Response::builder()
        .status(status)
        .header("x-upstream", name);
    // text/plain unless the reply names its own type.
    if !extra
        .iter()
        .any(|(h, _)| h.eq_ignore_ascii_case("content-type"))
    {
        builder = builder.header("content-type", "text/plain");
    }
    for (header, value) in extra {
        builder = builder.header(header, value);
    }
    builder.body(Full::new(body)).expect("a valid response")
}
