//! JWT verification on the request path: the cost of a cold verification per algorithm, and
//! of a cache hit (`cache_size`), which is what a client reusing its token pays.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may fail loudly on bad setup

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use portico_plugins::consumers::Consumers;
use portico_plugins::jwt::{JwtConfig, JwtPlugin};

const SECRET: &str = "bench-secret-0123456789-abcdefghijklmnop";

fn key_file(name: &str) -> String {
    format!(
        "{}/../tests/fixtures/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn plugin(alg: &str, key: &str, cache_size: usize) -> JwtPlugin {
    let text = format!(
        "algorithms = [\"{alg}\"]\n{key}\nissuer = \"https://auth.test\"\naudience = [\"api\"]\n\
         forward_claims = {{ sub = \"x-user-id\" }}\ncache_size = {cache_size}\n"
    );
    let cfg: JwtConfig = toml::from_str(&text).expect("bench config");
    JwtPlugin::new(cfg, Arc::new(Consumers::default())).expect("bench plugin")
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        + 3600;
    let claims = serde_json::json!({ "sub": "user-42", "iss": "https://auth.test", "aud": "api", "exp": exp });
    encode(&Header::new(alg), &claims, key).expect("token")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let read = |name: &str| std::fs::read(key_file(name)).expect("fixture key");
    let cases = [
        (
            "HS256",
            format!("secret = \"{SECRET}\""),
            token(
                Algorithm::HS256,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            ),
        ),
        (
            "RS256",
            format!("public_key = \"{}\"", key_file("rsa1.pub.pem")),
            token(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(&read("rsa1.pem")).expect("rsa"),
            ),
        ),
        (
            "ES256",
            format!("public_key = \"{}\"", key_file("ec1.pub.pem")),
            token(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(&read("ec1.pem")).expect("ec"),
            ),
        ),
    ];
    let mut group = c.benchmark_group("jwt");
    for (alg, key, token) in &cases {
        let cold = plugin(alg, key, 0);
        group.bench_function(format!("{alg}/verify"), |b| {
            b.iter(|| rt.block_on(cold.authenticate(token)).expect("valid"))
        });
        let cached = plugin(alg, key, 10_000);
        group.bench_function(format!("{alg}/cached"), |b| {
            b.iter(|| rt.block_on(cached.authenticate(token)).expect("valid"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
