//! Answers compressed for the clients that ask: each coding decompresses to the upstream's
//! bytes, the client's q-values choose, and what should stay as it is stays.

use std::io::Read;

use crate::common::{spawn_upstream, Gateway, Reply, Upstream};

/// A JSON document of about `n` bytes, repetitive as API answers are.
fn document(n: usize) -> String {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < n {
        out.push_str(&format!(
            "{{\"id\":{i},\"name\":\"user {i}\",\"active\":true}},"
        ));
        i += 1;
    }
    out.pop();
    out.push(']');
    out
}

/// An upstream answering `/big` with a 20 KB JSON document, `/small` with 100 bytes,
/// `/png` with an image, `/gzipped` already encoded and `/cached` cacheable, behind a route
/// with `plugin_extra` in its compress plugin.
async fn compress_gateway(plugin_extra: &str) -> (Gateway, Upstream) {
    let big = document(20_000);
    let up = spawn_upstream("app", move |seen| {
        let json = ("content-type", "application/json".to_string());
        match seen.uri.as_str() {
            "/big" => Reply::With(200, vec![json], big.clone()),
            "/small" => Reply::With(200, vec![json], document(100)),
            "/png" => Reply::With(200, vec![("content-type", "image/png".into())], big.clone()),
            "/gzipped" => Reply::With(
                200,
                vec![json, ("content-encoding", "gzip".into())],
                "not really gzip".into(),
            ),
            "/range" => Reply::With(
                206,
                vec![json, ("content-range", "bytes 0-4999/20000".into())],
                big[..5000].to_string(),
            ),
            "/kept" => Reply::With(
                200,
                vec![json, ("cache-control", "no-transform".into())],
                big.clone(),
            ),
            "/cached" => Reply::With(
                200,
                vec![json, ("cache-control", "max-age=60".into())],
                big.clone(),
            ),
            _ => Reply::Status(404, "no"),
        }
    })
    .await;
    let gw = Gateway::start(&format!(
        r#"
[cache]
max_size = "10MiB"

[plugins.squeeze]
kind = "compress"
{plugin_extra}

[plugins.cached]
kind = "cache"
ttl = "60s"

[upstreams.app]
targets = ["{}"]

[[routes]]
name = "cached"
path = "/cached"
upstream = "app"
plugins = ["squeeze", "cached"]

[[routes]]
name = "api"
path = "/"
upstream = "app"
plugins = ["squeeze"]
"#,
        up.addr
    ))
    .await;
    (gw, up)
}

