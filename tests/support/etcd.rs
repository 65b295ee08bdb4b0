//! Throwaway etcd clusters for integration tests.
//!
//! [`EtcdCluster`] runs real `etcd` processes (the binary found on `PATH`, or
//! the one named by the `RIFT_TEST_ETCD_BIN` environment variable) on loopback
//! addresses, each member on its own address (`127.0.0.1`, `127.0.0.2`, ...)
//! with kernel-chosen free ports, and all state (data dirs and logs) inside a
//! fresh temporary directory that is deleted when the cluster is dropped.
//!
//! A cluster is what rift runs in production unless asked otherwise: TLS on the
//! client and peer ports with client certificates required, authentication on,
//! with a CA made for this cluster alone; the operator's credentials are in
//! [`EtcdCluster::admin_conf`] and registered for its endpoints (see
//! [`super::trust`]), so `rift(&cluster.endpoints_csv(), ..)` and
//! `TestAgent::start(.., &cluster.endpoints_csv(), ..)` find them. Health is
//! read from each member's loopback metrics listener. [`EtcdCluster::plaintext`]
//! starts the old kind (plain HTTP, no auth) for tests of that path.
//!
//! Guarantees:
//!
//! * Constructors ([`EtcdCluster::single`], [`EtcdCluster::three`],
//!   [`EtcdCluster::with_members`]) return only once every member reports
//!   `{"health":"true"}` on `GET /health`, i.e. the cluster has a leader and
//!   serves quorum reads. They panic (with the tail of the failing member's
//!   log) if that does not happen within 20 s.
//! * Nothing etcd writes reaches the test's stdout/stderr: each member logs to
//!   `m<i>/etcd.log` inside the temporary directory.
//! * Dropping the cluster (including during a panic unwind) SIGKILLs every
//!   member that is still running and reaps it, so no etcd process or zombie
//!   outlives the test. (If the test process itself is killed or aborts
//!   without unwinding, the members are orphaned; they hold only loopback
//!   ports and temp files.)
//! * All methods are synchronous except [`EtcdCluster::client`] and
//!   [`EtcdCluster::compact`]; the synchronous ones block the calling thread
//!   (never a runtime) and can be called from `#[test]` and `#[tokio::test]`
//!   alike.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, CompactionOptions, ConnectOptions};
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{self, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rift::agent::etcd_member::process::MemberTls;
use rift::pki::credentials::Credentials;
use rift::pki::local::LocalTrust;
use rift::store::{Access, Store};
use tempfile::TempDir;

use super::trust::{self, Trust};

/// How long a member may take to become ready after being spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Readiness polling interval.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long [`EtcdCluster::stop`] waits after SIGTERM before escalating to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How many times a first start is attempted (with fresh ports) when a member
/// exits during startup, e.g. because a port was taken in the meantime.
const START_ATTEMPTS: usize = 5;
/// How many log lines a startup failure panic includes.
const LOG_TAIL_LINES: usize = 30;

/// A client URL no member listens on (port 1 refuses connections).
const UNREACHABLE_CLIENT_URL: &str = "https://127.0.0.1:1";

/// etcd's error text for compacting at or below the compacted revision.
const ERR_COMPACTED: &str = "required revision has been compacted";

/// Distinguishes clusters created by one test process.
static CLUSTER_SEQ: AtomicU64 = AtomicU64::new(0);

/// One etcd process (running or not) and the addresses it owns.
struct Member {
    name: String,
    ip: Ipv4Addr,
    client_port: u16,
    peer_port: u16,
    /// Plain HTTP on the member's own loopback address: `/health`, `/metrics`.
    metrics_port: u16,
    /// TLS files (`None`: a plaintext cluster).
    tls: Option<MemberTls>,
    /// Holds `data/` and `etcd.log`.
    dir: PathBuf,
    /// `Some` from spawn until the process has been reaped.
    child: Option<Child>,
}

impl Member {
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn client_url(&self) -> String {
        format!("{}://{}:{}", self.scheme(), self.ip, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("{}://{}:{}", self.scheme(), self.ip, self.peer_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// Whether the process is alive. Does not reap it.
    fn is_running(&self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        let pid = Pid::from_raw(child.id() as i32);
        // WNOWAIT leaves an exited child waitable, so `Child::wait` still works.
        matches!(
            wait::waitid(
                Id::Pid(pid),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            ),
            Ok(WaitStatus::StillAlive)
        )
    }

    /// If the process has exited, reap it and return its status.
    fn reap_if_exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            Ok(None) => None,
            Err(e) => panic!("etcd {}: waiting for the process failed: {e}", self.name),
        }
    }

    /// Send `sig`, wait up to `timeout` for the process to exit (escalating to
    /// SIGKILL after that), and reap it. No-op if there is no process.
    fn terminate(&mut self, sig: Signal, timeout: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // ESRCH cannot happen for an unreaped child; ignore errors anyway,
            // the wait below is what matters.
            let _ = signal::kill(Pid::from_raw(child.id() as i32), sig);
            let deadline = Instant::now() + timeout;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        self.child = None;
    }

    /// The last `n` lines of this member's log, for failure messages.
    fn log_tail(&self, n: usize) -> String {
        let path = self.log_path();
        match fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(n);
                let mut out = String::new();
                for line in &lines[start..] {
                    let _ = writeln!(out, "    {line}");
                }
                out
            }
            Err(e) => format!("    <could not read {}: {e}>\n", path.display()),
        }
    }
}

