//! Clients that speak HTTP/2: h2c with prior knowledge on the plain listener and h2 by ALPN
//! on the TLS one, when `server.http2` is on. The request is the same request over either
//! protocol: routed, authenticated, forwarded as HTTP/1.1, answered with the same problems
//! and counted in the same metrics. A client that abuses HTTP/2 gets a stream reset or
//! GOAWAY, and the gateway goes on serving everyone else.

use std::time::Duration;

use crate::common::h2::{self, Answer, RawH2};
use crate::common::tls::TestCa;
use crate::common::wire::WireUpstream;
use crate::common::Gateway;

/// A catch-all route, and `/private` behind an API key, on one byte-logging upstream, with
/// HTTP/2 on (`server` adds keys to `[server]`, `tls` a whole `[tls]` table).
async fn h2_gateway(up: &WireUpstream, server: &str, tls: &str) -> Gateway {
    Gateway::start(&format!(
        r#"[server]
listen = ["${{PORTICO_LISTEN}}"]
access_log = "off"
http2 = true
{server}

{tls}

[consumers.ops]
api_keys = ["ops-key-0123456789"]

[plugins.keys]
kind = "api_key"

[upstreams.app]
targets = ["{}"]

[[routes]]
name = "all"
path = "/"
upstream = "app"

[[routes]]
name = "private"
path = "/private"
upstream = "app"
plugins = ["keys"]
"#,
        up.addr
    ))
    .await
}

fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_requests_take_the_same_pipeline_as_http1() {
    let up = WireUpstream::start().await;
    let gw = h2_gateway(&up, "", "").await;
    let client = h2c_client();

    let resp = client.get(gw.url("/things?page=2")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let seen = up.seen();
    let forwarded = seen.last().expect("the upstream got the request");
    // Upstream it is an HTTP/1.1 request with the client's authority as its Host.
    assert_eq!(forwarded.request_line(), "GET /things?page=2 HTTP/1.1");
    assert_eq!(forwarded.header_values("host"), [gw.addr.to_string()]);
    assert_eq!(forwarded.header_values("x-forwarded-proto"), ["http"]);

    // A body goes up whole.
    let resp = client
        .post(gw.url("/upload"))
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.seen().last().unwrap().body.len(), 100_000);

    // The route's plugins run, and the gateway's own answers are the same problems.
    let resp = client.get(gw.url("/private/x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "a refusal over h2 is the same problem"
    );
    let resp = client
        .get(gw.url("/private/x"))
        .header("x-api-key", "ops-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.hits(), 3, "the refused request never went up");

    let metrics = gw
        .metrics_showing(&[
            "portico_http_requests_total{method=\"GET\",route=\"private\",status=\"401\"} 1",
        ])
        .await;
    assert!(metrics
        .contains("portico_http_requests_total{method=\"GET\",route=\"all\",status=\"200\"} 1"));

    // HTTP/1.1 on the same listener is still HTTP/1.1.
    let resp = gw.get("/plain").await;
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);

    // The HTTP/1.1 upgrade to h2c is not offered: the request is served as HTTP/1.1, and the
    // upgrade's headers never go upstream.
    let resp = crate::common::raw_request(
        gw.addr,
        "GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(resp.status, 200);
    let forwarded = up.seen().last().unwrap().clone();
    assert_eq!(forwarded.target(), "/upgrade");
    for name in ["upgrade", "http2-settings"] {
        assert!(
            forwarded.header_values(name).is_empty(),
            "{name} went upstream"
        );
    }

    // And curl with prior knowledge agrees.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--http2-prior-knowledge")
        .arg(gw.url("/from-curl"))
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_clients_get_h2_by_alpn_and_http1_when_they_ask_for_it() {
    let up = WireUpstream::start().await;
    let ca = TestCa::new("Portico test CA");
    let issued = ca.server(&["api.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = issued.write(dir.path(), "api");
    let tls = format!(
        "[tls]\nlisten = [\"${{PORTICO_TLS}}\"]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        cert.display(),
        key.display()
    );
    let gw = h2_gateway(&up, "", &tls).await;
    let port = gw.tls_addr.port();
    let url = format!("https://api.test:{port}/secure");

    let client = crate::common::tls::client_for(&ca, &["api.test"], gw.tls_addr);
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.seen().last().unwrap().header_values("x-forwarded-proto"),
        ["https"]
    );

    let h1_only = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .resolve("api.test", gw.tls_addr)
        .http1_only()
        .build()
        .unwrap();
    let resp = h1_only.get(&url).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);

    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--http2")
        .arg("--cacert")
        .arg(&ca_file)
        .arg("--resolve")
        .arg(format!("api.test:{port}:127.0.0.1"))
        .arg(&url)
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_http2_the_preface_is_not_served_as_http2() {
    let up = WireUpstream::start().await;
    let gw = Gateway::start(&crate::common::one_route("app", up.addr, "", "/")).await;
    let mut raw = RawH2::connect(gw.addr).await;
    // An HTTP/1.1 answer (a refusal of the "PRI" request), never SETTINGS.
    let frame = raw.next_frame(Duration::from_secs(5)).await;
    assert!(
        !matches!(frame, Some(h2::Frame::Settings)),
        "no HTTP/2 without server.http2: {frame:?}"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn h2load_with_many_streams_per_connection_gets_every_answer() {
    let up = WireUpstream::start().await;
    let gw = h2_gateway(&up, "", "").await;
    let out = std::process::Command::new("h2load")
        .args(["-n", "2000", "-c", "4", "-m", "32"])
        .arg(gw.url("/load"))
        .output()
        .expect("run h2load (Debian package nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("requests: 2000 total, 2000 started, 2000 done, 2000 succeeded"),
        "h2load: {text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "h2load: {text}");
    assert_eq!(up.hits(), 2000);
}

/// A good request on `stream`, answered 200: the connection still serves after an abuse
/// that only its own stream paid for.
async fn still_serves(raw: &mut RawH2, stream: u32) {
    let authority = raw.authority.clone();
    raw.headers(stream, &h2::get(&authority, "/after"), true)
        .await;
    assert_eq!(raw.answer(stream).await.status(), Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_would_smuggle_as_http1_never_reach_the_upstream() {
    let up = WireUpstream::start().await;
    let gw = h2_gateway(&up, "", "").await;
    let mut raw = RawH2::connect(gw.addr).await;
    let authority = raw.authority.clone();
    let mut stream = 1;
    let mut next = || {
        let s = stream;
        stream += 2;
        s
    };

    // A content-length the DATA does not add up to, shorter and longer.
    for (declared, sent) in [("10", 5usize), ("3", 8)] {
        let s = next();
        let mut fields = h2::get(&authority, "/upload");
        fields[0] = (":method", "POST");
        fields.push(("content-length", declared));
        raw.headers(s, &fields, false).await;
        raw.data(s, &vec![b'a'; sent], true).await;
        let answer = raw.answer(s).await;
        assert!(
            matches!(answer, Answer::Reset(h2::PROTOCOL_ERROR)) || answer.status() == Some(400),
            "content-length {declared} with {sent} bytes: {answer:?}"
        );
    }

    // Framing headers HTTP/2 forbids, which would frame the HTTP/1 request upstream.
    for (name, value) in [
        ("transfer-encoding", "chunked"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("upgrade", "websocket"),
        ("te", "gzip"),
    ] {
        let s = next();
        let mut fields = h2::get(&authority, "/x");
        fields.push((name, value));
        raw.headers(s, &fields, true).await;
        let answer = raw.answer(s).await;
        assert!(
            matches!(answer, Answer::Reset(h2::PROTOCOL_ERROR)) || answer.status() == Some(400),
            "{name}: {value}: {answer:?}"
        );
    }

    // A :path that is not origin form, or holds what HTTP/1 would read as a delimiter.
    for path in [
        "private",
        "*",
        "http://other.example/private",
        "/a b",
        "/a\r\nx-injected: 1",
        "/%2e%2e/private",
        "/x/../../private",
    ] {
        let s = next();
        raw.headers(s, &h2::get(&authority, path), true).await;
        let answer = raw.answer(s).await;
        assert!(
            matches!(answer, Answer::Reset(h2::PROTOCOL_ERROR)) || answer.status() == Some(400),
            ":path {path:?}: {answer:?}"
        );
    }

    // A fragment is cut off by the URI parser before anything reads the path: the request is
    // routed as what is forwarded, the protected route's, and its plugins run.
    let s = next();
    raw.headers(s, &h2::get(&authority, "/private#frag"), true)
        .await;
    assert_eq!(raw.answer(s).await.status(), Some(401));

    // An :authority and a Host that name different hosts.
    let s = next();
    let mut fields = h2::get(&authority, "/x");
    fields.push(("host", "other.example"));
    raw.headers(s, &fields, true).await;
    let answer = raw.answer(s).await;
    assert!(
        matches!(answer, Answer::Reset(h2::PROTOCOL_ERROR)) || answer.status() == Some(400),
        ":authority and host disagree: {answer:?}"
    );

    assert_eq!(
        up.hits(),
        0,
        "nothing reached the upstream: {:?}",
        up.seen()
    );
    still_serves(&mut raw, next()).await;
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rapid_reset_flood_ends_in_goaway() {
    let up = WireUpstream::start().await;
    let gw = h2_gateway(&up, "", "").await;
    let mut raw = RawH2::connect(gw.addr).await;
    let authority = raw.authority.clone();
    // Stream after stream opened and cancelled at once (CVE-2023-44487), in big writes.
    const STREAMS: u32 = 20_000;
    let mut open = true;
    for batch in 0..(STREAMS / 500) {
        let mut bytes = Vec::new();
        for i in 0..500 {
            let s = 1 + 2 * (batch * 500 + i);
            bytes.extend(h2::frame(
                h2::HEADERS,
                h2::END_HEADERS | h2::END_STREAM,
                s,
                &h2::header_block(&h2::get(&authority, "/flood")),
            ));
            bytes.extend(h2::frame(h2::RST_STREAM, 0, s, &h2::CANCEL.to_be_bytes()));
        }
        if !raw.send(&bytes).await {
            open = false;
            break;
        }
    }
    let (goaway, closed) = raw.until_closed(Duration::from_secs(5)).await;
    assert_eq!(
        goaway,
        Some(h2::ENHANCE_YOUR_CALM),
        "the flood was not stopped (still writable: {open}, closed: {closed})"
    );
    assert!(
        up.hits() < STREAMS as usize / 10,
        "{} of {STREAMS} cancelled streams reached the upstream",
        up.hits()
    );
    // Everyone else is still served.
    let mut other = RawH2::connect(gw.addr).await;
    still_serves(&mut other, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_header_block_that_never_ends_is_cut_off() {
    let up = WireUpstream::start().await;
    let gw = h2_gateway(&up, "", "").await;
    let authority = gw.addr.to_string();

    // CONTINUATION frames full of headers, past any header-list limit.
    let mut raw = RawH2::connect(gw.addr).await;
    raw.send(&h2::frame(
        h2::HEADERS,
        0,
        1,
        &h2::header_block(&h2::get(&authority, "/x")),
    ))
    .await;
    let filler = h2::header_block(&[("x-filler", &"f".repeat(4000))]);
    let mut sent = 0usize;
    while sent < 4 << 20 {
        if !raw.send(&h2::frame(h2::CONTINUATION, 0, 1, &filler)).await {
            break;
        }
        sent += filler.len();
    }
    let (goaway, closed) = raw.until_closed(Duration::from_secs(5)).await;
    assert!(
        goaway.is_some() && closed,
        "headers past the limit: {sent} bytes and the connection still open"
    );

    // Empty CONTINUATION frames, which add nothing to the header list.
    let mut raw = RawH2::connect(gw.addr).await;
    raw.send(&h2::frame(
        h2::HEADERS,
        0,
        1,
        &h2::header_block(&h2::get(&authority, "/x")),
    ))
    .await;
    let empty: Vec<u8> = (0..1000)
        .flat_map(|_| h2::frame(h2::CONTINUATION, 0, 1, &[]))
        .collect();
    let mut frames = 0;
    while frames < 200_000 {
        if !raw.send(&empty).await {
            break;
        }
        frames += 1000;
    }
    let (goaway, closed) = raw.until_closed(Duration::from_secs(5)).await;
    assert!(
        goaway.is_some() && closed,
        "{frames} empty CONTINUATION frames and the connection still open"
    );
    assert_eq!(up.hits(), 0);
    let mut other = RawH2::connect(gw.addr).await;
    still_serves(&mut other, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_update_of_zero_is_a_protocol_error() {
    let up = WireUpstream::start().await;
    let gw = h2_gateway(&up, "", "").await;
    let authority = gw.addr.to_string();

    // On a stream: that stream is reset.
    let mut raw = RawH2::connect(gw.addr).await;
    let mut fields = h2::get(&authority, "/x");
    fields[0] = (":method", "POST");
    raw.headers(1, &fields, false).await;
    raw.send(&h2::frame(h2::WINDOW_UPDATE, 0, 1, &0u32.to_be_bytes()))
        .await;
    let answer = raw.answer(1).await;
    assert!(
        matches!(
            answer,
            Answer::Reset(h2::PROTOCOL_ERROR) | Answer::ConnectionEnded(Some(h2::PROTOCOL_ERROR))
        ),
        "zero increment on a stream: {answer:?}"
    );

    // On the connection: GOAWAY.
    let mut raw = RawH2::connect(gw.addr).await;
    raw.send(&h2::frame(h2::WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()))
        .await;
    let (goaway, _) = raw.until_closed(Duration::from_secs(5)).await;
    assert_eq!(goaway, Some(h2::PROTOCOL_ERROR));
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_past_the_advertised_limit_are_refused() {
    let up = WireUpstream::start().await;
    let gw = h2_gateway(&up, "", "").await;
    let authority = gw.addr.to_string();
    let mut raw = RawH2::connect(gw.addr).await;
    // Requests whose bodies never come keep their streams open.
    let mut fields = h2::get(&authority, "/slow");
    fields[0] = (":method", "POST");
    let limit = 100u32;
    let mut bytes = Vec::new();
    for i in 0..limit + 10 {
        bytes.extend(h2::frame(
            h2::HEADERS,
            h2::END_HEADERS,
            1 + 2 * i,
            &h2::header_block(&fields),
        ));
    }
    raw.send(&bytes).await;
    // The ten past the limit are refused: a reset each, or GOAWAY for the connection.
    let mut refused = 0;
    let mut goaway = None;
    while let Some(frame) = raw.next_frame(Duration::from_secs(3)).await {
        match frame {
            h2::Frame::Reset { stream, code } => {
                assert!(stream > 2 * limit, "stream {stream} was within the limit");
                assert!(
                    code == h2::REFUSED_STREAM || code == h2::PROTOCOL_ERROR,
                    "code {code}"
                );
                refused += 1;
            }
            h2::Frame::GoAway { code, .. } => {
                goaway = Some(code);
                break;
            }
            _ => {}
        }
        if refused == 10 {
            break;
        }
    }
    assert!(
        refused == 10 || goaway.is_some(),
        "{refused} streams refused, goaway {goaway:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preface_that_never_finishes_is_closed_at_the_header_timeout() {
    let up = WireUpstream::start().await;
    let gw = h2_gateway(&up, "header_timeout = \"1s\"", "").await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(&h2::PREFACE[..10]).await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_rate_limits_composition_and_the_access_log_work_over_h2() {
    let up = crate::common::spawn_upstream("app", |s| {
        let body = format!("{{\"path\": \"{}\"}}", s.uri);
        crate::common::Reply::With(
            200,
            vec![
                ("cache-control", "max-age=600".to_string()),
                ("content-type", "application/json".to_string()),
            ],
            body,
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = Gateway::start(&format!(
        r#"[server]
listen = ["${{PORTICO_LISTEN}}"]
access_log = "{}"
http2 = true

[cache]
max_size = "16MiB"

[plugins.cache]
kind = "cache"
ttl = "60s"

[plugins.two]
kind = "rate_limit"
limit = 2
window = "1m"

[upstreams.app]
targets = ["{}"]

[[routes]]
name = "cached"
path = "/cached"
upstream = "app"
plugins = ["cache"]

[[routes]]
name = "limited"
path = "/limited"
upstream = "app"
plugins = ["two"]

[[routes]]
name = "both"
path = "/both"
compose = {{ calls = [
  {{ key = "a", upstream = "app", path = "/a" }},
  {{ key = "b", upstream = "app", path = "/b" }},
] }}
"#,
        log.display(),
        up.addr
    ))
    .await;
    let client = h2c_client();

    let first = client.get(gw.url("/cached/x")).send().await.unwrap();
    assert_eq!(first.headers()["x-cache"], "MISS");
    let second = client.get(gw.url("/cached/x")).send().await.unwrap();
    assert_eq!(second.version(), reqwest::Version::HTTP_2);
    assert_eq!(second.headers()["x-cache"], "HIT");

    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            client
                .get(gw.url("/limited"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 429]);

    let resp = client.get(gw.url("/both")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["a"]["path"], "/a");
    assert_eq!(body["b"]["path"], "/b");

    crate::common::eventually("six access log lines", Duration::from_secs(5), async || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 6)
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let routes: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| format!("{} {}", v["route"].as_str().unwrap_or(""), v["status"]))
        .collect();
    assert_eq!(
        routes,
        [
            "cached 200",
            "cached 200",
            "limited 200",
            "limited 200",
            "limited 429",
            "both 200"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_streams_use_the_pooled_upstream_connections() {
    use crate::common::gateway::{driver, Driver};
    use crate::common::origin::{Origin, Speaks};
    let origin = Origin::plain(Speaks::Http1).await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\naccess_log = \"off\"\nhttp2 = true\n\n{}",
        crate::common::one_route("app", origin.addr, "", "/")
    ))
    .await;
    let client = h2c_client();
    for i in 0..20 {
        let resp = client.get(gw.url(&format!("/n/{i}"))).send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
    }
    assert!(origin
        .requests()
        .iter()
        .all(|r| r.version == http::Version::HTTP_11));
    match driver() {
        // Streams take the fast driver and its keep-alive pool, as HTTP/1.1 requests do.
        Driver::Fast => assert_eq!(origin.connections(), 1),
        Driver::Pingora => assert_eq!(origin.connections(), 20),
    }
}
