//! `make run`, as a newcomer meets it: the shipped config (conf/portico.toml) in front of the
//! demo backends, and the tour that scripts/run-demo.sh prints, run line by line in bash as a
//! user pastes it into a terminal. Each line must do what its comment in the tour says.
//!
//! The gateway and the backends run on free ports: the test rewrites the config's fixed
//! addresses and asks the script for a tour of those (`--tour` with `PORTICO_DEMO_GATEWAY` and
//! `PORTICO_DEMO_ADMIN`), so a demo already running on this machine changes nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::Gateway;

/// The demo backends `scripts/run-demo.sh` starts, and the port each has in the shipped config.
const BACKENDS: [(&str, u16); 4] = [
    ("users", 3001),
    ("orders", 3002),
    ("products", 3003),
    ("users-b", 3004),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The demo backends (the real ones, `portico_loadtest`, served in this process) and the real
/// gateway on `conf/portico.toml`, with only its addresses changed.
async fn start_demo() -> (Gateway, Vec<tokio::task::JoinHandle<()>>) {
    let config = std::fs::read_to_string(root().join("conf/portico.toml")).unwrap();
    let (config, backends) = on_demo_backends(config, &BACKENDS).await;
    (Gateway::start(&config).await, backends)
}

/// A shipped config on demo backends started here, `(name, port)` each, with its fixed
/// addresses (the backends', `make run`'s listeners) changed to theirs and free ones.
pub async fn on_demo_backends(
    mut config: String,
    backends: &[(&str, u16)],
) -> (String, Vec<tokio::task::JoinHandle<()>>) {
    let mut tasks = Vec::new();
    for (name, port) in backends {
        let (addr, task) = portico_loadtest::start(name, "127.0.0.1:0").await.unwrap();
        tasks.push(task);
        config = replace_once(
            &config,
            &format!("\"127.0.0.1:{port}\""),
            &format!("\"{addr}\""),
        );
    }
    config = replace_once(
        &config,
        "listen = [\"127.0.0.1:8080\"]",
        "listen = [\"${PORTICO_LISTEN}\"]",
    );
    config = replace_once(
        &config,
        "listen = \"127.0.0.1:9901\"",
        "listen = \"${PORTICO_ADMIN}\"",
    );
    (config, tasks)
}

/// `text` with its one `from` replaced: the shipped config must still have the addresses the
/// demo script assumes, or this test would quietly run something else.
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the shipped config should have {from} exactly once"
    );
    text.replacen(from, to, 1)
}

/// The commands of the tour, as printed, and which of them the test has run.
struct Tour {
    gateway: String,
    admin: String,
    commands: Vec<String>,
    status_page: String,
    run: BTreeSet<String>,
    /// What `export TOKEN=...` set, for the commands after it.
    token: Option<String>,
}

