//! The job state directory: the contract between the agent, the per-job `rift shim`, and
//! anything that reads logs. Everything needed to re-adopt a running job after an agent
//! restart, or to learn how it ended while the agent was down, lives here.
//!
//! ```text
//! <state>/agent.heartbeat                  Heartbeat: the node lease's last renewal (machine clock)
//! <state>/jobs/<job>/run.json              RunSpec: what to run (written once per epoch)
//! <state>/jobs/<job>/book.json             Book: restart bookkeeping (failures, first start)
//! <state>/jobs/<job>/result.json           RIFT_RESULT_FILE: the job's result, if it writes one
//! <state>/jobs/<job>/inputs/<input>/<artifact>  RIFT_INPUTS: read-only hard links into the cache
//! <state>/jobs/<job>/outputs/<output>/<file>    RIFT_OUTPUTS: sealed files become artifacts
//! <state>/cache/sha256/<hex>               the node's artifact cache (outlives jobs)
//! <state>/uploads/<id>.json, <id>.data     the upload journal and its spooled bytes
//! <state>/jobs/<job>/attempts/<n>/shim.json   the shim's pid and start time
//! <state>/jobs/<job>/attempts/<n>/job.json    the job process's pid and start time
//! <state>/jobs/<job>/attempts/<n>/exit.json   how the attempt ended
//! <state>/jobs/<job>/attempts/<n>/output.log  stdout and stderr (rotated to output.log.1)
//! <state>/jobs/<job>/attempts/<n>/progress.jsonl  RIFT_PROGRESS_FILE: JSON lines of counters
//! ```
//!
//! Progress is per attempt: a restarted attempt starts its counters from zero in a file of its
//! own, so its first report can never repeat the previous attempt's last counter (which would
//! make the training ledger count those games twice).
//!
//! Files are written to a temporary name, flushed to disk (fsync) and renamed, and the rename
//! is flushed too ([`write_json`]), so a reader never sees half a record and a record written
//! survives a crash of the host. Only the last [`KEEP_ATTEMPTS`] attempt folders are kept.
//!
//! Every name that becomes a path here is one checked component: [`StateDir::job`] refuses
//! anything but a DNS-1123 label (so a binding key `..` or `a/b` can never leave `jobs/`).
//!
//! The directory is private to the agent's user (0700, files 0600). A job that runs as another
//! user (`runAs`) cannot read it: its `RIFT_PROGRESS_FILE` and `RIFT_RESULT_FILE` are in a
//! private directory of its own, and `progress.jsonl` and `result.json` here are the shim's
//! copies of them ([`super::exchange`]); only its `inputs/` and `outputs/` are opened to it,
//! through traverse-only (0711) directories ([`super::job_data`]).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::job::{OnNodeLost, RestartPolicy};
use crate::api::job_io::{JobInput, JobOutput};
use crate::api::validation::dns1123_problem;
use crate::clock::{boot_id, BootTime};

/// `<state>/agent.heartbeat`: when the node's lease was last renewed, written by the agent on
/// every renewal and read by every shim, so that a shim's `lostAfter` clock runs from the last
/// real renewal — however late the shim started, and across agent restarts.
///
/// The stamp is on the machine-wide clock ([`BootTime`]) every process on the host shares;
/// the wall time is for people only and is never used to measure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// Renewals recorded by the agent process that wrote it (for people).
    pub beats: u64,
    /// Wall time of the write (for people).
    pub at: DateTime<Utc>,
    /// When the last renewal etcd confirmed was sent: nanoseconds on the machine clock.
    pub renewed_boot_ns: u64,
    /// The boot that clock reading belongs to.
    #[serde(default)]
    pub boot_id: Option<String>,
}

impl Heartbeat {
    /// A heartbeat for a renewal sent at `renewed`, in this boot.
    pub fn now(beats: u64, renewed: BootTime) -> Heartbeat {
        Heartbeat {
            beats,
            at: Utc::now(),
            renewed_boot_ns: renewed.as_nanos(),
            boot_id: boot_id(),
        }
    }

    /// The last renewal on this boot's machine clock; `None` when the heartbeat was written in
    /// another boot (or names none), so it says nothing about now.
    pub fn renewed(&self) -> Option<BootTime> {
        match (&self.boot_id, boot_id()) {
            (Some(written), Some(now)) if *written != now => None,
            _ => Some(BootTime::from_nanos(self.renewed_boot_ns)),
        }
    }
}

