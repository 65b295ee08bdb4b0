//! The process layer under the job runner: how an attempt is started, whether it still runs,
//! and how it is asked to stop. Everything else the runner does (bindings, run specs, restart
//! policy, reports, events) is the same whichever layer it drives.
//!
//! Two layers exist: [`ShimProcesses`] (the real one: each attempt is a `rift shim` process)
//! and [`super::simulated::SimProcesses`] (hollow nodes: attempts are simulated in memory and
//! write the same records a shim would). Both write the attempt's records into the job's
//! state directory ([`super::layout`]), which is what the runner reads.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::Signal;

use super::layout::{read_json, JobDir, ProcRecord, RunSpec};
use super::procs;
use super::shim::ShimOptions;

/// Starts, watches and stops job attempts for the runner.
///
/// Contract: once [`JobProcesses::start`] returned `Ok`, the attempt's end is eventually
/// written to `dir.exit_record(attempt)` (by the layer, or by the runner when the layer says
/// the attempt is gone without one), and `dir.job_record(attempt)` names the job process once
/// it runs.
pub trait JobProcesses: Send + 'static {
    /// Whether the records of this layer's attempts must survive a crash of the host (written
    /// with fsync). Simulated attempts live in memory: thousands of hollow nodes must not
    /// flush the disk etcd needs.
    const DURABLE: bool = true;
    /// Starts attempt `attempt` of `spec` in `dir` (its attempt directory exists).
    fn start(&mut self, dir: &JobDir, spec: &RunSpec, attempt: u32) -> io::Result<()>;
    /// Called at the start of every runner pass: reap ended children, advance simulations.
    fn poll(&mut self);
    /// True while attempt `attempt` of `job` is known to run. An attempt that has not yet
    /// written its records is given a grace period by the runner on top of this.
    fn is_running(&self, job: &str, dir: &JobDir, attempt: u32) -> bool;
    /// Asks the attempt to stop (it ends with its grace period; the end is recorded as usual).
    fn stop(&mut self, job: &str, dir: &JobDir, attempt: u32);
    /// The job's directory is about to be removed: drop whatever is held for it.
    fn forget(&mut self, job: &str);
}

/// The real layer: each attempt runs under its own `rift shim` process (see
/// [`super::shim`]), which outlives the agent; attempts started by an earlier agent are
/// recognised by their recorded pid and start time.
pub struct ShimProcesses {
    /// The agent's executable as of start-up (see [`shim_exe`]).
    exe: PathBuf,
    /// The agent's heartbeat file, passed to every shim.
    heartbeat: PathBuf,
    /// Shims this process started (reaped here; others were adopted from disk).
    children: HashMap<String, Child>,
    /// The user jobs run as and where their secret files are, passed to every shim.
    options: ShimOptions,
}

/// The executable to start shims with.
///
/// Normally the `rift` binary at the path the agent was started from (so an upgraded binary
/// copied there is used for new shims). If that path is gone — the binary is being replaced
/// mid-upgrade — `/proc/self/exe` still runs the agent's own image, so jobs can start anyway.
fn shim_exe(started_from: &Path) -> PathBuf {
    if started_from.is_file() {
        started_from.to_path_buf()
    } else {
        PathBuf::from("/proc/self/exe")
    }
}

impl ShimProcesses {
    /// Shims for an agent whose heartbeat file is `heartbeat`.
    pub fn new(heartbeat: PathBuf) -> Self {
        Self {
            exe: std::env::current_exe()
                .map(|p| {
                    // Linux marks a replaced executable "(deleted)"; the path itself is what we want.
                    let s = p.to_string_lossy();
                    PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
                })
                .unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            heartbeat,
            children: HashMap::new(),
            options: ShimOptions::default(),
        }
    }

    /// Shims that start jobs as `options` say (the node's `runAs` and `secretsDir`).
    pub fn with_options(mut self, options: ShimOptions) -> Self {
        self.options = options;
        self
    }
}

impl JobProcesses for ShimProcesses {
    fn start(&mut self, dir: &JobDir, spec: &RunSpec, attempt: u32) -> io::Result<()> {
        let shim_log = std::fs::File::create(dir.attempt(attempt).join("shim.log")).ok();
        let mut cmd = Command::new(shim_exe(&self.exe));
        cmd.arg("shim")
            .arg("--dir")
            .arg(dir.path())
            .arg("--attempt")
            .arg(attempt.to_string())
            .arg("--heartbeat")
            .arg(&self.heartbeat)
            .arg("--secrets-dir")
            .arg(&self.options.secrets_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(user) = &self.options.run_as {
            cmd.arg("--run-as").arg(user);
        }
        match shim_log {
            Some(f) => cmd.stderr(f),
            None => cmd.stderr(Stdio::null()),
        };
        let child = cmd.spawn()?;
        self.children.insert(spec.job.clone(), child);
        Ok(())
    }

    fn poll(&mut self) {
        self.children
            .retain(|_, c| matches!(c.try_wait(), Ok(None)));
    }

    fn is_running(&self, job: &str, dir: &JobDir, attempt: u32) -> bool {
        if self.children.contains_key(job) {
            return true;
        }
        let shim: Option<ProcRecord> = read_json(&dir.shim_record(attempt)).ok().flatten();
        let job_proc: Option<ProcRecord> = read_json(&dir.job_record(attempt)).ok().flatten();
        shim.as_ref().is_some_and(procs::is_alive) || job_proc.as_ref().is_some_and(procs::is_alive)
    }

    fn stop(&mut self, _job: &str, dir: &JobDir, attempt: u32) {
        signal_shim(dir, attempt, Signal::SIGTERM);
    }

    fn forget(&mut self, job: &str) {
        self.children.remove(job);
    }
}

/// Signals the attempt's shim; with no live shim, the job's process group directly.
fn signal_shim(dir: &JobDir, attempt: u32, sig: Signal) {
    match read_json::<ProcRecord>(&dir.shim_record(attempt))
        .ok()
        .flatten()
    {
        Some(rec) if procs::is_alive(&rec) => procs::signal(rec.pid, sig),
        _ => {
            if let Some(rec) = read_json::<ProcRecord>(&dir.job_record(attempt))
                .ok()
                .flatten()
            {
                if procs::is_alive(&rec) {
                    procs::signal_group(rec.pid, sig);
                }
            }
        }
    }
}
