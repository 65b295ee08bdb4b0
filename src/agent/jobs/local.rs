//! The job runner's work on this node's disk and processes: blocking, so the runner does it in
//! one [`Local::pass`] per pass inside `spawn_blocking`, never on an async worker.
//!
//! Guarantees (the runner's module documentation has the whole list):
//! - **Starts only what is bound here, now.** An attempt starts only when the binding list has
//!   been read since this agent started, the job is bound here at its run spec's epoch without
//!   a stop order, and the node's lease was renewed less than the job's `lostAfter` ago. A node
//!   cut off from etcd therefore stops starting (and restarting) anything `lostAfter` after its
//!   last renewal — the same moment its shims stop `reschedule` jobs — and a restarted agent
//!   starts nothing before it has read a current binding list.
//! - **Stop orders are answered.** A binding with a stop order has its attempt stopped, and
//!   once nothing runs the job's report says `released`: the scheduler's evidence that it may
//!   hand the job's name and GPUs to a new holder.
//! - **Another Job of the same name is never adopted.** A run spec of another epoch or another
//!   uid than the binding's is stopped and cleared before anything of the new one starts.
//! - **Bounded bookkeeping.** What does not change once written (a run spec, an attempt's exit)
//!   is read once and kept in memory; failures are counted in the job's [`Book`] as attempts
//!   end; only the last [`KEEP_ATTEMPTS`](super::layout::KEEP_ATTEMPTS) attempt folders stay.

//!
//! Submodules: [`attempt`] (one job's attempts on disk), [`report`] (its runtime report),
//! [`run_spec`] (what a binding asks to run).

mod attempt;
mod report;
mod run_spec;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::layout::{read_json, write_json_with, EndReason, ExitRecord, JobDir, RunSpec, StateDir};
use super::policy::{decide, AttemptState, Book, Next};
use super::process::JobProcesses;
use crate::agent::jobio::staging::Stage;
use crate::api::job_io::JobInput;
use crate::api::placement::{Binding, RuntimeReport};
use crate::clock::BootTime;
use attempt::{load_book, observe, reject, start, start_blocker, Tracked};
use report::build_report;
use run_spec::matches;

/// What one pass works from.
#[derive(Clone, Debug, Default)]
pub struct PassInput {
    /// The bindings as last read; `None` until the first complete list since the agent started.
    pub bindings: Option<HashMap<String, Binding>>,
    /// Jobs whose binding exists but does not decode: left exactly as they are.
    pub unreadable: HashSet<String>,
    /// Run specs for bindings that had none ([`Local::needs_spec`]), made from their Jobs.
    pub fresh: HashMap<String, RunSpec>,
    /// When the node's lease was last renewed; `None` when it never was (by this agent).
    pub renewed: Option<BootTime>,
    /// Where the staging of each job with inputs stands; a job with inputs and no entry has
    /// not started staging (it waits).
    pub staging: HashMap<String, Stage>,
}

/// What one pass found.
#[derive(Clone, Debug, Default)]
pub struct PassOutput {
    /// `(job, uid, report)` of every job this node has a record of, or a released binding.
    pub reports: Vec<(String, String, RuntimeReport)>,
    /// Attempts started after an earlier one ended.
    pub restarts: u64,
}

/// The runner's local state: tracked jobs and the process layer.
pub struct Local<P: JobProcesses> {
    node: String,
    state: StateDir,
    procs: P,
    gpu_count: Option<usize>,
    jobs: BTreeMap<String, Tracked>,
    /// Job directories without a readable run spec: stopped and removed once unbound.
    strays: BTreeSet<String>,
    /// Attempts already asked to stop, so SIGTERM is sent once.
    stopping: HashMap<String, u32>,
}

impl<P: JobProcesses> Local<P> {
    pub fn new(node: String, state: StateDir, gpu_count: Option<usize>, procs: P) -> Self {
        Self {
            node,
            state,
            procs,
            gpu_count,
            jobs: BTreeMap::new(),
            strays: BTreeSet::new(),
            stopping: HashMap::new(),
        }
    }

    /// Reads the state directory once (blocking): every job's run spec and book.
    pub fn load(&mut self) {
        for name in self.state.job_names().unwrap_or_default() {
            let Ok(dir) = self.state.job(&name) else {
                continue;
            };
            match read_json::<RunSpec>(&dir.run_spec()) {
                Ok(Some(spec)) => {
                    let attempt = dir.last_attempt();
                    let book = load_book(&dir, attempt);
                    self.jobs
                        .insert(name, Tracked::new(dir, spec, book, attempt, P::DURABLE));
                }
                other => {
                    if let Err(e) = other {
                        tracing::warn!(job = name, %e, "unreadable run spec; the job starts over");
                    }
                    self.strays.insert(name);
                }
            }
        }
    }

