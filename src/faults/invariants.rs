//! The invariant checker of a whole fault run: rift's promises, checked against what really
//! ran (the [`InstanceLog`] and the process table) and what the cluster says (every Job's
//! composed status).
//!
//! | violation | what it means | how it is seen |
//! |---|---|---|
//! | [`Violation::Overlap`] | two instances of one job alive at the same instant | an instance found the job's kernel lock held; or two logged lifetimes intersect |
//! | [`Violation::Lost`] | the job's work neither finished nor still runs | the Job is gone or Failed; or it says Running and no instance of it is alive |
//! | [`Violation::Stuck`] | the job did not converge within the bound | still Pending or Scheduled, still running when it should have finished or after it was deleted, or its status names another process than the one alive |
//! | [`Violation::Restarted`] | more starts than the scenario allows | `start` lines in the log |
//! | [`Violation::Killed`] | an instance that should have run on was stopped | a `term`/`int` stop line, or a dead instance with no stop line |
//!
//! [`judge`] is pure: a [`Snapshot`] and the scenario's expectations in, violations out.
//! [`converge`] reads snapshots until every job has converged or the bound has passed, and
//! says how long convergence took (the scenario's recovery time).
//!
//! Caveats: a logged lifetime without a stop line (an instance killed with SIGKILL) has no
//! known end, so the intersection check treats it as ending at its last sighting; the kernel
//! lock still catches any instance started while it lived. Jobs on hollow nodes have no
//! processes: only their status is judged, and [`super::reports`] watches them for overlaps.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::instances::{Event, InstanceLog, Record};
use crate::api::kinds;
use crate::api::selector::LabelSelector;
use crate::api::JobPhase;
use crate::store::{Store, StoreError};

/// The cluster or the instance log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("reading the Jobs: {0}")]
    Store(#[from] StoreError),
    #[error("reading the instance log {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
}

/// How a job should end up by the end of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// It runs to completion: Succeeded.
    Finish,
    /// It runs until stopped: Running, with one live instance.
    KeepRunning,
    /// It was deleted: no instance of it may live on.
    Deleted,
}

/// What a scenario promises about one of its jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub expect: Expect,
    /// Whether it runs a real [`InstanceLog`] command (else: a hollow node's simulated process,
    /// judged by status only).
    pub real: bool,
    /// The most starts allowed (`Some(1)`: never restarted); `None`: any.
    pub max_starts: Option<usize>,
    /// Whether rift may legitimately stop an instance (a `reschedule` job on a lost node).
    pub may_be_stopped: bool,
}

impl Tracked {
    /// A real job that must run on, never restarted, never stopped.
    pub fn steady() -> Tracked {
        Tracked {
            expect: Expect::KeepRunning,
            real: true,
            max_starts: Some(1),
            may_be_stopped: false,
        }
    }

    /// A real job that must run on, and may be stopped and run again elsewhere.
    pub fn movable() -> Tracked {
        Tracked {
            expect: Expect::KeepRunning,
            real: true,
            max_starts: None,
            may_be_stopped: true,
        }
    }

    /// A job that must finish, started once, never stopped.
    pub fn finishing(real: bool) -> Tracked {
        Tracked {
            expect: Expect::Finish,
            real,
            max_starts: Some(1),
            may_be_stopped: false,
        }
    }
}

/// A Job as the cluster shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobView {
    pub phase: JobPhase,
    pub node: Option<String>,
    pub pid: Option<u32>,
    pub reason: String,
    pub message: String,
}

/// One logged instance, with whether its process is alive at the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceView {
    pub job: String,
    pub pid: u32,
    pub started_ns: u128,
    pub stopped_ns: Option<u128>,
    /// `term`, `int` or `done`; `None` when it wrote no stop line.
    pub stop: Option<String>,
    pub alive: bool,
}

/// Everything [`judge`] looks at, read at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every Job in the cluster by name; absent: the object is gone.
    pub jobs: BTreeMap<String, JobView>,
    pub instances: Vec<InstanceView>,
    /// Instances that found their job's lock held.
    pub lock_overlaps: Vec<Record>,
    /// When the snapshot was read (unix ns), the end of every lifetime still open.
    pub at_ns: u128,
}

