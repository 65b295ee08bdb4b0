//! The records that connect a Job to a node: the scheduler's placement and binding, and the
//! node agent's runtime report (docs/architecture.md, "Keys in etcd"). A Job's status as people
//! see it is composed from them by [`compose_job_status`], never written by two hands.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;
use super::job::{JobPhase, JobSpec, JobStatus, OnNodeLost};

/// `/rift/v1/placements/<job>`: where the scheduler put a job, or why it could not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
    /// Grows each time the job is bound anew; reports from older epochs are ignored.
    #[serde(default)]
    pub epoch: u64,
    /// Why the job is not placed, e.g. `0/12 nodes: 7 insufficient GPUs, 5 not ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// The uid of the Job this placement is for (a Job deleted and created again under the same
    /// name is another Job); empty in placements written before uids were recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// `/rift/v1/bindings/<node>/<job>`: what one node's agent must run.
///
/// A binding is the contract between the scheduler and one node: the agent runs the Job of
/// `uid` at `epoch` on `gpus`, under `terms`. To take a job off a node the scheduler does not
/// delete the binding; it sets [`Binding::stop`], and the binding keeps holding its GPUs until
/// the agent reports the instance stopped (`released` in its runtime report) or the node has
/// been lost long enough that its own rules stopped it (DESIGN.md, "Hand-over only after the
/// old holder is gone"). Only then is the binding deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
    pub epoch: u64,
    /// The uid of the Job bound; an agent never runs or adopts an instance of another uid.
    /// Empty in bindings written before uids were recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The Job's node-loss terms as of binding, so that the agent and the scheduler count with
    /// the same numbers even if the Job is edited later. `None` in older bindings (then the
    /// Job's current spec is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms: Option<LossTerms>,
    /// Set when the job must leave this node: stop it and report it released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopOrder>,
    /// The model a Pool member should hold, written by the Pool controller when its Pool's
    /// model changes (the agent already watches its bindings: no other watch or poll). `None`
    /// for jobs of no Pool with a model, and in bindings the Pool controller has not reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelOrder>,
    /// The Job as the scheduler bound it (its stored form: metadata and spec), so that the
    /// node starts it without reading it from etcd. `None` for a Job whose stored form is
    /// over [`EmbeddedJob::LIMIT`], in bindings written before this field, and in bindings a
    /// controller rewrote without it: then the agent reads the Job. Kept as raw JSON, so that a
    /// binding decodes even when the Job has fields this build does not know (the agent then
    /// reads the Job, and treats it as it treats any Job it reads). A Job deleted just after it
    /// was bound can so start on its node before the binding's removal reaches the agent,
    /// which then stops it as it stops any unbound job (a Pod deleted just after binding
    /// starts on its kubelet the same way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<EmbeddedJob>,
}

/// A Job's stored form carried in its [`Binding`], as raw JSON (see [`Binding::job`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmbeddedJob(Box<serde_json::value::RawValue>);

impl EmbeddedJob {
    /// The largest stored form embedded: typical Jobs (a few hundred bytes to a few KiB) are,
    /// and the copies add at most 80 MiB to a leader's listing of 10,000 Jobs (it reads every
    /// binding too), which stays far under its 256 MiB response limit. A transaction of the
    /// scheduler's 42 bindings stays under 400 KiB, below etcd's 1.5 MiB request limit.
    pub const LIMIT: usize = 8 * 1024;

    /// `job`'s stored form (without the status a controller's view composes onto it, and
    /// without its resourceVersion), or `None` when that is over [`EmbeddedJob::LIMIT`].
    pub fn of(job: &super::Job) -> Option<EmbeddedJob> {
        let mut stored = job.clone();
        stored.status = None;
        stored.metadata.resource_version = None;
        let raw = serde_json::value::to_raw_value(&stored).ok()?;
        (raw.get().len() <= Self::LIMIT).then_some(EmbeddedJob(raw))
    }

    /// The embedded Job decoded as `T`.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl PartialEq for EmbeddedJob {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for EmbeddedJob {}

/// What the agent does with a Pool member's newly promoted model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelOrder {
    /// The model artifact (`sha256-<hex>`).
    pub artifact: String,
    /// `update: Reload`: swap `$RIFT_INPUTS/model/current` to it under the running process and
    /// SIGHUP its process group. Otherwise (`RollingRestart`) only prefetch it into the node
    /// cache, so the replacement member starts from the cache.
    #[serde(default)]
    pub reload: bool,
}

/// A Pool member's model as its node sees it (reported by the agent, counted by the Pool
/// controller's rollout).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobModel {
    /// The model the job's process was given: staged before it started, or swapped in and
    /// signalled (SIGHUP) since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// The ordered model ([`Binding::model`]), once it is verified in the node cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetched: Option<String>,
    /// Why the ordered model is not there yet (the store unreachable, damaged bytes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub problem: String,
}

/// What a partition of a job's node does to it, copied into its binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LossTerms {
    pub on_node_lost: OnNodeLost,
    pub lost_after: HumanDuration,
    pub termination_grace_period: HumanDuration,
}

