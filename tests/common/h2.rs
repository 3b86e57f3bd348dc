//! A hand-written HTTP/2 client over h2c (RFC 9113), for the frames a real client never
//! sends: a stream reset as soon as it is opened, a header block that never ends, a window
//! update of zero, more streams than the server allows, a request that would smuggle when
//! turned into HTTP/1. It writes frames exactly as a test spells them, and reads the
//! server's frames back decoded (HPACK by the `hpack` crate), acknowledging SETTINGS and
//! PING as any client must.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Error codes (RFC 9113 section 7).
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A frame the server sent, as far as the tests care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Headers {
        stream: u32,
        end_stream: bool,
        fields: Vec<(String, String)>,
    },
    Data {
        stream: u32,
        data: Vec<u8>,
        end_stream: bool,
    },
    Reset {
        stream: u32,
        code: u32,
    },
    GoAway {
        last_stream: u32,
        code: u32,
    },
    Settings,
    WindowUpdate,
    Other(u8),
}

/// How one stream ended, seen from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A response: its `:status`, headers and body.
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// RST_STREAM with this code.
    Reset(u32),
    /// GOAWAY with this code, or the connection closed (`None`) first.
    ConnectionEnded(Option<u32>),
}

impl Answer {
    pub fn status(&self) -> Option<u16> {
        match self {
            Answer::Response { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            Answer::Response { headers, .. } => headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// One frame's bytes: the 9-byte header (length, type, flags, stream) and the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A header block of literal fields without indexing and without Huffman coding (RFC 7541
/// section 6.2.2): every byte as the test wrote it, pseudo-headers included.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_length(&mut out, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_length(&mut out, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// An HPACK string length: a 7-bit prefix integer with the Huffman bit clear.
fn hpack_length(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// The pseudo-headers and headers of a plain GET of `path` from `authority`.
pub fn get<'a>(authority: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
    ]
}

pub struct RawH2 {
    stream: TcpStream,
    read: Vec<u8>,
    decoder: hpack::Decoder<'static>,
    /// The server's SETTINGS have been acknowledged.
    closed: bool,
    pub authority: String,
}

impl RawH2 {
    /// Connect, send the preface and empty SETTINGS.
    pub async fn connect(addr: SocketAddr) -> RawH2 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).await.expect("send the preface");
        RawH2 {
            stream,
            read: Vec::new(),
            decoder: hpack::Decoder::new(),
            closed: false,
            authority: addr.to_string(),
        }
    }

    /// Write bytes as they are. `false` when the server has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// HEADERS on `stream` with `fields` in one block.
    pub async fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        let bytes = frame(HEADERS, flags, stream, &header_block(fields));
        self.send(&bytes).await;
    }

    /// DATA on `stream`.
    pub async fn data(&mut self, stream: u32, data: &[u8], end_stream: bool) {
        let flags = if end_stream { END_STREAM } else { 0 };
        self.send(&frame(DATA, flags, stream, data)).await;
    }

    /// The next frame from the server, within `wait`; `None` once the connection is closed
    /// (or nothing came in time). SETTINGS and PING are answered on the way.
    pub async fn next_frame(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = self.parse_one().await {
                return Some(frame);
            }
            if self.closed {
                return None;
            }
            let mut chunk = [0u8; 16 << 10];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.closed = true;
                }
                Ok(Ok(n)) => self.read.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn parse_one(&mut self) -> Option<Frame> {
        if self.read.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, self.read[0], self.read[1], self.read[2]]) as usize;
        if self.read.len() < 9 + len {
            return None;
        }
        let kind = self.read[3];
        let flags = self.read[4];
        let stream = u32::from_be_bytes([self.read[5], self.read[6], self.read[7], self.read[8]])
            & 0x7fff_ffff;
        let payload: Vec<u8> = self.read[9..9 + len].to_vec();
        self.read.drain(..9 + len);
        let frame = match kind {
            DATA => {
                // Give the window back so long answers keep coming.
                if !payload.is_empty() {
                    let inc = (payload.len() as u32).to_be_bytes();
                    let mut bytes = frame(WINDOW_UPDATE, 0, 0, &inc);
                    bytes.extend(frame(WINDOW_UPDATE, 0, stream, &inc));
                    self.send(&bytes).await;
                }
                Frame::Data {
                    stream,
                    data: payload,
                    end_stream: flags & END_STREAM != 0,
                }
            }
            HEADERS => {
                let mut block = &payload[..];
                if flags & 0x8 != 0 {
                    let pad = block[0] as usize;
                    block = &block[1..block.len() - pad];
                }
                if flags & 0x20 != 0 {
                    block = &block[5..];
                }
                let fields = self
                    .decoder
                    .decode(block)
                    .expect("the server's header block decodes")
                    .into_iter()
                    .map(|(n, v)| {
                        (
                            String::from_utf8_lossy(&n).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })
                    .collect();
                Frame::Headers {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    fields,
                }
            }
            RST_STREAM => Frame::Reset {
                stream,
                code: u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]),
            },
            GOAWAY => Frame::GoAway {
                last_stream: u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff,
                code: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
            },
            SETTINGS => {
                if flags & ACK == 0 {
                    self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                Frame::Settings
            }
            PING => {
                if flags & ACK == 0 {
                    self.send(&frame(PING, ACK, 0, &payload)).await;
                }
                Frame::Other(PING)
            }
            WINDOW_UPDATE => Frame::WindowUpdate,
            other => Frame::Other(other),
        };
        Some(frame)
    }

    /// Read until `stream` is answered whole, reset, or the connection ends; frames of
    /// other streams are skipped.
    pub async fn answer(&mut self, stream: u32) -> Answer {
        let mut status = None;
        let mut headers = Vec::new();
        let mut body = Vec::new();
        loop {
            let Some(frame) = self.next_frame(Duration::from_secs(10)).await else {
                return Answer::ConnectionEnded(None);
            };
            match frame {
                Frame::Headers {
                    stream: s,
                    end_stream,
                    fields,
                } if s == stream => {
                    for (name, value) in fields {
                        if name == ":status" {
                            status = value.parse().ok();
                        } else {
                            headers.push((name, value));
                        }
                    }
                    if end_stream {
                        break;
                    }
                }
                Frame::Data {
                    stream: s,
                    data,
                    end_stream,
                } if s == stream => {
                    body.extend(data);
                    if end_stream {
                        break;
                    }
                }
                Frame::Reset { stream: s, code } if s == stream => return Answer::Reset(code),
                Frame::GoAway { code, .. } => return Answer::ConnectionEnded(Some(code)),
                _ => {}
            }
        }
        Answer::Response {
            status: status.expect("a :status"),
            headers,
            body,
        }
    }

    /// Frames until the connection ends or `wait` passes with nothing new: the GOAWAY code
    /// if one came, and whether the connection was closed.
    pub async fn until_closed(&mut self, wait: Duration) -> (Option<u32>, bool) {
        let mut goaway = None;
        while let Some(frame) = self.next_frame(wait).await {
            if let Frame::GoAway { code, .. } = frame {
                goaway = Some(code);
            }
        }
        (goaway, self.closed)
    }
}
