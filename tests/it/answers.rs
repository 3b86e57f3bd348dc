//! Upstream answers of every shape reach a keep-alive client intact: a body that ends when the
//! upstream closes, interim 1xx answers, HEAD and 204 without a body, a body in many pieces,
//! and a 101 nobody asked for. A plain GET takes the gateway's direct path and a request with
//! a body Pingora's proxy, so one client connection here goes through both, in turn. So does
//! a GET to a route that caches: the direct path hands it, unread, to Pingora's proxy.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{one_route, Gateway};

/// An upstream that answers each path with fixed bytes: the shapes a library would not send.
async fn scripted_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

async fn serve(mut stream: TcpStream) {
    let mut buf = Vec::new();
    while let Some((method, path)) = read_request(&mut stream, &mut buf).await {
        let answer: &[u8] = match path.as_str() {
            "/close-framed" => b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
            "/interim" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
            "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n",
            "/switch" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: Upgrade\r\n\r\n",
            "/cached" => b"HTTP/1.1 200 OK\r\nCache-Control: max-age=300\r\nContent-Length: 6\r\n\r\ncached",
            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n",
            _ if method == "HEAD" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain",
        };
        if stream.write_all(answer).await.is_err() {
            return;
        }
        if path == "/close-framed" || path == "/switch" {
            return;
        }
    }
}

/// The method and path of the next request (its Content-Length body read and dropped).
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String)> {
    let head_end = read_until_head(stream, buf).await?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length = header_of(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    while buf.len() < head_end + length {
        read_more(stream, buf).await?;
    }
    buf.drain(..head_end + length);
    let mut line = head.lines().next()?.split(' ');
    Some((line.next()?.to_string(), line.next()?.to_string()))
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
        .await
        .ok()?
        .ok()?;
    (n > 0).then(|| buf.extend_from_slice(&chunk[..n]))
}

async fn read_until_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        read_more(stream, buf).await?;
    }
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// One answer off a keep-alive connection: its head, and its body decoded (Content-Length
/// or chunked; none for HEAD, 1xx, 204 and 304).
async fn read_answer(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> (String, String) {
    let head_end = read_until_head(stream, buf)
        .await
        .expect("an answer head within 10s");
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end);
    let status: u16 = head[9..12].parse().unwrap();
    let mut body = Vec::new();
    if head_request || status == 204 || status == 304 || status < 200 {
        // No body.
    } else if header_of(&head, "transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                read_more(stream, buf).await.expect("a chunk size");
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap().trim(), 16)
                    .unwrap();
            while buf.len() < line_end + 2 + size + 2 {
                read_more(stream, buf).await.expect("a chunk");
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    } else {
        let length: usize = header_of(&head, "content-length")
            .expect("a framed answer")
            .parse()
            .unwrap();
        while buf.len() < length {
            read_more(stream, buf).await.expect("the whole body");
        }
        body = buf.drain(..length).collect();
    }
    (head, String::from_utf8(body).unwrap())
}

async fn gateway() -> Gateway {
    let upstream = scripted_upstream().await;
    Gateway::start(&one_route("app", upstream, "", "/")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_shape_reaches_one_keep_alive_client_intact() {
    let gw = gateway().await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    let mut ask = async |request: &str, head_request: bool| {
        client.write_all(request.as_bytes()).await.unwrap();
        read_answer(&mut client, &mut buf, head_request).await
    };

    // A body that ends when the upstream closes comes to the client chunked, so the client's
    // connection stays open for the next request.
    let (head, body) = ask("GET /close-framed HTTP/1.1\r\nHost: t\r\n\r\n", false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        header_of(&head, "transfer-encoding").as_deref(),
        Some("chunked")
    );
    assert_eq!(body, "until the end");

    // Interim answers the client did not ask for are dropped; the final one arrives.
    let (head, body) = ask("GET /interim HTTP/1.1\r\nHost: t\r\n\r\n", false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "final");

    // HEAD keeps its Content-Length and sends no body; 204 has none either.
    let (head, body) = ask("HEAD /any HTTP/1.1\r\nHost: t\r\n\r\n", true).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header_of(&head, "content-length").as_deref(), Some("5"));
    assert_eq!(body, "");
    let (head, _) = ask("GET /empty HTTP/1.1\r\nHost: t\r\n\r\n", false).await;
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");

    // A body in pieces arrives whole, and every answer carries the gateway's request id.
    let (head, body) = ask("GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n", false).await;
    assert_eq!(body, "onetwothree");
    assert!(header_of(&head, "x-request-id").is_some(), "{head}");

    // A request with a body (Pingora's proxy) between plain ones (the direct path), on the
    // same connection.
    let (head, body) = ask(
        "POST /form HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        false,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "plain");
    let (_, body) = ask("GET /again HTTP/1.1\r\nHost: t\r\n\r\n", false).await;
    assert_eq!(body, "plain");

    // A client that says it is done gets its answer, then the gateway closes.
    let (_, body) = ask(
        "GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(body, "plain");
    assert_eq!(
        read_more(&mut client, &mut buf).await,
        None,
        "closed after close"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switch_of_protocols_nobody_asked_for_is_a_502() {
    let gw = gateway().await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    client
        .write_all(b"GET /switch HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_answer(&mut client, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert_eq!(
        header_of(&head, "content-type").as_deref(),
        Some("application/problem+json")
    );
    assert!(body.contains("upstream"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caching_route_and_a_plain_one_share_a_keep_alive_connection() {
    let upstream = scripted_upstream().await;
    let gw = Gateway::start(&format!(
        "[cache]\nmax_size = \"1MiB\"\n\n[plugins.cache]\nkind = \"cache\"\nttl = \"60s\"\n\n\
         {}\n[[routes]]\nname = \"cached\"\npath = \"/cached\"\nupstream = \"app\"\nplugins = [\"cache\"]\n",
        one_route("app", upstream, "", "/")
    ))
    .await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    let mut ask = async |path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        read_answer(&mut client, &mut buf, false).await
    };
    for (path, x_cache, expected) in [
        ("/cached", Some("MISS"), "cached"),
        ("/plain", None, "plain"),
        ("/cached", Some("HIT"), "cached"),
        ("/plain", None, "plain"),
    ] {
        let (head, body) = ask(path).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert_eq!(
            header_of(&head, "x-cache").as_deref(),
            x_cache,
            "{path}: {head}"
        );
        assert_eq!(body, expected);
    }
}
