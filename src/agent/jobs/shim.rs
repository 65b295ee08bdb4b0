//! `rift shim`: the small parent of one job attempt, in the manner of containerd's shim.
//!
//! It runs in its own session (so it outlives the agent and its systemd unit's cgroup kill with
//! `KillMode=process`), starts the job in its own process group, copies its output to a capped
//! log, records the job's pid and start time, and finally writes how the attempt ended. The
//! agent stops an attempt by sending the shim SIGTERM: the shim sends SIGTERM to the job's
//! group and SIGKILL after the grace period.
//!
//! For `onNodeLost: reschedule` jobs the shim also reads the agent's heartbeat file
//! ([`Heartbeat`]): when the node's lease was last renewed `lostAfter` ago or longer, on the
//! machine-wide clock every process shares, the job is stopped — whether the agent is dead or
//! merely cut off from etcd — so the leader can later run it elsewhere without two copies ever
//! running. The clock runs from the last real renewal, not from the shim's start: a shim started
//! late (or by an agent that restarted while cut off) stops its job on time. A heartbeat file of
//! an older format is measured the old way: from when its content last changed, as seen here.
//!
//! A record the shim cannot write (its job record, say, on a full disk) is reported on its
//! stderr and the job stays supervised: the shim never leaves a job behind.
//!
//! Privileges: the shim runs as the agent's user (root on a node) with umask 077, so every
//! file it writes is private; what it prepares for the job — its user, its `envFrom`
//! secrets, where it writes progress and result — is [`super::launch`].
//!
//! The shim uses no async runtime: it stays a few MiB.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::{signal as set_handler, SigHandler, Signal};

use super::launch::Launch;
use super::layout::{read_json, write_json, EndReason, ExitRecord, Heartbeat, JobDir, RunSpec};
use super::procs;
use crate::api::job::OnNodeLost;
use crate::clock::BootTime;

/// Largest log file before it is rotated to `output.log.1` (one old file is kept).
pub const MAX_LOG_BYTES: u64 = 64 << 20;

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: i32) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// How the node starts jobs (from the agent's config, passed on the shim's command line).
#[derive(Clone, Debug)]
pub struct ShimOptions {
    /// The user jobs run as (`runAs`); `None`: the shim's own user.
    pub run_as: Option<String>,
    /// Where `envFrom` files live (`secretsDir`).
    pub secrets_dir: PathBuf,
}

impl Default for ShimOptions {
    fn default() -> Self {
        ShimOptions {
            run_as: None,
            secrets_dir: PathBuf::from(super::env_files::DEFAULT_SECRETS_DIR),
        }
    }
}

/// Errors that keep the shim from doing its job at all (recorded in its own log).
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: no run.json")]
    NoSpec(String),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ShimError + '_ {
    move |source| ShimError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A log file capped at [`MAX_LOG_BYTES`], rotated once.
struct CappedLog {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
}

impl CappedLog {
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            written,
        })
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.written + buf.len() as u64 > MAX_LOG_BYTES {
            let old = self.path.with_extension("log.1");
            std::fs::rename(&self.path, old)?;
            *self = Self::open(&self.path)?;
        }
        self.file.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }
}

/// How long ago the node's lease was last renewed, as far as the heartbeat file tells.
struct LeaseAge {
    path: PathBuf,
    /// For heartbeat files without a machine-clock stamp: the content last seen, and when it
    /// was first seen (this shim's own clock).
    last: Option<Vec<u8>>,
    changed_at: BootTime,
}

impl LeaseAge {
    fn new(path: &Path) -> Self {
        LeaseAge {
            path: path.to_path_buf(),
            last: None,
            changed_at: BootTime::now(),
        }
    }

    /// Time since the last renewal: from the stamp in the file when it has one of this boot,
    /// else since the file's content last changed (or since this shim started).
    fn since_renewal(&mut self) -> Duration {
        let now = BootTime::now();
        let content = std::fs::read(&self.path).ok();
        if let Some(renewed) = content
            .as_deref()
            .and_then(|c| serde_json::from_slice::<Heartbeat>(c).ok())
            .and_then(|h| h.renewed())
        {
            return now.since(renewed);
        }
        if content != self.last {
            self.last = content;
            self.changed_at = now;
        }
        now.since(self.changed_at)
    }
}

