//! gRPC through the gateway, with a real tonic client and server: unary and server-streaming
//! calls to an h2c upstream with their trailers passed through, `grpc-timeout` honoured by the
//! gateway, and the gateway's own refusals in gRPC's form (trailers-only, `grpc-status`), all
//! counted by their `grpc-status`.

use std::time::Duration;

use tonic::Code;

use crate::common::grpc::{self, GrpcServer};
use crate::common::h2::RawH2;
use crate::common::Gateway;

/// HTTP/2 for clients, `/test.Echo` to the gRPC server over h2c, behind an API key when
/// `protected`.
async fn gateway(server: &GrpcServer, protected: bool) -> Gateway {
    let plugins = if protected {
        "plugins = [\"keys\"]"
    } else {
        ""
    };
    Gateway::start(&format!(
        r#"[server]
listen = ["${{PORTICO_LISTEN}}"]
access_log = "off"
http2 = true

[consumers.ops]
api_keys = ["ops-key-0123456789"]

[plugins.keys]
kind = "api_key"

[upstreams.echo]
targets = ["{}"]
protocol = "h2c"

[[routes]]
name = "echo"
path = "/test.Echo"
upstream = "echo"
{plugins}
"#,
        server.addr
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn unary_and_server_streaming_calls_pass_through_with_their_trailers() {
    let server = GrpcServer::start().await;
    let gw = gateway(&server, false).await;
    let channel = grpc::channel(gw.addr).await;

    let resp = grpc::unary(&channel, "/test.Echo/Unary", "hi", &[], None)
        .await
        .expect("the unary call succeeds");
    assert_eq!(resp.get_ref().text, "echo: hi");

    let (items, end) = grpc::count(&channel, 5, "").await;
    assert_eq!(items.len(), 5);
    assert_eq!(items[4].text, "item 4");
    assert!(end.is_ok(), "{end:?}");

    // The status the server puts in its trailers reaches the client.
    let (items, end) = grpc::count(&channel, 3, "fail").await;
    assert_eq!(items.len(), 3);
    let status = end.expect_err("the stream ends with the server's error");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "enough for today");

    gw.metrics_showing(&[
        "portico_grpc_requests_total{grpc_status=\"OK\",route=\"echo\"} 2",
        "portico_grpc_requests_total{grpc_status=\"RESOURCE_EXHAUSTED\",route=\"echo\"} 1",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_refused_by_auth_gets_grpc_status_16() {
    let server = GrpcServer::start().await;
    let gw = gateway(&server, true).await;
    let channel = grpc::channel(gw.addr).await;

    let status = grpc::unary(&channel, "/test.Echo/Unary", "hi", &[], None)
        .await
        .expect_err("no API key");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("API key"),
        "the gateway's detail: {}",
        status.message()
    );
    assert_eq!(
        server.calls(),
        0,
        "the refused call never reached the server"
    );

    let ok = grpc::unary(
        &channel,
        "/test.Echo/Unary",
        "hi",
        &[("x-api-key", "ops-key-0123456789")],
        None,
    )
    .await
    .expect("with the key");
    assert_eq!(ok.get_ref().text, "echo: hi");
    gw.metrics_showing(&[
        "portico_grpc_requests_total{grpc_status=\"UNAUTHENTICATED\",route=\"echo\"} 1",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn other_gateway_answers_are_grpc_too() {
    let server = GrpcServer::start().await;
    let gw = gateway(&server, false).await;
    let channel = grpc::channel(gw.addr).await;

    // No route: UNIMPLEMENTED (12).
    let status = grpc::unary(&channel, "/other.Service/Call", "x", &[], None)
        .await
        .expect_err("no route");
    assert_eq!(status.code(), Code::Unimplemented);

    // The upstream gone: UNAVAILABLE (14).
    drop(server);
    let status = grpc::unary(&channel, "/test.Echo/Unary", "x", &[], None)
        .await
        .expect_err("no upstream");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_honours_grpc_timeout() {
    // tonic enforces `grpc-timeout` on both ends, so this upstream is one that ignores it (an
    // HTTP/2 server that answers /Slow after 2 s), and the call is written by hand (the same
    // frames a gRPC client sends): it allows 300 ms, and the DEADLINE_EXCEEDED must come from
    // the gateway.
    let slow = crate::common::origin::Origin::plain(crate::common::origin::Speaks::H2c).await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\naccess_log = \"off\"\nhttp2 = true\n\n\
         [upstreams.echo]\ntargets = [\"{}\"]\nprotocol = \"h2c\"\n\n\
         [[routes]]\nname = \"echo\"\npath = \"/test.Echo\"\nupstream = \"echo\"\n",
        slow.addr
    ))
    .await;
    use prost::Message;
    let msg = grpc::EchoMsg {
        text: "x".into(),
        count: 0,
    }
    .encode_to_vec();
    let mut body = vec![0u8];
    body.extend((msg.len() as u32).to_be_bytes());
    body.extend(msg);
    let mut raw = RawH2::connect(gw.addr).await;
    let authority = raw.authority.clone();
    let started = std::time::Instant::now();
    raw.headers(
        1,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", &authority),
            (":path", "/test.Echo/Slow"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "300m"),
        ],
        false,
    )
    .await;
    raw.data(1, &body, true).await;
    let answer = raw.answer(1).await;
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    assert_eq!(answer.header("grpc-status"), Some("4"), "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/grpc"));
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "cut at the call's deadline, not when the server answered"
    );
    gw.metrics_showing(&[
        "portico_grpc_requests_total{grpc_status=\"DEADLINE_EXCEEDED\",route=\"echo\"} 1",
    ])
    .await;
}
