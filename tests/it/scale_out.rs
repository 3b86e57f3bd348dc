//! Many instances on one Redis that can itself grow: a Redis Cluster, a Sentinel-managed
//! primary, TLS to either. Each story starts real redis-server processes (and sentinels), real
//! gateways, and breaks them the way production does: a primary killed, a slot moved, a
//! failover, a certificate from the wrong CA.

use crate::common::gateway::validate_text;
use crate::common::tls::TestCa;

/// Listeners for a config that is only checked, never started.
const CHECKED_ONLY: &str =
    "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[admin]\nlisten = \"127.0.0.1:2\"\n\n";

#[test]
fn a_redis_section_is_checked_whole_before_anything_connects() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("redis CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (cert, key) = ca.client("portico").write(dir.path(), "client");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "this is not a certificate").unwrap();
    let (ca_file, cert, key, not_pem) = (
        ca_file.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
        not_pem.display().to_string(),
    );

    // A good one: TLS files that parse, with Redis nowhere; `-t` connects to nothing.
    let good = format!(
        "[redis]\ncluster = [\"rediss://127.0.0.1:1\", \"rediss://127.0.0.1:2\"]\n\
         tls = {{ ca = \"{ca_file}\", cert = \"{cert}\", key = \"{key}\" }}\n"
    );
    let (code, out) = validate_text(&format!("{CHECKED_ONLY}{good}"));
    assert_eq!(code, 0, "{out}");

    let cases = [
        (
            "[redis]\nurl = \"redis://127.0.0.1:6379\"\ncluster = [\"redis://127.0.0.1:7000\"]\n"
                .to_string(),
            "url, cluster and sentinel are alternatives",
        ),
        (
            "[redis]\ntimeout = \"10ms\"\n".to_string(),
            "one of url, cluster or sentinel",
        ),
        ("[redis]\ncluster = []\n".to_string(), "lists no seed nodes"),
        (
            "[redis]\nsentinel = { master = \"\", nodes = [\"redis://127.0.0.1:26379\"] }\n"
                .to_string(),
            "name the monitored primary",
        ),
        (
            "[redis]\ncluster = [\"redis://127.0.0.1:7000\", \"rediss://127.0.0.1:7001\"]\n"
                .to_string(),
            "mixes redis:// and rediss://",
        ),
        (
            "[redis]\nurl = \"http://127.0.0.1:6379\"\n".to_string(),
            "must start with redis://",
        ),
        (
            format!("[redis]\nurl = \"redis://127.0.0.1:6379\"\ntls = {{ ca = \"{ca_file}\" }}\n"),
            "no Redis URL is rediss://",
        ),
        (
            format!("[redis]\nurl = \"rediss://127.0.0.1:6379\"\ntls = {{ cert = \"{cert}\" }}\n"),
            "cert without key",
        ),
        (
            format!("[redis]\nurl = \"rediss://127.0.0.1:6379\"\ntls = {{ ca = \"{not_pem}\" }}\n"),
            "holds no PEM certificate",
        ),
        (
            "[redis]\nurl = \"rediss://127.0.0.1:6379\"\ntls = { ca = \"/nonexistent/ca.pem\" }\n"
                .to_string(),
            "cannot read /nonexistent/ca.pem",
        ),
        (
            "[cache]\nmax_size = \"1MiB\"\nshared = \"redis\"\n".to_string(),
            "no [redis] section",
        ),
    ];
    for (config, expected) in cases {
        let (code, out) = validate_text(&format!("{CHECKED_ONLY}{config}"));
        assert_eq!(code, 1, "{config}\n{out}");
        assert!(
            out.contains(expected),
            "{config}\nexpected {expected:?} in:\n{out}"
        );
    }
}