/// Copies what the job wrote to the log, waiting up to `wait` for output. Returns false once
/// the pipe is closed (every writer is gone).
fn drain_output(pipe: &mut std::fs::File, log: &mut CappedLog, wait: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ready = {
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(wait.as_millis() as i32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(n) if n > 0 => fds[0].revents().unwrap_or(PollFlags::empty()),
            _ => PollFlags::empty(),
        }
    };
    if ready.contains(PollFlags::POLLIN) {
        let mut buf = [0u8; 16384];
        return match pipe.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                let _ = log.write(&buf[..n]);
                true
            }
            Err(_) => false,
        };
    }
    !ready.contains(PollFlags::POLLHUP)
}

/// Runs attempt `attempt` of the job in `dir` to its end. `heartbeat` is the agent's heartbeat
/// file.
pub fn run(
    dir: &Path,
    attempt: u32,
    heartbeat: &Path,
    options: &ShimOptions,
) -> Result<(), ShimError> {
    detach();
    let job = JobDir::at(dir);
    let spec: RunSpec = read_json(&job.run_spec())
        .map_err(io_at(&job.run_spec()))?
        .ok_or_else(|| ShimError::NoSpec(dir.display().to_string()))?;
    let attempt_dir = job.attempt(attempt);
    std::fs::create_dir_all(&attempt_dir).map_err(io_at(&attempt_dir))?;
    let me = procs::record(std::process::id()).expect("our own /proc entry exists");
    write_json(&job.shim_record(attempt), &me).map_err(io_at(&job.shim_record(attempt)))?;
    let start_error = |message| record_end(&job, attempt, Ended::start_error(message));

    if let Some(w) = &spec.workdir {
        if !Path::new(w).is_dir() {
            return start_error(format!("workdir `{w}` does not exist"));
        }
    }
    let mut launch = match Launch::prepare(&job, attempt, &spec, options) {
        Ok(l) => l,
        Err(message) => return start_error(message),
    };
    let mut log = CappedLog::open(&job.log(attempt)).map_err(io_at(&job.log(attempt)))?;
    let (mut child, output) = match spawn(&job, attempt, &spec, &mut launch)? {
        Ok(started) => started,
        Err(message) => return start_error(message),
    };
    if let Some(rec) = procs::record(child.id()) {
        if let Err(e) = write_json(&job.job_record(attempt), &rec) {
            // The job runs: supervise it anyway (the agent still sees this shim alive).
            eprintln!("rift shim: {}: {e}", job.job_record(attempt).display());
        }
    }
    let ended = supervise(&mut child, output, &mut log, &mut launch, &spec, heartbeat);
    // The job's last progress and result are in place before the runner learns of its end.
    launch.finish();
    record_end(&job, attempt, ended)
}

/// Makes this process the shim: files private to its user, a session of its own (not killed
/// with the agent, nor by a terminal hang-up), SIGTERM asking for a stop.
fn detach() {
    // Everything the shim writes is private to its user (the job gets 022 back).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let _ = nix::unistd::setsid();
    // SAFETY: the handler only stores to an atomic; installed before any thread starts.
    unsafe {
        let _ = set_handler(Signal::SIGTERM, SigHandler::Handler(on_sigterm));
        let _ = set_handler(Signal::SIGHUP, SigHandler::SigIgn);
        let _ = set_handler(Signal::SIGINT, SigHandler::SigIgn);
    }
}

/// How an attempt ended, as its exit record says.
struct Ended {
    exit_code: Option<i32>,
    signal: Option<i32>,
    reason: EndReason,
    message: String,
}

impl Ended {
    fn start_error(message: String) -> Ended {
        Ended {
            exit_code: None,
            signal: None,
            reason: EndReason::StartError,
            message,
        }
    }
}

