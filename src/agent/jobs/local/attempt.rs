//! One tracked job's attempts on disk: starting one (or refusing to), observing how the last
//! one stands (a vanished shim counted as a failed attempt), and the restart book.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::super::layout::{
    read_json, write_json_if_absent, write_json_with, EndReason, ExitRecord, JobDir, ProcRecord,
    RunSpec,
};
use super::super::policy::{AttemptState, Book, Observed};
use super::super::process::JobProcesses;
use crate::api::placement::RuntimeReport;
use crate::clock::BootTime;
use crate::store::lease::lost_at;

/// A started attempt is given this long to write its shim record before it counts as lost.
const SHIM_START_GRACE: Duration = Duration::from_secs(10);

/// One job this node has a run spec for.
pub(super) struct Tracked {
    pub(super) dir: JobDir,
    pub(super) spec: RunSpec,
    pub(super) book: Book,
    /// The last attempt started (0: none).
    pub(super) attempt: u32,
    /// The last attempt's exit, once seen (it never changes).
    pub(super) exit: Option<ExitRecord>,
    /// The last attempt's job process, once seen.
    pub(super) job_record: Option<ProcRecord>,
    /// When this runner started the last attempt (its records may not be written yet).
    pub(super) started_here: Option<Instant>,
    /// Starts held back, and why (logged once per reason).
    pub(super) held: Option<&'static str>,
    /// The report of the attempt that ended the job, once built.
    pub(super) done: Option<(u32, RuntimeReport)>,
    /// Whether its records are flushed to disk ([`JobProcesses::DURABLE`]).
    pub(super) durable: bool,
}

/// Why an attempt that is due must not start now, if it must not.
pub(super) fn start_blocker(
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
pub(super) fn reject(t: &mut Tracked, attempt: u32, message: String) {
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
pub(super) fn start<P: JobProcesses>(procs: &mut P, t: &mut Tracked, attempt: u32) {
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
    pub(super) fn new(dir: JobDir, spec: RunSpec, book: Book, attempt: u32, durable: bool) -> Self {
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

    pub(super) fn observed(&self, state: AttemptState) -> Observed {
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
pub(super) fn observe<P: JobProcesses>(procs: &mut P, job: &str, t: &mut Tracked) -> AttemptState {
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
pub(super) fn starting(t: &Tracked) -> bool {
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
pub(super) fn vanished(dir: &JobDir, n: u32) -> ExitRecord {
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
pub(super) fn load_book(dir: &JobDir, last: u32) -> Book {
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
