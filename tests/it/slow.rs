//! Peers that are slow on purpose, or just slow: a client that trickles its body or will not
//! read its answer, an upstream that trickles its answer. None of them may hold the gateway's
//! connections beyond the deadlines it sets, and each gets the honest answer it can still
//! receive.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::faults::{Fault, FaultyUpstream};
use crate::common::http::read_one_response;
use crate::common::wire::WireUpstream;
use crate::common::{eventually, one_route, Gateway};

fn with_server(server: &str, rest: &str) -> String {
    format!(
        "[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\naccess_log = \"off\"\n{server}\n\n{rest}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_trickles_in_is_cut_off_at_the_body_timeout() {
    let up = WireUpstream::start().await;
    let gw = Gateway::start(&with_server(
        "body_timeout = \"1s\"",
        &one_route("app", up.addr, "", "/"),
    ))
    .await;
    let client = TcpStream::connect(gw.addr).await.unwrap();
    let (mut reader, mut writer) = client.into_split();
    writer
        .write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    // One byte every 200 ms: each read is quick, the body never completes in time.
    let trickle = tokio::spawn(async move {
        for _ in 0..50 {
            if writer.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), reader.read_to_end(&mut answer)).await;
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert_eq!(up.hits(), 0, "the upstream never got a whole request");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_will_not_read_its_answer_is_cut_off_and_the_upstream_let_go() {
    let target = FaultyUpstream::start("a", Fault::Huge).await;
    let gw = Gateway::start(&with_server(
        "send_timeout = \"1s\"\nmin_send_rate = \"0\"",
        &one_route("app", target.addr, "", "/"),
    ))
    .await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // Read the head, then nothing: the kernel's buffers fill, the gateway's writes stall.
    let mut head = [0u8; 256];
    let _ = client.read(&mut head).await.unwrap();
    eventually(
        "the gateway to give up on the client and let the upstream go",
        Duration::from_secs(30),
        async || target.cut_off() == 1,
    )
    .await;
    let status = gw.admin_json("/status").await;
    assert_eq!(
        status["upstreams"]["app"]["targets"][0]["pool"]["busy"], 0,
        "{status}"
    );
    drop(client);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_trickles_its_head_gets_the_client_a_504_at_the_route_timeout() {
    let target = FaultyUpstream::start("a", Fault::TrickleHead).await;
    let mut config = one_route("app", target.addr, "read_timeout = \"10s\"", "/");
    config.push_str("timeout = \"1s\"\n");
    let gw = Gateway::start(&config).await;
    let started = std::time::Instant::now();
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answer = read_one_response(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("upstream_timeout"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
