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
                for _ in 0..20 {
                    assert_eq!(
                        gw.get("/api/after-removal").await.headers()["x-upstream"],
                        "b"
                    );
                }
                // Counted by path, not by hits: a load request that chose a just before the
                // reload may reach it just after, and that one is not new.
                assert_eq!(
                    a.seen()
                        .iter()
                        .filter(|s| s.uri == "/api/after-removal")
                        .count(),
                    0,
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

/// Each version of the config answers from its own route, named after the version, with a
/// headers plugin that tells which version served; `extra_routes` more routes make it slow
/// to compile.
fn versioned(app: &Upstream, version: usize, extra_routes: usize) -> String {
    let mut text = format!(
        "[plugins.version]\nkind = \"headers\"\nresponse_set = {{ \"x-config-version\" = \"{version}\" }}\n\n[upstreams.app]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"v{version}\"\npath = \"/\"\nupstream = \"app\"\nplugins = [\"version\"]\n",
        app.addr
    );
    for i in 0..extra_routes {
        text.push_str(&format!(
            "\n[[routes]]\nname = \"extra-{i}\"\npath = \"/extra/{i}\"\nupstream = \"app\"\n"
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_triggered_together_end_on_the_newest_file() {
    let app = spawn_ok("app").await;
    let gw = Gateway::start(&versioned(&app, 0, 0)).await;
    // A SIGHUP starts reading a config that takes a while to compile; while it compiles,
    // the file is rewritten and POST /reload asked for. The older compile must not be
    // swapped in after the newer one, and the watcher, which sees the same content as the
    // last reload read, must not have to put it right.
    std::fs::write(&gw.config_path, with_server(&versioned(&app, 1, 3000))).unwrap();
    gw.signal("HUP");
    // Not a wait for readiness: the window in which the first reload is compiling.
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(&gw.config_path, with_server(&versioned(&app, 2, 0))).unwrap();
    assert_eq!(gw.reload().await.status(), 200);
    // Whatever the order the triggers ran in, the file as last written serves, and keeps
    // serving once every trigger (the watcher's too) has had its say.
    eventually(
        "the newest config to serve",
        Duration::from_secs(15),
        async || gw.admin_json("/status").await["routes"][0]["name"] == "v2",
    )
    .await;
    let settled = generation(&gw).await;
    for _ in 0..40 {
        let resp = gw.get("/").await;
        assert_eq!(resp.headers()["x-config-version"], "2");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = gw.admin_json("/status").await;
    assert_eq!(
        status["routes"][0]["name"], "v2",
        "{}",
        status["generation"]
    );
    assert!(generation(&gw).await >= settled);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_reload_starts_nothing_and_fetches_nothing() {
    let app = spawn_ok("app").await;
    let jwks = spawn_upstream("jwks", |_| Reply::Status(200, r#"{"keys":[]}"#)).await;
    let gw = Gateway::start(&crate::common::one_route("app", app.addr, "", "/")).await;
    // A new JWT plugin with a JWKS, in a config with a mistake elsewhere: the whole reload is
    // refused, and the JWKS the refused config names is never fetched.
    let broken = format!(
        "[plugins.auth]\nkind = \"jwt\"\nalgorithms = [\"RS256\"]\njwks_url = \"http://{}/jwks\"\n\n[upstreams.app]\ntargets = [\"{}\"]\nbalance = \"nonsense\"\n\n[[routes]]\nname = \"app\"\npath = \"/\"\nupstream = \"app\"\nplugins = [\"auth\"]\n",
        jwks.addr, app.addr
    );
    std::fs::write(&gw.config_path, with_server(&broken)).unwrap();
    assert_eq!(gw.reload().await.status(), 422);
    // `portico -t` on the same file, too.
    let (code, _) = crate::common::gateway::validate(&gw.config_path);
    assert_eq!(code, 1);
    // The same JWT plugin in a valid config is fetched as soon as that config serves; by
    // then the refused one would have had every chance to fetch.
    let valid = broken.replace("balance = \"nonsense\"\n", "");
    std::fs::write(&gw.config_path, with_server(&valid)).unwrap();
    assert_eq!(gw.reload().await.status(), 200);
    eventually(
        "the serving config fetches its JWKS",
        Duration::from_secs(10),
        async || jwks.hits() > 0,
    )
    .await;
    assert_eq!(jwks.hits(), 1, "only the config that serves fetched");
}

/// A config whose `/secret` route is public in its first part and protected by an API key in
/// the whole: the prefix alone is a valid config, and must never serve.
fn secret_config(app: &Upstream) -> (String, String) {
    let whole = format!(
        "[consumers.ops]\napi_keys = [\"ops-key-0123456789\"]\n\n[plugins.keys]\nkind = \"api_key\"\n\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"public\"\npath = \"/public\"\nupstream = \"app\"\n\n\
         [[routes]]\nname = \"secret\"\npath = \"/secret\"\nupstream = \"app\"\nplugins = [\"keys\"]\n",
        app.addr
    );
    let cut = whole.find("plugins = [\"keys\"]").unwrap();
    (with_server(&whole[..cut]), whole[cut..].to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_written_in_two_steps_is_applied_only_once_complete() {
    use std::io::Write;
    let app = spawn_ok("app").await;
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"public\"\npath = \"/public\"\nupstream = \"app\"\n",
        app.addr
    ))
    .await;
    let (prefix, rest) = secret_config(&app);
    // Watch /secret the whole time: it must never answer without the key.
    let stop = Arc::new(AtomicBool::new(false));
    let leaked = Arc::new(AtomicUsize::new(0));
    let watcher = tokio::spawn({
        let (client, url) = (reqwest::Client::new(), gw.url("/secret"));
        let (stop, leaked) = (Arc::clone(&stop), Arc::clone(&leaked));
        async move {
            while !stop.load(Ordering::SeqCst) {
                if client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
                {
                    leaked.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });

    // A writer that truncates the file, writes the first part, pauses, then the rest, in
    // one open: nothing is read until it closes the file.
    let before = generation(&gw).await;
    {
        let mut file = std::fs::File::create(&gw.config_path).unwrap();
        file.write_all(prefix.as_bytes()).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        file.write_all(rest.as_bytes()).unwrap();
    }
    eventually(
        "the whole config to serve",
        Duration::from_secs(10),
        async || generation(&gw).await > before,
    )
    .await;
    assert_eq!(generation(&gw).await, before + 1, "read once, complete");
    assert_eq!(gw.get("/secret").await.status(), 401);

    // A writer that truncates and writes the first part, closes, and appends the rest: the
    // content is left to settle after a close before it is read.
    let (prefix2, rest2) = secret_config(&app);
    let prefix2 = prefix2.replace("name = \"secret\"", "name = \"secret2\"");
    let before = generation(&gw).await;
    std::fs::write(&gw.config_path, &prefix2).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&gw.config_path)
        .unwrap()
        .write_all(rest2.as_bytes())
        .unwrap();
    eventually(
        "the appended config to serve",
        Duration::from_secs(10),
        async || gw.admin_json("/status").await["routes"][1]["name"] == "secret2",
    )
    .await;
    assert_eq!(generation(&gw).await, before + 1, "read once, complete");
    stop.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    assert_eq!(leaked.load(Ordering::SeqCst), 0, "the prefix never served");
}