/// What to run for one job at one binding epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSpec {
    pub job: String,
    #[serde(default)]
    pub uid: String,
    pub epoch: u64,
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The Job's `envFrom` files, as written (the shim reads them; their values are never
    /// stored here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub gpus: Vec<u32>,
    pub restart_policy: RestartPolicy,
    pub backoff_limit: u32,
    #[serde(default)]
    pub active_deadline_seconds: Option<u64>,
    pub on_node_lost: OnNodeLost,
    pub lost_after_secs: u64,
    pub grace_secs: u64,
    /// Artifacts staged under `inputs/` before the first attempt starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<JobInput>,
    /// Directories under `outputs/` whose sealed files become artifacts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<JobOutput>,
    /// The Job's labels (the ones its output artifacts inherit are picked from these).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A process as recorded by the shim: pid plus its start time in clock ticks since boot, so a
/// reused pid is never mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcRecord {
    pub pid: u32,
    pub start_ticks: u64,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
}

/// Why an attempt ended, besides its own exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    /// The process exited (or was killed) on its own.
    #[default]
    Exited,
    /// It could not be started (missing binary, bad workdir).
    StartError,
    /// The agent asked the shim to stop it (deleted, moved, deadline).
    Stopped,
    /// `onNodeLost: reschedule` and the agent's heartbeat went stale for `lostAfter`.
    NodeLost,
    /// The agent refused to start it (e.g. a bound GPU index this node does not have);
    /// retrying cannot help.
    Rejected,
}

/// How an attempt ended, written by the shim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    pub finished_at: DateTime<Utc>,
    #[serde(default)]
    pub reason: EndReason,
    #[serde(default)]
    pub message: String,
}

impl ExitRecord {
    /// Exited with status 0 on its own.
    pub fn succeeded(&self) -> bool {
        self.reason == EndReason::Exited && self.exit_code == Some(0)
    }
}

