//! Converges the processes on this node to its bindings (`/rift/v1/bindings/<node>/`).
//!
//! Guarantees:
//! - **Never loses work.** Jobs run under shims that outlive the agent; a restarted agent
//!   re-adopts them from the state directory (pid plus start time) and learns every exit,
//!   including of attempts that ended while it was down.
//! - **Losing etcd freezes decisions.** Until the bindings have been listed, and whenever etcd
//!   is unreachable, the last known bindings stand: nothing is stopped for lack of a binding
//!   the agent could not read. Reports are kept and published once etcd is back.
//! - **Starts nothing it may not.** Nothing starts before a binding list was read under the
//!   node's current lease (at start, and again whenever the lease was lost and granted anew:
//!   while the node was cut off its jobs may have been moved, and the bindings watch may not
//!   have caught up yet), nor for a job not bound here at its epoch, nor once the node's lease
//!   has gone unrenewed for the job's `lostAfter` (see [`super::local`]).
//! - **Stale instances stop.** A job whose binding is gone, carries a stop order, or moved to
//!   a new epoch or another Job of the same name, is stopped here (SIGTERM, then SIGKILL after
//!   its grace period); a stop order is answered with a `released` report once nothing runs.
//! - **No blocking file I/O on async workers.** Everything on disk and every process is
//!   handled by [`Local`] inside `spawn_blocking`; this loop only talks to etcd.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::TxnOp;
use futures::FutureExt;

use super::layout::{RunSpec, StateDir};
use super::local::{Local, PassInput};
use super::process::{JobProcesses, ShimProcesses};
use crate::agent::metrics::Metrics;
use crate::api::event::{EventType, ObjectRef};
use crate::api::job::JobPhase;
use crate::api::placement::{Binding, RuntimeReport};
use crate::api::validation::dns1123_problem;
use crate::api::JobSpec;
use crate::store::lease::LastRenewal;
use crate::store::watcher::{WatchConfig, WatchEvent, Watcher};
use crate::store::{keys, Store, StoreError};
use crate::tasks::CancellationToken;

/// How often the runner looks at its jobs when nothing changes.
pub const TICK: Duration = Duration::from_millis(500);

/// The converge loop of one node, over a process layer `P` (real shims by default; hollow
/// nodes use simulated processes, so the same logic is exercised at scale).
pub struct Runner<P: JobProcesses = ShimProcesses> {
    node: String,
    store: Store,
    /// The bindings as last read; `None` until the first complete list under the current lease.
    bindings: Option<HashMap<String, Binding>>,
    /// The node lease under which the bindings watch last listed (`None`: before any lease).
    listed_under: Option<i64>,
    /// Jobs whose binding exists but does not decode.
    unreadable: std::collections::HashSet<String>,
    /// Jobs already warned about as undecodable (once each).
    warned_undecodable: std::collections::HashSet<String>,
    /// When the node's lease was last renewed.
    lease: LastRenewal,
    /// Disk and processes; `None` only while a pass holds it.
    local: Option<Local<P>>,
    /// The last report written per job.
    published: HashMap<String, RuntimeReport>,
    events: crate::store::events::EventRecorder,
    metrics: Arc<Metrics>,
    /// How often the jobs are looked at when nothing changes.
    tick: Duration,
}

impl<P: JobProcesses> Runner<P> {
    /// A runner over the process layer `procs`; `lease` follows the node's lease renewals.
    pub fn with_processes(
        node: String,
        store: Store,
        state: StateDir,
        gpu_count: Option<usize>,
        metrics: Arc<Metrics>,
        lease: LastRenewal,
        procs: P,
    ) -> Self {
        Self {
            events: crate::store::events::EventRecorder::agent(store.clone(), &node),
            local: Some(Local::new(node.clone(), state, gpu_count, procs)),
            node,
            store,
            bindings: None,
            listed_under: None,
            unreadable: Default::default(),
            warned_undecodable: Default::default(),
            lease,
            published: HashMap::new(),
            metrics,
            tick: TICK,
        }
    }

