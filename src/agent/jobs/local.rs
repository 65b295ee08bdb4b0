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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::layout::{
    read_json, write_json_if_absent, write_json_with, EndReason, ExitRecord, JobDir, ProcRecord,
    RunSpec, StateDir,
};
use super::policy::{decide, AttemptState, Book, Next, Observed};
use super::process::JobProcesses;
use crate::agent::jobio::staging::Stage;
use crate::api::job::{JobPhase, JobSpec};
use crate::api::job_io::JobInput;
use crate::api::placement::{Binding, RuntimeReport};
use crate::api::Object;
use crate::clock::BootTime;
use crate::store::lease::lost_at;

/// A started attempt is given this long to write its shim record before it counts as lost.
const SHIM_START_GRACE: Duration = Duration::from_secs(10);

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

/// One job this node has a run spec for.
struct Tracked {
    dir: JobDir,
    spec: RunSpec,
    book: Book,
    /// The last attempt started (0: none).
    attempt: u32,
    /// The last attempt's exit, once seen (it never changes).
    exit: Option<ExitRecord>,
    /// The last attempt's job process, once seen.
    job_record: Option<ProcRecord>,
    /// When this runner started the last attempt (its records may not be written yet).
    started_here: Option<Instant>,
    /// Starts held back, and why (logged once per reason).
    held: Option<&'static str>,
    /// The report of the attempt that ended the job, once built.
    done: Option<(u32, RuntimeReport)>,
    /// Whether its records are flushed to disk ([`JobProcesses::DURABLE`]).
    durable: bool,
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

impl RunSpec {
    /// What to run for the Job `job` under `binding`: the Job's command and policy, the
    /// binding's epoch, GPUs, uid and (when it has them) its node-loss terms, so the agent
    /// counts with the numbers the scheduler hands over by.
    pub fn for_binding(job: &Object<JobSpec>, binding: &Binding) -> RunSpec {
        let s = &job.spec;
        let terms = binding
            .terms
            .unwrap_or_else(|| crate::api::placement::LossTerms::of(s));
        RunSpec {
            job: job.metadata.name.clone(),
            uid: job.metadata.uid.clone().unwrap_or_default(),
            epoch: binding.epoch,
            command: s.command.clone(),
            env: s.env.clone(),
            env_from: s.env_from.iter().map(|e| e.file.clone()).collect(),
            workdir: s.workdir.clone(),
            gpus: binding.gpus.clone(),
            restart_policy: s.restart_policy,
            backoff_limit: s.backoff_limit,
            active_deadline_seconds: s.active_deadline_seconds,
            on_node_lost: terms.on_node_lost,
            lost_after_secs: terms.lost_after.0.as_secs(),
            grace_secs: terms.termination_grace_period.0.as_secs(),
            inputs: s.inputs.clone(),
            outputs: s.outputs.clone(),
            labels: job.metadata.labels.clone(),
        }
    }
}

fn matches(spec: &RunSpec, b: &Binding) -> bool {
    spec.epoch == b.epoch && (b.uid.is_empty() || spec.uid.is_empty() || spec.uid == b.uid)
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

/// Why an attempt that is due must not start now, if it must not.
fn start_blocker(
    bound_here: bool,
    renewed: Option<BootTime>,
    spec: &RunSpec,
) -> Option<&'static str> {
    if !bound_here {
        return Some(
            "it is not bound here (or the binding list has not been read since the agent started)",
        );
    }
    let lost_after = Duration::from_secs(spec.lost_after_secs);
    match renewed {
        Some(r) if !lost_at(r, lost_after, BootTime::now()) => None,
        _ => Some("the node's lease has not been renewed for lostAfter: the job may run elsewhere"),
    }
}

/// Ends attempt `attempt` before it starts: rejected with `message` (retrying cannot help).
fn reject(t: &mut Tracked, attempt: u32, message: String) {
    let rec = ExitRecord {
        exit_code: None,
        signal: None,
        finished_at: Utc::now(),
        reason: EndReason::Rejected,
        message,
    };
    if write_json_with(&t.dir.exit_record(attempt), &rec, t.durable).is_ok() {
        t.attempt = attempt;
        t.exit = Some(rec);
    }
}

/// Starts attempt `attempt`, removing the folders of attempts too old to keep.
fn start<P: JobProcesses>(procs: &mut P, t: &mut Tracked, attempt: u32) {
    let job = t.spec.job.clone();
    if let Err(e) = std::fs::create_dir_all(t.dir.attempt(attempt)) {
        tracing::error!(job, %e, "cannot create the attempt directory");
        return;
    }
    t.attempt = attempt;
    t.exit = None;
    t.job_record = None;
    t.started_here = Some(Instant::now());
    match procs.start(&t.dir, &t.spec, attempt) {
        Ok(()) => tracing::info!(job, attempt, "started"),
        Err(e) => {
            let rec = ExitRecord {
                exit_code: None,
                signal: None,
                finished_at: Utc::now(),
                reason: EndReason::StartError,
                message: format!("cannot start the shim: {e}"),
            };
            let _ = write_json_with(&t.dir.exit_record(attempt), &rec, t.durable);
        }
    }
    t.dir.prune_attempts(attempt);
}

impl Tracked {
    fn new(dir: JobDir, spec: RunSpec, book: Book, attempt: u32, durable: bool) -> Self {
        Self {
            durable,
            dir,
            spec,
            book,
            attempt,
            exit: None,
            job_record: None,
            started_here: None,
            held: None,
            done: None,
        }
    }

