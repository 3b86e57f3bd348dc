//! Clients on keep-alive connections: however a request's bytes arrive (in pieces, larger than
//! one read, with its body in the same packet), the gateway serves it whole, and a client that
//! connects and leaves without a request disturbs no one.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::http::read_one_response;
use crate::common::{spawn_upstream, Gateway, Reply, Upstream};

async fn gateway() -> (Gateway, Upstream) {
    let up = spawn_upstream("app", |seen| {
        Reply::Body(
            200,
            format!("{} {} {}", seen.method, seen.uri, seen.body_len),
        )
    })
    .await;
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"all\"\npath = \"/\"\nupstream = \"app\"\n",
        up.addr
    ))
    .await;
    (gw, up)
}

async fn connect(gw: &Gateway) -> TcpStream {
    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn one_connection_serves_request_after_request() {
    let (gw, up) = gateway().await;
    let mut client = connect(&gw).await;
    for i in 0..5 {
        let head = format!("GET /n/{i} HTTP/1.1\r\nHost: t\r\n\r\n");
        client.write_all(head.as_bytes()).await.unwrap();
        let answer = read_one_response(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&format!("GET /n/{i} 0")), "{answer}");
    }
    assert_eq!(up.hits(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_sent_in_pieces_is_served_whole() {
    let (gw, up) = gateway().await;
    let mut client = connect(&gw).await;
    // A slow client: the gateway's first read gets only the start of the request line. The
    // pauses are what is being tested (each piece arrives on its own), not a wait for readiness.
    let pieces = [
        "GE",
        "T /slow HTTP/1.1\r\n",
        "Host: t\r\nX-Piece",
        ": one\r\n",
        "\r\n",
    ];
    for piece in pieces {
        client.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let answer = read_one_response(&mut client).await;
    assert!(answer.ends_with("GET /slow 0"), "{answer}");
    assert_eq!(up.seen()[0].header("x-piece"), Some("one"));

    // The same connection goes on to the next request.
    client
        .write_all(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(read_one_response(&mut client)
        .await
        .ends_with("GET /next 0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_larger_than_one_read_is_served() {
    let (gw, up) = gateway().await;
    let mut client = connect(&gw).await;
    // Over the 4 KiB the gateway reads while it waits for a request.
    let big = "b".repeat(10_000);
    let head = format!("GET /big HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    let answer = read_one_response(&mut client).await;
    assert!(answer.ends_with("GET /big 0"), "{answer}");
    assert_eq!(up.seen()[0].header("x-big"), Some(big.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_in_the_same_packet_as_its_head_is_forwarded() {
    let (gw, up) = gateway().await;
    let mut client = connect(&gw).await;
    for (i, body) in ["x".repeat(10), "y".repeat(6_000)].iter().enumerate() {
        let request = format!(
            "POST /post/{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let answer = read_one_response(&mut client).await;
        assert!(
            answer.ends_with(&format!("POST /post/{i} {}", body.len())),
            "{answer}"
        );
    }
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_leave_without_a_request_disturb_no_one() {
    let (gw, up) = gateway().await;
    // Connect and close at once, and connect, start a request and close half-way.
    for _ in 0..20 {
        drop(connect(&gw).await);
    }
    for _ in 0..5 {
        let mut half = connect(&gw).await;
        half.write_all(b"GET /half HTTP/1.1\r\nHo").await.unwrap();
        half.shutdown().await.unwrap();
    }
    // One more stays open and idle throughout.
    let _idle = connect(&gw).await;

    let answer = gw.get("/after").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "GET /after 0");
    assert!(up.seen().iter().all(|s| s.uri != "/half"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_closes_its_side_after_the_request_still_gets_the_answer() {
    let (gw, up) = gateway().await;
    // HTTP/1.0 tools send the request, shut down their write side, and read: on either driver
    // that is a finished request, not an abandoned one (RFC 9112 section 9.6).
    for request in [
        "GET /half/1 HTTP/1.0\r\nHost: t\r\n\r\n",
        "GET /half/2 HTTP/1.1\r\nHost: t\r\n\r\n",
        "POST /half/3 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let mut client = connect(&gw).await;
        client.write_all(request.as_bytes()).await.unwrap();
        client.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
            .await
            .expect("an answer")
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{request:?}: {text}");
    }
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn past_max_client_connections_a_new_connection_is_closed_at_once() {
    let up = spawn_upstream("app", |_| Reply::Status(200, "ok")).await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\naccess_log = \"off\"\nmax_client_connections = 3\n\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"all\"\npath = \"/\"\nupstream = \"app\"\n",
        up.addr
    ))
    .await;
    // Three keep-alive clients hold every place.
    let mut held = Vec::new();
    for i in 0..3 {
        let mut client = connect(&gw).await;
        let head = format!("GET /held/{i} HTTP/1.1\r\nHost: t\r\n\r\n");
        client.write_all(head.as_bytes()).await.unwrap();
        assert!(read_one_response(&mut client)
            .await
            .starts_with("HTTP/1.1 200"));
        held.push(client);
    }
    // A fourth is closed before anything is read.
    let mut fourth = connect(&gw).await;
    let _ = fourth
        .write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let metrics = gw
        .metrics_showing(&["portico_client_connections_refused_total 1"])
        .await;
    assert!(
        metrics.contains("portico_client_connections_max 3"),
        "{metrics}"
    );
    // The held connections still work, and once one closes there is room again.
    let mut first = held.remove(0);
    first
        .write_all(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(read_one_response(&mut first)
        .await
        .starts_with("HTTP/1.1 200"));
    drop(first);
    crate::common::eventually("a place to come free", Duration::from_secs(5), async || {
        let Ok(mut client) = TcpStream::connect(gw.addr).await else {
            return false;
        };
        if client
            .write_all(b"GET /later HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
        answer.starts_with(b"HTTP/1.1 200")
    })
    .await;
}