    /// Looks at the jobs every `tick` when nothing changes (default [`TICK`]).
    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Runs until `shutdown`; running jobs are left to their shims.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut local = self
            .local
            .take()
            .expect("a runner starts with its local state");
        let loaded = tokio::task::spawn_blocking(move || {
            local.load();
            local
        });
        self.local = Some(
            loaded
                .await
                .expect("loading the state directory does not panic"),
        );
        let mut watcher = self.list_bindings();
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = watcher.next() => match ev {
                    Ok(ev) => {
                        self.apply_binding_event(ev);
                        // Every event already received goes in before one pass: a burst of
                        // bindings (the scheduler writes them in batches) costs one pass, not
                        // one per binding. (`next` is cancel-safe: an unready poll loses nothing.)
                        while let Some(Ok(ev)) = watcher.next().now_or_never() {
                            self.apply_binding_event(ev);
                        }
                    }
                    Err(e) => tracing::debug!(%e, "bindings watch: retrying"),
                },
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if self.lease.lease() != self.listed_under {
                // A new lease: the old one lapsed, so the leader may have moved this node's
                // jobs meanwhile, and the watch (on its own stream) may not have caught up.
                // Until a list made under this lease arrives, nothing starts or stops.
                tracing::info!("the node's lease is new: reading its bindings again");
                watcher = self.list_bindings();
                continue;
            }
            self.converge().await;
        }
    }

    /// A fresh watch of this node's bindings, starting with a complete list; until it arrives
    /// the bindings are unknown (nothing starts, nothing is stopped for lack of a binding).
    fn list_bindings(&mut self) -> Watcher {
        self.bindings = None;
        self.listed_under = self.lease.lease();
        Watcher::new(
            self.store.clone(),
            keys::bindings_prefix(&self.node),
            WatchConfig::default(),
        )
    }

    fn apply_binding_event(&mut self, ev: WatchEvent) {
        let prefix = keys::bindings_prefix(&self.node);
        // A key becomes a job (and a directory) only if it is one valid name: `..` or `a/b`
        // under the prefix is logged and ignored.
        let job_of = |key: &str| {
            let job = key.strip_prefix(&prefix)?;
            match dns1123_problem(job) {
                None => Some(job.to_string()),
                Some(problem) => {
                    tracing::warn!(
                        key,
                        problem,
                        "ignoring a binding whose job name is not valid"
                    );
                    None
                }
            }
        };
        let decode = |kv: &crate::store::KeyValue| {
            serde_json::from_slice::<Binding>(&kv.value)
                .inspect_err(
                    |e| tracing::warn!(key = %kv.key, %e, "ignoring an undecodable binding"),
                )
                .ok()
        };
        match ev {
            // What cannot be read is never acted on: a binding that does not decode keeps its
            // job as it is here (neither started nor stopped) until it can be read.
            WatchEvent::Restarted { items, .. } => {
                let mut map = HashMap::new();
                self.unreadable.clear();
                for kv in &items {
                    let Some(job) = job_of(&kv.key) else { continue };
                    match decode(kv) {
                        Some(b) => {
                            map.insert(job, b);
                        }
                        None => {
                            self.unreadable.insert(job);
                        }
                    }
                }
                self.bindings = Some(map);
            }
            WatchEvent::Put(kv) => {
                if let (Some(job), Some(map)) = (job_of(&kv.key), self.bindings.as_mut()) {
                    match decode(&kv) {
                        Some(b) => {
                            self.unreadable.remove(&job);
                            map.insert(job, b);
                        }
                        None => {
                            map.remove(&job);
                            self.unreadable.insert(job);
                        }
                    }
                }
            }
            WatchEvent::Delete { key, .. } => {
                if let (Some(job), Some(map)) = (job_of(&key), self.bindings.as_mut()) {
                    map.remove(&job);
                    self.unreadable.remove(&job);
                }
            }
        }
    }

    /// One pass: start, restart, stop and report.
    pub async fn converge(&mut self) {
        let mut local = self.local.take().expect("passes do not overlap");
        let input = PassInput {
            fresh: self.fresh_specs(&local).await,
            bindings: self.bindings.clone(),
            unreadable: self.unreadable.clone(),
            renewed: self.lease.last(),
        };
        let pass = tokio::task::spawn_blocking(move || {
            let out = local.pass(&input, chrono::Utc::now());
            (local, out)
        });
        let (local, out) = pass.await.expect("a runner pass does not panic");
        self.local = Some(local);
        if out.restarts > 0 {
            self.metrics.restarts.inc_by(out.restarts);
        }
        let reported: std::collections::HashSet<String> =
            out.reports.iter().map(|(j, _, _)| j.clone()).collect();
        // Once a write fails, the rest wait for the next pass: an unreachable etcd must not make
        // one pass take a request timeout per job.
        let mut etcd_answers = true;
        for (job, uid, report) in out.reports {
            if etcd_answers {
                etcd_answers = self.report(&job, &uid, report).await;
            }
        }
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|j| !reported.contains(*j))
            .cloned()
            .collect();
        for job in gone {
            if etcd_answers {
                etcd_answers = self.forget_report(&job).await;
            }
        }
        self.metrics
            .set_jobs(self.published.values().map(|r| r.phase));
    }

    /// Run specs, from their Jobs, for the bindings that have none here (in memory, then one
    /// read per such binding). A Job of another uid than its binding's is not run.
    async fn fresh_specs(&mut self, local: &Local<P>) -> HashMap<String, RunSpec> {
        let mut fresh = HashMap::new();
        let Some(bindings) = &self.bindings else {
            return fresh;
        };
        for (job, b) in bindings {
            if !local.needs_spec(job, b) {
                continue;
            }
            match self.store.get::<JobSpec>(job).await {
                Ok(Some(j))
                    if !b.uid.is_empty() && j.metadata.uid.as_deref() != Some(b.uid.as_str()) =>
                {
                    tracing::debug!(job, "the binding is for another Job of this name; waiting")
                }
                Ok(Some(j)) => {
                    fresh.insert(job.clone(), RunSpec::for_binding(&j, b));
                }
                Ok(None) => {} // the Job is gone; its binding will follow
                Err(e @ StoreError::Decode { .. }) => {
                    if self.warned_undecodable.insert(job.clone()) {
                        tracing::warn!(job, %e, "cannot read the job; not starting it");
                    }
                }
                Err(e) => tracing::debug!(job, %e, "cannot read the job yet"),
            }
        }
        fresh
    }

    /// Deletes the report of a job this node no longer has; false when etcd did not take it.
    async fn forget_report(&mut self, job: &str) -> bool {
        let key = keys::agent_job(&self.node, job);
        match self
            .store
            .txn(vec![], vec![TxnOp::delete(key.as_str(), None)], vec![])
            .await
        {
            Ok(_) => {
                self.published.remove(job);
                true
            }
            Err(e) => {
                tracing::debug!(job, %e, "cannot delete the report yet");
                false
            }
        }
    }

    /// An event when a job this agent was already reporting changes phase (a restarted agent
    /// does not announce every job it takes back over).
    fn announce(&self, job: &str, uid: &str, before: Option<JobPhase>, report: &RuntimeReport) {
        if before.is_none() || before == Some(report.phase) {
            return;
        }
        let object = ObjectRef {
            kind: "Job".into(),
            name: job.into(),
            uid: uid.into(),
        };
        match report.phase {
            JobPhase::Failed => self.events.record_about(
                &object,
                "job_failed",
                format!("{}: {}", report.reason, report.message),
                EventType::Warning,
            ),
            JobPhase::Succeeded => self.events.record_about(
                &object,
                "job_succeeded",
                report.message.clone(),
                EventType::Normal,
            ),
            _ => {}
        }
    }

    /// Publishes the job's report when it changed; a failed write is retried next pass.
    /// Returns false when etcd did not take it.
    async fn report(&mut self, job: &str, uid: &str, report: RuntimeReport) -> bool {
        if self.published.get(job) == Some(&report) {
            return true;
        }
        let key = keys::agent_job(&self.node, job);
        let body = serde_json::to_vec(&report).expect("reports serialize");
        let before = self.published.get(job).map(|r| r.phase);
        match self
            .store
            .txn(vec![], vec![TxnOp::put(key.as_str(), body, None)], vec![])
            .await
        {
            Ok(_) => {
                self.announce(job, uid, before, &report);
                self.metrics.status_writes.inc();
                self.published.insert(job.to_string(), report);
                true
            }
            Err(e) => {
                tracing::debug!(job, %e, "report not published yet");
                false
            }
        }
    }
}
