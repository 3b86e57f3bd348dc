//! WebSocket through the gateway: only routes with `websocket = true` take an upgrade; the
//! upgrade request is authenticated and rate limited like any request; the tunnel outlives
//! `read_timeout`, the route's `timeout` and `max_request_body`, and is closed once no byte
//! has gone either way for `tunnel_idle_timeout`.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::common::Gateway;

/// A WebSocket server on 127.0.0.1:0 that echoes every text message, and answers "tick N"
/// with N messages, one every 200 ms, without being spoken to again.
async fn echo_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(text) if text.starts_with("tick ") => {
                            let n: u32 = text[5..].parse().unwrap_or(0);
                            for i in 0..n {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                if ws.send(Message::text(format!("tick {i}"))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Message::Text(text)
                            if ws.send(Message::Text(text.clone())).await.is_err() =>
                        {
                            return
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, task)
}

/// `/ws` takes upgrades (idle timeout 1 s; everything else short), `/api` does not.
async fn gateway(upstream: std::net::SocketAddr, ws_plugins: &str, extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"[server]
listen = ["${{PORTICO_LISTEN}}"]
access_log = "off"
max_request_body = "1KiB"

{extra}

[upstreams.chat]
targets = ["{upstream}"]
read_timeout = "300ms"

[[routes]]
name = "ws"
path = "/ws"
upstream = "chat"
websocket = true
tunnel_idle_timeout = "1s"
timeout = "300ms"
plugins = [{ws_plugins}]

[[routes]]
name = "api"
path = "/api"
upstream = "chat"
"#
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_outlives_read_timeout_and_closes_at_tunnel_idle_timeout() {
    let (upstream, _server) = echo_server().await;
    let gw = gateway(upstream, "", "").await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .expect("the upgrade goes through");
    assert_eq!(resp.status(), 101);

    // Ten messages over two seconds: past read_timeout and the route's timeout, and more
    // bytes than max_request_body.
    let message = "m".repeat(200);
    for _ in 0..10 {
        ws.send(Message::text(message.clone())).await.unwrap();
        let echoed = ws.next().await.expect("an echo").unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), message);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The server talks for two seconds while the client says nothing: bytes one way keep
    // the tunnel open.
    ws.send(Message::text("tick 10")).await.unwrap();
    for i in 0..10 {
        let tick = ws.next().await.expect("a tick").unwrap();
        assert_eq!(tick.into_text().unwrap().as_str(), format!("tick {i}"));
    }

    // Then nothing either way: closed once the idle timeout passes.
    let quiet = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle tunnel was not closed");
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the idle timeout",
        quiet.elapsed()
    );

    // The upgrade is a request like any other in the metrics.
    gw.metrics_showing(&[
        "portico_http_requests_total{method=\"GET\",route=\"ws\",status=\"101\"} 1",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_on_a_route_without_websocket_is_refused() {
    let (upstream, _server) = echo_server().await;
    let gw = gateway(upstream, "", "").await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/api", gw.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 400);
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upgrade_request_is_authenticated_and_rate_limited() {
    let (upstream, _server) = echo_server().await;
    let gw = gateway(
        upstream,
        "\"keys\", \"one\"",
        r#"[consumers.ops]
api_keys = ["ops-key-0123456789"]

[plugins.keys]
kind = "api_key"

[plugins.one]
kind = "rate_limit"
limit = 1
window = "1m"
"#,
    )
    .await;
    let url = format!("ws://{}/ws", gw.addr);
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    match tokio_tungstenite::connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    let with_key = || {
        let mut req = url.clone().into_client_request().unwrap();
        req.headers_mut()
            .insert("x-api-key", "ops-key-0123456789".parse().unwrap());
        req
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(with_key()).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "hello"
    );
    match tokio_tungstenite::connect_async(with_key()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("expected a 429, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_shutdown_a_tunnel_lasts_until_the_grace_period_ends() {
    let (upstream, _server) = echo_server().await;
    // A long idle timeout and a 2 s grace period.
    let config = format!(
        "[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\naccess_log = \"off\"\ngrace_period = \"2s\"\n\n\
         [upstreams.chat]\ntargets = [\"{upstream}\"]\n\n\
         [[routes]]\nname = \"ws\"\npath = \"/ws\"\nupstream = \"chat\"\nwebsocket = true\ntunnel_idle_timeout = \"1m\"\n"
    );
    let mut gw = Gateway::start(&config).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    gw.signal("TERM");
    let asked = Instant::now();
    // Still open while the grace period runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "still here"
    );
    // Then cut when it ends, and the gateway is gone.
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    assert!(asked.elapsed() >= Duration::from_millis(1900));
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tunnel outlived the gateway");
}

/// Regression: Pingora 0.9.1 could end a tunnel right after its 101, before any frame crossed,
/// when the upstream answered the upgrade quickly (`vendor/README.md`). Each upgrade here is
/// a fresh chance for that race, so many are made, each carrying frames both ways at once.
#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_upgrades_in_a_row_all_carry_their_frames() {
    let (upstream, _server) = echo_server().await;
    let gw = gateway(upstream, "", "").await;
    for n in 0..300 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
            .await
            .expect("the upgrade goes through");
        for i in 0..3 {
            let message = format!("upgrade {n}, message {i}");
            ws.send(Message::text(message.clone())).await.unwrap();
            let Some(echoed) = ws.next().await else {
                panic!("upgrade {n}: the tunnel ended before message {i}");
            };
            let echoed = echoed.unwrap_or_else(|e| panic!("upgrade {n}: message {i} failed: {e}"));
            assert_eq!(echoed.into_text().unwrap().as_str(), message);
        }
        ws.close(None).await.unwrap();
    }
}
