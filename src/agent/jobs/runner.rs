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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};

use super::layout::{RunSpec, StateDir};
use super::local::{Local, PassInput};
use super::process::{JobProcesses, ShimProcesses};
use crate::agent::jobio::staging::Stage;
use crate::agent::jobio::{models, outputs, DataPlane};
use crate::agent::metrics::Metrics;
use crate::api::event::{ObjectRef, Reason};
use crate::api::job::JobPhase;
use crate::api::job_io::StagingProgress;
use crate::api::placement::{Binding, EmbeddedJob, JobModel, RuntimeReport};
use crate::api::pool::MODEL_INPUT;
use crate::api::validation::dns1123_problem;
use crate::api::{JobSpec, Object, Spec};
use crate::store::cache::{self, Keyed};
use crate::store::lease::LastRenewal;
use crate::store::watcher::{WatchConfig, WatchEvent, Watcher};
use crate::store::Op;
use crate::store::{keys, Store};
use crate::tasks::CancellationToken;

/// How often the runner looks at its jobs when nothing changes.
pub const TICK: Duration = Duration::from_millis(500);

/// Job reads in flight while a pass fetches the Jobs of new bindings.
pub const READS_IN_FLIGHT: usize = 16;
/// Report writes per transaction (etcd refuses more than `--max-txn-ops`, 128 by default).
pub const OPS_PER_TXN: usize = 100;

/// A key under the node's bindings prefix becomes a job (and a directory) only if it is one
/// valid name: `..` or `a/b` under the prefix is logged and ignored.
fn job_name(rest: &str) -> Option<&str> {
    match dns1123_problem(rest) {
        None => Some(rest),
        Some(problem) => {
            tracing::warn!(
                job = rest,
                problem,
                "ignoring a binding whose job name is not valid"
            );
            None
        }
    }
}

/// What inputs and outputs change in a job's report: `Scheduled` with reason `Staging` (bytes
/// done, total and rate) while its inputs are staged; a finished job stays `Running` with reason
/// `Uploading` until its `uploading` output files are recorded as Artifacts.
fn data_phase(report: &mut RuntimeReport, stage: Option<&Stage>, uploading: usize) {
    if report.phase == JobPhase::Scheduled && report.attempts == 0 {
        if let Some(
            s @ Stage::Staging {
                done,
                total,
                bytes_per_second,
                ..
            },
        ) = stage
        {
            report.reason = "Staging".into();
            report.message = s.describe();
            report.staging = Some(StagingProgress {
                done_bytes: *done,
                total_bytes: *total,
                bytes_per_second: *bytes_per_second,
            });
        }
    }
    if report.phase.is_finished() && uploading > 0 {
        report.message = format!(
            "{} ({}); {uploading} output file(s) uploading: the job finishes once they are recorded as Artifacts",
            report.phase.as_str(),
            if report.message.is_empty() { "exited" } else { report.message.as_str() },
        );
        report.phase = JobPhase::Running;
        report.reason = "Uploading".into();
        report.finish_time = None;
    }
}

