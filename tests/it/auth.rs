//! Callers authenticate once at the edge, so the services behind Portico can trust what
//! reaches them. Tokens are minted here with real keys; a test JWKS server rotates keys.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::common::{eventually, spawn_upstream, upstream::spawn_ok, Gateway, Reply, Upstream};

const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

fn key_path(name: &str) -> String {
    format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn private_key(name: &str, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(key_path(name)).unwrap();
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims a well-behaved issuer would send, valid for 10 minutes.
fn claims() -> Value {
    json!({ "sub": "user-42", "iss": "https://auth.test", "aud": "api", "exp": now() + 600,
            "tier": "premium", "scope": "read:users write:users" })
}

fn mint(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    encode(&header, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        claims,
    )
}

/// A token assembled by hand, for headers no honest library would write.
fn handmade(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

async fn gateway(plugin: &str, upstream: &Upstream) -> Gateway {
    Gateway::start_with_env(
        &format!(
            r#"
[plugins.auth]
{plugin}

[upstreams.app]
targets = ["{}"]

[[routes]]
name = "users"
path = "/users"
upstream = "app"
plugins = ["auth"]
"#,
            upstream.addr
        ),
        &[("JWT_SECRET", SECRET)],
    )
    .await
}

const HS_PLUGIN: &str = r#"kind = "jwt"
algorithms = ["HS256"]
secret = "${JWT_SECRET}"
issuer = "https://auth.test"
audience = ["api"]
forward_claims = { sub = "x-user-id", tier = "x-user-tier" }"#;

async fn hs_gateway(upstream: &Upstream) -> Gateway {
    gateway(HS_PLUGIN, upstream).await
}

async fn call(gw: &Gateway, token: Option<&str>) -> reqwest::Response {
    let mut req = gw
        .client
        .get(gw.url("/users/42"))
        .header("x-user-id", "admin");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn assert_rejected(gw: &Gateway, token: &str, why: &str) {
    let resp = call(gw, Some(token)).await;
    assert_eq!(resp.status(), 401, "{why}");
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\"",
        "{why}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized", "{why}");
    assert_eq!(
        body["detail"], "the bearer token is invalid",
        "{why}: no hint of which check failed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_token_passes_and_its_claims_replace_spoofed_headers() {
    let app = spawn_ok("app").await;
    let gw = hs_gateway(&app).await;
    let resp = call(&gw, Some(&hs256(&claims()))).await;
    assert_eq!(resp.status(), 200);
    let seen = &app.seen()[0];
    assert_eq!(
        seen.header("x-user-id"),
        Some("user-42"),
        "the client's x-user-id: admin is replaced"
    );
    assert_eq!(seen.header("x-user-tier"), Some("premium"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_token_is_a_401_without_an_error_code() {
    let app = spawn_ok("app").await;
    let gw = hs_gateway(&app).await;
    let resp = call(&gw, None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_whatever_is_wrong_with_them() {
    let app = spawn_ok("app").await;
    let gw = hs_gateway(&app).await;
    let good = hs256(&claims());
    let with = |key: &str, value: Value| {
        let mut c = claims();
        c[key] = value;
        hs256(&c)
    };
    let without = |key: &str| {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(key);
        hs256(&c)
    };
    let parts: Vec<&str> = good.split('.').collect();
    let mut tampered_claims = claims();
    tampered_claims["sub"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(tampered_claims.to_string()),
        parts[2]
    );

    let mut cases: Vec<(String, &str)> = vec![
        (with("exp", json!(now() - 3600)), "expired"),
        (without("exp"), "exp missing"),
        (with("nbf", json!(now() + 3600)), "not valid yet"),
        (with("aud", json!("other")), "wrong audience"),
        (without("aud"), "audience missing"),
        (with("iss", json!("https://evil.test")), "wrong issuer"),
        (without("iss"), "issuer missing"),
        (tampered, "tampered payload"),
        (format!("{}.{}", parts[0], parts[1]), "two parts"),
        (format!("{good}.extra"), "four parts"),
        (
            mint(
                Algorithm::HS384,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                None,
                &claims(),
            ),
            "HS384 is not pinned",
        ),
        (
            mint(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-0123456789-abcdefghij"),
                None,
                &claims(),
            ),
            "wrong secret",
        ),
        ("not-a-token".to_string(), "junk"),
    ];
    for alg in ["none", "None", "NONE", "nOnE"] {
        cases.push((
            handmade(&json!({"alg": alg, "typ": "JWT"}), &claims(), b""),
            "alg none",
        ));
    }
    for (token, why) in &cases {
        assert_rejected(&gw, token, why).await;
    }
    assert_eq!(app.hits(), 0, "no bad token reached the upstream");
    assert_eq!(
        call(&gw, Some(&good)).await.status(),
        200,
        "and the good one still works"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_public_key_cannot_be_used_as_an_hmac_secret() {
    let app = spawn_ok("app").await;
    let gw = gateway(
        &format!(
            "kind = \"jwt\"\nalgorithms = [\"RS256\"]\npublic_key = \"{}\"",
            key_path("rsa1.pub.pem")
        ),
        &app,
    )
    .await;
    let rs = mint(
        Algorithm::RS256,
        &private_key("rsa1.pem", Algorithm::RS256),
        None,
        &claims(),
    );
    assert_eq!(call(&gw, Some(&rs)).await.status(), 200);
    // The classic confusion attack: sign HS256 with the public key's PEM as the secret.
    let public_pem = std::fs::read(key_path("rsa1.pub.pem")).unwrap();
    let confused = mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        None,
        &claims(),
    );
    assert_rejected(&gw, &confused, "HS256 signed with the RS public key").await;
    let other_key = mint(
        Algorithm::RS256,
        &private_key("rsa2.pem", Algorithm::RS256),
        None,
        &claims(),
    );
    assert_rejected(&gw, &other_key, "signed by another RSA key").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_without_a_required_scope_is_forbidden() {
    let app = spawn_ok("app").await;
    let gw = gateway(
        &format!("{HS_PLUGIN}\nrequired_scopes = [\"admin:users\"]"),
        &app,
    )
    .await;
    let resp = call(&gw, Some(&hs256(&claims()))).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "forbidden");
    let mut admin = claims();
    admin["scp"] = json!(["admin:users"]);
    assert_eq!(call(&gw, Some(&hs256(&admin))).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_with_control_characters_is_never_forwarded() {
    let app = spawn_ok("app").await;
    let gw = hs_gateway(&app).await;
    let mut evil = claims();
    evil["sub"] = json!("user-42\r\nx-admin: true");
    assert_rejected(&gw, &hs256(&evil), "CRLF in a forwarded claim").await;
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn es256_tokens_verify_with_an_ec_public_key() {
    let app = spawn_ok("app").await;
    let gw = gateway(
        &format!(
            "kind = \"jwt\"\nalgorithms = [\"ES256\"]\npublic_key = \"{}\"",
            key_path("ec1.pub.pem")
        ),
        &app,
    )
    .await;
    let token = mint(
        Algorithm::ES256,
        &private_key("ec1.pem", Algorithm::ES256),
        None,
        &claims(),
    );
    assert_eq!(call(&gw, Some(&token)).await.status(), 200);
}

/// A JWKS endpoint whose key set the test can change.
struct Issuer {
    server: Upstream,
    keys: Arc<Mutex<Vec<Jwk>>>,
}

impl Issuer {
    async fn start(initial: &[(&str, &str)]) -> Issuer {
        let keys = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&keys);
        let server = spawn_upstream("issuer", move |_| {
            let set = JwkSet {
                keys: shared.lock().unwrap().clone(),
            };
            Reply::Body(200, serde_json::to_string(&set).unwrap())
        })
        .await;
        let issuer = Issuer { server, keys };
        issuer.publish(initial);
        issuer
    }

    /// Publish RSA keys (fixture file, kid).
    fn publish(&self, keys: &[(&str, &str)]) {
        let jwks = keys
            .iter()
            .map(|(file, kid)| {
                let mut jwk =
                    Jwk::from_encoding_key(&private_key(file, Algorithm::RS256), Algorithm::RS256)
                        .unwrap();
                jwk.common.key_id = Some(kid.to_string());
                jwk
            })
            .collect();
        *self.keys.lock().unwrap() = jwks;
    }

    fn fetches(&self) -> usize {
        self.server.hits()
    }

    fn plugin(&self, extra: &str) -> String {
        format!(
            "kind = \"jwt\"\nalgorithms = [\"RS256\"]\njwks_url = \"http://{}/jwks\"\n{extra}",
            self.server.addr
        )
    }
}

fn rs_token(file: &str, kid: &str) -> String {
    mint(
        Algorithm::RS256,
        &private_key(file, Algorithm::RS256),
        Some(kid),
        &claims(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_is_picked_up_when_a_token_names_it() {
    let issuer = Issuer::start(&[("rsa1.pem", "k1")]).await;
    let app = spawn_ok("app").await;
    let gw = gateway(&issuer.plugin("jwks_min_refresh = \"0s\""), &app).await;
    assert_eq!(
        call(&gw, Some(&rs_token("rsa1.pem", "k1"))).await.status(),
        200
    );
    assert_rejected(&gw, &rs_token("rsa2.pem", "k2"), "k2 is not published yet").await;

    issuer.publish(&[("rsa1.pem", "k1"), ("rsa2.pem", "k2")]);
    assert_eq!(
        call(&gw, Some(&rs_token("rsa2.pem", "k2"))).await.status(),
        200,
        "the new key was fetched on demand"
    );

    issuer.publish(&[("rsa2.pem", "k2")]);
    // A token signed by a kid the issuer never published, to force a refresh that drops k1.
    assert_rejected(&gw, &rs_token("rsa1.pem", "k9"), "unknown kid").await;
    assert_rejected(
        &gw,
        &rs_token("rsa1.pem", "k1"),
        "k1 was withdrawn, even if cached before",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_unknown_kids_cannot_hammer_the_issuer() {
    let issuer = Issuer::start(&[("rsa1.pem", "k1")]).await;
    let app = spawn_ok("app").await;
    let gw = gateway(
        &issuer.plugin("jwks_min_refresh = \"1m\"\njwks_refresh = \"1h\""),
        &app,
    )
    .await;
    assert_eq!(
        call(&gw, Some(&rs_token("rsa1.pem", "k1"))).await.status(),
        200
    );
    let before = issuer.fetches();
    let flood: Vec<_> = (0..50)
        .map(|i| {
            let (client, url, token) = (
                gw.client.clone(),
                gw.url("/users/1"),
                rs_token("rsa2.pem", &format!("bogus-{i}")),
            );
            tokio::spawn(async move {
                client
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for request in flood {
        assert_eq!(request.await.unwrap(), 401);
    }
    assert!(
        issuer.fetches() - before <= 1,
        "{} fetches for 50 bogus kids",
        issuer.fetches() - before
    );
    assert_rejected(
        &gw,
        &rs_token("rsa1.pem", "../../etc/passwd"),
        "a path-like kid",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_good_keys_stay_in_use_while_the_issuer_is_down() {
    let issuer = Issuer::start(&[("rsa1.pem", "k1")]).await;
    let app = spawn_ok("app").await;
    let gw = gateway(
        &issuer.plugin("jwks_refresh = \"50ms\"\ncache_size = 0"),
        &app,
    )
    .await;
    assert_eq!(
        call(&gw, Some(&rs_token("rsa1.pem", "k1"))).await.status(),
        200
    );
    issuer.server.go_down();
    eventually("a refresh failed", Duration::from_secs(10), async || {
        gw.stderr()
            .contains("could not be refreshed, keeping the last good keys")
    })
    .await;
    assert_eq!(
        call(&gw, Some(&rs_token("rsa1.pem", "k1"))).await.status(),
        200
    );
}

const CONSUMERS: &str = r#"
[consumers.acme]
api_keys = ["acme-key-0123456789"]
tier = "premium"

[consumers.globex]
api_keys = ["globex-key-0123456789"]
"#;

async fn api_key_gateway(app: &Upstream, log: &std::path::Path) -> Gateway {
    Gateway::start(&format!(
        r#"[server]
listen = ["${{PORTICO_LISTEN}}"]
access_log = "{}"
{CONSUMERS}
[plugins.keys]
kind = "api_key"
query = "api_key"

[plugins.tier-header]
kind = "headers"
request_set = {{ "x-consumer-tier" = "{{tier}}" }}

[upstreams.app]
targets = ["{}"]

[[routes]]
name = "users"
path = "/users"
upstream = "app"
plugins = ["keys", "tier-header"]
"#,
        log.display(),
        app.addr
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_identify_consumers_and_their_tier_reaches_the_next_plugin() {
    let app = spawn_ok("app").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = api_key_gateway(&app, &log).await;

    let good = gw
        .client
        .get(gw.url("/users/1"))
        .header("x-api-key", "acme-key-0123456789")
        .header("x-consumer", "globex")
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    let seen = &app.seen()[0];
    assert_eq!(
        seen.header("x-consumer"),
        Some("acme"),
        "the spoofed x-consumer is replaced"
    );
    assert_eq!(seen.header("x-consumer-tier"), Some("premium"));
    assert_eq!(seen.header("x-api-key"), None, "the key stops at the edge");

    let by_query = gw
        .get("/users/2?api_key=globex-key-0123456789&page=2")
        .await;
    assert_eq!(by_query.status(), 200);
    let seen = &app.seen()[1];
    assert_eq!(
        seen.uri, "/users/2?page=2",
        "the key is removed from the query"
    );
    assert_eq!(seen.header("x-consumer"), Some("globex"));
    assert_eq!(seen.header("x-consumer-tier"), None, "globex has no tier");

    for key in ["acme-key-012345678", "nope", ""] {
        let bad = gw
            .client
            .get(gw.url("/users/3"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 401, "{key:?}");
        assert_eq!(
            bad.headers()["www-authenticate"],
            "ApiKey header=\"x-api-key\""
        );
        assert_eq!(bad.json::<Value>().await.unwrap()["code"], "unauthorized");
    }
    assert_eq!(gw.get("/users/4").await.status(), 401);
    assert_eq!(app.hits(), 2);

    let mut lines = String::new();
    eventually("six access log lines", Duration::from_secs(5), async || {
        lines = std::fs::read_to_string(&log).unwrap_or_default();
        lines.lines().count() == 6
    })
    .await;
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["consumer"], "acme");
    assert!(
        !lines.contains("key-0123456789"),
        "no API key in the access log:\n{lines}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_file_rewritten_in_place_is_read_again_on_reload() {
    let app = spawn_ok("app").await;
    // The plugin names a key file of its own, which the operator rotates in place.
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("auth.pem");
    std::fs::copy(key_path("rsa1.pub.pem"), &key_file).unwrap();
    let gw = gateway(
        &format!(
            "kind = \"jwt\"\nalgorithms = [\"RS256\"]\npublic_key = \"{}\"",
            key_file.display()
        ),
        &app,
    )
    .await;
    let old = mint(
        Algorithm::RS256,
        &private_key("rsa1.pem", Algorithm::RS256),
        None,
        &claims(),
    );
    let new = mint(
        Algorithm::RS256,
        &private_key("rsa2.pem", Algorithm::RS256),
        None,
        &claims(),
    );
    assert_eq!(call(&gw, Some(&old)).await.status(), 200);
    assert_rejected(&gw, &new, "the new key is not in use yet").await;

    std::fs::copy(key_path("rsa2.pub.pem"), &key_file).unwrap();
    // The config file itself did not change; the reload still reads the key file again.
    assert_eq!(gw.reload().await.status(), 200);
    assert_eq!(
        call(&gw, Some(&new)).await.status(),
        200,
        "the new key verifies"
    );
    assert_rejected(&gw, &old, "the old key no longer does").await;
}
