//! A real headless Chromium driven over the DevTools protocol, for tests and benchmarks that
//! must see a page the way a person's browser does (scripts run, server-sent events arrive,
//! the Content-Security-Policy is enforced).
//!
//! [`Browser::launch`] starts Debian's `chromium` (or `RIFT_TEST_CHROMIUM`) with the flags this
//! machine needs (no sandbox as root, no GPU, no background networking: nothing leaves
//! loopback), in its own process group and a fresh profile directory, and opens one page.
//! Everything the page reports as an error (uncaught exceptions, `console.error`, and
//! browser-level errors such as CSP violations and failed loads) is collected and can be read
//! with [`Browser::errors`]. Dropping the browser SIGKILLs its whole process group.
//!
//! Only the few protocol methods the tests use are spoken (navigate, evaluate, screenshot,
//! viewport); each command waits at most [`COMMAND_TIMEOUT`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest one protocol command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Chromium may take to start and open its debugging port.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium binary: `RIFT_TEST_CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn chromium_bin() -> PathBuf {
    std::env::var_os("RIFT_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

pub struct Browser {
    child: Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    errors: Vec<String>,
    /// Page events seen while waiting for command answers, by method name.
    seen: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with a `width`×`height` window and connects to its page.
    pub async fn launch(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(chromium_bin());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--mute-audio",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}): install it with scripts/install-deps.sh",
                chromium_bin().display()
            )
        });
        let port = wait_for_port(profile.path());
        let url = page_socket(port).await;
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            errors: Vec::new(),
            seen: Vec::new(),
            _profile: profile,
        };
        b.call("Page.enable", json!({})).await;
        b.call("Runtime.enable", json!({})).await;
        b.call("Log.enable", json!({})).await;
        b
    }

    /// The pid of the browser's main process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command and returns its result; records the events that arrive meanwhile.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).await.unwrap();
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let v = self.next_message(deadline, method).await;
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("{method} failed: {err}");
                }
                return v["result"].clone();
            }
        }
    }

    async fn next_message(&mut self, deadline: Instant, waiting_for: &str) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, self.ws.next())
            .await
            .unwrap_or_else(|_| panic!("the browser did not answer {waiting_for} in time"))
            .expect("the browser's connection is open")
            .unwrap();
        let v: Value = match msg {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            _ => return Value::Null,
        };
        self.record(&v);
        v
    }

    fn record(&mut self, v: &Value) {
        let Some(method) = v["method"].as_str() else {
            return;
        };
        let p = &v["params"];
        match method {
            "Runtime.exceptionThrown" => self.errors.push(format!(
                "exception: {}",
                p["exceptionDetails"]["exception"]["description"]
                    .as_str()
                    .or(p["exceptionDetails"]["text"].as_str())
                    .unwrap_or("?")
            )),
            "Runtime.consoleAPICalled" if p["type"] == "error" => self.errors.push(format!(
                "console.error: {}",
                p["args"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .map(|x| x["value"].to_string())
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default()
            )),
            "Log.entryAdded" if p["entry"]["level"] == "error" => self.errors.push(format!(
                "{}: {} {}",
                p["entry"]["source"].as_str().unwrap_or("log"),
                p["entry"]["text"].as_str().unwrap_or(""),
                p["entry"]["url"].as_str().unwrap_or("")
            )),
            _ => {}
        }
        self.seen.push(method.to_string());
    }

    /// Loads `url` and waits for its load event. A navigation Chromium aborts because it saw
    /// the machine's network change (other tests add loopback addresses and interfaces) is
    /// tried again, a few times.
    pub async fn goto(&mut self, url: &str) {
        let mut tries = 0;
        loop {
            self.seen.clear();
            let r = self.call("Page.navigate", json!({"url": url})).await;
            match r["errorText"].as_str() {
                None => break,
                Some("net::ERR_NETWORK_CHANGED") if tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Some(e) => panic!("cannot load {url}: {e}"),
            }
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while !self.seen.iter().any(|m| m == "Page.loadEventFired") {
            self.next_message(deadline, "the load event").await;
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` every 20 ms until it is truthy; `None` when `within` passes first.
    pub async fn wait_for(&mut self, expr: &str, within: Duration) -> Option<Value> {
        let start = Instant::now();
        loop {
            let v = self.eval(expr).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return Some(v);
            }
            if start.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Makes the page `width`×`height` CSS pixels; `mobile` emulates a phone (viewport meta
    /// honoured, touch).
    pub async fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": if mobile { 2 } else { 1 }, "mobile": mobile}),
        )
        .await;
    }

    /// Saves a PNG of the whole page (not just the window) to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Errors the page reported since the last call (and forgets them).
    pub fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }

    /// Kills the browser at once (its connections close as a crash would close them).
    pub fn kill(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The debugging port Chromium wrote into its profile once it listens.
fn wait_for_port(profile: &Path) -> u16 {
    let file = profile.join("DevToolsActivePort");
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                return port;
            }
        }
        assert!(
            start.elapsed() < START_TIMEOUT,
            "chromium did not open its debugging port within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The WebSocket address of the browser's first page.
async fn page_socket(port: u16) -> String {
    let start = Instant::now();
    loop {
        let list = tokio::task::spawn_blocking(move || json_list(port))
            .await
            .unwrap();
        if let Some(url) = list.as_array().and_then(|t| {
            t.iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        }) {
            return url.to_string();
        }
        assert!(start.elapsed() < START_TIMEOUT, "chromium opened no page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /json/list` of the debugging port, read by its Content-Length (Chromium keeps the
/// connection open after answering).
fn json_list(port: u16) -> Value {
    use std::io::{BufRead, BufReader, Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return Value::Null;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if write!(
        s,
        "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .is_err()
    {
        return Value::Null;
    }
    let mut r = BufReader::new(s);
    let mut len = 0;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return Value::Null;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return Value::Null;
    }
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}