/// The converge loop of one node, over a process layer `P` (real shims by default; hollow
/// nodes use simulated processes, so the same logic is exercised at scale).
pub struct Runner<P: JobProcesses = ShimProcesses> {
    node: String,
    store: Store,
    /// The bindings as last read (synced once the first complete list is in); one that does
    /// not decode is kept as such, so its job is neither started nor stopped.
    bindings: Keyed<Binding>,
    /// The node lease under which the bindings watch last listed (`None`: before any lease).
    listed_under: Option<i64>,
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
    /// Inputs and outputs; `None` on hollow nodes (inputs count as staged, outputs are not
    /// taken).
    data: Option<DataPlane>,
    /// Hollow nodes only: inputs take a simulated download's time instead of none.
    simulated_staging: Option<crate::sim::staging::SimStaging>,
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
            bindings: Keyed::new(keys::bindings_prefix(&node), job_name, cache::json),
            node,
            store,
            listed_under: None,
            warned_undecodable: Default::default(),
            lease,
            published: HashMap::new(),
            metrics,
            tick: TICK,
            data: None,
            simulated_staging: None,
        }
    }

    /// Hollow nodes: inputs are staged in the time `staging` simulates (no bytes move).
    pub fn with_simulated_staging(mut self, staging: crate::sim::staging::SimStaging) -> Self {
        self.simulated_staging = Some(staging);
        self
    }

    /// Stages inputs and uploads outputs through `data`.
    pub fn with_data_plane(mut self, data: DataPlane) -> Self {
        self.data = Some(data);
        self
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
        self.bindings = Keyed::new(keys::bindings_prefix(&self.node), job_name, cache::json);
        self.listed_under = self.lease.lease();
        Watcher::new(
            self.store.clone(),
            keys::bindings_prefix(&self.node),
            WatchConfig::default(),
        )
    }

    /// What cannot be read is never acted on: a binding that does not decode keeps its job as
    /// it is here (neither started nor stopped) until it can be read.
    fn apply_binding_event(&mut self, ev: WatchEvent) {
        self.bindings.apply(&ev);
    }

    /// One pass: start, restart, stop and report.
    pub async fn converge(&mut self) {
        let mut local = self.local.take().expect("passes do not overlap");
        let staging = self.stage_inputs(&local);
        let model_dirs = self.model_dirs(&local);
        let input = PassInput {
            staging: staging.clone(),
            fresh: self.fresh_specs(&local).await,
            bindings: self.bindings.synced().then(|| {
                self.bindings
                    .iter()
                    .filter_map(|(job, b)| Some((job.clone(), b.ready()?.clone())))
                    .collect()
            }),
            unreadable: self
                .bindings
                .undecodable()
                .map(|(job, _)| job.clone())
                .collect(),
            renewed: self.lease.last(),
        };
        let uploads = self.data.as_ref().map(|d| d.uploads.clone());
        let dirs = model_dirs.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let out = local.pass(&input, chrono::Utc::now());
            let held: HashMap<String, Option<String>> = dirs
                .iter()
                .map(|(job, dir)| (job.clone(), models::held(dir)))
                .collect();
            // After the pass, so a file present when the process exited is journaled before
            // the job can be reported finished.
            let pending = uploads.map(|dir| {
                for (job_dir, spec, attempt) in local.output_jobs() {
                    let model = held.get(&spec.job).cloned().flatten();
                    let spec = models::with_held_model(spec, model.as_deref());
                    if let Err(e) = outputs::journal_sealed(&dir, &job_dir, &spec, attempt) {
                        tracing::warn!(job = spec.job, %e, "cannot journal the job's outputs");
                    }
                }
                outputs::pending(&dir)
            });
            (local, out, pending, held)
        });
        let (local, mut out, pending, mut held) = pass.await.expect("a runner pass does not panic");
        self.local = Some(local);
        if let Some(data) = &self.data {
            data.models.retain(|job| model_dirs.contains_key(job));
            data.models
                .set_held(held.values().filter_map(|h| h.as_deref()));
        }
        for (job, uid, report) in &mut out.reports {
            if let Some(dir) = model_dirs.get(job.as_str()) {
                let held = held.remove(job.as_str()).flatten();
                let staging_now = matches!(staging.get(job.as_str()), Some(Stage::Staging { .. }));
                self.model_phase(job, report, dir, held, staging_now);
            }
            data_phase(
                report,
                staging.get(job.as_str()),
                pending
                    .as_ref()
                    .and_then(|p| p.get(&(job.clone(), uid.clone())))
                    .copied()
                    .unwrap_or(0),
            );
        }
        if out.restarts > 0 {
            self.metrics.restarts.inc_by(out.restarts);
        }
        self.publish(out.reports).await;
        self.metrics
            .set_jobs(self.published.values().map(|r| r.phase));
    }

    /// Asks the stager for the inputs of every job that may still start, forgets jobs gone,
    /// and returns where each job's staging stands.
    fn stage_inputs(&self, local: &Local<P>) -> HashMap<String, Stage> {
        let wanted = local.staging_wanted();
        let Some(data) = &self.data else {
            // Hollow nodes move no bytes: their jobs' inputs take a simulated download's time,
            // or count as staged.
            if let Some(sim) = &self.simulated_staging {
                return sim.stage_all(&wanted, std::time::Instant::now());
            }
            return wanted
                .into_iter()
                .map(|(job, ..)| (job, Stage::Ready))
                .collect();
        };
        for (job, instance, inputs, dir) in &wanted {
            data.stager.want(job, instance, inputs, dir.clone());
        }
        data.stager.retain(|job| local.tracks(job));
        wanted
            .iter()
            .filter_map(|(job, ..)| Some((job.clone(), data.stager.stage(job)?)))
            .collect()
    }

    /// The model directory (`$RIFT_INPUTS/model`) of every job with a `model` input or a model
    /// order in its binding.
    fn model_dirs(&self, local: &Local<P>) -> HashMap<String, PathBuf> {
        let mut out: HashMap<String, PathBuf> = local
            .staging_wanted()
            .into_iter()
            .filter(|(_, _, inputs, _)| inputs.iter().any(|i| i.name == MODEL_INPUT))
            .map(|(job, _, _, dir)| (job, dir.join(MODEL_INPUT)))
            .collect();
        for (job, b) in self.bindings.iter() {
            if b.ready().is_some_and(|b| b.model.is_some()) && local.tracks(job) {
                if let Ok(dir) = local.state().job(job) {
                    out.entry(job.clone())
                        .or_insert_with(|| dir.inputs().join(MODEL_INPUT));
                }
            }
        }
        out
    }

    /// Carries out `job`'s model order (prefetch; for Reload, swap and SIGHUP; not while its
    /// inputs are being staged) and puts the model its process holds, and where the order
    /// stands, in its report. Hollow nodes move
    /// no bytes: an order counts as prefetched (and, for Reload, held) at once.
    fn model_phase(
        &self,
        job: &str,
        report: &mut RuntimeReport,
        dir: &std::path::Path,
        held: Option<String>,
        staging_now: bool,
    ) {
        let order = self.bindings.ready(job).and_then(|b| b.model.clone());
        let mut model = JobModel {
            held,
            ..JobModel::default()
        };
        if let Some(order) = order.filter(|_| !report.phase.is_finished()) {
            let done = model.held.as_deref() == Some(order.artifact.as_str());
            match &self.data {
                None => {
                    if order.reload {
                        model.held = Some(order.artifact.clone());
                    }
                    model.prefetched = Some(order.artifact);
                }
                Some(_) if done => model.prefetched = Some(order.artifact),
                // Its inputs (the model among them) are still being staged: after that.
                Some(_) if staging_now => {}
                Some(data) => {
                    let pid = report.pid.filter(|_| report.phase == JobPhase::Running);
                    data.models.want(job, &order, dir.to_path_buf(), pid);
                    if let Some(p) = data.models.progress(job, &order.artifact) {
                        model.prefetched = p.prefetched.then(|| order.artifact.clone());
                        model.problem = p.problem;
                    }
                }
            }
        }
        if model != JobModel::default() {
            report.model = Some(model);
        }
    }

    /// Run specs, from their Jobs, for the bindings that have none here: from the Job the
    /// binding carries ([`Binding::job`]), or else each such Job read once (spec and metadata
    /// only; the runner needs no composed status), up to [`READS_IN_FLIGHT`] at a time. A Job
    /// of another uid than its binding's is not run.
    async fn fresh_specs(&mut self, local: &Local<P>) -> HashMap<String, RunSpec> {
        let mut fresh = HashMap::new();
        if !self.bindings.synced() {
            return fresh;
        }
        let wanted: Vec<(String, Binding)> = self
            .bindings
            .iter()
            .filter_map(|(job, b)| Some((job, b.ready()?)))
            .filter(|(job, b)| local.needs_spec(job, b))
            .map(|(job, b)| (job.clone(), b.clone()))
            .collect();
        // A binding that carries its Job needs no read.
        let mut to_read = Vec::new();
        for (job, b) in wanted {
            match b.job.as_ref().map(EmbeddedJob::decode::<Object<JobSpec>>) {
                Some(Ok(j))
                    if j.metadata.name == job
                        && j.metadata.uid.as_deref() == Some(b.uid.as_str()) =>
                {
                    fresh.insert(job, RunSpec::for_binding(&j, &b));
                }
                // Absent, or not this build's Job (fields it does not know): read it.
                _ => to_read.push((job, b)),
            }
        }
        let reads: Vec<_> = to_read
            .into_iter()
            .map(|(job, b)| {
                let store = self.store.clone();
                async move {
                    let got = store.get_raw(&keys::object(JobSpec::PLURAL, &job)).await;
                    (job, b, got)
                }
            })
            .collect();
        let read: Vec<_> = futures::stream::iter(reads)
            .buffer_unordered(READS_IN_FLIGHT)
            .collect()
            .await;
        for (job, b, got) in read {
            let kv = match got {
                Ok(Some(kv)) => kv,
                Ok(None) => continue, // the Job is gone; its binding will follow
                Err(e) => {
                    tracing::debug!(job, %e, "cannot read the job yet");
                    continue;
                }
            };
            match serde_json::from_slice::<Object<JobSpec>>(&kv.value) {
                Ok(j) if !b.uid.is_empty() && j.metadata.uid.as_deref() != Some(b.uid.as_str()) => {
                    tracing::debug!(job, "the binding is for another Job of this name; waiting")
                }
                Ok(j) => {
                    fresh.insert(job.clone(), RunSpec::for_binding(&j, &b));
                }
                Err(e) => {
                    if self.warned_undecodable.insert(job.clone()) {
                        tracing::warn!(job, %e, "cannot read the job; not starting it");
                    }
                }
            }
        }
        fresh
    }

    /// Publishes a pass's reports: every changed report put and every report of a job this
    /// node no longer has deleted, in as few transactions as etcd allows
    /// ([`OPS_PER_TXN`]). A transaction etcd did not take is retried next pass, and the rest
    /// wait for it: an unreachable etcd must not make one pass take a timeout per batch.
    async fn publish(&mut self, reports: Vec<(String, String, RuntimeReport)>) {
        let reported: std::collections::HashSet<&str> =
            reports.iter().map(|(j, _, _)| j.as_str()).collect();
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|j| !reported.contains(j.as_str()))
            .cloned()
            .collect();
        let changed: Vec<(String, String, RuntimeReport)> = reports
            .into_iter()
            .filter(|(job, _, r)| self.published.get(job) != Some(r))
            .collect();
        enum Change {
            Put(String, String, Box<RuntimeReport>),
            Delete(String),
        }
        let all: Vec<Change> = changed
            .into_iter()
            .map(|(j, u, r)| Change::Put(j, u, Box::new(r)))
            .chain(gone.into_iter().map(Change::Delete))
            .collect();
        for batch in all.chunks(OPS_PER_TXN) {
            let ops = batch
                .iter()
                .map(|c| match c {
                    Change::Put(job, _, r) => Op::put(
                        keys::agent_job(&self.node, job),
                        serde_json::to_vec(r).expect("reports serialize"),
                    ),
                    Change::Delete(job) => Op::delete(keys::agent_job(&self.node, job)),
                })
                .collect();
            if let Err(e) = self.store.txn(vec![], ops, vec![]).await {
                tracing::debug!(%e, "reports not published yet");
                return;
            }
            for c in batch {
                match c {
                    Change::Put(job, uid, r) => {
                        let before = self.published.get(job).map(|r| r.phase);
                        self.announce(job, uid, before, r);
                        self.metrics.status_writes.inc();
                        self.published.insert(job.clone(), (**r).clone());
                    }
                    Change::Delete(job) => {
                        self.published.remove(job);
                    }
                }
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
                Reason::JobFailed,
                format!("{}: {}", report.reason, report.message),
            ),
            JobPhase::Succeeded => {
                self.events
                    .record_about(&object, Reason::JobSucceeded, report.message.clone())
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_job_with_outputs_uploading_is_not_reported_finished() {
        let mut r = RuntimeReport {
            phase: JobPhase::Succeeded,
            attempts: 1,
            finish_time: Some(chrono::Utc::now()),
            ..RuntimeReport::default()
        };
        data_phase(&mut r, None, 2);
        assert_eq!(
            (r.phase, r.reason.as_str()),
            (JobPhase::Running, "Uploading")
        );
        assert!(r.finish_time.is_none());
        assert!(r.message.contains("2 output file(s)"), "{}", r.message);
        let mut done = RuntimeReport {
            phase: JobPhase::Failed,
            ..RuntimeReport::default()
        };
        data_phase(&mut done, None, 0);
        assert_eq!(done.phase, JobPhase::Failed, "nothing pending: as it was");
    }

    #[test]
    fn a_job_not_started_shows_its_staging_bytes() {
        let mut r = RuntimeReport {
            phase: JobPhase::Scheduled,
            ..RuntimeReport::default()
        };
        let stage = Stage::Staging {
            done: 512,
            total: 1024,
            bytes_per_second: 256,
            note: None,
        };
        data_phase(&mut r, Some(&stage), 0);
        assert_eq!(r.reason, "Staging");
        assert_eq!(r.staging.as_ref().map(|s| s.percent()), Some(50));
        assert!(
            r.message.contains("512 B of 1.0 KiB (50%)"),
            "{}",
            r.message
        );
    }
}
