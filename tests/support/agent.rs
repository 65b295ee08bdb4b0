//! Running a real `rift agent` against a test etcd, and binding jobs to it the way the
//! scheduler does (placement + binding).
//!
//! On a TLS test cluster (the default) an agent is admitted as a join would admit it: its
//! identity in `<state>/pki/` (a controller identity with `--controllers`, else a worker's) and
//! its etcd user; a worker's Node is created from what its agent announces (a worker may not
//! write it). An agent started with `--token` joins for real instead. On a plaintext cluster the
//! agent gets `--insecure`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cli::rift_bin;
use super::trust;
use rift::pki::NodeRole;

/// An agent process with its own state directory; killed on drop (its shims are not: tests
/// that start jobs must let [`TestAgent`] clean them up via `kill_shims`).
pub struct TestAgent {
    pub name: String,
    pub endpoints: String,
    pub state: PathBuf,
    pub port: u16,
    /// The loopback address it listens on (`127.0.0.1` unless started with [`Self::start_on`]).
    pub listen: String,
    extra: Vec<String>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl TestAgent {
    /// Starts agent `name` with a fresh state directory; `extra` flags are passed through.
    pub fn start(name: &str, endpoints: &str, extra: &[&str]) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Self::start_in(name, endpoints, dir.path().to_path_buf(), extra);
        a._dir = Some(dir);
        a
    }

    /// Starts agent `name` on an existing state directory.
    pub fn start_in(name: &str, endpoints: &str, state: PathBuf, extra: &[&str]) -> TestAgent {
        Self::start_in_on("127.0.0.1", name, endpoints, state, extra)
    }

    /// Starts agent `name` listening on `ip` (another loopback address: another "machine"),
    /// with a fresh state directory.
    pub fn start_on(ip: &str, name: &str, endpoints: &str, extra: &[&str]) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Self::start_in_on(ip, name, endpoints, dir.path().to_path_buf(), extra);
        a._dir = Some(dir);
        a
    }

    fn start_in_on(
        ip: &str,
        name: &str,
        endpoints: &str,
        state: PathBuf,
        extra: &[&str],
    ) -> TestAgent {
        let mut a = TestAgent {
            listen: ip.into(),
            name: name.into(),
            endpoints: endpoints.into(),
            state,
            port: TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            _dir: None,
        };
        a.admit();
        a.spawn();
        a
    }

    fn has(&self, flag: &str) -> bool {
        self.extra.iter().any(|e| e == flag)
    }

    /// Admits the agent into its TLS cluster (see the module docs); plaintext clusters get
    /// `--insecure`.
    fn admit(&mut self) {
        if self.has("--insecure") {
            return;
        }
        if self.has("--bootstrap") {
            // It makes its own CA and credentials: register where they will be.
            let t = trust::Trust::new(&self.state.join("admin.conf"), &self.state.join("pki"));
            *t.join_url.lock().unwrap() = Some(format!("https://{}", self.addr()));
            trust::register(std::slice::from_ref(&self.endpoints), &t);
            trust::register_agent(&self.addr(), &self.name, &t);
            return;
        }
        let Some(trust) = trust::lookup(&self.endpoints) else {
            self.extra.push("--insecure".into());
            return;
        };
        trust::register_agent(&self.addr(), &self.name, &trust);
        if self.has("--token") {
            return;
        }
        let role = if self.has("--controllers") {
            NodeRole::Controller
        } else {
            NodeRole::Worker
        };
        trust.admit(&self.endpoints, &self.state, &self.name, role, &self.listen);
        if role == NodeRole::Controller {
            let mut url = trust.join_url.lock().unwrap();
            url.get_or_insert_with(|| format!("https://{}", self.addr()));
        } else {
            create_announced_node(&trust, &self.endpoints, &self.name);
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.join("agent.log"))
            .unwrap();
        let child = Command::new(rift_bin())
            .args(["agent", "--name", &self.name, "--listen", &self.listen])
            .args(["--port", &self.port.to_string(), "--node-lease-ttl", "2"])
            .arg("--state-dir")
            .arg(&self.state)
            .args(&self.extra)
            .env("RIFT_ENDPOINTS", &self.endpoints)
            .env("RIFT_LOG", "info")
            .env_remove("RIFT_CONFIG")
            .env_remove("RIFT_NODE_CONFIG")
            .env_remove("RIFT_INSECURE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Stops the agent as systemd would (SIGTERM: it revokes its lease, so its node shows
    /// NotReady at once) and waits for it to exit; its shims run on.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    /// Starts the agent again (same flags, same state directory) after [`Self::terminate`]
    /// or [`Self::kill`].
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "agent {} is still running", self.name);
        self.spawn();
    }

    /// The agent's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.listen, self.port)
    }

    pub fn job_dir(&self, job: &str) -> PathBuf {
        self.state.join("jobs").join(job)
    }

    /// The agent's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("agent.log")).unwrap_or_default()
    }

    /// SIGKILLs every shim and job process started from this agent's state directory.
    pub fn kill_shims(&self) {
        kill_processes_mentioning(&self.state);
    }
}

/// In the background, creates worker `node`'s Node from its announcement once its agent has
/// made one (what the join, or the leader, does in a real cluster); gives up after 30 s.
fn create_announced_node(trust: &trust::Trust, endpoints: &str, node: &str) {
    let access = trust.access(
        &endpoints
            .split(',')
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect::<Vec<_>>(),
    );
    let node = node.to_string();
    std::thread::spawn(move || {
        trust::block_on(async move {
            let Ok(store) = rift::store::Store::connect(&access).await else {
                return;
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let _ = rift::agent::registration::adopt_announced(&store).await;
                if let Ok(Some(_)) = store.get::<rift::api::NodeSpec>(&node).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        trust::unregister(&[self.addr()]);
        self.kill();
        self.kill_shims();
    }
}

/// SIGKILLs every process whose command line or environment mentions `path`, with its group.
pub fn kill_processes_mentioning(path: &Path) {
    let needle = path.to_string_lossy().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let hit = |b: &[u8]| String::from_utf8_lossy(b).contains(&needle);
        if hit(&cmdline) || hit(&environ) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// True while a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let rest = &s[s.rfind(')').unwrap() + 2..];
            !rest.starts_with('Z')
        })
        .unwrap_or(false)
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `rift agent --controllers` named `name` on 127.0.0.1:`port` with leader lease `ttl`
/// seconds and its output discarded: a leader candidate for election tests and benchmarks.
pub fn spawn_candidate(name: &str, endpoints: &str, port: u16, ttl: u64) -> Child {
    // Its own state directory: candidates of different tests must share nothing.
    let state = std::env::temp_dir().join(format!("rift-candidate-{name}-{port}"));
    let mut insecure = Vec::new();
    match trust::lookup(endpoints) {
        Some(t) => {
            t.admit(endpoints, &state, name, NodeRole::Controller, "127.0.0.1");
            trust::register_agent(&format!("127.0.0.1:{port}"), name, &t);
        }
        None => insecure.push("--insecure"),
    }
    Command::new(rift_bin())
        .args([
            "agent",
            "--name",
            name,
            "--controllers",
            "--listen",
            "127.0.0.1",
        ])
        .args(["--port", &port.to_string(), "--lease-ttl", &ttl.to_string()])
        .args(insecure)
        .arg("--state-dir")
        .arg(&state)
        .env("RIFT_ENDPOINTS", endpoints)
        .env_remove("RIFT_NODE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rift agent starts")
}

/// Prints an agent's log (the file at this path) when the test fails.
pub struct LogOnPanic(pub PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.0.display());
        }
    }
}