/// A broken promise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    Overlap { job: String, detail: String },
    Lost { job: String, detail: String },
    Stuck { job: String, detail: String },
    Restarted { job: String, starts: usize },
    Killed { job: String, detail: String },
}

impl Violation {
    /// The class, for counts: `overlap`, `lost`, `stuck`, `restarted`, `killed`.
    pub fn class(&self) -> &'static str {
        match self {
            Violation::Overlap { .. } => "overlap",
            Violation::Lost { .. } => "lost",
            Violation::Stuck { .. } => "stuck",
            Violation::Restarted { .. } => "restarted",
            Violation::Killed { .. } => "killed",
        }
    }

    pub fn job(&self) -> &str {
        match self {
            Violation::Overlap { job, .. }
            | Violation::Lost { job, .. }
            | Violation::Stuck { job, .. }
            | Violation::Restarted { job, .. }
            | Violation::Killed { job, .. } => job,
        }
    }

    /// The same violation, its detail ending with `, after <what>` (what had just happened).
    pub fn after(self, what: &str) -> Violation {
        let add = |detail: String| format!("{detail}, after {what}");
        match self {
            Violation::Overlap { job, detail } => Violation::Overlap {
                job,
                detail: add(detail),
            },
            Violation::Lost { job, detail } => Violation::Lost {
                job,
                detail: add(detail),
            },
            Violation::Stuck { job, detail } => Violation::Stuck {
                job,
                detail: add(detail),
            },
            Violation::Killed { job, detail } => Violation::Killed {
                job,
                detail: add(detail),
            },
            restarted @ Violation::Restarted { .. } => restarted,
        }
    }

    /// Whether it describes the cluster's present state (it may still converge), rather than
    /// something that already happened and cannot be undone.
    pub fn is_state(&self) -> bool {
        matches!(self, Violation::Lost { .. } | Violation::Stuck { .. })
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Overlap { job, detail } => write!(f, "overlap: {job}: {detail}"),
            Violation::Lost { job, detail } => write!(f, "lost: {job}: {detail}"),
            Violation::Stuck { job, detail } => write!(f, "stuck: {job}: {detail}"),
            Violation::Restarted { job, starts } => {
                write!(f, "restarted: {job}: started {starts} times")
            }
            Violation::Killed { job, detail } => write!(f, "killed: {job}: {detail}"),
        }
    }
}

/// Every broken promise in `snap` for the jobs in `tracked`, in job order.
pub fn judge(tracked: &BTreeMap<String, Tracked>, snap: &Snapshot) -> Vec<Violation> {
    let mut out = Vec::new();
    for (job, t) in tracked {
        let instances: Vec<&InstanceView> =
            snap.instances.iter().filter(|i| &i.job == job).collect();
        out.extend(history(job, t, &instances, snap));
        if let Some(v) = state(job, t, snap.jobs.get(job), &instances) {
            out.push(v);
        }
    }
    out
}

/// What already happened to `job`'s instances: overlaps, restarts, kills.
fn history(job: &str, t: &Tracked, instances: &[&InstanceView], snap: &Snapshot) -> Vec<Violation> {
    let mut out = Vec::new();
    for r in snap
        .lock_overlaps
        .iter()
        .filter(|r| r.job == job && r.event == Event::Overlap)
    {
        out.push(Violation::Overlap {
            job: job.into(),
            detail: format!(
                "instance {} (attempt {}) started while another held the job's lock",
                r.pid, r.detail
            ),
        });
    }
    // Lifetimes that intersect, for the cases the lock cannot see (see the module caveats).
    let end = |i: &InstanceView| i.stopped_ns.unwrap_or(snap.at_ns);
    for (a, first) in instances.iter().enumerate() {
        for second in &instances[a + 1..] {
            // Counted once already when the later instance found the lock held.
            let locked = snap
                .lock_overlaps
                .iter()
                .any(|r| r.job == job && r.pid == second.pid);
            let known_end = first.stopped_ns.is_some() || first.alive;
            if !locked && known_end && second.started_ns < end(first) && first.pid != second.pid {
                out.push(Violation::Overlap {
                    job: job.into(),
                    detail: format!(
                        "instance {} started {:.3} s before instance {} ended",
                        second.pid,
                        (end(first) - second.started_ns) as f64 / 1e9,
                        first.pid
                    ),
                });
            }
        }
    }
    if let Some(max) = t.max_starts {
        if instances.len() > max {
            out.push(Violation::Restarted {
                job: job.into(),
                starts: instances.len(),
            });
        }
    }
    if !t.may_be_stopped {
        for i in instances {
            let how = match (i.stop.as_deref(), i.alive) {
                (Some("done"), _) | (None, true) => continue,
                (Some(sig), _) => format!("instance {} ended by SIG{}", i.pid, sig.to_uppercase()),
                (None, false) => format!("instance {} died without a stop line (SIGKILL)", i.pid),
            };
            out.push(Violation::Killed {
                job: job.into(),
                detail: how,
            });
        }
    }
    out
}

