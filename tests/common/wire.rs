//! An upstream that records the exact bytes of every request it receives, before any HTTP
//! library could normalise them, and answers each with a small 200. For tests that check
//! what crosses the gateway: the request line, every header line as written, the body.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as it arrived: head and body, byte for byte.
#[derive(Debug, Clone)]
pub struct WireRequest {
    /// The request line and header lines, without the blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl WireRequest {
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// The target of the request line, as written.
    pub fn target(&self) -> &str {
        self.request_line().split(' ').nth(1).unwrap_or_default()
    }

    /// Every value of header `name` (case-insensitive), one per line, as written.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }

    /// The header names, as written.
    pub fn header_names(&self) -> Vec<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(n, _)| n)
            .collect()
    }
}

pub struct WireUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<WireRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WireUpstream {
    pub async fn start() -> WireUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&log)));
            }
        });
        WireUpstream { addr, seen, task }
    }

    pub fn seen(&self) -> Vec<WireRequest> {
        self.seen.lock().expect("wire log").clone()
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().expect("wire log").len()
    }
}

impl Drop for WireUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Requests on one connection, until it closes. Bodies are framed by `Content-Length` or
/// chunked, which is all a gateway sends.
async fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<WireRequest>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = read_until(&mut stream, &mut buf, b"\r\n\r\n", 0).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let request = WireRequest {
            head,
            body: Vec::new(),
        };
        let length: Option<usize> = request
            .header_values("content-length")
            .first()
            .and_then(|v| v.parse().ok());
        let chunked = request
            .header_values("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            match read_until(&mut stream, &mut buf, b"0\r\n\r\n", 0).await {
                Some(end) => buf.drain(..end + 5).collect(),
                None => return,
            }
        } else {
            let want = length.unwrap_or(0);
            while buf.len() < want {
                if !fill(&mut stream, &mut buf).await {
                    return;
                }
            }
            buf.drain(..want).collect()
        };
        log.lock()
            .expect("wire log")
            .push(WireRequest { body, ..request });
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Read until `pattern` appears in `buf` at or after `from`; its position, or `None` once the
/// connection closes first.
async fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    pattern: &[u8],
    from: usize,
) -> Option<usize> {
    loop {
        if let Some(at) = buf[from..]
            .windows(pattern.len())
            .position(|w| w == pattern)
        {
            return Some(from + at);
        }
        if !fill(stream, buf).await {
            return None;
        }
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// The real gateway with `server` added to its `[server]` table, and one catch-all route to
/// an upstream that logs the bytes it gets: the setup of every test that sends exact bytes
/// and checks what crosses.
pub async fn gateway_to_wire(server: &str) -> (super::Gateway, WireUpstream) {
    let up = WireUpstream::start().await;
    let gw = super::Gateway::start(&format!(
        "[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\naccess_log = \"off\"\n{server}\n\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"all\"\npath = \"/\"\nupstream = \"app\"\n",
        up.addr
    ))
    .await;
    (gw, up)
}