/// Why members did not become ready.
enum NotReady {
    /// The process exited before becoming ready.
    Exited { member: usize, status: ExitStatus },
    /// The process is still running but was not ready in time.
    TimedOut { member: usize },
}

/// What "ready" means when waiting for a member.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// `GET /health` answers `{"health":"true"}`.
    Healthy,
    /// The client port accepts TCP connections (used when restarting a member
    /// without a quorum, which cannot become healthy on its own).
    Listening,
}

/// A set of etcd processes forming one cluster, plus the temporary directory
/// holding their data and logs.
///
/// Member `i` is named `m<i>` and listens on `127.0.0.<i+1>`. Its ports never
/// change once the cluster is up, so [`EtcdCluster::endpoints`] stays valid
/// across [`stop`](EtcdCluster::stop)/[`kill`](EtcdCluster::kill) and
/// [`start`](EtcdCluster::start).
///
/// Dropping the cluster SIGKILLs and reaps all members still running, then
/// deletes the temporary directory.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// The cluster's CA and operator credentials (`None`: plaintext).
    trust: Option<Arc<Trust>>,
    /// `--initial-cluster-token`, unique per cluster (and per start attempt).
    token: String,
    /// The client URL members advertise instead of their own, if any.
    advertise: Option<String>,
    /// Relay URLs registered with this cluster's trust ([`EtcdCluster::url_via`]).
    relays: std::sync::Mutex<Vec<String>>,
    /// Dropped after `Drop::drop` has killed the members.
    dir: TempDir,
}

impl EtcdCluster {
    /// One member on `127.0.0.1` with free ports, in a fresh temp dir. Returns
    /// once it is healthy; panics (with its log tail) if it is not within 20 s.
    pub fn single() -> EtcdCluster {
        EtcdCluster::with_members(1)
    }

    /// One member, like [`single`](Self::single), that advertises a client URL nothing
    /// listens on (`https://127.0.0.1:1`): agents learn no way to it besides the endpoints they
    /// were given, so a test can put a fault proxy between one agent and etcd and cut it.
    pub fn single_unadvertised() -> EtcdCluster {
        EtcdCluster::build(1, true, Some(UNREACHABLE_CLIENT_URL.into()))
    }

    /// Three members on `127.0.0.1`, `127.0.0.2` and `127.0.0.3` forming a real
    /// raft cluster. Returns once all three are healthy; panics (with the log
    /// tail of a failing member) if they are not within 20 s.
    pub fn three() -> EtcdCluster {
        EtcdCluster::with_members(3)
    }

