//! Clients over TLS, with certificates made for the test by a private CA: the certificate a
//! client gets is chosen by the name it asks for, the gateway's answers are the same as over
//! plain HTTP, client certificates are checked when the config asks for them, and a
//! certificate rewritten on disk is served from the next handshake on.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::common::tls::{Issued, TestCa};
use crate::common::wire::WireUpstream;
use crate::common::{eventually, Gateway};

/// The names the test certificates are for, all resolved to the gateway.
const NAMES: [&str; 3] = ["api.test", "www.wild.test", "other.test"];

fn client(ca: &TestCa, addr: SocketAddr, identity: Option<&Issued>) -> reqwest::Client {
    crate::common::tls::client_with(ca, &NAMES, addr, identity)
}

/// The DNS names of the certificate a response came with.
fn served_names(resp: &reqwest::Response) -> Vec<String> {
    let info = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    let der = info.peer_certificate().expect("a peer certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// A gateway with a TLS listener serving `certs` (written in the gateway's directory by
/// name) in front of a byte-logging upstream; `tls_extra` goes into `[tls]`.
async fn tls_gateway(certs: &[(&str, &Issued)], tls_extra: &str) -> (Gateway, WireUpstream) {
    tls_gateway_with(certs, tls_extra, "").await
}

/// `tls_gateway` with `server` as its `[server]` table's own keys.
async fn tls_gateway_with(
    certs: &[(&str, &Issued)],
    tls_extra: &str,
    server: &str,
) -> (Gateway, WireUpstream) {
    let up = WireUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut list = Vec::new();
    for (name, issued) in certs {
        let (cert, key) = issued.write(dir.path(), name);
        list.push(format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        ));
    }
    let server = if server.is_empty() {
        String::new()
    } else {
        format!("[server]\nlisten = [\"${{PORTICO_LISTEN}}\"]\n{server}\n\n")
    };
    let config = format!(
        "{server}[tls]\nlisten = [\"${{PORTICO_TLS}}\"]\ncertificates = [{}]\n{tls_extra}\n\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"all\"\npath = \"/\"\nupstream = \"app\"\n",
        list.join(", "),
        up.addr
    );
    let gw = Gateway::start(&config).await;
    // The certificates stay where the config names them for as long as the gateway runs.
    std::mem::forget(dir);
    (gw, up)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_certificate_is_chosen_by_the_name_the_client_asks_for() {
    let ca = TestCa::new("Portico test CA");
    let default = ca.server(&["default.test"]);
    let api = ca.server(&["api.test"]);
    let wild = ca.server(&["*.wild.test"]);
    let (gw, up) = tls_gateway(&[("default", &default), ("api", &api), ("wild", &wild)], "").await;
    let client = client(&ca, gw.tls_addr, None);
    let port = gw.tls_addr.port();

    let resp = client
        .get(format!("https://api.test:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(served_names(&resp), ["api.test"]);
    let resp = client
        .get(format!("https://www.wild.test:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(served_names(&resp), ["*.wild.test"]);

    // A name no certificate has gets the first one, which this client rejects as not its name.
    let unknown = client
        .get(format!("https://other.test:{port}/x"))
        .send()
        .await;
    assert!(
        unknown.is_err(),
        "default.test's certificate is not other.test's"
    );
    // A client that checks against the default's name gets it.
    let by_default = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .resolve("default.test", gw.tls_addr)
        .tls_info(true)
        .build()
        .unwrap();
    let resp = by_default
        .get(format!("https://default.test:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(served_names(&resp), ["default.test"]);

    // The upstream hears it came over TLS.
    let seen = up.seen();
    assert_eq!(seen[0].header_values("x-forwarded-proto"), ["https"]);
    assert_eq!(
        seen[0].header_values("x-forwarded-host"),
        [format!("api.test:{port}").as_str()]
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("portico_tls_handshakes_total{result=\"ok\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_certificate_expiry_is_exported_and_a_stale_one_still_loads() {
    let ca = TestCa::new("Portico test CA");
    let api = ca.server(&["api.test"]);
    let expired = ca.server_valid(&["old.test"], Some((2000, 2001)));
    let (gw, _up) = tls_gateway(&[("api", &api), ("old", &expired)], "").await;
    let metrics = gw.metrics().await;
    let expiry = |name: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "portico_tls_certificate_expiry_timestamp_seconds{{name=\"{name}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
    };
    assert_eq!(expiry("old.test"), Some(978_307_200), "{metrics}");
    let api_expiry = expiry("api.test").expect("api.test's expiry");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        api_expiry > now,
        "rcgen's default validity reaches into the future"
    );
    assert!(
        gw.stderr().contains("old.test") && gw.stderr().contains("expired"),
        "a loud warning"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    let ca = TestCa::new("Portico test CA");
    let clients = TestCa::new("Client CA");
    let strangers = TestCa::new("Someone else's CA");
    let api = ca.server(&["api.test"]);
    let dir = tempfile::tempdir().unwrap();
    let client_ca = dir.path().join("clients.pem");
    std::fs::write(&client_ca, &clients.pem).unwrap();
    let log = dir.path().join("access.log");
    let (gw, up) = tls_gateway_with(
        &[("api", &api)],
        &format!("client_ca = \"{}\"", client_ca.display()),
        &format!("access_log = \"{}\"", log.display()),
    )
    .await;
    let url = format!("https://api.test:{}/x", gw.tls_addr.port());

    let alice = clients.client("alice");
    let resp = client(&ca, gw.tls_addr, Some(&alice))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        client(&ca, gw.tls_addr, None)
            .get(&url)
            .send()
            .await
            .is_err(),
        "no certificate"
    );
    let mallory = strangers.client("mallory");
    assert!(
        client(&ca, gw.tls_addr, Some(&mallory))
            .get(&url)
            .send()
            .await
            .is_err(),
        "a certificate from another CA"
    );
    assert_eq!(up.hits(), 1);
    // The verified subject is in the access log.
    eventually("the access log line", Duration::from_secs(5), async || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("\"client_cert\":\"CN=alice\""))
    })
    .await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn min_version_1_3_refuses_a_tls_1_2_client() {
    let ca = TestCa::new("Portico test CA");
    let api = ca.server(&["api.test"]);
    let (gw, _up) = tls_gateway(&[("api", &api)], "min_version = \"1.3\"").await;
    let url = format!("https://api.test:{}/x", gw.tls_addr.port());
    let ok = client(&ca, gw.tls_addr, None)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let old = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .resolve("api.test", gw.tls_addr)
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert!(old.get(&url).send().await.is_err(), "TLS 1.2 only");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_requests_are_redirected_to_https_when_asked() {
    let ca = TestCa::new("Portico test CA");
    let api = ca.server(&["api.test"]);
    let (gw, up) = tls_gateway(&[("api", &api)], "redirect_http = true").await;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = plain
        .post(format!("http://{}/orders?page=2", gw.addr))
        .header("host", "api.test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    let location = resp.headers()["location"].to_str().unwrap();
    assert_eq!(
        location,
        format!("https://api.test:{}/orders?page=2", gw.tls_addr.port())
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_rewritten_on_disk_is_served_from_the_next_handshake() {
    let ca = TestCa::new("Portico test CA");
    let first = ca.server(&["api.test"]);
    let (gw, _up) = tls_gateway(&[("api", &first)], "").await;
    let status = gw.admin_json("/status").await;
    let generation = status["generation"].as_u64().unwrap();
    let url = format!("https://api.test:{}/x", gw.tls_addr.port());
    let serial = |resp: &reqwest::Response| {
        let info = resp.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
        info.peer_certificate().unwrap().to_vec()
    };
    let client = client(&ca, gw.tls_addr, None);
    let before = serial(&client.get(&url).send().await.unwrap());

    // Requests keep flowing while the certificate is replaced on disk by rename: h2load on
    // eight kept-alive connections, and a client that makes a new handshake per request.
    let h2load = std::thread::spawn({
        let url = format!("https://127.0.0.1:{}/x", gw.tls_addr.port());
        move || {
            std::process::Command::new("h2load")
                .args(["--h1", "-D", "3", "-c", "8"])
                .arg(url)
                .output()
                .expect("run h2load (Debian package nghttp2-client)")
        }
    });
    let load = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut failures = 0;
            for _ in 0..200 {
                if !client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
                {
                    failures += 1;
                }
            }
            failures
        }
    });
    let second = ca.server(&["api.test"]);
    let dir = cert_dir(&gw);
    let (tmp_cert, tmp_key) = second.write(&dir, "api-next");
    std::fs::rename(&tmp_key, dir.join("api.key")).unwrap();
    std::fs::rename(&tmp_cert, dir.join("api.crt")).unwrap();
    // A new client each time: one that resumes its TLS session is not shown the certificate
    // again.
    eventually(
        "the new certificate to serve",
        Duration::from_secs(10),
        async || {
            crate::common::tls::client_for(&ca, &NAMES, gw.tls_addr)
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| serial(&r) != before)
        },
    )
    .await;
    assert_eq!(
        load.await.unwrap(),
        0,
        "no request failed during the rotation"
    );
    let h2load = h2load.join().unwrap();
    let report = String::from_utf8_lossy(&h2load.stdout);
    let requests = report
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("h2load: {report}"));
    assert!(
        requests.contains(" 0 failed, 0 errored, 0 timeout"),
        "h2load under the rotation: {requests}"
    );
    let status = gw.admin_json("/status").await;
    assert!(
        status["generation"].as_u64().unwrap() > generation,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_that_does_not_match_its_key_is_a_config_error_naming_the_file() {
    let ca = TestCa::new("Portico test CA");
    let api = ca.server(&["api.test"]);
    let other = ca.server(&["other.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = api.write(dir.path(), "api");
    let (_, wrong_key) = other.write(dir.path(), "other");
    let config = dir.path().join("portico.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\nlisten = [\"127.0.0.1:1\"]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"missing.crt\", key = \"missing.key\" }}]\n",
            cert.display(),
            wrong_key.display()
        ),
    )
    .unwrap();
    let (code, out) = crate::common::gateway::validate(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("tls.certificates[0]") && out.contains("does not go with"),
        "{out}"
    );
    assert!(
        out.contains("tls.certificates[1]") && out.contains("missing.crt"),
        "{out}"
    );
}

/// Where `tls_gateway` wrote the certificates: the folder of the first `cert` in the config.
fn cert_dir(gw: &Gateway) -> std::path::PathBuf {
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let start = config.find("cert = \"").unwrap() + "cert = \"".len();
    let path = &config[start..start + config[start..].find('"').unwrap()];
    Path::new(path).parent().unwrap().to_path_buf()
}