impl LossTerms {
    pub fn of(spec: &JobSpec) -> Self {
        Self {
            on_node_lost: spec.on_node_lost,
            lost_after: spec.lost_after,
            termination_grace_period: spec.termination_grace_period,
        }
    }
}

/// Why a job must leave a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopOrder {
    pub reason: String,
    /// The higher-priority job that waits for this one's GPUs, when it was preempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_job: Option<String>,
}

/// `/rift/v1/agents/<node>/jobs/<job>`: what the node's agent observes of a job it runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeReport {
    pub phase: JobPhase,
    pub epoch: u64,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub progress: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
    /// What a finished job wrote to `RIFT_RESULT_FILE` (JSON), e.g. `{"model": "...", "loss": 0.4}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The binding of this epoch ordered a stop, and nothing of the job runs on this node any
    /// more, nor will: the scheduler may hand its name and GPUs to a new holder.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
    /// While the job's inputs are staged: bytes done, total and rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<crate::api::job_io::StagingProgress>,
    /// A Pool member's model on this node (jobs with a `model` input or a model order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<JobModel>,
}

/// A Job's status from its placement and the report of the node it is placed on:
/// no placement (or a why-not) → Pending; placed but no report for that epoch → Scheduled;
/// otherwise the report's phase. Reports from another epoch are ignored.
pub fn compose_job_status(
    placement: Option<&Placement>,
    report: Option<&RuntimeReport>,
) -> JobStatus {
    let Some(p) = placement else {
        return JobStatus::default();
    };
    let Some(node) = &p.node else {
        return JobStatus {
            phase: JobPhase::Pending,
            reason: "Unschedulable".into(),
            message: p.pending.clone().unwrap_or_default(),
            ..JobStatus::default()
        };
    };
    let base = JobStatus {
        phase: JobPhase::Scheduled,
        node: Some(node.clone()),
        gpus: p.gpus.clone(),
        epoch: Some(p.epoch),
        ..JobStatus::default()
    };
    match report {
        Some(r) if r.epoch == p.epoch => JobStatus {
            phase: r.phase,
            attempts: r.attempts,
            pid: r.pid,
            start_time: r.start_time,
            finish_time: r.finish_time,
            exit_code: r.exit_code,
            signal: r.signal,
            reason: r.reason.clone(),
            message: r.message.clone(),
            progress: r.progress.clone(),
            result: r.result.clone(),
            staging: r.staging.clone(),
            model: r.model.clone(),
            ..base
        },
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(epoch: u64) -> Placement {
        Placement {
            node: Some("n1".into()),
            gpus: vec![0],
            epoch,
            pending: None,
            uid: String::new(),
        }
    }

    #[test]
    fn no_placement_is_pending() {
        assert_eq!(compose_job_status(None, None).phase, JobPhase::Pending);
    }

    #[test]
    fn why_not_is_shown_while_pending() {
        let p = Placement {
            pending: Some("0/3 nodes: 3 insufficient GPUs".into()),
            ..Placement::default()
        };
        let s = compose_job_status(Some(&p), None);
        assert_eq!(s.phase, JobPhase::Pending);
        assert_eq!(s.message, "0/3 nodes: 3 insufficient GPUs");
    }

    #[test]
    fn placed_without_report_is_scheduled() {
        let s = compose_job_status(Some(&placed(2)), None);
        assert_eq!(
            (s.phase, s.node.as_deref()),
            (JobPhase::Scheduled, Some("n1"))
        );
    }

    #[test]
    fn report_of_the_current_epoch_wins_and_older_ones_are_ignored() {
        let report = RuntimeReport {
            phase: JobPhase::Running,
            epoch: 2,
            pid: Some(42),
            ..RuntimeReport::default()
        };
        assert_eq!(
            compose_job_status(Some(&placed(2)), Some(&report)).phase,
            JobPhase::Running
        );
        assert_eq!(
            compose_job_status(Some(&placed(3)), Some(&report)).phase,
            JobPhase::Scheduled
        );
    }

    #[test]
    fn a_binding_carries_a_small_job_verbatim_and_not_one_over_the_limit() {
        let mut job = crate::api::Object::new("j", JobSpec::with_command(["selfplay"]));
        job.metadata.uid = Some("u".into());
        let b = Binding {
            epoch: 1,
            uid: "u".into(),
            job: EmbeddedJob::of(&job),
            ..Binding::default()
        };
        let back: Binding = serde_json::from_slice(&serde_json::to_vec(&b).unwrap()).unwrap();
        assert_eq!(back, b);
        let decoded: crate::api::Object<JobSpec> = back.job.unwrap().decode().unwrap();
        assert_eq!(decoded, job);

        // What a controller's view composes onto a Job is not carried.
        let mut viewed = job.clone();
        viewed.status = Some(JobStatus::default());
        viewed.metadata.resource_version = Some("42".into());
        let carried: crate::api::Object<JobSpec> =
            EmbeddedJob::of(&viewed).unwrap().decode().unwrap();
        assert_eq!(carried, job);

        job.spec
            .env
            .insert("BIG".into(), "x".repeat(EmbeddedJob::LIMIT));
        assert!(EmbeddedJob::of(&job).is_none());
    }
}