    /// Jobs with inputs that may still start an attempt: `(job, instance, inputs, inputs dir)`,
    /// where the instance (`<uid>#<epoch>`) changes whenever the job directory was made anew
    /// (another Job of the name, or a new binding epoch), so its inputs are staged again.
    pub fn staging_wanted(&self) -> Vec<(String, String, Vec<JobInput>, std::path::PathBuf)> {
        self.jobs
            .iter()
            .filter(|(_, t)| !t.spec.inputs.is_empty() && t.done.is_none())
            .map(|(job, t)| {
                (
                    job.clone(),
                    format!("{}#{}", t.spec.uid, t.spec.epoch),
                    t.spec.inputs.clone(),
                    t.dir.inputs(),
                )
            })
            .collect()
    }

    /// Whether this node has a run spec for `job`.
    pub fn tracks(&self, job: &str) -> bool {
        self.jobs.contains_key(job)
    }

    /// Jobs with outputs: their directory, run spec and last attempt.
    pub fn output_jobs(&self) -> Vec<(JobDir, RunSpec, u32)> {
        self.jobs
            .values()
            .filter(|t| !t.spec.outputs.is_empty() && t.attempt > 0)
            .map(|t| (t.dir.clone(), t.spec.clone(), t.attempt))
            .collect()
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// True when binding `b` of `job` needs a run spec from its Job (none, or one for another
    /// epoch or uid). In memory only.
    pub fn needs_spec(&self, job: &str, b: &Binding) -> bool {
        b.stop.is_none() && !self.jobs.get(job).is_some_and(|t| matches(&t.spec, b))
    }

    /// One pass: converge to the bindings (when known), step every job, report.
    pub fn pass(&mut self, input: &PassInput, now: DateTime<Utc>) -> PassOutput {
        self.procs.poll();
        let mut out = PassOutput::default();
        if let Some(bindings) = &input.bindings {
            for (job, b) in bindings {
                self.ensure(job, b, input.fresh.get(job));
            }
            let unbound: Vec<String> = self
                .jobs
                .keys()
                .chain(&self.strays)
                .filter(|j| !bindings.contains_key(*j) && !input.unreadable.contains(*j))
                .cloned()
                .collect();
            for job in unbound {
                self.stop_and_clear(&job, "its binding on this node is gone");
            }
        }
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        for job in names {
            let binding = input.bindings.as_ref().and_then(|m| m.get(&job));
            let stage = input.staging.get(&job);
            let (report, restarted) = self.step(&job, binding, input.renewed, stage, now);
            out.restarts += u64::from(restarted);
            let uid = self
                .jobs
                .get(&job)
                .map(|t| t.spec.uid.clone())
                .unwrap_or_default();
            out.reports.push((job, uid, report));
        }
        // A stop order for something that never ran here (or was already cleared) is answered
        // at once: nothing runs.
        for (job, b) in input.bindings.iter().flatten() {
            if b.stop.is_some() && !self.jobs.contains_key(job) && !self.strays.contains(job) {
                out.reports.push((
                    job.clone(),
                    b.uid.clone(),
                    RuntimeReport {
                        epoch: b.epoch,
                        released: true,
                        reason: "Released".into(),
                        message: "nothing of this job runs on this node".into(),
                        ..RuntimeReport::default()
                    },
                ));
            }
        }
        out
    }

    /// Makes sure `job` has the run spec of binding `b`, stopping an instance of another epoch
    /// or uid first.
    fn ensure(&mut self, job: &str, b: &Binding, fresh: Option<&RunSpec>) {
        if let Some(t) = self.jobs.get(job) {
            if matches(&t.spec, b) {
                return;
            }
            if self.stop_and_clear(job, "rebound at a new epoch or for another Job") {
                return;
            }
        }
        if self.strays.contains(job) && self.stop_and_clear(job, "its records are unreadable") {
            return;
        }
        let Some(spec) = fresh.filter(|s| b.stop.is_none() && matches(s, b)) else {
            return;
        };
        let dir = match self.state.job(job) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%e, "binding ignored");
                return;
            }
        };
        if let Err(e) = write_json_with(&dir.run_spec(), spec, P::DURABLE) {
            tracing::error!(job, %e, "cannot write the run spec");
            return;
        }
        let mut tracked = Tracked::new(dir, spec.clone(), Book::default(), 0, P::DURABLE);
        if let Some(bad) = self.missing_gpu(&spec.gpus) {
            let rec = ExitRecord {
                exit_code: None,
                signal: None,
                finished_at: Utc::now(),
                reason: EndReason::Rejected,
                message: bad,
            };
            if write_json_with(&tracked.dir.exit_record(1), &rec, P::DURABLE).is_ok() {
                tracked.attempt = 1;
                tracked.exit = Some(rec);
            }
        }
        self.jobs.insert(job.to_string(), tracked);
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

    /// Stops the job's running attempt; once nothing runs, removes its directory and forgets
    /// it. Returns true while it is still stopping.
    fn stop_and_clear(&mut self, job: &str, why: &str) -> bool {
        let Ok(dir) = self.state.job(job) else {
            return false;
        };
        let attempt = self
            .jobs
            .get(job)
            .map_or_else(|| dir.last_attempt(), |t| t.attempt);
        let running = match self.jobs.get_mut(job) {
            Some(t) => matches!(observe(&mut self.procs, job, t), AttemptState::Running),
            None => attempt > 0 && self.procs.is_running(job, &dir, attempt),
        };
        if running {
            if self.stopping.get(job) != Some(&attempt) {
                tracing::info!(job, why, "stopping");
                self.procs.stop(job, &dir, attempt);
                self.stopping.insert(job.to_string(), attempt);
            }
            return true;
        }
        self.stopping.remove(job);
        self.procs.forget(job);
        self.jobs.remove(job);
        self.strays.remove(job);
        if let Err(e) = std::fs::remove_dir_all(dir.path()) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(job, %e, "cannot remove the job directory");
            }
        }
        false
    }

    /// Takes the next step for `job` and returns its report, and whether it restarted.
    fn step(
        &mut self,
        job: &str,
        binding: Option<&Binding>,
        renewed: Option<BootTime>,
        stage: Option<&Stage>,
        now: DateTime<Utc>,
    ) -> (RuntimeReport, bool) {
        let t = self.jobs.get_mut(job).expect("stepping a tracked job");
        let mut state = observe(&mut self.procs, job, t);
        let ordered_off = binding.is_some_and(|b| b.epoch == t.spec.epoch && b.stop.is_some());
        let bound_here = binding.is_some_and(|b| matches(&t.spec, b) && b.stop.is_none());
        let obs = t.observed(state.clone());
        let decision = decide(&t.spec, &obs, now);
        let mut restarted = false;
        match decision {
            _ if ordered_off => {
                if state == AttemptState::Running && self.stopping.get(job) != Some(&t.attempt) {
                    let reason = binding
                        .and_then(|b| b.stop.as_ref())
                        .map(|s| s.reason.as_str());
                    tracing::info!(job, reason, "stopping: ordered off this node");
                    self.procs.stop(job, &t.dir, t.attempt);
                    self.stopping.insert(job.to_string(), t.attempt);
                }
            }
            Next::Start {
                attempt,
                not_before,
            } if now >= not_before => match start_blocker(bound_here, renewed, &t.spec) {
                Some(why) => {
                    if t.held != Some(why) {
                        tracing::warn!(job, why, "not starting");
                        t.held = Some(why);
                    }
                }
                None if t.spec.inputs.is_empty() || stage == Some(&Stage::Ready) => {
                    t.held = None;
                    restarted = attempt > 1;
                    start(&mut self.procs, t, attempt);
                    state = observe(&mut self.procs, job, t);
                }
                None => match stage {
                    Some(Stage::Failed(message)) => {
                        tracing::warn!(job, message, "inputs cannot be staged; the job fails");
                        reject(t, attempt, message.clone());
                        state = observe(&mut self.procs, job, t);
                    }
                    _ => {
                        let why = "its inputs are being staged";
                        if t.held != Some(why) {
                            tracing::info!(job, why, "not starting yet");
                            t.held = Some(why);
                        }
                    }
                },
            },
            Next::Stop { reason } => {
                if self.stopping.get(job) != Some(&t.attempt) {
                    tracing::info!(job, reason, "stopping");
                    self.procs.stop(job, &t.dir, t.attempt);
                    self.stopping.insert(job.to_string(), t.attempt);
                }
            }
            Next::Start { .. } | Next::Wait | Next::Done { .. } => {}
        }
        let obs = t.observed(state.clone());
        // A job that is over changes no more: its report (progress and result files read) is
        // built once.
        let over = matches!(state, AttemptState::Ended(_))
            && matches!(decide(&t.spec, &obs, now), Next::Done { .. });
        let mut report = match &t.done {
            Some((n, r)) if over && *n == t.attempt => r.clone(),
            _ => {
                let r = build_report(t, &obs, now);
                t.done = over.then(|| (t.attempt, r.clone()));
                r
            }
        };
        report.released = ordered_off && state != AttemptState::Running;
        (report, restarted)
    }
}