/// Paths of one agent's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn heartbeat(&self) -> PathBuf {
        self.root.join("agent.heartbeat")
    }

    pub fn jobs(&self) -> PathBuf {
        self.root.join("jobs")
    }

    /// `<state>/cache/`: the node's artifact cache ([`crate::agent::jobio::cache`]).
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// `<state>/uploads/`: the upload journal and its spool ([`crate::agent::jobio::outputs`]).
    pub fn uploads(&self) -> PathBuf {
        self.root.join("uploads")
    }

    /// The directory of job `job`: one path component, checked. `Err` (saying why) for
    /// anything that is not a DNS-1123 label, so no name can reach outside `jobs/`.
    pub fn job(&self, job: &str) -> Result<JobDir, BadName> {
        if let Some(problem) = dns1123_problem(job) {
            return Err(BadName {
                name: job.to_string(),
                problem,
            });
        }
        Ok(JobDir {
            path: self.jobs().join(job),
        })
    }

    /// Names of every job with a directory here (entries that are no valid job name are
    /// skipped with a warning: rift never made them).
    pub fn job_names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        match std::fs::read_dir(self.jobs()) {
            Ok(entries) => {
                for e in entries {
                    let e = e?;
                    if e.file_type()?.is_dir() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if dns1123_problem(&name).is_none() {
                            names.push(name);
                        } else {
                            tracing::warn!(path = %e.path().display(), "not a job directory; ignored");
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        names.sort();
        Ok(names)
    }
}

/// A job name that cannot become a path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("job name {name:?} cannot be used as a directory: {problem}")]
pub struct BadName {
    pub name: String,
    pub problem: String,
}

/// How many attempt folders (logs, records) are kept per job; older ones are removed when a
/// new attempt starts.
pub const KEEP_ATTEMPTS: u32 = 5;

/// Paths of one job's directory.
#[derive(Clone, Debug)]
pub struct JobDir {
    path: PathBuf,
}

impl JobDir {
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn run_spec(&self) -> PathBuf {
        self.path.join("run.json")
    }

    pub fn book(&self) -> PathBuf {
        self.path.join("book.json")
    }

    pub fn progress(&self, n: u32) -> PathBuf {
        self.attempt(n).join("progress.jsonl")
    }

    pub fn result(&self) -> PathBuf {
        self.path.join("result.json")
    }

    /// `RIFT_INPUTS`: `inputs/<input>/<artifact name>`, read-only links into the node cache.
    pub fn inputs(&self) -> PathBuf {
        self.path.join("inputs")
    }

    /// `RIFT_OUTPUTS`: `outputs/<output>/`, where sealed files become artifacts.
    pub fn outputs(&self) -> PathBuf {
        self.path.join("outputs")
    }

    pub fn attempt(&self, n: u32) -> PathBuf {
        self.path.join("attempts").join(n.to_string())
    }

    pub fn shim_record(&self, n: u32) -> PathBuf {
        self.attempt(n).join("shim.json")
    }

    pub fn job_record(&self, n: u32) -> PathBuf {
        self.attempt(n).join("job.json")
    }

    pub fn exit_record(&self, n: u32) -> PathBuf {
        self.attempt(n).join("exit.json")
    }

    pub fn log(&self, n: u32) -> PathBuf {
        self.attempt(n).join("output.log")
    }

    /// The highest attempt number started so far (0 when none).
    pub fn last_attempt(&self) -> u32 {
        self.attempt_numbers().into_iter().max().unwrap_or(0)
    }

    /// The numbers of the attempt folders present.
    pub fn attempt_numbers(&self) -> Vec<u32> {
        std::fs::read_dir(self.path.join("attempts"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the folders of attempts older than the last [`KEEP_ATTEMPTS`] before `latest`
    /// (inclusive). Blocking; a folder that cannot be removed is left with a warning.
    pub fn prune_attempts(&self, latest: u32) {
        let keep_from = latest.saturating_sub(KEEP_ATTEMPTS - 1);
        for n in self.attempt_numbers() {
            if n < keep_from {
                if let Err(e) = std::fs::remove_dir_all(self.attempt(n)) {
                    tracing::warn!(path = %self.attempt(n).display(), %e, "cannot remove an old attempt folder");
                }
            }
        }
    }

    /// The counters of the last complete line of attempt `n`'s progress file. Only its last
    /// [`MAX_PROGRESS_TAIL`] bytes are read: the job writes this file, and may write a lot.
    pub fn read_progress(&self, n: u32) -> BTreeMap<String, f64> {
        let Ok(text) = read_tail(&self.progress(n), MAX_PROGRESS_TAIL) else {
            return BTreeMap::new();
        };
        text.lines()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                Some(
                    v.as_object()?
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                        .collect(),
                )
            })
            .unwrap_or_default()
    }
}

/// How much of the end of a progress file is read for its last line.
pub const MAX_PROGRESS_TAIL: u64 = 64 << 10;

/// The last `max` bytes of `path` (from a line start when cut), as text.
fn read_tail(path: &Path, max: u64) -> io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    if len > max {
        // The first line was cut: drop it.
        let start = bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        bytes.drain(..start);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The largest result file published (it travels in the job's status in etcd).
pub const MAX_RESULT_BYTES: u64 = 64 << 10;

impl JobDir {
    /// The JSON the job wrote to `RIFT_RESULT_FILE`; a missing, empty (the shim creates it
    /// empty), oversized or non-JSON file gives `None` (with a warning for the latter two).
    pub fn read_result(&self) -> Option<serde_json::Value> {
        let path = self.result();
        let size = std::fs::metadata(&path).ok()?.len();
        if size == 0 {
            return None;
        }
        if size > MAX_RESULT_BYTES {
            tracing::warn!(path = %path.display(), size, "result file too large; not published");
            return None;
        }
        let bytes = std::fs::read(&path).ok()?;
        serde_json::from_slice(&bytes)
            .inspect_err(|e| tracing::warn!(path = %path.display(), %e, "result file is not JSON"))
            .ok()
    }
}

/// Writes `value` as JSON to `path` atomically and durably: a temporary file, flushed to
/// disk, renamed over `path`, and the directory flushed, so the record survives a crash of the
/// host and a reader never sees half of it.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_json_with(path, value, true)
}

/// [`write_json`] without flushing to disk: for records that mean nothing after a reboot (the
/// heartbeat) or are simulated (hollow nodes).
pub fn write_json_volatile<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_json_with(path, value, false)
}

/// [`write_json`] when `durable`, else [`write_json_volatile`].
pub fn write_json_with<T: Serialize>(path: &Path, value: &T, durable: bool) -> io::Result<()> {
    use std::io::Write as _;
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&body)?;
    if durable {
        file.sync_all()?;
    }
    drop(file);
    std::fs::rename(&tmp, path)?;
    if durable {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Writes `value` to `path` durably only if no file is there yet: `Ok(false)` (and nothing
/// written) when one is. For records another process may write at the same moment (an exit
/// record the runner writes for a vanished shim must never replace the shim's own).
pub fn write_json_if_absent<T: Serialize>(path: &Path, value: &T) -> io::Result<bool> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let tmp = parent.join(format!(
        ".{}.{}.new",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record"),
        std::process::id()
    ));
    write_json(&tmp, value)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            std::fs::File::open(parent)?.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads a JSON record; `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_attempts_are_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let job = state.job("train").unwrap();
        assert_eq!(job.last_attempt(), 0);
        let rec = ProcRecord {
            pid: 7,
            start_ticks: 99,
            started_at: None,
        };
        write_json(&job.job_record(2), &rec).unwrap();
        write_json(&job.job_record(10), &rec).unwrap();
        assert_eq!(job.last_attempt(), 10);
        assert_eq!(
            read_json::<ProcRecord>(&job.job_record(2)).unwrap(),
            Some(rec)
        );
        assert_eq!(read_json::<ProcRecord>(&job.exit_record(2)).unwrap(), None);
        assert_eq!(state.job_names().unwrap(), ["train"]);
    }

    #[test]
    fn a_job_name_becomes_a_path_only_as_one_checked_component() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        for bad in ["..", ".", "a/b", "../etc", "", "A", "x\0"] {
            assert!(state.job(bad).is_err(), "{bad:?} accepted");
        }
        std::fs::create_dir_all(state.jobs().join("..x")).unwrap();
        std::fs::create_dir_all(state.jobs().join("ok")).unwrap();
        assert_eq!(
            state.job_names().unwrap(),
            ["ok"],
            "odd entries are not jobs"
        );
    }

    #[test]
    fn old_attempt_folders_are_pruned_and_the_last_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let job = StateDir::new(dir.path()).job("j").unwrap();
        for n in 1..=9 {
            std::fs::create_dir_all(job.attempt(n)).unwrap();
        }
        job.prune_attempts(9);
        let mut left = job.attempt_numbers();
        left.sort();
        assert_eq!(left, [5, 6, 7, 8, 9]);
        assert_eq!(job.last_attempt(), 9);
    }

    #[test]
    fn a_record_written_if_absent_never_replaces_one_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        assert!(write_json_if_absent(&path, &1).unwrap());
        assert!(!write_json_if_absent(&path, &2).unwrap());
        assert_eq!(read_json::<i32>(&path).unwrap(), Some(1));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn progress_is_the_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let job = StateDir::new(dir.path()).job("sp").unwrap();
        std::fs::create_dir_all(job.attempt(1)).unwrap();
        std::fs::write(
            job.progress(1),
            "{\"games\": 10}\n{\"games\": 20, \"x\": 1}\n{\"games\": 3",
        )
        .unwrap();
        let p = job.read_progress(1);
        assert!(
            job.read_progress(2).is_empty(),
            "each attempt has its own counters"
        );
        assert_eq!(p["games"], 20.0);
        assert_eq!(p["x"], 1.0);
    }

    #[test]
    fn a_huge_progress_file_is_read_from_its_end_only() {
        let dir = tempfile::tempdir().unwrap();
        let job = StateDir::new(dir.path()).job("sp").unwrap();
        std::fs::create_dir_all(job.attempt(1)).unwrap();
        let f = std::fs::File::create(job.progress(1)).unwrap();
        f.set_len(8 << 30).unwrap(); // 8 GiB of nothing (sparse), then a line
        drop(f);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(job.progress(1))
            .unwrap();
        std::io::Write::write_all(&mut f, b"\n{\"games\": 5}\n").unwrap();
        assert_eq!(job.read_progress(1)["games"], 5.0);
    }
}
