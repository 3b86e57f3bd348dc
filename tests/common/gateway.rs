//! The real gateway, as a user runs it: the `portico` binary with a config file, on free
//! ports, ready when its admin `/readyz` says so, killed when the test drops it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::free_ports;

pub struct Gateway {
    /// The public listener.
    pub addr: SocketAddr,
    /// A free port for a TLS listener, as `${PORTICO_TLS}` (listening only if the config has
    /// `[tls] listen = ["${PORTICO_TLS}"]`).
    pub tls_addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    stderr_path: PathBuf,
    /// The environment the process was started with, for its successor after `-u`.
    env: Vec<(String, String)>,
    /// A client without a connection pool, so each test request is independent.
    pub client: reqwest::Client,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portico")
}

impl Gateway {
    /// Start the gateway on `config`. `[server]` and `[admin]` sections are added when the
    /// config has none; a config that has them writes `listen = ["${PORTICO_LISTEN}"]` and
    /// `listen = "${PORTICO_ADMIN}"`, which the kit sets to free ports.
    pub async fn start(config: &str) -> Gateway {
        Self::start_with_env(config, &[]).await
    }

    /// Like `start`, with extra environment variables for the gateway (for `${NAME}`).
    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(config, env).await {
                Ok(gateway) => return gateway,
                Err(e) if e.contains("Address already in use") => last_error = e,
                Err(e) => panic!("the gateway did not start:\n{e}"),
            }
        }
        panic!("the gateway could not get free ports:\n{last_error}");
    }

    async fn try_start(config: &str, env: &[(&str, &str)]) -> Result<Gateway, String> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let [listen, admin, tls] = free_ports();
        let text = with_defaults(config);
        let config_path = dir.path().join("portico.toml");
        std::fs::write(&config_path, text).expect("write the config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend([
            ("PORTICO_LISTEN".to_string(), format!("127.0.0.1:{listen}")),
            ("PORTICO_ADMIN".to_string(), format!("127.0.0.1:{admin}")),
            ("PORTICO_TLS".to_string(), format!("127.0.0.1:{tls}")),
            (
                "PORTICO_UPGRADE_SOCK".to_string(),
                dir.path().join("upgrade.sock").display().to_string(),
            ),
            ("RUST_LOG".to_string(), "info".to_string()),
        ]);
        let child = spawn(&config_path, &env, stderr, false);
        let mut gateway = Gateway {
            addr: SocketAddr::from(([127, 0, 0, 1], listen)),
            tls_addr: SocketAddr::from(([127, 0, 0, 1], tls)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            config_path,
            dir,
            child: Some(child),
            stderr_path,
            env,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a client"),
        };
        gateway.wait_ready().await?;
        if config.contains("${PORTICO_TLS}") {
            gateway.wait_tls_listener().await?;
        }
        Ok(gateway)
    }

    /// A TLS listener is bound by its own service, which may come up after the plain one.
    async fn wait_tls_listener(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(self.tls_addr).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "the TLS listener was not up in 20s:\n{}",
                    self.stderr()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("portico exited with {status}:\n{}", self.stderr()));
            }
            let ready = self
                .client
                .get(format!("http://{}/readyz", self.admin))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            // The proxy listener is up too once this process holds it: a connection that is
            // accepted could reach another test's server, which took the port after the kit
            // chose it (the gateway then waits to bind, and says so).
            if ready
                && self
                    .child
                    .as_ref()
                    .is_some_and(|c| listens(c.id(), self.addr.port()))
            {
                return Ok(());
            }
            if self.stderr().contains("is in use") {
                return Err(format!("Address already in use:\n{}", self.stderr()));
            }
            if Instant::now() > deadline {
                return Err(format!("portico was not ready in 20s:\n{}", self.stderr()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A zero-downtime binary upgrade, as an operator does it: start a successor with `-u`,
    /// wait until it waits for the listeners, then SIGQUIT this process, which hands them over
    /// and drains. Returns once the old process has exited and the successor is serving.
    pub async fn upgrade(&mut self) {
        let sock = PathBuf::from(self.env_value("PORTICO_UPGRADE_SOCK"));
        let _ = std::fs::remove_file(&sock);
        let stderr = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr file");
        let successor = spawn(&self.config_path, &self.env, stderr, true);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "the successor never listened on {}",
                sock.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.signal("QUIT");
        let old = self.child.replace(successor);
        let status = wait_for_exit(old, Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "the old process exited with {status}:\n{}",
            self.stderr()
        );
        let pid = self.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let serving = match self.client.get(self.admin_url("/status")).send().await {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .map(|v| v["pid"] == pid)
                    .unwrap_or(false),
                Err(_) => false,
            };
            if serving {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the successor is not serving:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn env_value(&self, name: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    /// Everything the gateway wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("a response from the gateway")
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.admin_url(path))
            .send()
            .await
            .expect("admin answers")
            .json()
            .await
            .expect("admin JSON")
    }

    /// `POST /reload` on the admin API.
    pub async fn reload(&self) -> reqwest::Response {
        self.client
            .post(self.admin_url("/reload"))
            .send()
            .await
            .expect("admin answers")
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("admin answers")
            .text()
            .await
            .expect("metrics text")
    }

    /// The Prometheus text of `/metrics` once it shows every one of `lines`. The request
    /// counters move when the gateway has finished a request, which can be just after its
    /// client has read the answer: a test waits for them instead of racing the gateway.
    pub async fn metrics_showing(&self, lines: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.metrics().await;
            let missing: Vec<_> = lines.iter().filter(|l| !text.contains(**l)).collect();
            if missing.is_empty() {
                return text;
            }
            if Instant::now() > deadline {
                panic!("/metrics never showed {missing:?}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The targets `/status` lists for `upstream` now, sorted.
    pub async fn targets_of(&self, upstream: &str) -> Vec<String> {
        let status = self.admin_json("/status").await;
        let mut list: Vec<String> = status["upstreams"][upstream]["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["target"].as_str().map(String::from))
            .collect();
        list.sort();
        list
    }

    /// The health `/status` reports for one target.
    pub async fn target_healthy(&self, upstream: &str, target: SocketAddr) -> bool {
        let status = self.admin_json("/status").await;
        let label = target.to_string();
        status["upstreams"][upstream]["targets"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["target"] == label.as_str()))
            .and_then(|t| t["healthy"].as_bool())
            .unwrap_or_else(|| panic!("no target {label} in upstream {upstream}: {status}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Send a signal by name (TERM, HUP, QUIT, INT) the way an operator would.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} failed");
    }

    /// Wait for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "portico did not exit within {timeout:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn spawn(
    config: &std::path::Path,
    env: &[(String, String)],
    stderr: std::fs::File,
    upgrade: bool,
) -> Child {
    let mut command = Command::new(binary());
    command.arg("-c").arg(config);
    if upgrade {
        command.arg("-u");
    }
    command
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn portico")
}

async fn wait_for_exit(child: Option<Child>, timeout: Duration) -> ExitStatus {
    let mut child = child.expect("a running process");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Which of the gateway's two request drivers the suite runs on: `PORTICO_TEST_DRIVER=pingora`
/// sets `server.fast_path = false` in every config a test starts, so every request goes
/// through Pingora's proxy; unset (or `fast`), plain requests take Portico's own driver.
/// `make test` runs the integration suite once each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Fast,
    Pingora,
}

pub fn driver() -> Driver {
    match std::env::var("PORTICO_TEST_DRIVER").as_deref() {
        Ok("pingora") => Driver::Pingora,
        Ok("fast") | Err(_) => Driver::Fast,
        Ok(other) => panic!("PORTICO_TEST_DRIVER={other}: expected fast or pingora"),
    }
}

/// `config` with the `[server]` and `[admin]` the kit fills in from the environment (free
/// ports, a quiet access log), unless it has its own; and `fast_path` set for the driver
/// under test (`driver()`).
pub fn with_defaults(config: &str) -> String {
    let mut text = String::new();
    if !config.contains("[server]") {
        text.push_str("[server]\nlisten = [\"${PORTICO_LISTEN}\"]\naccess_log = \"off\"\ngrace_period = \"5s\"\nupgrade_sock = \"${PORTICO_UPGRADE_SOCK}\"\n\n");
    }
    if !config.contains("[admin]") {
        text.push_str("[admin]\nlisten = \"${PORTICO_ADMIN}\"\n\n");
    }
    text.push_str(config);
    if driver() == Driver::Pingora && !text.contains("fast_path") {
        text = text.replacen("[server]\n", "[server]\nfast_path = false\n", 1);
    }
    text
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failing test shows what the gateway said: the one clue a flaky run leaves.
        if std::thread::panicking() {
            eprintln!("--- gateway stderr ---\n{}--- end ---", self.stderr());
        }
    }
}

/// Whether process `pid` holds a listening TCP socket on `port` (any address): its socket
/// inodes, from `/proc/PID/fd`, against the listening entries of `/proc/net/tcp{,6}`.
fn listens(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: std::collections::HashSet<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local_address, st (0A: LISTEN), inode
                fields.len() > 9
                    && fields[1].ends_with(&port)
                    && fields[3] == "0A"
                    && inodes.contains(fields[9])
            })
        })
    })
}

/// `config` (with the kit's defaults) written to a file and checked with `portico -t`: exit
/// code and everything printed.
pub fn validate_text(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, with_defaults(config)).expect("write the config");
    validate(&path)
}

/// Run `portico -t -c FILE`: exit code and everything printed.
pub fn validate(path: &std::path::Path) -> (i32, String) {
    validate_with_env(path, &[])
}

pub fn validate_with_env(path: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(binary())
        .envs(env.iter().copied())
        .arg("-t")
        .arg("-c")
        .arg(path)
        .output()
        .expect("run portico -t");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
