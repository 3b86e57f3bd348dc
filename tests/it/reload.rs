//! Operators change the config many times a day while traffic flows: nothing is lost.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::gateway::with_defaults;
use crate::common::{eventually, spawn_upstream, upstream::spawn_ok, Gateway, Reply, Upstream};

const SECRET_1: &str = "first-secret-0123456789-abcdefghijklmn";
const SECRET_2: &str = "second-secret-0123456789-abcdefghijklm";

async fn generation(gw: &Gateway) -> u64 {
    gw.admin_json("/status").await["generation"]
        .as_u64()
        .unwrap()
}

/// Write the config and wait until the watcher has applied it (generation moves on).
async fn rewrite(gw: &Gateway, text: &str) {
    let before = generation(gw).await;
    std::fs::write(&gw.config_path, with_server(text)).unwrap();
    eventually(
        "the new config is serving",
        Duration::from_secs(10),
        async || generation(gw).await > before,
    )
    .await;
}

fn with_server(text: &str) -> String {
    with_defaults(text)
}

/// Keep-alive clients sending requests until stopped; counts answers that were not 200.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(gw: &Gateway, path: &str, clients: usize, max_requests: usize) -> Load {
        let (stop, sent, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let tasks = (0..clients)
            .map(|_| {
                let client = reqwest::Client::new();
                let url = gw.url(path);
                let (stop, sent, failed) =
                    (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed));
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst)
                        && sent.fetch_add(1, Ordering::SeqCst) < max_requests
                    {
                        match client.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {}
                            _ => {
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

fn config(targets: &[&Upstream], version: usize, secret_env: &str, extra_routes: usize) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{}\"", t.addr)).collect();
    let mut text = format!(
        r#"
[upstreams.app]
targets = [{}]

[plugins.version]
kind = "headers"
response_set = {{ "x-config-version" = "{version}" }}

[plugins.auth]
kind = "jwt"
algorithms = ["HS256"]
secret = "${{{secret_env}}}"

[[routes]]
name = "api"
path = "/api"
upstream = "app"
plugins = ["version"]

[[routes]]
name = "private"
path = "/private"
upstream = "app"
plugins = ["auth"]
"#,
        targets.join(", ")
    );
    for i in 0..extra_routes {
        text.push_str(&format!(
            "\n[[routes]]\nname = \"extra-{i}\"\npath = \"/extra/{i}\"\nupstream = \"app\"\n"
        ));
    }
    text
}