impl Tour {
    async fn printed_for(gw: &Gateway) -> Tour {
        let out = tokio::process::Command::new(root().join("scripts/run-demo.sh"))
            .arg("--tour")
            .env("PORTICO_DEMO_GATEWAY", gw.addr.to_string())
            .env("PORTICO_DEMO_ADMIN", gw.admin.to_string())
            .output()
            .await
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "run-demo.sh --tour failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Commands are indented by two spaces and followed by "# what it does".
        let commands = text
            .lines()
            .filter_map(|line| line.strip_prefix("  "))
            .map(|line| {
                let (command, _comment) = line
                    .split_once(" # ")
                    .unwrap_or_else(|| panic!("a tour line without its comment: {line}"));
                command.trim_end().to_string()
            })
            .collect();
        let status_page = text
            .lines()
            .find_map(|line| line.strip_prefix("The status page: "))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("the tour names no status page:\n{text}"))
            .to_string();
        Tour {
            gateway: gw.addr.to_string(),
            admin: gw.admin.to_string(),
            commands,
            status_page,
            run: BTreeSet::new(),
            token: None,
        }
    }

    /// The printed command that is `command` once `{gw}` and `{admin}` are the test's addresses.
    fn find(&mut self, command: &str) -> String {
        let want = command
            .replace("{gw}", &self.gateway)
            .replace("{admin}", &self.admin);
        assert!(
            self.commands.contains(&want),
            "the tour does not print\n  {want}\nit prints:\n  {}",
            self.commands.join("\n  ")
        );
        self.run.insert(want.clone());
        want
    }

    /// Run one printed command in bash, from the repository root as the tour assumes, and
    /// return what it printed. curl must reach the gateway directly, whatever proxy this
    /// machine's environment names.
    async fn run(&mut self, command: &str) -> String {
        let command = self.find(command);
        let mut shell = tokio::process::Command::new("bash");
        shell
            .arg("-c")
            .arg(&command)
            .current_dir(root())
            .kill_on_drop(true);
        for proxy in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
            shell.env_remove(proxy);
        }
        if let Some(token) = &self.token {
            shell.env("TOKEN", token);
        }
        let out = tokio::time::timeout(Duration::from_secs(30), shell.output())
            .await
            .unwrap_or_else(|_| panic!("`{command}` did not finish within 30 s"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "`{command}` failed with {}:\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `export TOKEN=...`: what the user's shell would keep for the lines after it.
    fn export_token(&mut self) -> String {
        let line = self
            .commands
            .iter()
            .find(|c| c.starts_with("export TOKEN="))
            .unwrap_or_else(|| panic!("the tour prints no token: {:?}", self.commands))
            .clone();
        self.run.insert(line.clone());
        let token = line["export TOKEN=".len()..].to_string();
        self.token = Some(token.clone());
        token
    }

    fn assert_every_line_was_run(&self) {
        let missed: Vec<_> = self
            .commands
            .iter()
            .filter(|c| !self.run.contains(*c))
            .collect();
        assert!(
            missed.is_empty(),
            "tour lines this test does not check: {missed:#?}"
        );
    }
}

/// The JSON body of what `curl -s` printed.
fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

/// The head of what `curl -i` printed, lower-cased, for status and header checks.
fn head(out: &str) -> String {
    out.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tour_that_make_run_prints_works_line_by_line() {
    let (gw, _backends) = start_demo().await;
    let mut tour = Tour::printed_for(&gw).await;

    // Routing and errors.
    let user = tour.run("curl -i http://{gw}/api/v1/users/42").await;
    let user_head = head(&user);
    assert!(user_head.starts_with("http/1.1 200"), "{user}");
    assert!(user_head.contains("\r\nx-backend: users"), "{user}");
    assert!(user_head.contains("\r\nx-served-by: portico"), "{user}");

    let orders = json(&tour.run("curl http://{gw}/api/v1/orders/user/42").await);
    let orders = orders.as_array().unwrap();
    assert!(!orders.is_empty() && orders.iter().all(|o| o["user_id"] == "42"));

    let product = json(&tour.run("curl http://{gw}/api/v1/products/7").await);
    assert_eq!(product["id"], "7");

    let nope = tour.run("curl -i http://{gw}/nope").await;
    assert!(head(&nope).starts_with("http/1.1 404"), "{nope}");
    assert!(head(&nope).contains("application/problem+json") && nope.contains("\"no_route\""));

    let delete = tour
        .run("curl -i -X DELETE http://{gw}/api/v1/orders")
        .await;
    assert!(head(&delete).starts_with("http/1.1 405"), "{delete}");
    assert!(head(&delete).contains("\r\nallow: get, post"), "{delete}");

    let echo = json(
        &tour
            .run("curl -H 'X-Request-Id: demo-1' http://{gw}/echo")
            .await,
    );
    assert_eq!(echo["headers"]["x-request-id"], "demo-1");
    assert!(echo["headers"]["traceparent"].is_string(), "{echo}");
    assert!(echo["headers"]["x-forwarded-for"].is_string(), "{echo}");

    let dots = tour
        .run("curl -i --path-as-is http://{gw}/api/v1/users/../admin")
        .await;
    assert!(head(&dots).starts_with("http/1.1 400"), "{dots}");
    assert!(dots.contains("\"bad_request\""), "{dots}");

    // A JWT-protected route: refused without a token, open with the one the tour printed,
    // and the backend learns the verified user, not whatever a client claims.
    let token = tour.export_token();
    let anonymous = tour.run("curl -i http://{gw}/api/v1/me").await;
    assert!(head(&anonymous).starts_with("http/1.1 401"), "{anonymous}");
    assert!(
        head(&anonymous).contains("\r\nwww-authenticate: bearer"),
        "{anonymous}"
    );
    let me = json(
        &tour
            .run("curl -H \"Authorization: Bearer $TOKEN\" http://{gw}/api/v1/me")
            .await,
    );
    assert_eq!(me["headers"]["x-user-id"], "42", "{me}");
    assert_eq!(me["path"], "/echo");

    // The tour's other way to get a token, `TOKEN=$(scripts/demo-token.sh)`, mints one the
    // gateway takes too; one signed with any other secret is refused.
    let fresh = mint(&[]).await;
    assert_ne!(fresh, "");
    assert_eq!(status_with_token(&gw, &fresh).await, 200);
    assert_eq!(status_with_token(&gw, &token).await, 200);
    let forged = mint(&[(
        "PORTICO_DEMO_JWT_SECRET",
        "not-the-demo-secret-but-long-enough-anyway",
    )])
    .await;
    assert_eq!(status_with_token(&gw, &forged).await, 401);

    // An API-key route: the backend learns the consumer, never the key.
    let keyless = tour.run("curl -i http://{gw}/partner/v1").await;
    assert!(head(&keyless).starts_with("http/1.1 401"), "{keyless}");
    let partner = json(
        &tour
            .run("curl -H 'x-api-key: demo-partner-key-not-for-production' http://{gw}/partner/v1")
            .await,
    );
    assert_eq!(
        partner["headers"]["x-consumer"], "demo-partner",
        "{partner}"
    );
    assert!(partner["headers"]["x-api-key"].is_null(), "{partner}");

    // A rate-limited route: five a minute, then 429.
    let codes = tour
        .run("for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code} ' http://{gw}/api/v1/recommendations/42; done; echo")
        .await;
    assert_eq!(codes.trim(), "200 200 200 200 200 429");

    // A cached route: the second call is answered from the cache.
    let cache_line = "curl -si http://{gw}/api/v1/products/9 | grep -i '^x-cache'";
    let first = tour.run(cache_line).await;
    assert_eq!(first.trim().to_ascii_lowercase(), "x-cache: miss");
    let second = tour.run(cache_line).await;
    assert_eq!(second.trim().to_ascii_lowercase(), "x-cache: hit");

    // The composed dashboard: a user, their orders and recommendations in one call.
    let dashboard = json(&tour.run("curl -s http://{gw}/dashboard/42").await);
    assert_eq!(dashboard["user"]["id"], "42", "{dashboard}");
    let orders = dashboard["orders"].as_array().expect("orders");
    assert!(!orders.is_empty() && orders.iter().all(|o| o["user_id"] == "42"));
    assert_eq!(
        dashboard["recommendations"].as_array().map(Vec::len),
        Some(3),
        "{dashboard}"
    );
    assert!(dashboard.get("_errors").is_none(), "{dashboard}");

    // The status page opens without a password, and the admin API answers the tour's lines.
    assert_eq!(tour.status_page, format!("http://{}/", gw.admin));
    let page = gw.client.get(&tour.status_page).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("<title>Portico status</title>"));
    let status = json(&tour.run("curl http://{admin}/status").await);
    let routes: BTreeSet<_> = status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for route in [
        "users",
        "me",
        "partner",
        "recommendations",
        "products",
        "dashboard",
    ] {
        assert!(routes.contains(route), "{route} missing from {routes:?}");
    }
    let metrics = tour
        .run("curl -s http://{admin}/metrics | grep ^portico_http_requests")
        .await;
    assert!(
        metrics.contains("portico_http_requests_total{"),
        "{metrics}"
    );

    tour.assert_every_line_was_run();
}

/// A token from `scripts/demo-token.sh`, with `env` added to its environment.
async fn mint(env: &[(&str, &str)]) -> String {
    let out = tokio::process::Command::new(root().join("scripts/demo-token.sh"))
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "demo-token.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn status_with_token(gw: &Gateway, token: &str) -> u16 {
    gw.client
        .get(gw.url("/api/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
