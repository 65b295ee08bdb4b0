//! The Node status the agent publishes at `/rift/v1/agents/<node>/status`: capacity, usage,
//! load score, overload, the `DiskPressure` condition ([`super::disk_pressure`]), running jobs. Probed every few seconds, written only on a meaningful
//! change or at least every 30 s ([`should_write`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::disk_pressure::{watermarks_key, DiskPressure};
use super::jobs::layout::{read_json, ExitRecord, JobDir, ProcRecord, StateDir};
use super::jobs::procs;
use super::metrics::Metrics;
use super::resources::{should_write, Observed, ResourceProbe, Thresholds};
use crate::api::node::{GpuDeclaration, NodeStatus};
use crate::store::{keys, Op, Store, WatchConfig, Watcher};
use crate::tasks::CancellationToken;

/// How often resources are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Everything the status writer needs.
pub struct StatusWriter {
    pub node: String,
    pub store: Store,
    pub state: StateDir,
    pub declared: Vec<GpuDeclaration>,
    pub thresholds: Thresholds,
    /// Where peers reach this agent: a connected tunnel's relay endpoint, else the configured
    /// one.
    pub endpoint: super::tunnels::Endpoint,
    pub metrics: Arc<Metrics>,
}

/// Jobs whose latest attempt is running on this node (per the state directory): started, no
/// exit record, and its process alive.
pub fn running_jobs(state: &StateDir) -> Vec<String> {
    running_jobs_where(state, |dir, n| {
        read_json::<ProcRecord>(&dir.job_record(n))
            .ok()
            .flatten()
            .is_some_and(|r| procs::is_alive(&r))
    })
}

/// Jobs whose latest attempt has started and has no exit record, and for which `alive` says
/// the attempt still runs (the real agent checks its process; a hollow node its record).
pub fn running_jobs_where(state: &StateDir, alive: impl Fn(&JobDir, u32) -> bool) -> Vec<String> {
    state
        .job_names()
        .unwrap_or_default()
        .into_iter()
        .filter(|j| {
            let Ok(dir) = state.job(j) else {
                return false;
            };
            let n = dir.last_attempt();
            n > 0
                && read_json::<ExitRecord>(&dir.exit_record(n))
                    .ok()
                    .flatten()
                    .is_none()
                && alive(&dir, n)
        })
        .collect()
}

/// Probes once (blocking work off the async threads) and returns the probe for reuse.
pub async fn probe_once(
    mut probe: ResourceProbe,
    declared: Vec<GpuDeclaration>,
    disk: PathBuf,
) -> (ResourceProbe, Observed) {
    tokio::task::spawn_blocking(move || {
        let observed = probe.probe(&declared, &disk);
        (probe, observed)
    })
    .await
    .expect("the resource probe does not panic")
}

impl StatusWriter {
    /// Probes every [`PROBE_INTERVAL`] and writes when it matters, until `shutdown`.
    pub async fn run(mut self, mut probe: ResourceProbe, shutdown: CancellationToken) {
        let mut last: Option<NodeStatus> = None;
        let mut disk_pressure = DiskPressure::default();
        let mut watermarks =
            Watcher::new(self.store.clone(), watermarks_key(), WatchConfig::default());
        let mut last_write = Instant::now();
        loop {
            let (p, observed) = probe_once(
                probe,
                self.declared.clone(),
                self.state.root().to_path_buf(),
            )
            .await;
            probe = p;
            let state = self.state.clone();
            let running = tokio::task::spawn_blocking(move || running_jobs(&state))
                .await
                .unwrap_or_default();
            let mut status = NodeStatus {
                running_jobs: running,
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                endpoint: self.endpoint.current(),
                last_heartbeat: Some(Utc::now()),
                ..NodeStatus::default()
            };
            observed.apply(&mut status, &self.thresholds);
            status
                .conditions
                .extend(disk_pressure.observe(status.usage.disk_percent));
            self.metrics.set_gpus(&observed.capacity, &observed.usage);
            if should_write(last.as_ref(), last_write.elapsed(), &status) {
                let body = serde_json::to_vec(&status).expect("statuses serialize");
                let key = keys::agent_status(&self.node);
                match self
                    .store
                    .txn(vec![], vec![Op::put(key.as_str(), body)], vec![])
                    .await
                {
                    Ok(_) => {
                        last = Some(status);
                        last_write = Instant::now();
                        self.metrics.status_writes.inc();
                    }
                    Err(e) => tracing::debug!(%e, "node status not written yet"),
                }
            }
            let next_probe = tokio::time::sleep(PROBE_INTERVAL);
            tokio::pin!(next_probe);
            loop {
                tokio::select! {
                    _ = &mut next_probe => break,
                    // New watermarks: probe again now. `next` is cancel-safe.
                    ev = watermarks.next() => match ev {
                        Ok(ev) if disk_pressure.apply(&ev) => break,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(%e, "ArtifactStore watch failed; retrying");
                            tokio::time::sleep(PROBE_INTERVAL).await;
                        }
                    },
                    // A tunnel came up or went down: publish the new endpoint now.
                    _ = self.endpoint.changed() => break,
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}
