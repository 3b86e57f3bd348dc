//! An operator checks a config with `portico -t` before deploying it.

use std::path::{Path, PathBuf};

use crate::common::gateway::{validate, validate_with_env};

#[test]
fn a_bad_config_is_rejected_with_every_problem_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"[server]
listen = ["127.0.0.1:8080"]
grace_period = "soon"

[upstreams.users]
targets = ["127.0.0.1:3001"]
balance = "fastest"

[[routes]]
name = "users"
path = "/users"
upstream = "user"

[[routes]]
name = "orders"
path = "/orders"
upstream = "users"
retries = 3
"#,
    )
    .unwrap();
    let (code, out) = validate(&path);
    assert_eq!(code, 1, "{out}");
    let file = path.display().to_string();
    for expected in [
        format!("{file}:3:16: server.grace_period: "),
        format!("{file}:7:11: upstreams.users.balance: unknown variant `fastest`"),
        format!("{file}:18:1: routes[1].retries: unknown field `retries`"),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    // The route pointing at the broken upstream is not blamed for it; the misspelt one is.
    assert!(
        out.contains("routes[0].upstream: no upstream named \"user\""),
        "{out}"
    );
    assert!(out.contains("has 4 problems"), "{out}");
}

#[test]
fn a_valid_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, "[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"a\"\npath = \"/\"\nupstream = \"a\"\n").unwrap();
    let (code, out) = validate(&path);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the config is valid"));
}

#[test]
fn a_missing_config_file_is_named() {
    let (code, out) = validate(Path::new("/nonexistent/portico.toml"));
    assert_eq!(code, 1);
    assert!(
        out.contains("/nonexistent/portico.toml") && out.contains("cannot read"),
        "{out}"
    );
}

/// Every config under conf/ that `make run` or the README starts Portico with.
pub fn shipped_configs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut files = Vec::new();
    for dir in [root.clone(), root.join("examples")] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "toml") {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

/// The secrets the shipped configs read from the environment, as an operator would set them,
/// and a certificate for the TLS example, made here (kept while this lives).
pub struct ShippedEnv {
    _certs: tempfile::TempDir,
    cert: String,
    key: String,
}

impl ShippedEnv {
    pub fn new() -> ShippedEnv {
        let certs = tempfile::tempdir().unwrap();
        let ca = crate::common::tls::TestCa::new("example CA");
        let (cert, key) = ca.server(&["localhost"]).write(certs.path(), "localhost");
        ShippedEnv {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            _certs: certs,
        }
    }

    pub fn vars(&self) -> [(&str, &str); 10] {
        [
            ("JWT_SECRET", "an-example-secret-of-at-least-32-bytes"),
            ("ACME_KEY", "acme-example-key-123"),
            ("GLOBEX_KEY", "globex-example-key-456"),
            ("TLS_CERT", self.cert.as_str()),
            ("TLS_KEY", self.key.as_str()),
            ("CONSUL_TOKEN", "an-example-consul-token"),
            // conf/examples/cluster.toml: what each instance's environment file sets.
            ("PORTICO_INSTANCE", "a"),
            ("PORTICO_PORT", "8101"),
            ("PORTICO_ADMIN_PORT", "9101"),
            ("PORTICO_RUN_DIR", "/run/portico-a"),
        ]
    }
}

#[test]
fn every_shipped_config_is_valid() {
    let files = shipped_configs();
    assert!(
        files.iter().any(|f| f.ends_with("conf/portico.toml")),
        "{files:?}"
    );
    let secrets = ShippedEnv::new();
    let env = secrets.vars();
    for file in files {
        let (code, out) = validate_with_env(&file, &env);
        assert_eq!(code, 0, "{} does not load:\n{out}", file.display());
    }
}
