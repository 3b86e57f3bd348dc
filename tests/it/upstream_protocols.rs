//! Upstreams that speak TLS or HTTP/2: a private CA the gateway verifies against (and fails
//! closed without), mTLS to the upstream, h2c and h2 by ALPN, connections kept and shared,
//! and health checks made the same way requests are.

use std::time::Duration;

use crate::common::gateway::{driver, Driver};
use crate::common::origin::{Origin, OriginTls, Speaks};
use crate::common::tls::TestCa;
use crate::common::{eventually, Gateway};

/// One route to upstream `app` on `origin`, whose table gets `upstream` (protocol, tls,
/// health check); `files` are written into the gateway's folder first.
async fn gateway(origin: &Origin, upstream: &str) -> Gateway {
    Gateway::start(&format!(
        "[upstreams.app]\ntargets = [\"{}\"]\n{upstream}\n\n[[routes]]\nname = \"all\"\npath = \"/\"\nupstream = \"app\"\n",
        origin.addr
    ))
    .await
}

/// A folder that outlives the test's gateway, with `ca.pem` and, when given, a client pair.
fn files(ca: &TestCa, client: Option<&crate::common::tls::Issued>) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    if let Some(client) = client {
        client.write(&dir, "client");
    }
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_upstream_is_verified_against_its_private_ca() {
    let ca = TestCa::new("Internal CA");
    let cert = ca.server(&["billing.internal"]);
    let origin = Origin::tls(OriginTls {
        cert: &cert,
        client_ca: None,
        alpn: &[b"http/1.1"],
    })
    .await;
    let dir = files(&ca, None);
    let gw = gateway(
        &origin,
        &format!(
            "tls = {{ sni = \"billing.internal\", ca = \"{}\" }}",
            dir.join("ca.pem").display()
        ),
    )
    .await;

    for i in 0..3 {
        let resp = gw.get(&format!("/invoices/{i}")).await;
        assert_eq!(resp.status(), 200);
        if driver() == Driver::Fast {
            // The client has its answer a moment before the gateway puts the connection back
            // in the pool: the next request waits for that, or it would open another.
            eventually(
                "the TLS connection is idle in the pool",
                Duration::from_secs(10),
                async || {
                    let status = gw.admin_json("/status").await;
                    status["upstreams"]["app"]["targets"][0]["pool"]["idle"] == 1
                },
            )
            .await;
        }
    }
    let seen = origin.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].sni.as_deref(), Some("billing.internal"));
    assert_eq!(seen[0].version, http::Version::HTTP_11);
    assert_eq!(seen[2].path, "/invoices/2");
    if driver() == Driver::Fast {
        // Kept alive and reused, like any upstream connection.
        assert_eq!(
            origin.connections(),
            1,
            "one TLS connection for three requests"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_fails_closed_on_the_wrong_ca_or_name() {
    let ca = TestCa::new("Internal CA");
    let other_ca = TestCa::new("Someone else");
    let cert = ca.server(&["billing.internal"]);
    let origin = Origin::tls(OriginTls {
        cert: &cert,
        client_ca: None,
        alpn: &[b"http/1.1"],
    })
    .await;

    // A CA that did not sign the upstream's certificate.
    let dir = files(&other_ca, None);
    let gw = gateway(
        &origin,
        &format!(
            "tls = {{ sni = \"billing.internal\", ca = \"{}\" }}",
            dir.join("ca.pem").display()
        ),
    )
    .await;
    let resp = gw.get("/invoices").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    drop(gw);

    // The right CA, but a name the certificate is not for.
    let dir = files(&ca, None);
    let gw = gateway(
        &origin,
        &format!(
            "tls = {{ sni = \"other.internal\", ca = \"{}\" }}",
            dir.join("ca.pem").display()
        ),
    )
    .await;
    assert_eq!(gw.get("/invoices").await.status(), 502);
    drop(gw);

    // No CA: the system's roots, which do not know a private CA.
    let gw = gateway(&origin, "tls = { sni = \"billing.internal\" }").await;
    assert_eq!(gw.get("/invoices").await.status(), 502);

    assert!(
        origin.requests().is_empty(),
        "no request went over an unverified connection"
    );
    // The origin counts a refused handshake when its side of it ends, which may be a moment
    // after the gateway has given up and answered.
    crate::common::eventually(
        "the origin to see the three refused handshakes",
        Duration::from_secs(5),
        async || origin.failed_handshakes() >= 3,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_to_the_upstream_presents_the_configured_client_certificate() {
    let ca = TestCa::new("Internal CA");
    let cert = ca.server(&["billing.internal"]);
    let client = ca.client("portico-gateway");
    let origin = Origin::tls(OriginTls {
        cert: &cert,
        client_ca: Some(&ca),
        alpn: &[b"http/1.1"],
    })
    .await;
    let dir = files(&ca, Some(&client));

    let gw = gateway(
        &origin,
        &format!(
            "tls = {{ sni = \"billing.internal\", ca = \"{0}/ca.pem\", cert = \"{0}/client.crt\", key = \"{0}/client.key\" }}",
            dir.display()
        ),
    )
    .await;
    assert_eq!(gw.get("/invoices").await.status(), 200);
    drop(gw);

    // Without the client certificate the upstream refuses the handshake.
    let gw = gateway(
        &origin,
        &format!(
            "tls = {{ sni = \"billing.internal\", ca = \"{}/ca.pem\" }}",
            dir.display()
        ),
    )
    .await;
    assert_eq!(gw.get("/invoices").await.status(), 502);
    assert_eq!(origin.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_upstream_tls_settings_are_config_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-pem.pem"), "hello").unwrap();
    let config = dir.path().join("portico.toml");
    std::fs::write(
        &config,
        crate::common::gateway::with_defaults(
            "[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nprotocol = \"h2\"\n\n\
             [upstreams.b]\ntargets = [\"127.0.0.1:2\"]\ntls = { ca = \"missing.pem\" }\n\n\
             [upstreams.c]\ntargets = [\"127.0.0.1:3\"]\ntls = { ca = \"not-pem.pem\", cert = \"x.crt\" }\n\n\
             [upstreams.d]\ntargets = [\"127.0.0.1:4\"]\nprotocol = \"h2c\"\ntls = {}\n\n\
             [[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"a\"\n",
        ),
    )
    .unwrap();
    let (code, out) = crate::common::gateway::validate_with_env(
        &config,
        &[
            ("PORTICO_LISTEN", "127.0.0.1:0"),
            ("PORTICO_ADMIN", "127.0.0.1:0"),
            ("PORTICO_UPGRADE_SOCK", "/tmp/x.sock"),
        ],
    );
    assert_ne!(code, 0);
    for expected in [
        "upstreams.a.protocol",
        "upstreams.b.tls.ca",
        "missing.pem",
        "upstreams.c.tls.ca",
        "not-pem.pem",
        "cert and key go together",
        "upstreams.d.protocol",
    ] {
        assert!(out.contains(expected), "{expected} not in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_upstreams_get_http2_and_share_one_connection() {
    let origin = Origin::plain(Speaks::H2c).await;
    let gw = gateway(&origin, "protocol = \"h2c\"").await;
    // One after another, requests are streams on one connection.
    for i in 0..10 {
        assert_eq!(gw.get(&format!("/items/{i}")).await.status(), 200);
    }
    assert_eq!(
        origin.connections(),
        1,
        "ten requests, one HTTP/2 connection"
    );
    // Many at once are answered too. (Pingora's connector takes a connection out of its
    // pool while it opens a stream on it, so requests arriving in that instant may open
    // more connections: it trades a few extra connections for no lock.)
    let client = reqwest::Client::new();
    let calls = (0..20).map(|i| client.get(gw.url(&format!("/many/{i}"))).send());
    for resp in futures_util::future::join_all(calls).await {
        assert_eq!(resp.unwrap().status(), 200);
    }
    let seen = origin.requests();
    assert_eq!(seen.len(), 30);
    assert!(seen.iter().all(|r| r.version == http::Version::HTTP_2));
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_upstreams_are_chosen_by_alpn_over_tls() {
    let ca = TestCa::new("Internal CA");
    let cert = ca.server(&["grpc.internal"]);
    let origin = Origin::tls(OriginTls {
        cert: &cert,
        client_ca: None,
        alpn: &[b"h2"],
    })
    .await;
    let dir = files(&ca, None);
    let gw = gateway(
        &origin,
        &format!(
            "protocol = \"h2\"\ntls = {{ sni = \"grpc.internal\", ca = \"{}\" }}",
            dir.join("ca.pem").display()
        ),
    )
    .await;
    let resp = gw.get("/hello").await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["version"], "HTTP/2.0");
    assert_eq!(origin.requests()[0].sni.as_deref(), Some("grpc.internal"));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_use_the_upstreams_tls_and_protocol() {
    let ca = TestCa::new("Internal CA");
    let cert = ca.server(&["billing.internal"]);
    let origin = Origin::tls(OriginTls {
        cert: &cert,
        client_ca: None,
        alpn: &[b"h2"],
    })
    .await;
    let dir = files(&ca, None);
    let gw = gateway(
        &origin,
        &format!(
            "protocol = \"h2\"\ntls = {{ sni = \"billing.internal\", ca = \"{}\" }}\nhealth_check = {{ path = \"/healthz\", interval = \"50ms\" }}",
            dir.join("ca.pem").display()
        ),
    )
    .await;
    eventually(
        "a health check over h2 and TLS",
        Duration::from_secs(5),
        async || {
            origin
                .requests()
                .iter()
                .any(|r| r.path == "/healthz" && r.version == http::Version::HTTP_2)
        },
    )
    .await;
    assert!(gw.target_healthy("app", origin.addr).await);
}
