//! What a benchmark starts: a throwaway etcd member, real `rift agent` processes, and
//! process measurements. Everything lives in temporary directories, removed at the end: etcd's
//! data on disk (its fsyncs are part of what a cluster pays), everything else (hollow nodes'
//! and agents' state) on tmpfs when the machine has one (`/dev/shm`), so the figures measure
//! rift and etcd, not the bench's own inode work on the machine's disk.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::BenchError;
use crate::api::{NodeSpec, Object};
use crate::pki::local::LocalTrust;
use crate::pki::NodeRole;
use crate::store::{Access, Store};

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

/// Where scratch state goes: `/dev/shm` (tmpfs) when it is a writable directory, else the
/// system's temporary directory.
pub fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let writable = shm.is_dir()
        && std::fs::metadata(shm).is_ok_and(|m| !m.permissions().readonly())
        && nix::unistd::access(shm, nix::unistd::AccessFlags::W_OK).is_ok();
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl TempDir {
    /// A directory for scratch state, on tmpfs when there is one ([`scratch_root`]).
    pub fn new(what: &str) -> Result<TempDir, BenchError> {
        Self::under(&scratch_root(), what)
    }

    /// A directory on the system's temporary directory (on disk), for etcd's data.
    pub fn on_disk(what: &str) -> Result<TempDir, BenchError> {
        Self::under(&std::env::temp_dir(), what)
    }

    fn under(root: &Path, what: &str) -> Result<TempDir, BenchError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = root.join(format!(
            "rift-bench-{what}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).map_err(|e| BenchError::io(&path, e))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Leaves the directory in place: it is not removed.
    pub fn keep(self) {
        let _ = std::mem::ManuallyDrop::new(self);
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-member etcd on free loopback ports with its data in a temporary directory
/// (the binary from `RIFT_ETCD_BIN`, else `etcd` on `PATH`), default settings otherwise
/// (2 GiB backend quota). With `tls` (what a rift cluster runs): TLS on both ports, client
/// certificates and authentication, with a CA made for it; else plaintext (the old way, as a
/// baseline).
pub struct LocalEtcd {
    pub endpoint: String,
    /// etcd's Prometheus metrics, plain HTTP on loopback (`--listen-metrics-urls`).
    pub metrics_url: String,
    /// How the bench reaches it: as `root` over TLS, or plaintext.
    pub access: Access,
    /// The CA agents get their identities from (TLS only).
    pub trust: Option<LocalTrust>,
    pub proc: Proc,
    _dir: TempDir,
}

impl LocalEtcd {
    /// Starts the member with the Go settings rift's own members run with
    /// ([`config::ETCD_GOGC`](crate::agent::config::ETCD_GOGC) and a quarter of the machine's
    /// memory as `GOMEMLIMIT`), or with `GOGC` = `gogc` when given (100 is Go's default).
    pub async fn start(tls: bool, gogc: Option<u32>) -> Result<LocalEtcd, BenchError> {
        let dir = TempDir::on_disk("etcd")?;
        let bin = std::env::var("RIFT_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let port = || free_port().map_err(|e| BenchError::Setup(format!("no free port: {e}")));
        let (client, peer, metrics) = (port()?, port()?, port()?);
        let metrics_listen = format!("http://127.0.0.1:{metrics}");
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("{scheme}://127.0.0.1:{peer}");
        let setup = |e: crate::pki::PkiError| BenchError::Setup(e.to_string());
        let (trust, access, tls_args) = if tls {
            let trust = LocalTrust::create(&dir.path().join("pki")).map_err(setup)?;
            let member = trust
                .member("bench", &["127.0.0.1".to_string()])
                .map_err(setup)?;
            let access = Access::tls(&[endpoint.as_str()], trust.admin().map_err(setup)?);
            (Some(trust), access, member.args())
        } else {
            (None, Access::insecure(&[endpoint.as_str()]), Vec::new())
        };
        let log = std::fs::File::create(dir.path().join("etcd.log"))
            .map_err(|e| BenchError::io(dir.path(), e))?;
        let mut cmd = Command::new(&bin);
        cmd.env(
            "GOGC",
            gogc.unwrap_or(crate::agent::config::ETCD_GOGC).to_string(),
        );
        if let Some(mib) = crate::agent::config::default_etcd_memory_limit_mib() {
            cmd.env("GOMEMLIMIT", format!("{mib}MiB"));
        }
        let child = cmd
            .arg("--name=bench")
            .arg(format!("--listen-metrics-urls={metrics_listen}"))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=bench={peer_url}"))
            .args(tls_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                BenchError::Setup(format!("cannot start `{bin}` (set RIFT_ETCD_BIN): {e}"))
            })?;
        let etcd = LocalEtcd {
            endpoint,
            metrics_url: format!("{metrics_listen}/metrics"),
            access,
            trust,
            proc: Proc { child },
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(store) = Store::connect(&etcd.access).await {
                if let Some(trust) = &etcd.trust {
                    crate::store::auth::enable(&store).await?;
                    crate::store::auth::publish_trust(&store, trust.ca()).await?;
                }
                return Ok(etcd);
            }
            if Instant::now() > deadline {
                return Err(BenchError::Setup("etcd did not answer within 20 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What etcd has used so far: CPU seconds and garbage collections.
    pub async fn usage(&self) -> EtcdUsage {
        let (gc_count, gc_seconds) = match scrape(&self.metrics_url).await {
            Some(text) => (
                metric(&text, "go_gc_duration_seconds_count").unwrap_or(0.0),
                metric(&text, "go_gc_duration_seconds_sum").unwrap_or(0.0),
            ),
            None => (0.0, 0.0),
        };
        EtcdUsage {
            at: Instant::now(),
            cpu_seconds: cpu_seconds(self.proc.pid()).unwrap_or(0.0),
            gc_count,
            gc_seconds,
        }
    }

    /// A store as `root` (or plaintext).
    pub async fn store(&self) -> Result<Store, BenchError> {
        Ok(Store::connect(&self.access).await?)
    }
}

/// Starts a real `rift agent` (this executable) named `name` with its state under `dir`.
/// A controller agent's Node is created unschedulable first, so no job runs on it. On a TLS
/// etcd the agent gets its identity (and etcd user) first, as a join would give it.
pub async fn spawn_agent(
    etcd: &LocalEtcd,
    store: &Store,
    name: &str,
    dir: &Path,
    controllers: bool,
    lease_ttl: u64,
) -> Result<Proc, BenchError> {
    if controllers {
        let spec = NodeSpec {
            unschedulable: true,
            ..NodeSpec::default()
        };
        let node = Object::new(name, spec);
        match patient(|| store.create(&node)).await {
            Ok(_) | Err(crate::store::StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let role = if controllers {
        NodeRole::Controller
    } else {
        NodeRole::Worker
    };
    if let Some(trust) = &etcd.trust {
        trust
            .provision_node(
                &dir.join(name),
                name,
                role,
                &["127.0.0.1".to_string()],
                crate::pki::LEAF_VALIDITY,
            )
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        patient(|| crate::store::auth::ensure_admitted(store, name, role)).await?;
    }
    let exe = std::env::current_exe().map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.args(["agent", "--name", name, "--listen", "127.0.0.1"])
        .args([
            "--port",
            &free_port().map_err(|e| BenchError::io(dir, e))?.to_string(),
        ])
        .args(["--lease-ttl", &lease_ttl.to_string()])
        .args(["--node-lease-ttl", &lease_ttl.to_string()])
        .arg("--state-dir")
        .arg(dir.join(name))
        .env("RIFT_ENDPOINTS", store.endpoints())
        .env_remove("RIFT_LOG")
        .env_remove("RIFT_NODE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(agent_log(&dir.join(name))?);
    if controllers {
        cmd.arg("--controllers");
    }
    if etcd.trust.is_none() {
        cmd.arg("--insecure");
    }
    let child = cmd
        .spawn()
        .map_err(|e| BenchError::Setup(format!("cannot start rift agent: {e}")))?;
    Ok(Proc { child })
}

/// Runs a bench step against etcd again while it fails for a reason that passes on its own (a
/// timeout: thousands of hollow nodes can keep etcd busy past a request's 5 s), for up to a
/// minute; other errors, and the last transient one, are returned.
pub async fn patient<T, F, Fut>(mut step: F) -> Result<T, crate::store::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match step().await {
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tracing::debug!(%e, "bench step: trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// `<state>/agent.log`, created (with its directory) for an agent's stderr; read it with
/// [`log_tail`] when the agent does not do what the bench waits for.
fn agent_log(state: &Path) -> Result<std::fs::File, BenchError> {
    std::fs::create_dir_all(state).map_err(|e| BenchError::io(state, e))?;
    let path = state.join("agent.log");
    std::fs::File::create(&path).map_err(|e| BenchError::io(&path, e))
}

/// The last `bytes` bytes of a log file (empty when it cannot be read).
pub fn log_tail(path: &Path, bytes: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let from = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[from..]).into_owned()
}

/// The node named by the leader key, if any.
pub async fn leader(store: &Store) -> Option<String> {
    crate::store::leader::current_leader(store)
        .await
        .ok()
        .flatten()
        .map(|l| l.record.node)
}

/// Waits (polling every 2 ms) until a leader other than `not` is named; `None` after `limit`.
pub async fn wait_for_leader(store: &Store, not: Option<&str>, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(l) = leader(store).await {
            if Some(l.as_str()) != not {
                return Some(l);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// CPU time (user + system) of `pid` in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(ticks as f64 / hz)
}

/// Resident memory of `pid` in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
}

/// etcd's backend database size in MiB (as the quota counts it).
pub async fn etcd_db_mib(store: &Store) -> Option<f64> {
    let bytes = store.db_size().await.ok()?;
    Some(bytes as f64 / (1024.0 * 1024.0))
}

/// etcd's cumulative CPU and garbage collection at one moment ([`LocalEtcd::usage`]).
#[derive(Clone, Copy, Debug)]
pub struct EtcdUsage {
    pub at: Instant,
    pub cpu_seconds: f64,
    /// Completed GC cycles (`go_gc_duration_seconds_count`).
    pub gc_count: f64,
    /// Seconds in GC stop-the-world pauses (`go_gc_duration_seconds_sum`).
    pub gc_seconds: f64,
}

impl EtcdUsage {
    /// What etcd used between `self` and `later`: CPU as % of one core, GCs, GCs per second,
    /// and the share of wall time in GC pauses (%).
    pub fn until(&self, later: &EtcdUsage) -> EtcdUsed {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let gcs = later.gc_count - self.gc_count;
        EtcdUsed {
            cpu_percent: 100.0 * (later.cpu_seconds - self.cpu_seconds) / wall,
            gcs,
            gc_per_s: gcs / wall,
            gc_pause_percent: 100.0 * (later.gc_seconds - self.gc_seconds) / wall,
        }
    }
}

/// etcd's use of the machine over a window ([`EtcdUsage::until`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct EtcdUsed {
    pub cpu_percent: f64,
    pub gcs: f64,
    pub gc_per_s: f64,
    pub gc_pause_percent: f64,
}

impl EtcdUsed {
    pub fn add_to(&self, r: &mut super::report::Report) {
        use super::report::round;
        let every = if self.gc_per_s > 0.0 {
            format!("one every {:.0} ms", 1000.0 / self.gc_per_s)
        } else {
            "none".into()
        };
        r.add(
            "etcd_usage",
            format!(
                "CPU {:.0} % of one core; {:.0} GCs ({every}), {:.2} % of the time in GC pauses",
                self.cpu_percent, self.gcs, self.gc_pause_percent
            ),
            serde_json::json!({
                "cpu_percent": round(self.cpu_percent),
                "gcs": self.gcs,
                "gc_per_s": round(self.gc_per_s),
                "gc_pause_percent": (self.gc_pause_percent * 100.0).round() / 100.0,
            }),
        );
    }
}

/// The text of a Prometheus endpoint; `None` when it does not answer within 2 s.
async fn scrape(url: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    client.get(url).send().await.ok()?.text().await.ok()
}

/// The value of an unlabelled series `name` in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The machine's 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
