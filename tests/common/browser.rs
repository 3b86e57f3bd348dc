//! A real browser for the tests: Debian's `chromium`, headless, driven over the Chrome DevTools
//! Protocol (JSON over a WebSocket). Every wait is bounded and fails with what it waited for,
//! and the browser (with every process it started) is killed when the test drops it.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long Chromium may take to start, and to answer any one command.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Chromium {
    process: Process,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// The browser's processes and profile: killed and removed on drop, whatever state the test
/// left them in (a failed assertion included).
struct Process {
    child: Child,
    profile: tempfile::TempDir,
}

/// One tab, attached with a flat session: commands to it carry its `sessionId`.
pub struct Tab {
    session: String,
}

impl Chromium {
    /// Start headless Chromium on a fresh profile and connect to its DevTools endpoint. A
    /// machine without it fails here, loudly: the test is part of the suite, not optional.
    pub async fn start() -> Chromium {
        let profile = tempfile::tempdir().expect("a temp dir for the profile");
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("a log file");
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless",
                // Tests run as root in containers, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--no-proxy-server",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group, so that drop can end the renderers and helpers too.
            .process_group(0);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start chromium ({e}); scripts/ensure-deps.sh installs it (apt package chromium)"
            )
        });
        let mut process = Process { child, profile };
        let url = process.devtools_url().await;
        let ws = match tokio::time::timeout(
            CALL_TIMEOUT,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => panic!("cannot connect to Chromium's DevTools at {url}: {e}"),
            Err(_) => panic!("Chromium's DevTools at {url} did not answer within {CALL_TIMEOUT:?}"),
        };
        Chromium {
            process,
            ws,
            next_id: 0,
        }
    }

    /// Send one command (to the browser, or to a tab's session) and return its result; events
    /// that arrive meanwhile are skipped. An error answer or a silent browser fails the test.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let answer = tokio::time::timeout(CALL_TIMEOUT, async {
            self.ws
                .send(Message::text(message.to_string()))
                .await
                .map_err(|e| format!("cannot send {method}: {e}"))?;
            while let Some(frame) = self.ws.next().await {
                let frame = frame.map_err(|e| format!("the DevTools connection broke: {e}"))?;
                let Message::Text(text) = frame else { continue };
                let value: Value = serde_json::from_str(text.as_str())
                    .map_err(|e| format!("DevTools sent something that is not JSON: {e}"))?;
                if value["id"] == id {
                    return Ok(value);
                }
            }
            Err("the DevTools connection closed".to_string())
        })
        .await;
        let answer = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => panic!("{method}: {e}\n{}", self.process.log()),
            Err(_) => panic!("Chromium did not answer {method} within {CALL_TIMEOUT:?}"),
        };
        if let Some(error) = answer.get("error") {
            panic!("{method} failed: {error}");
        }
        answer["result"].clone()
    }

    /// A new tab of `width` x `height` CSS pixels, showing `about:blank`.
    pub async fn open_tab(&mut self, width: u32, height: u32) -> Tab {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let tab = Tab {
            session: attached["sessionId"]
                .as_str()
                .expect("a session id")
                .to_string(),
        };
        self.call(
            Some(&tab.session),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        tab
    }

    pub async fn navigate(&mut self, tab: &Tab, url: &str) {
        let result = self
            .call(Some(&tab.session), "Page.navigate", json!({ "url": url }))
            .await;
        assert!(
            result.get("errorText").is_none(),
            "Chromium could not open {url}: {result}"
        );
    }

    /// The value of a JavaScript expression in the tab (JSON-serializable values only).
    pub async fn eval(&mut self, tab: &Tab, expression: &str) -> Value {
        let result = self
            .call(
                Some(&tab.session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("`{expression}` threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Poll `expression` in the tab until it is `true`, for at most `timeout`.
    pub async fn wait_for(&mut self, tab: &Tab, what: &str, timeout: Duration, expression: &str) {
        let deadline = Instant::now() + timeout;
        while self.eval(tab, expression).await != json!(true) {
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for the page to show {what} (`{expression}`)");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A PNG of what the tab shows, written to `path`.
    pub async fn screenshot(&mut self, tab: &Tab, path: &Path) {
        use base64::Engine;
        let shot = self
            .call(
                Some(&tab.session),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot's folder");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Process {
    /// Chromium writes the port it chose, and the browser's WebSocket path, to
    /// `DevToolsActivePort` in its profile once it listens.
    async fn devtools_url(&mut self) -> String {
        let file = self.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    return format!("ws://127.0.0.1:{port}{path}");
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited with {status}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "chromium did not open its DevTools port within {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The whole group: the browser, its renderers, GPU and utility processes.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