/// Writes the attempt's exit record. How the attempt ended is the one record that must not be
/// lost: a full disk may free up, so it tries for a while before giving up (the agent then
/// records the attempt as ended without a record).
fn record_end(job: &JobDir, attempt: u32, ended: Ended) -> Result<(), ShimError> {
    let rec = ExitRecord {
        exit_code: ended.exit_code,
        signal: ended.signal,
        finished_at: Utc::now(),
        reason: ended.reason,
        message: ended.message,
    };
    let path = job.exit_record(attempt);
    let mut tries = 0;
    loop {
        match write_json(&path, &rec) {
            Ok(()) => return Ok(()),
            Err(e) if tries < 10 => {
                eprintln!("rift shim: {}: {e}; retrying", path.display());
                tries += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(io_at(&path)(e)),
        }
    }
}

/// Starts the job in a process group of its own, its stdout and stderr on one pipe (their
/// lines stay in order, and one loop reads both). Returns the child and the pipe's read end,
/// or why it could not start (for the exit record).
fn spawn(
    job: &JobDir,
    attempt: u32,
    spec: &RunSpec,
    launch: &mut Launch,
) -> Result<Result<(Child, std::fs::File), String>, ShimError> {
    let (read_end, write_end) = nix::unistd::pipe().map_err(|e| ShimError::Io {
        path: "pipe".into(),
        source: e.into(),
    })?;
    let err_end: OwnedFd = write_end.try_clone().map_err(io_at(&job.log(attempt)))?;
    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..])
        .envs(&spec.env)
        .env("RIFT_JOB_NAME", &spec.job)
        .env("RIFT_ATTEMPT", attempt.to_string())
        .env("RIFT_PROGRESS_FILE", job.progress(attempt))
        .env("RIFT_RESULT_FILE", job.result())
        .env(
            "CUDA_VISIBLE_DEVICES",
            spec.gpus
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(err_end));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // The shim ignores SIGHUP and SIGINT; an ignored signal stays ignored across exec (and a
    // shell cannot even trap it), so the job gets the defaults back: a Pool's `update: Reload`
    // reaches it with SIGHUP.
    // SAFETY: between fork and exec only sigaction runs, which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            for sig in [Signal::SIGHUP, Signal::SIGINT] {
                let _ = set_handler(sig, SigHandler::SigDfl);
            }
            Ok(())
        });
    }
    launch.configure(&mut cmd);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ok(Err(launch.start_error(&spec.command[0], &e))),
    };
    // Our copies of the write end went into the child; drop them so EOF arrives when the job
    // (and everything it started) has closed its output.
    drop(cmd);
    Ok(Ok((child, std::fs::File::from(read_end))))
}

/// Watches the job until it exits, copying its output to `log`: stops its group on the
/// agent's SIGTERM or, for `onNodeLost: reschedule`, once the node's lease went unrenewed for
/// `lostAfter`; SIGKILL after the grace period. Then kills what is left of its group and
/// copies the output still buffered.
fn supervise(
    child: &mut Child,
    mut output: std::fs::File,
    log: &mut CappedLog,
    launch: &mut Launch,
    spec: &RunSpec,
    heartbeat: &Path,
) -> Ended {
    let pid = child.id();
    let mut pipe_open = true;
    let grace = Duration::from_secs(spec.grace_secs);
    let mut lease = LeaseAge::new(heartbeat);
    let mut stopping: Option<(Instant, EndReason, String)> = None;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            break status;
        }
        if stopping.is_none() {
            stopping = stop_reason(spec, &mut lease).map(|(reason, message)| {
                procs::signal_group(pid, Signal::SIGTERM);
                (Instant::now(), reason, message)
            });
        }
        if let Some((since, _, _)) = &stopping {
            if since.elapsed() >= grace && !killed {
                killed = true;
                procs::signal_group(pid, Signal::SIGKILL);
            }
        }
        launch.sync_due();
        if pipe_open {
            pipe_open = drain_output(&mut output, log, Duration::from_millis(100));
        } else {
            // The job closed its output but runs on: just wait.
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Whatever the job left in its group goes with it.
    procs::signal_group(pid, Signal::SIGKILL);
    // Whatever is still buffered in the pipe (the group is dead, so it ends soon).
    let deadline = Instant::now() + Duration::from_secs(1);
    while pipe_open && Instant::now() < deadline {
        pipe_open = drain_output(&mut output, log, Duration::from_millis(50));
    }
    use std::os::unix::process::ExitStatusExt;
    let (reason, message) = match stopping {
        Some((_, reason, message)) => (reason, message),
        None => (EndReason::Exited, String::new()),
    };
    Ended {
        exit_code: status.code(),
        signal: status.signal(),
        reason,
        message,
    }
}

/// Why a running job must stop now, if it must: the agent asked (SIGTERM), or, for
/// `onNodeLost: reschedule`, the node's lease went unrenewed for `lostAfter`.
fn stop_reason(spec: &RunSpec, lease: &mut LeaseAge) -> Option<(EndReason, String)> {
    if STOP_REQUESTED.load(Ordering::SeqCst) {
        return Some((EndReason::Stopped, "stopped by the agent".into()));
    }
    if spec.on_node_lost != OnNodeLost::Reschedule {
        return None;
    }
    let lost_after = Duration::from_secs(spec.lost_after_secs);
    let since = lease.since_renewal();
    (since >= lost_after).then(|| {
        let msg = format!(
            "the node's lease was not renewed for {}s (onNodeLost: reschedule, lostAfter {}s): stopped so it can run elsewhere",
            since.as_secs(),
            lost_after.as_secs()
        );
        (EndReason::NodeLost, msg)
    })
}
