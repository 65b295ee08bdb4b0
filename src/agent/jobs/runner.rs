//! Converges the processes on this node to its bindings (`/rift/v1/bindings/<node>/`).
//!
//! Guarantees:
//! - **Never loses work.** Jobs run under shims that outlive the agent; a restarted agent
//!   re-adopts them from the state directory (pid plus start time) and learns every exit,
//!   including of attempts that ended while it was down.
//! - **Losing etcd freezes decisions.** Until the bindings have been listed, and whenever etcd
//!   is unreachable, the last known bindings stand: nothing is stopped for lack of a binding
//!   the agent could not read. Reports are kept and published once etcd is back.
//! - **Stale instances stop.** A job whose binding is gone, or whose binding moved to a new
//!   epoch, is stopped here (SIGTERM, then SIGKILL after its grace period).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use etcd_client::TxnOp;
use futures::FutureExt;
use tokio::sync::watch;

use super::layout::{
    read_json, write_json, EndReason, ExitRecord, JobDir, ProcRecord, RunSpec, StateDir,
};
use super::policy::{decide, AttemptState, Next, Observed};
use super::process::{JobProcesses, ShimProcesses};
use crate::agent::metrics::Metrics;
use crate::api::job::JobPhase;
use crate::api::placement::{Binding, RuntimeReport};
use crate::api::JobSpec;
use crate::store::watcher::{WatchConfig, WatchEvent, Watcher};
use crate::store::{keys, Store};

/// How often the runner looks at its jobs when nothing changes.
pub const TICK: Duration = Duration::from_millis(500);

/// A started attempt is given this long to write its shim record before it counts as lost.
const SHIM_START_GRACE: Duration = Duration::from_secs(10);

/// The converge loop of one node, over a process layer `P` (real shims by default; hollow
/// nodes use simulated processes, so the same logic is exercised at scale).
pub struct Runner<P: JobProcesses = ShimProcesses> {
    node: String,
    store: Store,
    state: StateDir,
    /// How many GPUs this node has, to refuse bindings naming others (None: unknown).
    gpu_count: Option<usize>,
    /// The bindings as last read; `None` until the first complete list.
    bindings: Option<HashMap<String, Binding>>,
    /// Starts, watches and stops attempts.
    procs: P,
    /// Attempts already asked to stop, so SIGTERM is sent once.
    stopping: HashMap<String, u32>,
    /// The last report written per job.
    published: HashMap<String, RuntimeReport>,
    events: crate::store::events::EventRecorder,
    metrics: Arc<Metrics>,
    /// How often the jobs are looked at when nothing changes.
    tick: Duration,
}