fn token(secret: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": "u", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_rewrites_under_load_lose_nothing() {
    let slow = |s: &crate::common::Seen| {
        if s.uri.starts_with("/api/slow") {
            Reply::Delay(Duration::from_millis(1500))
        } else {
            Reply::Status(200, "ok")
        }
    };
    let (a, b) = (
        spawn_upstream("a", slow).await,
        spawn_upstream("b", slow).await,
    );
    let env = [("SECRET_1", SECRET_1), ("SECRET_2", SECRET_2)];
    let gw =
        Gateway::start_with_env(&with_server(&config(&[&a, &b], 0, "SECRET_1", 0)), &env).await;
    let load = Load::start(&gw, "/api/steady", 4, 4000);

    for version in 1..=20 {
        match version {
            // Remove target a while a slow request to it is in flight.
            10 => {
                let slow_on =
                    |up: &Upstream| up.seen().iter().filter(|s| s.uri == "/api/slow").count();
                // Round robin alternates; send slow requests until one is in flight on a.
                let slow_request = loop {
                    let (on_a, on_b) = (slow_on(&a), slow_on(&b));
                    let (client, url) = (gw.client.clone(), gw.url("/api/slow"));
                    let request =
                        tokio::spawn(async move { client.get(url).send().await.unwrap() });
                    eventually(
                        "the slow request reached a target",
                        Duration::from_secs(5),
                        async || slow_on(&a) + slow_on(&b) > on_a + on_b,
                    )
                    .await;
                    if slow_on(&a) > on_a {
                        break request;
                    }
                    assert_eq!(request.await.unwrap().status(), 200);
                };
                rewrite(&gw, &config(&[&b], version, "SECRET_1", version % 3)).await;
                let a_before = a.hits();
                for _ in 0..20 {
                    assert_eq!(
                        gw.get("/api/after-removal").await.headers()["x-upstream"],
                        "b"
                    );
                }
                assert_eq!(
                    a.hits(),
                    a_before,
                    "the removed target gets no new requests"
                );
                assert_eq!(
                    slow_request.await.unwrap().status(),
                    200,
                    "the in-flight request completes"
                );
            }
            // Rotate the JWT key.
            15 => {
                rewrite(&gw, &config(&[&b], version, "SECRET_2", 0)).await;
                let new = gw
                    .client
                    .get(gw.url("/private/x"))
                    .bearer_auth(token(SECRET_2))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(new.status(), 200);
                let old = gw
                    .client
                    .get(gw.url("/private/x"))
                    .bearer_auth(token(SECRET_1))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(old.status(), 401);
            }
            v => {
                let targets: Vec<&Upstream> = if v < 10 { vec![&a, &b] } else { vec![&b] };
                let secret = if v < 15 { "SECRET_1" } else { "SECRET_2" };
                rewrite(&gw, &config(&targets, v, secret, v % 3)).await;
                let resp = gw.get("/api/x").await;
                assert_eq!(
                    resp.headers()["x-config-version"],
                    v.to_string().as_str(),
                    "the changed header"
                );
                if v % 3 > 0 {
                    assert_eq!(
                        gw.get(&format!("/extra/{}", v % 3 - 1)).await.status(),
                        200,
                        "the added route"
                    );
                }
            }
        }
    }
    let (sent, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during 20 reloads"
    );
    assert!(sent > 100, "the load kept flowing: {sent}");
    assert_eq!(generation(&gw).await, 21);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_configs_leave_the_old_one_serving() {
    let app = spawn_ok("app").await;
    let good = "[upstreams.app]\ntargets = [\"ADDR\"]\n\n[[routes]]\nname = \"api\"\npath = \"/api\"\nupstream = \"app\"\n".replace("ADDR", &app.addr.to_string());
    let gw = Gateway::start(&with_server(&good)).await;
    let load = Load::start(&gw, "/api/x", 2, 100_000);
    let full = with_server(&good);

    let invalid = [
        ("broken TOML", full.replace("[[routes]]", "[[routes")),
        ("unknown upstream", full.replace("upstream = \"app\"", "upstream = \"nope\"")),
        ("negative duration", full.replace("[[routes]]", "[upstreams.app2]\ntargets = [\"127.0.0.1:1\"]\nread_timeout = \"-5s\"\n\n[[routes]]")),
        ("listen address changed", full.replace("listen = [\"${PORTICO_LISTEN}\"]", "listen = [\"127.0.0.1:1\"]")),
    ];
    for (errors_seen, (what, text)) in invalid.into_iter().enumerate() {
        std::fs::write(&gw.config_path, text).unwrap();
        eventually(
            &format!("the {what} config is rejected"),
            Duration::from_secs(10),
            async || {
                let status = gw.admin_json("/status").await;
                status["last_reload"]["result"] == "error" && {
                    let count = gw
                        .metrics()
                        .await
                        .lines()
                        .find(|l| l.starts_with("portico_config_reloads_total{result=\"error\"}"))
                        .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
                        .unwrap_or(0);
                    count > errors_seen
                }
            },
        )
        .await;
        assert_eq!(
            generation(&gw).await,
            1,
            "{what}: the old config keeps serving"
        );
        assert_eq!(gw.get("/api/x").await.status(), 200, "{what}");
    }
    let status = gw.admin_json("/status").await;
    assert!(
        status["last_reload"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("server.listen: cannot change while running"),
        "{status}"
    );

    // A file written in two steps: the first half alone is not valid.
    let half = full.len() / 2;
    std::fs::write(&gw.config_path, &full[..half]).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&gw.config_path)
        .unwrap();
    std::io::Write::write_all(&mut file, &full.as_bytes()[half..]).unwrap();
    drop(file);
    eventually(
        "the completed file is picked up",
        Duration::from_secs(10),
        async || generation(&gw).await == 2,
    )
    .await;

    // Deleted, then created again.
    std::fs::remove_file(&gw.config_path).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await; // longer than the watcher's debounce
    assert_eq!(
        gw.get("/api/x").await.status(),
        200,
        "a missing file changes nothing"
    );
    let with_v2 = full.replace(
        "[[routes]]",
        "[[routes]]\nname = \"v2\"\npath = \"/v2\"\nupstream = \"app\"\n\n[[routes]]",
    );
    std::fs::write(&gw.config_path, with_v2).unwrap();
    eventually(
        "the recreated file is picked up",
        Duration::from_secs(10),
        async || generation(&gw).await == 3,
    )
    .await;
    assert_eq!(gw.get("/v2/x").await.status(), 200);

    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_rate_limit_keeps_its_counts_across_a_reload() {
    let app = spawn_ok("app").await;
    let text = |extra: &str| {
        format!(
            "[plugins.limit]\nkind = \"rate_limit\"\nlimit = 3\nwindow = \"1m\"\n\n[upstreams.app]\ntargets = [\"{}\"]\n\n\
             [[routes]]\nname = \"api\"\npath = \"/api\"\nupstream = \"app\"\nplugins = [\"limit\"]\n{extra}",
            app.addr
        )
    };
    let gw = Gateway::start(&with_server(&text(""))).await;
    assert_eq!(gw.get("/api/x").await.status(), 200);
    assert_eq!(gw.get("/api/x").await.status(), 200);
    rewrite(
        &gw,
        &text("\n[[routes]]\nname = \"other\"\npath = \"/other\"\nupstream = \"app\"\n"),
    )
    .await;
    assert_eq!(gw.get("/api/x").await.status(), 200, "the third of three");
    assert_eq!(
        gw.get("/api/x").await.status(),
        429,
        "the count survived the reload"
    );
}
