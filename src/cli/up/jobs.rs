//! `rift up` is a development cluster: when it stops, the jobs it ran stop too. (A real
//! node's `rift agent` does the opposite on purpose: its jobs outlive it under their shims, so
//! an agent restart or upgrade never interrupts work.)
//!
//! Called after the agent has returned, so nothing starts new attempts meanwhile. Each live
//! attempt's shim gets SIGTERM, exactly as when the agent stops a job: the shim stops the job's
//! process group, waits out the job's grace period, kills it, and records the end. Attempts
//! whose shim is gone are signalled by their process group. Whatever still runs after every
//! grace period (plus a margin) is killed.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::agent::jobs::layout::{read_json, JobDir, ProcRecord, RunSpec, StateDir};
use crate::agent::jobs::procs;

/// A progress line on stderr; a closed stderr (the terminal or a `| tee` gone) must not stop
/// the jobs from being stopped.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Time on top of the longest grace period for shims to record the end.
const MARGIN: Duration = Duration::from_secs(5);

/// One attempt that was still running.
struct Live {
    job: String,
    shim: Option<ProcRecord>,
    process: Option<ProcRecord>,
    grace: Duration,
}

impl Live {
    fn running(&self) -> bool {
        self.shim.as_ref().is_some_and(procs::is_alive)
            || self.process.as_ref().is_some_and(procs::is_alive)
    }

    /// Asks the shim to stop the job (as the agent does); the job's group directly when the
    /// shim is gone.
    fn stop(&self) {
        match (&self.shim, &self.process) {
            (Some(shim), _) if procs::is_alive(shim) => procs::signal(shim.pid, Signal::SIGTERM),
            (_, Some(p)) if procs::is_alive(p) => procs::signal_group(p.pid, Signal::SIGTERM),
            _ => {}
        }
    }

    /// Kills the job's group and its shim.
    fn kill(&self) {
        if let Some(p) = self.process.as_ref().filter(|p| procs::is_alive(p)) {
            procs::signal_group(p.pid, Signal::SIGKILL);
        }
        if let Some(shim) = self.shim.as_ref().filter(|s| procs::is_alive(s)) {
            procs::signal(shim.pid, Signal::SIGKILL);
        }
    }
}

/// Every attempt under `state` whose shim or job process still runs.
fn live_attempts(state: &StateDir) -> Vec<Live> {
    let names = state.job_names().unwrap_or_default();
    names
        .into_iter()
        .filter_map(|job| {
            let dir: JobDir = state.job(&job).ok()?;
            let n = dir.last_attempt();
            let spec: Option<RunSpec> = read_json(&dir.run_spec()).ok().flatten();
            let live = Live {
                shim: read_json(&dir.shim_record(n)).ok().flatten(),
                process: read_json(&dir.job_record(n)).ok().flatten(),
                grace: Duration::from_secs(spec.map_or(30, |s| s.grace_secs)),
                job,
            };
            live.running().then_some(live)
        })
        .collect()
}

/// Stops every job still running from `state`, printing progress on stderr; returns how many
/// there were. Blocking: call it from `spawn_blocking`.
pub fn stop_all(state: &StateDir) -> usize {
    let live = live_attempts(state);
    if live.is_empty() {
        return 0;
    }
    let names: Vec<&str> = live.iter().map(|l| l.job.as_str()).collect();
    say(format_args!(
        "stopping {} job(s) (a rift up cluster's jobs stop with it): {}",
        live.len(),
        names.join(", ")
    ));
    for l in &live {
        l.stop();
    }
    let deadline = Instant::now() + live.iter().map(|l| l.grace).max().unwrap_or_default() + MARGIN;
    let mut last_shown = Instant::now();
    loop {
        let left: Vec<&Live> = live.iter().filter(|l| l.running()).collect();
        if left.is_empty() {
            say(format_args!("stopped {} job(s)", live.len()));
            return live.len();
        }
        if Instant::now() >= deadline {
            let names: Vec<&str> = left.iter().map(|l| l.job.as_str()).collect();
            eprintln!(
                "killing {} job(s) past their grace period: {}",
                left.len(),
                names.join(", ")
            );
            for l in &left {
                l.kill();
            }
            return live.len();
        }
        if last_shown.elapsed() >= Duration::from_secs(5) {
            say(format_args!(
                "  waiting for {} job(s) to stop...",
                left.len()
            ));
            last_shown = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
