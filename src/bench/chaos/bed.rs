//! What every chaos scenario starts from: its own etcd, real `rift agent` processes (each on a
//! direct link, behind a [`FaultProxy`], or in a [`NetNs`]), one [`InstanceLog`] for every
//! real job, and the jobs the scenario promises things about ([`Tracked`]).
//!
//! Everything lives under one directory: etcd's data and logs, each agent's state directory
//! and `agent.log`, the instance log. It is removed at the end unless the run is kept
//! (`--keep`), for reading what happened.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::super::env::{free_port, Proc, TempDir};
use super::super::BenchError;
use super::etcd::{Advertise, ChaosEtcd};
use crate::api::duration::HumanDuration;
use crate::api::job::{OnNodeLost, RestartPolicy};
use crate::api::{JobPhase, JobSpec, NodeSpec, Object};
use crate::faults::invariants::{self, Convergence, Tracked, Verdict, Violation};
use crate::faults::netns::NetNs;
use crate::faults::procs::{self, Paused};
use crate::faults::{FaultProxy, InstanceLog, LinkFault};
use crate::pki::NodeRole;
use crate::store::{Store, StoreError};

/// The label every real agent of a chaos run carries, and real jobs select.
pub const REAL_LABEL: (&str, &str) = ("chaos", "real");

/// How an agent reaches etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Link {
    /// Straight to etcd.
    Direct,
    /// Through a TCP proxy of its own (cut, partition, blackholed replies).
    Proxy,
    /// From a network namespace of its own, over one veth link (cut).
    Netns,
}

/// One agent to start.
#[derive(Clone, Debug)]
pub struct AgentPlan {
    pub name: String,
    pub controllers: bool,
    /// Runs jobs (labelled [`REAL_LABEL`]); a controller-only agent's Node is cordoned.
    pub worker: bool,
    pub link: Link,
    /// `--gpus` declarations, e.g. `H100x2`.
    pub gpus: Option<String>,
}

impl AgentPlan {
    pub fn worker(name: &str, link: Link) -> AgentPlan {
        AgentPlan {
            name: name.into(),
            controllers: false,
            worker: true,
            link,
            gpus: None,
        }
    }

    pub fn controller(name: &str) -> AgentPlan {
        AgentPlan {
            name: name.into(),
            controllers: true,
            worker: false,
            link: Link::Direct,
            gpus: None,
        }
    }
}

/// A real `rift agent` process of the run.
pub struct ChaosAgent {
    pub plan: AgentPlan,
    pub state: PathBuf,
    endpoints: String,
    args: Vec<String>,
    proc: Option<Proc>,
    pub proxy: Option<FaultProxy>,
    pub netns: Option<NetNs>,
}