    /// `n` members on `127.0.0.1..=127.0.0.n` (`1 <= n <= 254`) forming one
    /// cluster. All processes are started first, then this waits until every
    /// member is healthy (20 s budget, shared by all members).
    ///
    /// If a member exits during startup (typically because another process
    /// grabbed one of the ports chosen for it), all members are killed and the
    /// cluster is started again from scratch with new ports, up to 5 attempts.
    pub fn with_members(n: usize) -> EtcdCluster {
        Self::build(n, true, None)
    }

    /// `n` members of the old kind: plain HTTP, no client certificates, no
    /// authentication (tests of `--insecure` and of moving to TLS).
    pub fn plaintext(n: usize) -> EtcdCluster {
        Self::build(n, false, None)
    }

    fn build(n: usize, tls: bool, advertise: Option<String>) -> EtcdCluster {
        assert!(
            (1..=254).contains(&n),
            "EtcdCluster::with_members: n must be in 1..=254, got {n}"
        );
        let dir = tempfile::Builder::new()
            .prefix("rift-etcd-")
            .tempdir()
            .expect("create temp dir for etcd cluster");
        let ca = tls
            .then(|| LocalTrust::create(&dir.path().join("pki")).expect("create the cluster's CA"));
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            trust: None,
            token: String::new(),
            advertise,
            relays: Default::default(),
            dir,
        };
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            cluster.prepare_attempt(n, attempt, ca.as_ref());
            let initial_cluster = cluster.initial_cluster();
            for i in 0..n {
                cluster.spawn(i, "new", &initial_cluster);
            }
            let all: Vec<usize> = (0..n).collect();
            match cluster.wait_ready(&all, Readiness::Healthy) {
                Ok(()) => {
                    if let Some(ca) = &ca {
                        cluster.secure(ca);
                    }
                    return cluster;
                }
                Err(NotReady::Exited { member, status }) => {
                    let m = &cluster.members[member];
                    let _ = write!(
                        failures,
                        "attempt {attempt}: etcd {} ({}) exited during startup with {status}; \
                         last {LOG_TAIL_LINES} log lines:\n{}",
                        m.name,
                        m.client_url(),
                        m.log_tail(LOG_TAIL_LINES),
                    );
                    cluster.kill_all();
                }
                Err(NotReady::TimedOut { member }) => {
                    let m = &cluster.members[member];
                    panic!(
                        "{failures}etcd {} ({}) not healthy within {READY_TIMEOUT:?} \
                         (attempt {attempt} of a {n}-member cluster); \
                         last {LOG_TAIL_LINES} lines of {}:\n{}",
                        m.name,
                        m.client_url(),
                        m.log_path().display(),
                        m.log_tail(LOG_TAIL_LINES),
                    );
                }
            }
        }
        panic!("etcd cluster failed to start after {START_ATTEMPTS} attempts:\n{failures}");
    }

    /// Writes the operator's credentials, turns authentication on, publishes the
    /// CA (as the first controller of a real cluster does) and registers the
    /// endpoints.
    fn secure(&mut self, ca: &LocalTrust) {
        let admin_conf = self.dir.path().join("admin.conf");
        let admin = ca.admin().expect("the operator's identity");
        Credentials {
            endpoints: self.endpoints(),
            ca: admin.ca_pem.clone(),
            cert: admin.cert_pem.clone(),
            key: admin.key_pem.clone(),
        }
        .save(&admin_conf)
        .expect("write admin.conf");
        let trust = Trust::new(&admin_conf, &self.dir.path().join("pki"));
        let access = trust.access(&self.endpoints());
        let ca = ca.ca().clone();
        trust::block_on(async move {
            let store = Store::connect(&access).await.expect("connect as root");
            rift::store::auth::enable(&store)
                .await
                .expect("turn authentication on");
            rift::store::auth::publish_trust(&store, &ca)
                .await
                .expect("publish the CA");
        });
        trust::register(&self.endpoints(), &trust);
        self.trust = Some(trust);
    }

    /// The cluster's credentials (`None` for a plaintext cluster).
    pub fn trust(&self) -> Option<&Arc<Trust>> {
        self.trust.as_ref()
    }

    /// The operator's credentials file (for `RIFT_CONFIG`); panics for a
    /// plaintext cluster.
    pub fn admin_conf(&self) -> PathBuf {
        self.trust
            .as_ref()
            .expect("a TLS cluster")
            .admin_conf
            .clone()
    }

    /// How to reach every member: as `root` over TLS, or plaintext.
    pub fn access(&self) -> Access {
        self.access_to(&self.endpoints())
    }

    /// How to reach `urls` of this cluster.
    pub fn access_to(&self, urls: &[String]) -> Access {
        match &self.trust {
            Some(t) => t.access(urls),
            None => Access::insecure(urls),
        }
    }

    /// A store connected to every member (as `root`).
    pub async fn store(&self) -> Store {
        Store::connect(&self.access())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.endpoints_csv()))
    }

    /// Number of members (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always `false`: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URLs of all members (running or not), in member order, e.g.
    /// `"https://127.0.0.1:40123"` (`http://` for a plaintext cluster).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// [`endpoints`](Self::endpoints) joined with `,` (for `--endpoints` /
    /// `RIFT_ENDPOINTS`).
    pub fn endpoints_csv(&self) -> String {
        self.endpoints().join(",")
    }

    /// The URL of a relay (a fault proxy) at `listen` that forwards to this cluster's members,
    /// with this cluster's scheme; its credentials are registered for it (TLS passes through a
    /// relay untouched: clients verify etcd by name, not address) until the cluster is dropped.
    pub fn url_via(&self, listen: SocketAddr) -> String {
        let scheme = if self.trust.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{listen}");
        if let Some(t) = &self.trust {
            trust::register(std::slice::from_ref(&url), t);
            self.relays.lock().unwrap().push(url.clone());
        }
        url
    }

    /// Client URL of member `i`.
    pub fn client_url(&self, i: usize) -> String {
        self.member(i).client_url()
    }

    /// Client address of member `i` (for a relay in front of it).
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        let m = self.member(i);
        SocketAddr::new(m.ip.into(), m.client_port)
    }

    /// Path of member `i`'s log file (etcd's zap log plus its stdout/stderr).
    /// Valid until the cluster is dropped.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.member(i).log_path()
    }

    /// SIGTERM member `i` and wait for it to exit (graceful shutdown; SIGKILL
    /// after 15 s). Panics if the member is not running (already stopped or
    /// killed through this API); a member that crashed on its own is just reaped.
    pub fn stop(&mut self, i: usize) {
        self.stop_with(i, Signal::SIGTERM, STOP_TIMEOUT);
    }

    /// SIGKILL member `i` and wait for it to exit. Panics if the member is not
    /// running (already stopped or killed through this API).
    pub fn kill(&mut self, i: usize) {
        self.stop_with(i, Signal::SIGKILL, STOP_TIMEOUT);
    }

    /// Start member `i` again on the same ports and data dir
    /// (`--initial-cluster-state existing`). Panics if it is running.
    ///
    /// Waits (up to 20 s, else panics with the log tail) until the member is
    /// healthy if, counting it, a majority of members is running. Without a
    /// majority a member cannot become healthy on its own, so in that case this
    /// only waits until its client port accepts connections; start enough
    /// members and then use the cluster.
    pub fn start(&mut self, i: usize) {
        let m = self.member_mut(i);
        if m.child.is_some() && m.reap_if_exited().is_none() {
            panic!("etcd {} is already running", m.name);
        }
        let initial_cluster = self.initial_cluster();
        self.spawn(i, "existing", &initial_cluster);
        let running = (0..self.len()).filter(|&j| self.is_running(j)).count();
        let readiness = if running > self.len() / 2 {
            Readiness::Healthy
        } else {
            Readiness::Listening
        };
        match self.wait_ready(&[i], readiness) {
            Ok(()) => {}
            Err(NotReady::Exited { member, status }) => {
                let m = &self.members[member];
                panic!(
                    "etcd {} exited during restart with {status}; last {LOG_TAIL_LINES} lines of {}:\n{}",
                    m.name,
                    m.log_path().display(),
                    m.log_tail(LOG_TAIL_LINES),
                );
            }
            Err(NotReady::TimedOut { member }) => {
                let m = &self.members[member];
                let what = match readiness {
                    Readiness::Healthy => "healthy",
                    Readiness::Listening => "listening",
                };
                panic!(
                    "etcd {} not {what} within {READY_TIMEOUT:?} after restart; \
                     last {LOG_TAIL_LINES} lines of {}:\n{}",
                    m.name,
                    m.log_path().display(),
                    m.log_tail(LOG_TAIL_LINES),
                );
            }
        }
    }

    /// Whether member `i`'s process is alive (started and not yet exited).
    pub fn is_running(&self, i: usize) -> bool {
        self.member(i).is_running()
    }

    /// Compact the keyspace at the current revision, physically (the call
    /// returns once the compaction has been applied to the backend), and
    /// return that revision. Compacting again without intervening writes is
    /// not an error. Panics if no running member can serve the requests.
    pub async fn compact(&self) -> i64 {
        let mut client = self.client().await;
        let revision = client
            .get("\0", None)
            .await
            .expect("etcd get (to read the current revision)")
            .header()
            .expect("etcd response header")
            .revision();
        match client
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
        {
            Ok(_) => {}
            // Already compacted at this revision (no writes since the last call).
            Err(e) if e.to_string().contains(ERR_COMPACTED) => {}
            Err(e) => panic!("etcd compact at revision {revision}: {e}"),
        }
        revision
    }

    /// A client connected to all running members (5 s connect timeout), as
    /// `root`. Panics if no member is running or the connection fails.
    pub async fn client(&self) -> Client {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.is_running())
            .map(Member::client_url)
            .collect();
        assert!(!endpoints.is_empty(), "no etcd member is running");
        self.client_at(&endpoints).await
    }

    /// A client connected to `urls` only (5 s connect timeout), as `root`.
    pub async fn client_at(&self, urls: &[String]) -> Client {
        let mut options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        if let Some(admin) = self.trust.as_ref().and_then(|t| t.admin()) {
            options = options.with_tls(rift::store::access::etcd_tls(&admin));
        }
        Client::connect(urls, Some(options))
            .await
            .unwrap_or_else(|e| panic!("connect to etcd at {urls:?}: {e}"))
    }

    fn member(&self, i: usize) -> &Member {
        let n = self.members.len();
        self.members
            .get(i)
            .unwrap_or_else(|| panic!("member index {i} out of range (cluster has {n})"))
    }

    fn member_mut(&mut self, i: usize) -> &mut Member {
        let n = self.members.len();
        self.members
            .get_mut(i)
            .unwrap_or_else(|| panic!("member index {i} out of range (cluster has {n})"))
    }

    fn stop_with(&mut self, i: usize, sig: Signal, timeout: Duration) {
        let m = self.member_mut(i);
        assert!(m.child.is_some(), "etcd {} is not running", m.name);
        m.terminate(sig, timeout);
    }

    /// Choose fresh ports, token and directories for start attempt `attempt`
    /// (and certificates from `ca`, for a TLS cluster).
    fn prepare_attempt(&mut self, n: usize, attempt: usize, ca: Option<&LocalTrust>) {
        let seq = CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        self.token = format!("rift-test-{}-{seq}-{nanos}", std::process::id());
        let base = self.dir.path().join(format!("attempt-{attempt}"));
        self.members = (0..n)
            .map(|i| {
                let ip = Ipv4Addr::new(127, 0, 0, i as u8 + 1);
                let (client_port, peer_port, metrics_port) = free_ports(ip);
                let name = format!("m{i}");
                let dir = base.join(&name);
                fs::create_dir_all(&dir)
                    .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
                let tls = ca.map(|ca| {
                    ca.member(&name, &[ip.to_string()])
                        .expect("certificates for a member")
                });
                Member {
                    name,
                    ip,
                    client_port,
                    peer_port,
                    metrics_port,
                    tls,
                    dir,
                    child: None,
                }
            })
            .collect();
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Spawn member `i`'s etcd process. Panics if it cannot be spawned at all.
    fn spawn(&mut self, i: usize, state: &str, initial_cluster: &str) {
        let token = self.token.clone();
        let advertise = self.advertise.clone();
        let m = &mut self.members[i];
        let log_path = m.log_path();
        let mut log = open_log(&log_path);
        let _ = writeln!(
            log,
            "=== test harness: starting etcd {} (initial-cluster-state {state}) ===",
            m.name
        );
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("dup {}: {e}", log_path.display()));
        let bin = etcd_bin();
        let client_url = m.client_url();
        let advertised = advertise.unwrap_or_else(|| client_url.clone());
        let peer_url = m.peer_url();
        let tls_args = m.tls.as_ref().map(MemberTls::args).unwrap_or_default();
        let metrics_url = format!("http://{}:{}", m.ip, m.metrics_port);
        let child = Command::new(&bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.data_dir())
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&advertised)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(&token)
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .arg("--snapshot-count")
            .arg("10000")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg(&log_path)
            .arg("--listen-metrics-urls")
            .arg(&metrics_url)
            .args(tls_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin:?} for etcd {}: {e}", m.name));
        m.child = Some(child);
    }

    /// Poll the given members every 50 ms until all are ready, sharing one
    /// 20 s budget. Fails fast if any of them exits.
    fn wait_ready(&mut self, which: &[usize], readiness: Readiness) -> Result<(), NotReady> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut pending: Vec<usize> = which.to_vec();
        loop {
            let mut still_pending = Vec::new();
            for &i in &pending {
                let m = &mut self.members[i];
                if let Some(status) = m.reap_if_exited() {
                    return Err(NotReady::Exited { member: i, status });
                }
                let ready = match readiness {
                    Readiness::Healthy => is_healthy(m.ip, m.metrics_port),
                    Readiness::Listening => accepts_connections(m.ip, m.client_port),
                };
                if !ready {
                    still_pending.push(i);
                }
            }
            pending = still_pending;
            match pending.first() {
                None => return Ok(()),
                Some(&member) if Instant::now() >= deadline => {
                    return Err(NotReady::TimedOut { member });
                }
                Some(_) => thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// SIGKILL and reap every running member.
    fn kill_all(&mut self) {
        for m in &mut self.members {
            m.terminate(Signal::SIGKILL, STOP_TIMEOUT);
        }
    }
}

impl Drop for EtcdCluster {
    /// SIGKILLs and reaps every member still running (also during a panic
    /// unwind), before the temporary directory is removed.
    fn drop(&mut self) {
        trust::unregister(&self.endpoints());
        trust::unregister(&self.relays.lock().unwrap());
        for m in &mut self.members {
            if let Some(child) = m.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            m.child = None;
        }
    }
}

fn etcd_bin() -> PathBuf {
    std::env::var_os("RIFT_TEST_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

fn open_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Three distinct ports that are free on `ip` right now (client, peer, metrics).
/// Another process may take them before etcd binds; the caller retries in that
/// case.
fn free_ports(ip: Ipv4Addr) -> (u16, u16, u16) {
    let bind = || {
        TcpListener::bind((ip, 0)).unwrap_or_else(|e| {
            panic!("bind {ip}:0 (is {ip} a loopback address on this host?): {e}")
        })
    };
    // Hold the listeners at once so the ports differ.
    let client = bind();
    let peer = bind();
    let metrics = bind();
    let port = |l: &TcpListener| l.local_addr().expect("listener address").port();
    (port(&client), port(&peer), port(&metrics))
}

fn accepts_connections(ip: Ipv4Addr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(500)).is_ok()
}

/// `GET /health` over plain HTTP/1.0; true iff it answers 200 with
/// `"health":"true"` in the body.
fn is_healthy(ip: Ipv4Addr, port: u16) -> bool {
    fn get(ip: Ipv4Addr, port: u16) -> io::Result<String> {
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        write!(
            stream,
            "GET /health HTTP/1.0\r\nHost: {ip}:{port}\r\nAccept: application/json\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.take(64 * 1024).read_to_string(&mut response)?;
        Ok(response)
    }
    match get(ip, port) {
        Ok(response) => {
            let status_ok = response
                .lines()
                .next()
                .is_some_and(|status| status.split_whitespace().nth(1) == Some("200"));
            status_ok && response.contains(r#""health":"true""#)
        }
        Err(_) => false,
    }
}