/// Whether `job`'s present state keeps the promise.
fn state(
    job: &str,
    t: &Tracked,
    view: Option<&JobView>,
    instances: &[&InstanceView],
) -> Option<Violation> {
    let lost = |detail: String| {
        Some(Violation::Lost {
            job: job.into(),
            detail,
        })
    };
    let stuck = |detail: String| {
        Some(Violation::Stuck {
            job: job.into(),
            detail,
        })
    };
    let alive: Vec<&&InstanceView> = instances.iter().filter(|i| i.alive).collect();
    if t.expect == Expect::Deleted {
        return (!alive.is_empty()).then(|| Violation::Stuck {
            job: job.into(),
            detail: format!(
                "deleted, but instance {} still runs",
                alive
                    .iter()
                    .map(|i| i.pid.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let Some(v) = view else {
        return lost("the Job object is gone, and nobody deleted it".into());
    };
    let why = || {
        [v.reason.as_str(), v.message.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(": ")
    };
    match (v.phase, t.expect) {
        (JobPhase::Succeeded, Expect::Finish) => None,
        (JobPhase::Succeeded, _) => {
            lost(format!("Succeeded, but it runs until stopped ({})", why()))
        }
        (JobPhase::Failed, _) => lost(format!("Failed ({})", why())),
        (JobPhase::Pending | JobPhase::Scheduled, _) => stuck(format!(
            "{} ({})",
            v.phase.as_str(),
            match v.node.as_deref() {
                Some(n) => format!("placed on {n}"),
                None => why(),
            }
        )),
        (JobPhase::Running, expect) => {
            if !t.real {
                return (expect == Expect::Finish).then(|| Violation::Stuck {
                    job: job.into(),
                    detail: "still Running when it should have finished".into(),
                });
            }
            match alive.as_slice() {
                [] => lost(format!(
                    "Running on {} (pid {}), but no instance of it is alive",
                    v.node.as_deref().unwrap_or("?"),
                    v.pid.map_or("?".into(), |p| p.to_string())
                )),
                [one] if v.pid.is_some_and(|p| p != one.pid) => stuck(format!(
                    "its status names pid {} but the live instance is {}",
                    v.pid.unwrap_or_default(),
                    one.pid
                )),
                [_] if expect == Expect::Finish => {
                    stuck("still running when it should have finished".into())
                }
                [_] => None,
                more => stuck(format!(
                    "{} instances alive ({})",
                    more.len(),
                    more.iter()
                        .map(|i| i.pid.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
    }
}

/// Violations counted by class, every class present (zero when none).
pub fn counts(violations: &[Violation]) -> BTreeMap<&'static str, usize> {
    let mut c: BTreeMap<&'static str, usize> = ["overlap", "lost", "stuck", "restarted", "killed"]
        .into_iter()
        .map(|k| (k, 0))
        .collect();
    for v in violations {
        *c.entry(v.class()).or_default() += 1;
    }
    c
}

/// Reads every Job's composed status (as JSON: a Job this build cannot decode is still seen)
/// and, when `log` is given, every logged instance with its liveness.
pub async fn snapshot(store: &Store, log: Option<&InstanceLog>) -> Result<Snapshot, CheckError> {
    let kind = kinds::by_kind("Job").expect("Job is a kind");
    let (items, _) = store
        .list_objects(kind, &LabelSelector::everything())
        .await?;
    let jobs = items
        .iter()
        .filter_map(|v| Some((v["metadata"]["name"].as_str()?.to_string(), job_view(v))))
        .collect();
    let mut snap = Snapshot {
        jobs,
        at_ns: now_ns(),
        ..Snapshot::default()
    };
    if let Some(log) = log {
        let report = log.report().map_err(|source| CheckError::Log {
            path: log.path().display().to_string(),
            source,
        })?;
        let alive: Vec<(String, u32)> = report
            .instances
            .iter()
            .filter(|i| i.stopped_ns.is_none())
            .filter(|i| report.alive(&i.job).iter().any(|a| a.pid == i.pid))
            .map(|i| (i.job.clone(), i.pid))
            .collect();
        snap.instances = report
            .instances
            .iter()
            .map(|i| InstanceView {
                job: i.job.clone(),
                pid: i.pid,
                started_ns: i.started_ns,
                stopped_ns: i.stopped_ns,
                stop: i.stop.clone(),
                alive: alive.contains(&(i.job.clone(), i.pid)),
            })
            .collect();
        snap.lock_overlaps = report.overlaps;
    }
    Ok(snap)
}

fn job_view(v: &Value) -> JobView {
    let s = &v["status"];
    let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
    JobView {
        phase: serde_json::from_value(s["phase"].clone()).unwrap_or_default(),
        node: s["node"].as_str().map(str::to_string),
        pid: s["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
        reason: text("reason"),
        message: text("message"),
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// The outcome of [`converge`].
#[derive(Clone, Debug)]
pub struct Verdict {
    pub violations: Vec<Violation>,
    /// How long until every tracked job had converged for good (the start of the stable
    /// stretch); `None` when some never did within the bound (those are the state violations
    /// in `violations`).
    pub converged_after: Option<Duration>,
}

/// When convergence is judged.
#[derive(Clone, Copy, Debug)]
pub struct Convergence {
    /// Longest wait for every tracked job to converge: past it, a job is stuck or lost.
    pub bound: Duration,
    /// How long the converged state must hold before it counts: a cluster passing through a
    /// clean moment on its way to doing harm (a node about to be declared lost) has not
    /// converged.
    pub stable: Duration,
}

/// Reads snapshots (every 250 ms) until no tracked job has had a state violation for
/// `stable`, or until `bound` has passed; then judges the last one. Etcd errors while reading
/// count as "not yet" (the cluster may be recovering); a run whose every read failed reports
/// the last error as every job stuck.
pub async fn converge(
    store: &Store,
    log: Option<&InstanceLog>,
    tracked: &BTreeMap<String, Tracked>,
    when: Convergence,
) -> Verdict {
    let start = Instant::now();
    let mut last: Option<Snapshot> = None;
    let mut last_error = String::new();
    let mut clean_since: Option<Duration> = None;
    loop {
        match snapshot(store, log).await {
            Ok(snap) => {
                let found = judge(tracked, &snap);
                if found.iter().any(Violation::is_state) {
                    clean_since = None;
                } else {
                    let since = *clean_since.get_or_insert(start.elapsed());
                    if start.elapsed() - since >= when.stable {
                        return Verdict {
                            violations: found,
                            converged_after: Some(since),
                        };
                    }
                }
                last = Some(snap);
            }
            Err(e) => {
                clean_since = None;
                last_error = e.to_string();
            }
        }
        if start.elapsed() >= when.bound + when.stable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let violations = match last {
        Some(snap) => judge(tracked, &snap),
        None => tracked
            .keys()
            .map(|job| Violation::Stuck {
                job: job.clone(),
                detail: format!("the cluster could not be read: {last_error}"),
            })
            .collect(),
    };
    // Clean at the very end but not yet for `stable`: it converged at the last moment.
    let converged_after = clean_since.filter(|_| !violations.iter().any(Violation::is_state));
    Verdict {
        violations,
        converged_after,
    }
}

#[cfg(test)]
mod tests;