/// A client that leaves bodies as they came (reqwest decompresses nothing here).
async fn fetch(
    gw: &Gateway,
    path: &str,
    accept: Option<&str>,
) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = gw.client.get(gw.url(path));
    if let Some(accept) = accept {
        req = req.header("accept-encoding", accept);
    }
    let resp = req.send().await.expect("an answer");
    assert_eq!(resp.status(), 200, "{path}");
    let headers = resp.headers().clone();
    (headers, resp.bytes().await.unwrap().to_vec())
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .unwrap(),
        "br" => brotli::Decompressor::new(body, 4096)
            .read_to_end(&mut out)
            .unwrap(),
        "zstd" => zstd::stream::read::Decoder::new(body)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap(),
        other => panic!("unexpected coding {other}"),
    };
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn each_coding_decompresses_to_the_upstreams_bytes() {
    let (gw, _up) = compress_gateway("").await;
    let original = document(20_000).into_bytes();
    for coding in ["gzip", "br", "zstd"] {
        let (headers, body) = fetch(&gw, "/big", Some(coding)).await;
        assert_eq!(headers["content-encoding"], coding);
        assert_eq!(headers["vary"], "Accept-Encoding");
        assert!(headers.get("content-length").is_none() || body.len() < original.len());
        assert!(
            body.len() < original.len() / 4,
            "{coding}: {} bytes",
            body.len()
        );
        assert_eq!(decode(coding, &body), original, "{coding}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clients_q_values_choose_and_the_operators_order_breaks_ties() {
    let (gw, _up) = compress_gateway("algorithms = [\"zstd\", \"br\", \"gzip\"]").await;
    for (accept, expected) in [
        ("gzip, br, zstd", Some("zstd")),
        ("gzip;q=1, br;q=0.8, zstd;q=0.5", Some("gzip")),
        ("br;q=0.9, *;q=0.1", Some("br")),
        ("zstd;q=0, br;q=0, gzip;q=0", None),
        ("identity", None),
        ("deflate", None),
    ] {
        let (headers, body) = fetch(&gw, "/big", Some(accept)).await;
        let got = headers.get("content-encoding").map(|v| v.to_str().unwrap());
        assert_eq!(got, expected, "{accept}");
        if expected.is_none() {
            assert_eq!(body, document(20_000).into_bytes(), "{accept}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn small_images_ranges_encoded_and_no_transform_answers_go_as_they_are() {
    let (gw, _up) = compress_gateway("min_size = \"1KiB\"").await;
    let accept = Some("gzip, br");
    let (headers, body) = fetch(&gw, "/small", accept).await;
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(body, document(100).into_bytes());

    let (headers, body) = fetch(&gw, "/png", accept).await;
    assert!(headers.get("content-encoding").is_none());
    assert!(
        headers.get("vary").is_none(),
        "never compressed, nothing varies"
    );
    assert_eq!(body.len(), document(20_000).len());

    let (headers, body) = fetch(&gw, "/gzipped", accept).await;
    assert_eq!(
        headers["content-encoding"], "gzip",
        "the upstream's own coding"
    );
    assert_eq!(body, b"not really gzip");

    let resp = gw
        .client
        .get(gw.url("/range"))
        .header("accept-encoding", "gzip")
        .header("range", "bytes=0-4999")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert!(
        resp.headers().get("content-encoding").is_none(),
        "a range is never re-encoded"
    );
    assert_eq!(resp.bytes().await.unwrap().len(), 5000);

    let (headers, body) = fetch(&gw, "/kept", accept).await;
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(body, document(20_000).into_bytes());

    // No Accept-Encoding: the bytes as they are, with the Vary a cache needs.
    let (headers, body) = fetch(&gw, "/big", None).await;
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(headers["vary"], "Accept-Encoding");
    assert_eq!(body, document(20_000).into_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_hit_is_compressed_for_each_client_from_one_stored_copy() {
    let (gw, up) = compress_gateway("").await;
    let original = document(20_000).into_bytes();
    let (headers, body) = fetch(&gw, "/cached", Some("gzip")).await;
    assert_eq!(headers["x-cache"], "MISS");
    assert_eq!(decode("gzip", &body), original);
    for coding in ["br", "zstd", "gzip"] {
        let (headers, body) = fetch(&gw, "/cached", Some(coding)).await;
        assert_eq!(headers["x-cache"], "HIT", "{coding}");
        assert_eq!(headers["content-encoding"], coding);
        assert_eq!(decode(coding, &body), original, "{coding}");
    }
    let (headers, body) = fetch(&gw, "/cached", None).await;
    assert_eq!(headers["x-cache"], "HIT");
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(body, original);
    assert_eq!(up.hits(), 1, "one stored copy served every coding");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_get_compressed_answers_too() {
    let up = spawn_upstream("app", |_| {
        Reply::With(
            200,
            vec![("content-type", "text/plain".into())],
            "hello ".repeat(2000),
        )
    })
    .await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\naccess_log = \"off\"\nhttp2 = true\n\n\
         [plugins.squeeze]\nkind = \"compress\"\n\n[upstreams.app]\ntargets = [\"{}\"]\n\n\
         [[routes]]\nname = \"api\"\npath = \"/\"\nupstream = \"app\"\nplugins = [\"squeeze\"]\n",
        up.addr
    ))
    .await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client
        .get(gw.url("/text"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.headers()["content-encoding"], "br");
    assert!(resp.headers().get("transfer-encoding").is_none());
    let body = resp.bytes().await.unwrap();
    assert_eq!(decode("br", &body), "hello ".repeat(2000).into_bytes());
}
