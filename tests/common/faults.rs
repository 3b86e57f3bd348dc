//! An upstream that misbehaves on demand, switchable while a test runs: healthy, reset on
//! accept, reset after reading the request, hang, slow trickle, garbage bytes, or 503.
//! A raw TCP server, because a well-behaved HTTP library cannot be made to misbehave.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    Healthy,
    /// Answer, then close the connection at once (keep-alive advertised, so the gateway pools
    /// it): the next request on it finds it closed.
    HealthyThenClose,
    ResetOnAccept,
    ResetAfterRequest,
    Hang,
    /// Headers at once, then one body byte every 200 ms.
    Trickle,
    Garbage,
    Status503,
    /// Answer 200, 300 ms after the request arrived.
    Slow,
    /// The answer's head one byte every 200 ms, for ever.
    TrickleHead,
    /// A 64 MiB answer, as fast as the gateway takes it; a write that fails is counted.
    Huge,
}

impl Fault {
    fn from_u8(v: u8) -> Fault {
        [
            Fault::Healthy,
            Fault::HealthyThenClose,
            Fault::ResetOnAccept,
            Fault::ResetAfterRequest,
            Fault::Hang,
            Fault::Trickle,
            Fault::Garbage,
            Fault::Status503,
            Fault::Slow,
            Fault::TrickleHead,
            Fault::Huge,
        ]
        .get(v as usize)
        .copied()
        .unwrap_or(Fault::Healthy)
    }
}

pub struct FaultyUpstream {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Connections accepted.
    accepts: Arc<AtomicUsize>,
    /// Requests whose head (and body) were read.
    requests: Arc<AtomicUsize>,
    /// Connections the gateway closed while they waited for a request.
    hangups: Arc<AtomicUsize>,
    /// Connections open now, and the most that were open at once.
    open: Arc<AtomicUsize>,
    peak_open: Arc<AtomicUsize>,
    /// Answers the gateway stopped taking before they were all written.
    cut_off: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyUpstream {
    pub async fn start(name: &str, fault: Fault) -> FaultyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(fault as u8));
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let hangups = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let peak_open = Arc::new(AtomicUsize::new(0));
        let cut_off = Arc::new(AtomicUsize::new(0));
        let counts = Counts {
            cut_off: Arc::clone(&cut_off),
            requests: Arc::clone(&requests),
            hangups: Arc::clone(&hangups),
            open: Arc::clone(&open),
            peak_open: Arc::clone(&peak_open),
        };
        let (m, a, name) = (Arc::clone(&mode), Arc::clone(&accepts), name.to_string());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, Arc::clone(&m), counts.clone(), name.clone()));
            }
        });
        FaultyUpstream {
            addr,
            mode,
            accepts,
            requests,
            hangups,
            open,
            peak_open,
            cut_off,
            task,
        }
    }

    pub fn set(&self, fault: Fault) {
        self.mode.store(fault as u8, Ordering::SeqCst);
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn hangups(&self) -> usize {
        self.hangups.load(Ordering::SeqCst)
    }

    /// Connections open to this upstream now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Answers the gateway stopped taking before they were whole.
    pub fn cut_off(&self) -> usize {
        self.cut_off.load(Ordering::SeqCst)
    }

    /// The most connections that were open to this upstream at once.
    pub fn peak_open(&self) -> usize {
        self.peak_open.load(Ordering::SeqCst)
    }
}

/// What a connection's task counts.
#[derive(Clone)]
struct Counts {
    cut_off: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    hangups: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    peak_open: Arc<AtomicUsize>,
}

/// Counts one connection open for as long as it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(counts: &Counts) -> Self {
        let now = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
        counts.peak_open.fetch_max(now, Ordering::SeqCst);
        OpenConnection(Arc::clone(&counts.open))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[allow(deprecated)] // with a zero linger, drop sends RST at once and never blocks
fn reset(stream: TcpStream) {
    // SO_LINGER 0: closing sends RST instead of FIN.
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Read one request (head and Content-Length body); `None` at EOF, else whether the request
/// asked to close the connection after its answer.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<bool> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + length);
    Some(
        head.lines()
            .any(|l| l.starts_with("connection:") && l.contains("close")),
    )
}

async fn serve(mut stream: TcpStream, mode: Arc<AtomicU8>, counts: Counts, name: String) {
    let _open = OpenConnection::new(&counts);
    if Fault::from_u8(mode.load(Ordering::SeqCst)) == Fault::ResetOnAccept {
        return reset(stream);
    }
    let mut buf = Vec::new();
    loop {
        let Some(close) = read_request(&mut stream, &mut buf).await else {
            counts.hangups.fetch_add(1, Ordering::SeqCst);
            return;
        };
        counts.requests.fetch_add(1, Ordering::SeqCst);
        let ok = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-upstream: {name}\r\n\r\nok");
        match Fault::from_u8(mode.load(Ordering::SeqCst)) {
            Fault::Healthy => {
                if stream.write_all(ok.as_bytes()).await.is_err() {
                    return;
                }
            }
            Fault::TrickleHead => {
                for byte in format!(
                    "HTTP/1.1 200 OK\r\nx-upstream: {name}\r\nx-pad: {}",
                    "p".repeat(1000)
                )
                .bytes()
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if stream.write_all(&[byte]).await.is_err() {
                        return;
                    }
                }
                return;
            }
            Fault::Huge => {
                const SIZE: usize = 64 << 20;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\nx-upstream: {name}\r\n\r\n"
                );
                let chunk = vec![b'h'; 64 << 10];
                let mut written = 0;
                let mut failed = stream.write_all(head.as_bytes()).await.is_err();
                while !failed && written < SIZE {
                    failed = stream.write_all(&chunk).await.is_err();
                    written += chunk.len();
                }
                if failed {
                    counts.cut_off.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            Fault::Slow => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                // As a real server does: a request that asked to close is the last.
                if stream.write_all(ok.as_bytes()).await.is_err() || close {
                    return;
                }
            }
            Fault::HealthyThenClose => {
                let _ = stream.write_all(ok.as_bytes()).await;
                return;
            }
            Fault::ResetOnAccept | Fault::ResetAfterRequest => return reset(stream),
            Fault::Hang => std::future::pending::<()>().await,
            Fault::Trickle => {
                let head =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: 100\r\nx-upstream: {name}\r\n\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..100 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if stream.write_all(b"x").await.is_err() {
                        return;
                    }
                }
            }
            Fault::Garbage => {
                let _ = stream
                    .write_all(b"THIS IS NOT HTTP\r\n\r\n\x00\x01\x02")
                    .await;
                return;
            }
            Fault::Status503 => {
                let busy = format!("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nx-upstream: {name}\r\n\r\nbusy");
                if stream.write_all(busy.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}