    fn observed(&self, state: AttemptState) -> Observed {
        Observed {
            attempt: self.attempt,
            state,
            failures: self.book.failures,
            first_started: self.book.first_started,
        }
    }

    /// Folds what the last attempt did into the book (written to disk when it changed).
    fn count(&mut self) {
        let started = self.job_record.and_then(|r| r.started_at);
        let mut book = self.book.started(started);
        if let Some(exit) = &self.exit {
            book = book.count(self.attempt, started, exit);
        }
        if book != self.book {
            if let Err(e) = write_json_with(&self.dir.book(), &book, self.durable) {
                tracing::warn!(job = self.spec.job, %e, "cannot write the restart book");
            }
            self.book = book;
        }
    }
}

/// The state of the job's last attempt, recording a vanished shim as a failed attempt.
fn observe<P: JobProcesses>(procs: &mut P, job: &str, t: &mut Tracked) -> AttemptState {
    let n = t.attempt;
    if n == 0 {
        return AttemptState::NotStarted;
    }
    if t.job_record.is_none() {
        t.job_record = read_json(&t.dir.job_record(n)).ok().flatten();
        if t.job_record.is_some() {
            t.count();
        }
    }
    if t.exit.is_none() {
        t.exit = read_json(&t.dir.exit_record(n)).ok().flatten();
        if t.exit.is_none() && !procs.is_running(job, &t.dir, n) {
            // The shim writes its exit record before it ends: if it ended, the record is on
            // disk now (read again, so a shim that just finished is never overwritten).
            t.exit = read_json(&t.dir.exit_record(n)).ok().flatten();
            if t.exit.is_none() && !starting(t) {
                t.exit = Some(vanished(&t.dir, n));
            }
        }
        if t.exit.is_some() {
            t.count();
        }
    }
    match &t.exit {
        Some(rec) => AttemptState::Ended(rec.clone()),
        None => AttemptState::Running,
    }
}

/// True while a just-started attempt may still be writing its first records.
fn starting(t: &Tracked) -> bool {
    if let Some(at) = t.started_here {
        return at.elapsed() < SHIM_START_GRACE;
    }
    let shim = t.dir.shim_record(t.attempt);
    !shim.exists()
        && std::fs::metadata(t.dir.attempt(t.attempt))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < SHIM_START_GRACE)
}

/// Records that attempt `n`'s shim ended without recording an exit — unless a record appeared
/// in the meantime, which is then the truth.
fn vanished(dir: &JobDir, n: u32) -> ExitRecord {
    let rec = ExitRecord {
        exit_code: None,
        signal: None,
        finished_at: Utc::now(),
        reason: EndReason::Exited,
        message: "the shim ended without recording an exit (killed, or the host rebooted)".into(),
    };
    match write_json_if_absent(&dir.exit_record(n), &rec) {
        Ok(true) | Err(_) => rec,
        Ok(false) => read_json(&dir.exit_record(n)).ok().flatten().unwrap_or(rec),
    }
}

/// The book of a job as stored, or rebuilt from its attempt folders (state directories of
/// agents older than the book).
fn load_book(dir: &JobDir, last: u32) -> Book {
    if let Ok(Some(book)) = read_json::<Book>(&dir.book()) {
        return book;
    }
    let mut numbers = dir.attempt_numbers();
    numbers.sort_unstable();
    let mut book = Book::default();
    for n in numbers.into_iter().filter(|n| *n <= last) {
        let started = read_json::<ProcRecord>(&dir.job_record(n))
            .ok()
            .flatten()
            .and_then(|r| r.started_at);
        book = book.started(started);
        if let Ok(Some(exit)) = read_json::<ExitRecord>(&dir.exit_record(n)) {
            book = book.count(n, started, &exit);
        }
    }
    book
}

fn build_report(t: &Tracked, obs: &Observed, now: DateTime<Utc>) -> RuntimeReport {
    let attempt = obs.attempt;
    let mut r = RuntimeReport {
        epoch: t.spec.epoch,
        attempts: attempt,
        gpus: t.spec.gpus.clone(),
        progress: if attempt > 0 {
            t.dir.read_progress(attempt)
        } else {
            BTreeMap::new()
        },
        start_time: t.job_record.and_then(|p| p.started_at),
        ..RuntimeReport::default()
    };
    match (&obs.state, decide(&t.spec, obs, now)) {
        (AttemptState::NotStarted, _) => r.phase = JobPhase::Scheduled,
        (AttemptState::Running, _) => match t.job_record {
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
            r.result = t.dir.read_result();
        }
        (AttemptState::Ended(rec), Next::Start { not_before, .. }) => {
            r.phase = JobPhase::Scheduled;
            r.reason = if rec.reason == EndReason::NodeLost {
                "NodeLost".into()
            } else {
                "BackOff".into()
            };
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