impl ChaosAgent {
    fn spawn(&mut self) -> Result<(), BenchError> {
        let exe = std::env::current_exe().map_err(|e| BenchError::Setup(e.to_string()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.join("agent.log"))
            .map_err(|e| BenchError::io(&self.state, e))?;
        let mut cmd = match &self.netns {
            Some(ns) => ns.command(&exe),
            None => Command::new(&exe),
        };
        cmd.args(&self.args)
            .env("RIFT_ENDPOINTS", &self.endpoints)
            .env("RIFT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::Setup(format!("cannot start rift agent: {e}")))?;
        self.proc = Some(Proc { child });
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// The agent's pid, while this run's process is alive.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// SIGKILL (a crash; its shims live on) and reap.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.signal(Signal::SIGKILL);
        }
    }

    /// SIGTERM (a graceful stop: it resigns and revokes its lease) and waits for it to exit;
    /// SIGKILL after `within`. Returns how long it took.
    pub async fn terminate(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        if let Some(mut p) = self.proc.take() {
            p.signal(Signal::SIGTERM);
            while start.elapsed() < within && matches!(p.child.try_wait(), Ok(None)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        start.elapsed()
    }

    /// Starts it again on the same state directory (after [`Self::kill`] or
    /// [`Self::terminate`]).
    pub fn start(&mut self) -> Result<(), BenchError> {
        self.kill();
        self.spawn()
    }

    /// Holds it stopped until the guard drops.
    pub fn pause(&self) -> Result<Paused, BenchError> {
        let pid = self
            .pid()
            .ok_or_else(|| BenchError::Setup(format!("agent {} is not running", self.name())))?;
        Paused::stop(pid).map_err(|e| BenchError::Setup(e.to_string()))
    }

    /// Applies `fault` to its link (a direct link cannot be faulted).
    pub fn set_link(&self, fault: LinkFault) -> Result<(), BenchError> {
        match (&self.proxy, &self.netns) {
            (Some(p), _) => {
                p.set(fault);
                Ok(())
            }
            (None, Some(ns)) => match fault {
                LinkFault::None => ns.restore(),
                _ => ns.cut(),
            }
            .map_err(|e| BenchError::Setup(e.to_string())),
            (None, None) => Err(BenchError::Setup(format!(
                "agent {} has a direct link to etcd; it cannot be cut",
                self.name()
            ))),
        }
    }
}

impl Drop for ChaosAgent {
    fn drop(&mut self) {
        self.kill();
        // Its shims and their jobs outlive it by design; a benchmark leaves nothing behind.
        for pid in procs::mentioning(&self.state) {
            let _ = procs::signal(pid, Signal::SIGKILL);
        }
    }
}

/// A chaos run's cluster.
pub struct Bed {
    // Dropped in this order: agents (and their processes) first, etcd, then the directory.
    pub agents: Vec<ChaosAgent>,
    pub etcd: ChaosEtcd,
    pub store: Store,
    pub log: InstanceLog,
    pub ttl: u64,
    /// Jobs and what the scenario promises about each.
    pub tracked: BTreeMap<String, Tracked>,
    /// Writes the scenario made (job creates, updates, deletes).
    pub operations: usize,
    /// Jobs found lost or stuck at a checkpoint: reported once, not waited for again.
    given_up: BTreeMap<String, Violation>,
    dir: Option<TempDir>,
    path: PathBuf,
}

impl Bed {
    /// Starts etcd (`members` of them) under a fresh directory, also listening on the host
    /// side of each namespace agents will run in.
    pub async fn start(
        name: &str,
        members: usize,
        advertise: Advertise,
        netns_hosts: &[std::net::Ipv4Addr],
        ttl: u64,
    ) -> Result<Bed, BenchError> {
        let dir = TempDir::new(&format!("chaos-{name}"))?;
        let path = dir.path().to_path_buf();
        let etcd = ChaosEtcd::start(&path, members, advertise, netns_hosts).await?;
        let store = Store::connect(&etcd.access()).await?;
        let log = InstanceLog::new(path.join("instances")).map_err(|e| BenchError::io(&path, e))?;
        Ok(Bed {
            agents: Vec::new(),
            etcd,
            store,
            log,
            ttl,
            tracked: BTreeMap::new(),
            operations: 0,
            given_up: BTreeMap::new(),
            dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the run's directory in place when the bed is dropped; returns its path.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(d) = self.dir.take() {
            d.keep();
        }
        self.path.clone()
    }

    /// Starts an agent; `reschedule_margin` (seconds) is passed to controller agents. A
    /// namespaced agent must be given the namespace the etcd was started for.
    pub async fn add_agent(
        &mut self,
        plan: AgentPlan,
        netns: Option<NetNs>,
        reschedule_margin: u64,
    ) -> Result<usize, BenchError> {
        let state = self.path.join("agents").join(&plan.name);
        std::fs::create_dir_all(&state).map_err(|e| BenchError::io(&state, e))?;
        if plan.controllers && !plan.worker {
            let spec = NodeSpec {
                unschedulable: true,
                ..NodeSpec::default()
            };
            match self
                .store
                .create(&Object::new(plan.name.clone(), spec))
                .await
            {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Its identity and etcd user, as a join with a token of its role would give them.
        let role = if plan.controllers {
            NodeRole::Controller
        } else {
            NodeRole::Worker
        };
        self.etcd
            .trust
            .provision_node(
                &state,
                &plan.name,
                role,
                &["127.0.0.1".to_string()],
                crate::pki::LEAF_VALIDITY,
            )
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        crate::store::auth::ensure_admitted(&self.store, &plan.name, role).await?;
        let (proxy, endpoints) = match (plan.link, &netns) {
            (Link::Direct, _) => (None, self.etcd.endpoints().join(",")),
            (Link::Proxy, _) => {
                // One proxy, to the first member: the node's one uplink.
                let p = FaultProxy::start(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    self.etcd.client_addr(0),
                )
                .await
                .map_err(|e| BenchError::Setup(format!("cannot start a proxy: {e}")))?;
                // TLS passes through a relay untouched: agents verify etcd by name.
                let url = format!("https://{}", p.listen_addr());
                (Some(p), url)
            }
            (Link::Netns, Some(ns)) => (None, self.etcd.endpoint_on(0, ns.host_ip())),
            (Link::Netns, None) => {
                return Err(BenchError::Setup(
                    "a namespaced agent needs its namespace".into(),
                ))
            }
        };
        // Never "overloaded": on a machine shared with other work, host load would make the
        // scheduler refuse the workers, which is not the fault under test.
        let config = state.join("chaos-agent.yaml");
        std::fs::write(
            &config,
            "thresholds: {cpu: 101, memory: 101, gpuMemory: 101, disk: 101}\n",
        )
        .map_err(|e| BenchError::io(&config, e))?;
        let port = free_port().map_err(|e| BenchError::io(&state, e))?;
        let mut args: Vec<String> = ["agent", "--name", &plan.name, "--listen", "127.0.0.1"]
            .map(String::from)
            .to_vec();
        args.extend(["--port".into(), port.to_string()]);
        args.extend(["--lease-ttl".into(), self.ttl.to_string()]);
        args.extend(["--node-lease-ttl".into(), self.ttl.to_string()]);
        args.extend(["--state-dir".into(), state.display().to_string()]);
        args.extend(["--config".into(), config.display().to_string()]);
        if plan.controllers {
            args.push("--controllers".into());
            args.extend(["--reschedule-margin".into(), reschedule_margin.to_string()]);
        }
        if plan.worker {
            args.extend([
                "--label".into(),
                format!("{}={}", REAL_LABEL.0, REAL_LABEL.1),
            ]);
        }
        if let Some(g) = &plan.gpus {
            args.extend(["--gpus".into(), g.clone()]);
        }
        let mut agent = ChaosAgent {
            plan,
            state,
            endpoints,
            args,
            proc: None,
            proxy,
            netns,
        };
        agent.spawn()?;
        self.agents.push(agent);
        Ok(self.agents.len() - 1)
    }

    /// The agent named `name`.
    pub fn agent(&mut self, name: &str) -> &mut ChaosAgent {
        self.agents
            .iter_mut()
            .find(|a| a.plan.name == name)
            .expect("an agent of this run")
    }

    /// A real job's spec: an instance-logged command (forever when `run_for` is `None`),
    /// bound to real agents, 2 s termination grace.
    pub fn real_job(&self, name: &str, run_for: Option<Duration>) -> JobSpec {
        let mut spec = JobSpec::with_command(self.log.command(name, run_for));
        spec.node_selector
            .insert(REAL_LABEL.0.into(), REAL_LABEL.1.into());
        spec.termination_grace_period = HumanDuration::from_secs(2);
        spec.restart_policy = if run_for.is_some() {
            RestartPolicy::Never
        } else {
            RestartPolicy::Always
        };
        spec
    }

    /// Makes `spec` an `onNodeLost: reschedule` job with `lost_after`.
    pub fn reschedule(spec: &mut JobSpec, lost_after: Duration) {
        spec.on_node_lost = OnNodeLost::Reschedule;
        spec.lost_after = HumanDuration::from_secs(lost_after.as_secs().max(1));
    }

    /// Creates a Job and tracks it.
    pub async fn create(
        &mut self,
        name: &str,
        spec: JobSpec,
        labels: &[(&str, &str)],
        tracked: Tracked,
    ) -> Result<(), BenchError> {
        let mut obj = Object::new(name, spec);
        for (k, v) in labels {
            obj.metadata.labels.insert(k.to_string(), v.to_string());
        }
        self.store.create(&obj).await?;
        self.operations += 1;
        self.tracked.insert(name.to_string(), tracked);
        Ok(())
    }

    /// The usual bed: one etcd member, a controller agent `ctl` and a worker `w1` (2 GPUs
    /// each, directly linked), once a leader is named.
    pub async fn controller_and_worker(
        name: &str,
        ttl: u64,
        within: Duration,
    ) -> Result<Bed, BenchError> {
        let mut bed = Bed::start(name, 1, Advertise::Listen, &[], ttl).await?;
        bed.add_agent(AgentPlan::controller("ctl"), None, 2).await?;
        bed.add_agent(AgentPlan::worker("w1", Link::Direct), None, 2)
            .await?;
        bed.wait_leader(within).await?;
        Ok(bed)
    }

    /// The phase of Job `name` as stored; `None` when it cannot be read or has no status.
    pub async fn job_phase(&self, name: &str) -> Option<JobPhase> {
        let job = self.store.get::<JobSpec>(name).await.ok().flatten()?;
        job.status.map(|s| s.phase)
    }

    /// Waits until a leader is named.
    pub async fn wait_leader(&self, within: Duration) -> Result<String, BenchError> {
        super::super::env::wait_for_leader(&self.store, None, within)
            .await
            .ok_or_else(|| BenchError::Timeout(format!("no leader within {} s", within.as_secs())))
    }

    /// Waits until `node`'s alive key exists (its agent holds a live lease).
    pub async fn wait_alive(&self, node: &str, within: Duration) -> Result<Duration, BenchError> {
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = self
                .store
                .get_raw(&crate::store::keys::agent_alive(node))
                .await
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                return Err(BenchError::Timeout(format!(
                    "node {node} not alive within {} s",
                    within.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every tracked job has converged (see [`Bed::when`]); a setup
    /// step, so not converging is an error that names what did not.
    pub async fn settle(&self, within: Duration) -> Result<Duration, BenchError> {
        let v = self.verdict(within).await;
        match v.converged_after {
            Some(d) if v.violations.is_empty() => Ok(d),
            _ => Err(BenchError::Timeout(format!(
                "the cluster did not settle before any fault (within {} s): {}",
                within.as_secs(),
                v.violations
                    .iter()
                    .take(5)
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))),
        }
    }

    /// The invariant checker's verdict over every tracked job, waiting up to `bound` for the
    /// cluster to converge.
    pub async fn verdict(&self, bound: Duration) -> Verdict {
        invariants::converge(
            &self.store,
            Some(&self.log),
            &self.tracked,
            self.when(bound),
        )
        .await
    }

    /// Convergence within `bound`, holding for two lease TTLs (a node lease lost in a fault
    /// expires within one; what the leader does about it shows within the next).
    pub fn when(&self, bound: Duration) -> Convergence {
        Convergence {
            bound,
            stable: Duration::from_secs(2 * self.ttl),
        }
    }

    /// Waits up to `bound` for every tracked job not yet given up to converge after a fault;
    /// returns how long that took. Jobs that do not converge are given up: their state
    /// violations are kept, tagged with `after` (what had just happened), and they are not
    /// waited for again.
    pub async fn checkpoint(&mut self, after: &str, bound: Duration) -> Option<Duration> {
        let tracked: BTreeMap<String, Tracked> = self
            .tracked
            .iter()
            .filter(|(j, _)| !self.given_up.contains_key(*j))
            .map(|(j, t)| (j.clone(), t.clone()))
            .collect();
        let v =
            invariants::converge(&self.store, Some(&self.log), &tracked, self.when(bound)).await;
        if v.converged_after.is_none() {
            for found in v.violations.into_iter().filter(Violation::is_state) {
                let found = found.after(after);
                self.given_up.insert(found.job().to_string(), found);
            }
        }
        v.converged_after
    }

    /// Whether `job` was given up at a checkpoint (found lost or stuck).
    pub fn is_given_up(&self, job: &str) -> bool {
        self.given_up.contains_key(job)
    }

    /// Every violation of the run: the final verdict (after waiting up to `bound`) with the
    /// state violations found at checkpoints in place of the final state of those jobs.
    pub async fn violations(&self, bound: Duration) -> Vec<Violation> {
        let (waited, given_up): (BTreeMap<String, Tracked>, BTreeMap<String, Tracked>) = self
            .tracked
            .clone()
            .into_iter()
            .partition(|(j, _)| !self.given_up.contains_key(j));
        let mut found =
            invariants::converge(&self.store, Some(&self.log), &waited, self.when(bound))
                .await
                .violations;
        // Given-up jobs: their history (overlaps, restarts, kills) still counts.
        if let Ok(snap) = invariants::snapshot(&self.store, Some(&self.log)).await {
            found.extend(
                invariants::judge(&given_up, &snap)
                    .into_iter()
                    .filter(|v| !v.is_state()),
            );
        }
        found.extend(self.given_up.values().cloned());
        found
    }
}
