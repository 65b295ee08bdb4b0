//! One hollow node: the real agent's registration, node status, and job runner against real
//! etcd, with simulated job processes ([`SimProcesses`]) and no HTTP server or resource probe.
//!
//! What differs from `rift agent` and why:
//! - the node lease is renewed over the process's [`SharedLeases`] stream, not a stream of its
//!   own (see [`super::leases`]);
//! - capacity is declared (`gpus` GPUs, fixed CPU and memory), not probed;
//! - the runner is [`Runner`] itself over [`SimProcesses`]; it watches only this node's
//!   bindings prefix, as the real one does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio::time::Instant;

use super::leases::SharedLeases;
use super::staging::{SimStaging, TransferModel};
use crate::agent::jobs::layout::StateDir;
use crate::agent::jobs::runner::Runner;
use crate::agent::jobs::simulated::{SimBehaviour, SimProcesses};
use crate::agent::metrics::Metrics;
use crate::agent::node_status::running_jobs_where;
use crate::agent::registration::{self, ensure_node};
use crate::agent::resources::should_write;
use crate::api::node::{Capacity, Gpu, NodeStatus, Usage};
use crate::api::NodeSpec;
use crate::store::lease::{LastRenewal, RenewalSender};
use crate::store::Op;
use crate::store::{keys, Store};
use crate::tasks::CancellationToken;

/// The label every hollow Node carries (`hollow: "true"`).
pub const HOLLOW_LABEL: &str = crate::api::labels::HOLLOW;

/// How a hollow node's life ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    Running,
    /// Graceful: the lease is revoked, so the node shows NotReady at once.
    Stop,
    /// As if the host died: nothing more is sent; the lease expires after its TTL.
    Crash,
}

/// Settings shared by every hollow node of a simulation.
#[derive(Clone, Debug)]
pub struct HollowSettings {
    pub gpus: u32,
    pub behaviour: SimBehaviour,
    pub node_lease_ttl: Duration,
    /// The runner's tick (how soon a simulated exit is noticed).
    pub tick: Duration,
    /// How often the node status is looked at (written on change or every 30 s).
    pub status_every: Duration,
    /// How long jobs' inputs take to stage (simulated downloads, a node cache); `None`: they
    /// count as staged at once.
    pub staging: Option<TransferModel>,
}

impl Default for HollowSettings {
    fn default() -> Self {
        Self {
            gpus: 8,
            behaviour: SimBehaviour::default(),
            node_lease_ttl: Duration::from_secs(5),
            tick: Duration::from_secs(1),
            status_every: Duration::from_secs(5),
            staging: None,
        }
    }
}

/// One hollow node.
pub struct HollowNode {
    pub name: String,
    pub store: Store,
    pub leases: SharedLeases,
    pub state: StateDir,
    pub settings: HollowSettings,
}

impl HollowNode {
    /// Runs until `life` leaves [`Life::Running`].
    pub async fn run(self, life: watch::Receiver<Life>) {
        let tasks = crate::tasks::Tasks::default();
        let metrics = Arc::new(Metrics::default());
        let (renewals, last_renewal) = LastRenewal::channel();
        let mut runner = Runner::with_processes(
            self.name.clone(),
            self.store.clone(),
            self.state.clone(),
            Some(self.settings.gpus as usize),
            metrics,
            last_renewal,
            SimProcesses::new(self.settings.behaviour.clone()),
        )
        .with_tick(self.settings.tick);
        if let Some(model) = self.settings.staging {
            runner = runner.with_simulated_staging(SimStaging::new(model));
        }
        tasks.spawn(runner.run(tasks.token().clone()));
        tasks.spawn(status_loop(
            self.name.clone(),
            self.store.clone(),
            self.state.clone(),
            self.settings.clone(),
            tasks.token().clone(),
        ));
        let mut labels = BTreeMap::new();
        labels.insert(HOLLOW_LABEL.to_string(), "true".to_string());
        let spec = NodeSpec {
            provider: "hollow".into(),
            ..NodeSpec::default()
        };
        let mut watching = life.clone();
        let registered = tokio::select! {
            _ = async {
                while ensure_node(&self.store, &self.name, &spec, &labels).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            } => true,
            _ = watching.wait_for(|l| *l != Life::Running) => false,
        };
        if registered {
            // Returns once `life` changes, having revoked or abandoned the lease.
            self.keep_alive(&renewals, life.clone()).await;
        }
        let ending = *life.borrow();
        tasks.stop().await;
        tracing::debug!(node = %self.name, ?ending, "hollow node ended");
    }

    /// Registers (lease + alive key) and keeps the lease, registering again when it is lost,
    /// until `life` changes; then revokes (Stop) or abandons (Crash) the lease.
    async fn keep_alive(&self, renewals: &RenewalSender, mut life: watch::Receiver<Life>) {
        let ttl = self.settings.node_lease_ttl;
        loop {
            let grant = match registration::register(&self.store, &self.name, ttl, true).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::debug!(node = %self.name, %e, "cannot register yet");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = life.wait_for(|l| *l != Life::Running) => return,
                    }
                }
            };
            let lease = grant.id;
            let status = self.leases.keep(grant);
            tokio::select! {
                _ = registration::follow_lease(status, renewals, |_| {}) => {
                    tracing::info!(node = %self.name, "lost the node lease; registering again");
                }
                ended = async { life.wait_for(|l| *l != Life::Running).await.map(|l| *l == Life::Stop).unwrap_or(true) } => {
                    let graceful = ended;
                    self.leases.forget(lease);
                    if graceful {
                        let _ = crate::store::lease::revoke(&self.store, lease).await;
                    }
                    return;
                }
            }
        }
    }
}

/// The declared capacity of a hollow node.
pub fn capacity(gpus: u32) -> Capacity {
    Capacity {
        cpus: 64,
        memory_bytes: 512 << 30,
        disk_bytes: 4 << 40,
        gpus: (0..gpus)
            .map(|index| Gpu {
                index,
                model: "H100".into(),
                memory_bytes: 80 << 30,
                ..Gpu::default()
            })
            .collect(),
    }
}

/// Writes the node status on change or every 30 s (the real agent's rule), looking every
/// `status_every`.
async fn status_loop(
    node: String,
    store: Store,
    state: StateDir,
    settings: HollowSettings,
    stop: CancellationToken,
) {
    let mut last: Option<NodeStatus> = None;
    let mut last_write = Instant::now();
    loop {
        let capacity = capacity(settings.gpus);
        let mut status = NodeStatus {
            // A simulated disk that nothing fills.
            usage: Usage {
                disk_available_bytes: Some(capacity.disk_bytes),
                ..Usage::default()
            },
            capacity,
            running_jobs: running_jobs_where(&state, |dir, n| dir.job_record(n).exists()),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            last_heartbeat: Some(Utc::now()),
            ..NodeStatus::default()
        };
        status.running_jobs.sort();
        if should_write(last.as_ref(), last_write.elapsed(), &status) {
            let body = serde_json::to_vec(&status).expect("statuses serialize");
            let key = keys::agent_status(&node);
            if store
                .txn(vec![], vec![Op::put(key.as_str(), body)], vec![])
                .await
                .is_ok()
            {
                last = Some(status);
                last_write = Instant::now();
            }
        }
        let wait = if last.is_none() {
            Duration::from_millis(500)
        } else {
            settings.status_every
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}
