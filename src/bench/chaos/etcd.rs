//! The chaos benchmarks' etcd: one or three members on 127.0.0.1 (free ports, data in the run's
//! directory) that can be killed, paused and restarted one by one, for quorum loss.
//!
//! **Advertised client URLs.** Agents add every URL etcd advertises to their endpoints (see
//! `agent::etcd_member`), which would route around a [`crate::faults::FaultProxy`] put
//! between an agent and etcd. With [`Advertise::Refused`] each member advertises a loopback
//! port this process holds bound but never listens on: connecting is refused at once, and
//! no other process can take the port. A proxied agent then reaches etcd only through its
//! proxy, as a node behind one uplink does.
//!
//! Like a rift cluster's etcd (and `LocalEtcd` of the other benchmarks), the members speak TLS
//! on both ports with client certificates and authentication on, from a CA made for the run;
//! agents get identities from it as a join would give them ([`ChaosEtcd::trust`]).
//!
//! (`LocalEtcd` in [`super::super::env`] is the one-member etcd of the other benchmarks; this
//! one adds members, per-member faults and the advertised-URL control.)

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::super::env::{free_port, Proc};
use super::super::BenchError;
use crate::agent::etcd_member::process::MemberTls;
use crate::faults::procs::Paused;
use crate::pki::local::LocalTrust;
use crate::pki::Identity;
use crate::store::{Access, Store};

/// What the members advertise as their client URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advertise {
    /// Their own listen URL on 127.0.0.1.
    Listen,
    /// A held, refusing loopback port (see the module documentation).
    Refused,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    advertise: String,
    dir: PathBuf,
    tls: MemberTls,
    proc: Option<Proc>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer_port)
    }
}

/// A running etcd cluster; dropping it kills every member.
pub struct ChaosEtcd {
    members: Vec<Member>,
    /// The run's CA: members' certificates, the operator's and agents' identities.
    pub trust: LocalTrust,
    admin: Identity,
    token: String,
    /// Also listen on these addresses (network namespaces' host sides).
    extra_listen: Vec<Ipv4Addr>,
    /// The held ports behind [`Advertise::Refused`].
    _refusing: Vec<tokio::net::TcpSocket>,
}

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

impl ChaosEtcd {
    /// Starts `n` members under `dir` and waits (20 s at most) until the cluster answers a
    /// linearizable read.
    pub async fn start(
        dir: &Path,
        n: usize,
        advertise: Advertise,
        extra_listen: &[Ipv4Addr],
    ) -> Result<ChaosEtcd, BenchError> {
        let trust = LocalTrust::create(&dir.join("pki")).map_err(setup)?;
        let admin = trust.admin().map_err(setup)?;
        let mut hosts = vec!["127.0.0.1".to_string()];
        hosts.extend(extra_listen.iter().map(|ip| ip.to_string()));
        let mut refusing = Vec::new();
        let mut members = Vec::new();
        for i in 0..n {
            let client_port = free_port().map_err(setup)?;
            let advertise = match advertise {
                Advertise::Listen => format!("https://127.0.0.1:{client_port}"),
                Advertise::Refused => {
                    let s = tokio::net::TcpSocket::new_v4().map_err(setup)?;
                    s.bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                        .map_err(setup)?;
                    let port = s.local_addr().map_err(setup)?.port();
                    refusing.push(s);
                    format!("https://127.0.0.1:{port}")
                }
            };
            let name = format!("m{i}");
            let tls = trust.member(&name, &hosts).map_err(setup)?;
            members.push(Member {
                name,
                client_port,
                peer_port: free_port().map_err(setup)?,
                advertise,
                dir: dir.join(format!("etcd-m{i}")),
                tls,
                proc: None,
            });
        }
        let mut etcd = ChaosEtcd {
            members,
            trust,
            admin,
            token: format!("rift-chaos-{}", std::process::id()),
            extra_listen: extra_listen.to_vec(),
            _refusing: refusing,
        };
        for i in 0..n {
            etcd.spawn(i, "new")?;
        }
        etcd.wait_healthy(Duration::from_secs(20)).await?;
        let store = Store::connect(&etcd.access()).await?;
        crate::store::auth::enable(&store).await?;
        crate::store::auth::publish_trust(&store, etcd.trust.ca()).await?;
        Ok(etcd)
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), BenchError> {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let bin = std::env::var("RIFT_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let m = &self.members[i];
        std::fs::create_dir_all(&m.dir).map_err(|e| BenchError::io(&m.dir, e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.join("etcd.log"))
            .map_err(|e| BenchError::io(&m.dir, e))?;
        let mut listen = m.client_url();
        for ip in &self.extra_listen {
            listen.push_str(&format!(",https://{ip}:{}", m.client_port));
        }
        let child = Command::new(&bin)
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.dir.join("data").display()))
            .arg(format!("--listen-client-urls={listen}"))
            .arg(format!("--advertise-client-urls={}", m.advertise))
            .arg(format!("--listen-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--initial-cluster-token={}", self.token))
            .args(m.tls.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| setup(format!("cannot start `{bin}` (set RIFT_ETCD_BIN): {e}")))?;
        self.members[i].proc = Some(Proc { child });
        Ok(())
    }

    /// Waits until a linearizable read succeeds.
    pub async fn wait_healthy(&self, within: Duration) -> Result<Duration, BenchError> {
        let start = Instant::now();
        let store = Store::connect_lazy(&self.access()).await?;
        loop {
            if tokio::time::timeout(Duration::from_secs(1), store.revision())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                return Err(BenchError::Timeout(format!(
                    "etcd did not answer within {} s (logs under {})",
                    within.as_secs(),
                    self.members[0].dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every member's client URL on 127.0.0.1.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// How the operator (etcd `root`) reaches every member.
    pub fn access(&self) -> Access {
        self.access_to(&self.endpoints())
    }

    /// How the operator reaches `urls` (members, or relays in front of them).
    pub fn access_to(&self, urls: &[String]) -> Access {
        Access::tls(urls, self.admin.clone())
    }

    /// Member `i`'s client URL on `ip` (one it listens on).
    pub fn endpoint_on(&self, i: usize, ip: Ipv4Addr) -> String {
        format!("https://{ip}:{}", self.members[i].client_port)
    }

    /// Member `i`'s client address on 127.0.0.1 (for a proxy's upstream).
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.members[i].client_port))
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].proc.as_ref().map(Proc::pid)
    }

    /// SIGKILLs member `i` (a crashed host) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(p) = self.members[i].proc.take() {
            p.signal(Signal::SIGKILL);
            drop(p);
        }
    }

    /// Holds member `i` stopped (a hung VM) until the returned guard is dropped.
    pub fn pause(&self, i: usize) -> Result<Paused, BenchError> {
        let pid = self
            .pid(i)
            .ok_or_else(|| setup(format!("etcd member m{i} is not running")))?;
        Paused::stop(pid).map_err(setup)
    }

    /// Starts member `i` again on its data (`--initial-cluster-state existing`).
    pub fn restart(&mut self, i: usize) -> Result<(), BenchError> {
        self.kill(i);
        self.spawn(i, "existing")
    }
}