impl<P: JobProcesses> Runner<P> {
    /// A runner over the process layer `procs`.
    pub fn with_processes(
        node: String,
        store: Store,
        state: StateDir,
        gpu_count: Option<usize>,
        metrics: Arc<Metrics>,
        procs: P,
    ) -> Self {
        Self {
            events: crate::store::events::EventRecorder::agent(store.clone(), &node),
            node,
            store,
            state,
            gpu_count,
            bindings: None,
            procs,
            stopping: HashMap::new(),
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
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut watcher = Watcher::new(
            self.store.clone(),
            keys::bindings_prefix(&self.node),
            WatchConfig::default(),
        );
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
                _ = shutdown.wait_for(|s| *s) => return,
            }
            self.converge().await;
        }
    }

    fn apply_binding_event(&mut self, ev: WatchEvent) {
        let prefix = keys::bindings_prefix(&self.node);
        let job_of = |key: &str| key.strip_prefix(&prefix).map(str::to_string);
        match ev {
            WatchEvent::Restarted { items, .. } => {
                let map = items
                    .iter()
                    .filter_map(|kv| {
                        Some((job_of(&kv.key)?, serde_json::from_slice(&kv.value).ok()?))
                    })
                    .collect();
                self.bindings = Some(map);
            }
            WatchEvent::Put(kv) => {
                if let (Some(job), Ok(b), Some(map)) = (
                    job_of(&kv.key),
                    serde_json::from_slice::<Binding>(&kv.value),
                    self.bindings.as_mut(),
                ) {
                    map.insert(job, b);
                }
            }
            WatchEvent::Delete { key, .. } => {
                if let (Some(job), Some(map)) = (job_of(&key), self.bindings.as_mut()) {
                    map.remove(&job);
                }
            }
        }
    }

    /// One pass: start, restart, stop and report.
    pub async fn converge(&mut self) {
        self.procs.poll();
        let local = self.state.job_names().unwrap_or_default();
        if let Some(bindings) = self.bindings.clone() {
            for (job, binding) in &bindings {
                self.ensure_run_spec(job, binding).await;
            }
            for job in &local {
                if !bindings.contains_key(job) {
                    self.remove(job).await;
                }
            }
        }
        let mut etcd_answers = true;
        for job in self.state.job_names().unwrap_or_default() {
            let dir = self.state.job(&job);
            let Ok(Some(spec)) = read_json::<RunSpec>(&dir.run_spec()) else {
                continue;
            };
            // Read the job's records once; again only if the step changed them.
            let mut obs = self.observed(&job, &dir);
            if self.step(&job, &dir, &spec, &obs) {
                obs = self.observed(&job, &dir);
            }
            // Once a write fails, the rest wait for the next pass: an unreachable etcd must
            // not make one pass take a request timeout per job.
            if etcd_answers {
                let report = self.build_report(&dir, &spec, &obs);
                etcd_answers = self.report(&job, report).await;
            }
        }
        self.metrics
            .set_jobs(self.published.values().map(|r| r.phase));
    }

    /// Makes sure the job has a run spec for the binding's epoch, stopping an instance of an
    /// older epoch first.
    async fn ensure_run_spec(&mut self, job: &str, binding: &Binding) {
        let dir = self.state.job(job);
        match read_json::<RunSpec>(&dir.run_spec()) {
            Ok(Some(spec)) if spec.epoch == binding.epoch => return,
            Ok(Some(_)) => {
                // Rebound at a new epoch: the old instance must be gone before the new starts.
                if self.stop_and_clear(job, "rebound at a new epoch").await {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(job, %e, "unreadable run spec; starting over"),
        }
        let spec = match self.store.get::<JobSpec>(job).await {
            Ok(Some(j)) => j,
            Ok(None) => return, // the Job is gone; its binding will follow
            Err(e) => {
                tracing::debug!(job, %e, "cannot read the job yet");
                return;
            }
        };
        let run = RunSpec {
            job: job.to_string(),
            uid: spec.metadata.uid.clone().unwrap_or_default(),
            epoch: binding.epoch,
            command: spec.spec.command.clone(),
            env: spec.spec.env.clone(),
            env_from: spec.spec.env_from.iter().map(|e| e.file.clone()).collect(),
            workdir: spec.spec.workdir.clone(),
            gpus: binding.gpus.clone(),
            restart_policy: spec.spec.restart_policy,
            backoff_limit: spec.spec.backoff_limit,
            active_deadline_seconds: spec.spec.active_deadline_seconds,
            on_node_lost: spec.spec.on_node_lost,
            lost_after_secs: spec.spec.lost_after.0.as_secs(),
            grace_secs: spec.spec.termination_grace_period.0.as_secs(),
        };
        if let Err(e) = write_json(&dir.run_spec(), &run) {
            tracing::error!(job, %e, "cannot write the run spec");
            return;
        }
        if let Some(bad) = self.missing_gpu(&run.gpus) {
            let rec = ExitRecord {
                exit_code: None,
                signal: None,
                finished_at: Utc::now(),
                reason: EndReason::Rejected,
                message: bad,
            };
            let _ = write_json(&dir.exit_record(1), &rec);
        }
    }

    fn missing_gpu(&self, gpus: &[u32]) -> Option<String> {
        let count = self.gpu_count?;
        gpus.iter().find(|g| **g as usize >= count).map(|g| {
            format!(
                "GPU index {g} is not present on node {} (it has {count} GPUs)",
                self.node
            )
        })
    }

    /// The state of attempt `n`, recording a vanished shim as a failed attempt.
    fn observe_attempt(&self, job: &str, dir: &JobDir, n: u32) -> AttemptState {
        if n == 0 {
            return AttemptState::NotStarted;
        }
        if let Ok(Some(rec)) = read_json::<ExitRecord>(&dir.exit_record(n)) {
            return AttemptState::Ended(rec);
        }
        if self.procs.is_running(job, dir, n) {
            return AttemptState::Running;
        }
        let shim: Option<ProcRecord> = read_json(&dir.shim_record(n)).ok().flatten();
        let young = std::fs::metadata(dir.attempt(n))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < SHIM_START_GRACE);
        if shim.is_none() && young {
            return AttemptState::Running; // still starting
        }
        let rec = ExitRecord {
            exit_code: None,
            signal: None,
            finished_at: Utc::now(),
            reason: EndReason::Exited,
            message: "the shim ended without recording an exit (killed, or the host rebooted)"
                .into(),
        };
        let _ = write_json(&dir.exit_record(n), &rec);
        AttemptState::Ended(rec)
    }

    fn observed(&self, job: &str, dir: &JobDir) -> Observed {
        let attempt = dir.last_attempt();
        let failures = (1..attempt)
            .filter(|n| {
                read_json::<ExitRecord>(&dir.exit_record(*n))
                    .ok()
                    .flatten()
                    .is_some_and(|r| !r.succeeded())
            })
            .count() as u32;
        let state = self.observe_attempt(job, dir, attempt);
        let last_failed = matches!(&state, AttemptState::Ended(r) if !r.succeeded());
        let first_started = read_json::<ProcRecord>(&dir.job_record(1))
            .ok()
            .flatten()
            .and_then(|r| r.started_at);
        Observed {
            attempt,
            state,
            failures: failures + u32::from(last_failed),
            first_started,
        }
    }

    /// Takes the next step the restart policy asks for.
    /// Returns true when it started or stopped an attempt (the records changed).
    fn step(&mut self, job: &str, dir: &JobDir, spec: &RunSpec, obs: &Observed) -> bool {
        match decide(spec, obs, Utc::now()) {
            Next::Start {
                attempt,
                not_before,
            } if Utc::now() >= not_before => {
                if attempt > 1 {
                    self.metrics
                        .restarts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.start(dir, spec, attempt);
                true
            }
            Next::Stop { reason } => {
                if self.stopping.get(job) != Some(&obs.attempt) {
                    tracing::info!(job, reason, "stopping");
                    self.procs.stop(job, dir, obs.attempt);
                    self.stopping.insert(job.to_string(), obs.attempt);
                }
                false
            }
            Next::Start { .. } | Next::Wait | Next::Done { .. } => false,
        }
    }

    fn start(&mut self, dir: &JobDir, spec: &RunSpec, attempt: u32) {
        let job = spec.job.as_str();
        if let Err(e) = std::fs::create_dir_all(dir.attempt(attempt)) {
            tracing::error!(job, %e, "cannot create the attempt directory");
            return;
        }
        match self.procs.start(dir, spec, attempt) {
            Ok(()) => tracing::info!(job, attempt, "started"),
            Err(e) => {
                let rec = ExitRecord {
                    exit_code: None,
                    signal: None,
                    finished_at: Utc::now(),
                    reason: EndReason::StartError,
                    message: format!("cannot start the shim: {e}"),
                };
                let _ = write_json(&dir.exit_record(attempt), &rec);
            }
        }
    }

    /// Stops the job's running attempt; once nothing runs, removes its directory. Returns true
    /// while it is still stopping.
    async fn stop_and_clear(&mut self, job: &str, why: &str) -> bool {
        let dir = self.state.job(job);
        let attempt = dir.last_attempt();
        if matches!(
            self.observe_attempt(job, &dir, attempt),
            AttemptState::Running
        ) {
            if self.stopping.get(job) != Some(&attempt) {
                tracing::info!(job, why, "stopping");
                self.procs.stop(job, &dir, attempt);
                self.stopping.insert(job.to_string(), attempt);
            }
            return true;
        }
        self.stopping.remove(job);
        self.procs.forget(job);
        if let Err(e) = std::fs::remove_dir_all(dir.path()) {
            tracing::warn!(job, %e, "cannot remove the job directory");
        }
        false
    }

    /// The binding is gone: stop the job here, then forget it and its report.
    async fn remove(&mut self, job: &str) {
        if self
            .stop_and_clear(job, "its binding on this node is gone")
            .await
        {
            return;
        }
        let key = keys::agent_job(&self.node, job);
        match self
            .store
            .txn(vec![], vec![TxnOp::delete(key.as_str(), None)], vec![])
            .await
        {
            Ok(_) => {
                self.published.remove(job);
            }
            Err(e) => tracing::debug!(job, %e, "cannot delete the report yet"),
        }
    }

    fn build_report(&self, dir: &JobDir, spec: &RunSpec, obs: &Observed) -> RuntimeReport {
        let attempt = obs.attempt;
        let proc_rec: Option<ProcRecord> = read_json(&dir.job_record(attempt)).ok().flatten();
        let mut r = RuntimeReport {
            epoch: spec.epoch,
            attempts: attempt,
            gpus: spec.gpus.clone(),
            progress: dir.read_progress(attempt),
            start_time: proc_rec.and_then(|p| p.started_at),
            ..RuntimeReport::default()
        };
        let decision = decide(spec, obs, Utc::now());
        match (&obs.state, decision) {
            (AttemptState::NotStarted, _) => r.phase = JobPhase::Scheduled,
            (AttemptState::Running, _) => match proc_rec {
                Some(p) => {
                    r.phase = JobPhase::Running;
                    r.pid = Some(p.pid);
                }
                None => {
                    r.phase = JobPhase::Scheduled;
                    r.reason = "Starting".into();
                }
            },
            (
                AttemptState::Ended(rec),
                Next::Done {
                    phase,
                    reason,
                    message,
                },
            ) => {
                r.phase = phase;
                r.reason = reason;
                r.message = message;
                r.exit_code = rec.exit_code;
                r.signal = rec.signal;
                r.finish_time = Some(rec.finished_at);
                r.result = dir.read_result();
            }
            (AttemptState::Ended(rec), Next::Start { not_before, .. }) => {
                r.phase = JobPhase::Scheduled;
                r.reason = "BackOff".into();
                r.message = format!(
                    "attempt {attempt} ended ({}); next attempt at {}",
                    rec.exit_code
                        .map_or_else(|| rec.message.clone(), |c| format!("exit code {c}")),
                    not_before.format("%H:%M:%S")
                );
                r.exit_code = rec.exit_code;
                r.signal = rec.signal;
            }
            (AttemptState::Ended(_), _) => r.phase = JobPhase::Scheduled,
        }
        r
    }

    /// An event when a job this agent was already reporting changes phase (a restarted agent
    /// does not announce every job it takes back over).
    fn announce(&self, job: &str, before: Option<JobPhase>, report: &RuntimeReport) {
        if before.is_none() || before == Some(report.phase) {
            return;
        }
        match report.phase {
            JobPhase::Failed => self.events.warning(
                "Job",
                job,
                "job_failed",
                format!("{}: {}", report.reason, report.message),
            ),
            JobPhase::Succeeded => {
                self.events
                    .normal("Job", job, "job_succeeded", report.message.clone())
            }
            _ => {}
        }
    }

    /// Publishes the job's report when it changed; a failed write is retried next pass.
    /// Returns false when etcd did not take it.
    async fn report(&mut self, job: &str, report: RuntimeReport) -> bool {
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
                self.announce(job, before, &report);
                self.metrics
                    .status_writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
