//! `Job`: one process to run somewhere in the fleet (selfplay, training, evaluation, ...).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;
use super::job_io::{validate_io, JobInput, JobOutput};
use super::meta::{ObjectMeta, TemplateMeta};
use super::object::{Object, Spec};
use super::validation::{validate_duration, validate_labels, validate_seconds, FieldErrors};

pub type Job = Object<JobSpec>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    #[serde(rename = "type", default)]
    pub job_type: JobType,
    /// argv; no shell unless it says `sh -c`.
    pub command: Vec<String>,
    /// Plain environment variables. Every node can read Job specs in etcd: put tokens and
    /// passwords in files on the nodes and name them in `envFrom` instead.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Files of `KEY=VALUE` lines on the node, read when each attempt starts; their values go
    /// into the job's environment and nowhere else (never into etcd, logs or reports). `env`
    /// wins over them for a name set in both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    /// Node labels that must all match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Higher runs first and may preempt lower.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Restarts allowed before the job is Failed.
    #[serde(default = "default_backoff_limit")]
    pub backoff_limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<u64>,
    /// Delete the job this long after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_after_finished: Option<HumanDuration>,
    /// What a partition of the job's node does to it.
    #[serde(default)]
    pub on_node_lost: OnNodeLost,
    /// How long a node may be unreachable before a `reschedule` job is stopped there and moved.
    #[serde(default = "default_lost_after")]
    pub lost_after: HumanDuration,
    /// Time between SIGTERM and SIGKILL when the job is stopped.
    #[serde(default = "default_grace")]
    pub termination_grace_period: HumanDuration,
    /// Artifacts staged read-only under `$RIFT_INPUTS` before the process starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<JobInput>,
    /// Directories under `$RIFT_OUTPUTS` whose sealed files become artifacts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<JobOutput>,
}

pub const DEFAULT_BACKOFF_LIMIT: u32 = 3;
/// The most GPUs one job may ask for (more than any machine has).
pub const MAX_GPUS: u32 = 1024;
pub const DEFAULT_LOST_AFTER_SECS: u64 = 60;
pub const DEFAULT_GRACE_SECS: u64 = 30;

fn default_backoff_limit() -> u32 {
    DEFAULT_BACKOFF_LIMIT
}
fn default_lost_after() -> HumanDuration {
    HumanDuration::from_secs(DEFAULT_LOST_AFTER_SECS)
}
fn default_grace() -> HumanDuration {
    HumanDuration::from_secs(DEFAULT_GRACE_SECS)
}

impl JobSpec {
    /// A job running `command` with every default.
    pub fn with_command(command: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            job_type: JobType::default(),
            command: command.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            env_from: Vec::new(),
            workdir: None,
            resources: Resources::default(),
            node_selector: BTreeMap::new(),
            priority: 0,
            restart_policy: RestartPolicy::default(),
            backoff_limit: DEFAULT_BACKOFF_LIMIT,
            active_deadline_seconds: None,
            ttl_after_finished: None,
            on_node_lost: OnNodeLost::default(),
            lost_after: default_lost_after(),
            termination_grace_period: default_grace(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// The artifact names this Job reads.
    pub fn input_artifacts(&self) -> impl Iterator<Item = &str> {
        self.inputs
            .iter()
            .flat_map(|i| i.artifacts.iter().map(String::as_str))
    }

    /// Checks a stored Job, with paths under `prefix` (e.g. `spec`).
    pub fn validate_at(&self, prefix: &str, errors: &mut FieldErrors) {
        self.validate_fields(prefix, false, errors);
    }

    /// Checks shared by Jobs and Job templates (`template` allows input selectors).
    fn validate_fields(&self, prefix: &str, template: bool, errors: &mut FieldErrors) {
        validate_io(prefix, &self.inputs, &self.outputs, template, errors);
        if self.command.is_empty() {
            errors.push(
                format!("{prefix}.command"),
                "must name the program to run, e.g. [python3, selfplay.py]",
            );
        } else if self.command[0].trim().is_empty() {
            errors.push(format!("{prefix}.command[0]"), "must not be empty");
        }
        for k in self.env.keys() {
            let valid = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                errors.push(
                    format!("{prefix}.env.{k}"),
                    "environment variable names use letters, digits and `_`",
                );
            }
        }
        for (i, source) in self.env_from.iter().enumerate() {
            if let Some(why) = source.problem() {
                errors.push(format!("{prefix}.envFrom[{i}].file"), why);
            }
        }
        validate_labels(
            &format!("{prefix}.nodeSelector"),
            &self.node_selector,
            errors,
        );
        self.resources
            .validate_at(&format!("{prefix}.resources"), errors);
        if self.active_deadline_seconds == Some(0) {
            errors.push(
                format!("{prefix}.activeDeadlineSeconds"),
                "must be at least 1",
            );
        }
        if let Some(s) = self.active_deadline_seconds {
            validate_seconds(&format!("{prefix}.activeDeadlineSeconds"), s, errors);
        }
        if self.lost_after.0.is_zero() {
            errors.push(format!("{prefix}.lostAfter"), "must be longer than 0s");
        }
        validate_duration(&format!("{prefix}.lostAfter"), self.lost_after.0, errors);
        validate_duration(
            &format!("{prefix}.terminationGracePeriod"),
            self.termination_grace_period.0,
            errors,
        );
        if let Some(ttl) = self.ttl_after_finished {
            validate_duration(&format!("{prefix}.ttlAfterFinished"), ttl.0, errors);
        }
    }
}

/// One `envFrom` entry: a file of secret environment variables on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvFromSource {
    /// A file in the node's secrets directory (`secretsDir` in the node config, by default
    /// `/etc/rift/secrets`): a name relative to it (`wandb.env`) or an absolute path inside it.
    /// Lines are `KEY=VALUE` (optionally `export KEY=VALUE`, the value optionally in quotes);
    /// blank lines and lines starting with `#` are skipped.
    pub file: String,
}

impl EnvFromSource {
    /// Why `file` can never name a file in a secrets directory, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        let f = &self.file;
        if f.trim().is_empty() {
            Some("must name a file, e.g. wandb.env (in the node's secrets directory)")
        } else if f.contains('\0') {
            Some("must not contain a NUL byte")
        } else if std::path::Path::new(f)
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            Some("must not contain `..`: name a file in the node's secrets directory")
        } else {
            None
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    Selfplay,
    Training,
    Evaluation,
    Sync,
    #[default]
    Custom,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestartPolicy {
    #[default]
    Never,
    OnFailure,
    Always,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnNodeLost {
    /// Never moved: it runs on and the cluster waits for the node (long training).
    #[default]
    Wait,
    /// Stopped on the lost node after `lostAfter` and run elsewhere (selfplay).
    Reschedule,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub gpus: u32,
    /// Allowed GPU models (any when empty), e.g. [H100, GH200].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_models: Vec<String>,
    /// Minimum relative GPU power (H100 = 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_gpu_power: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gb: Option<f64>,
}

impl Resources {
    fn validate_at(&self, prefix: &str, errors: &mut FieldErrors) {
        let positive = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && v > 0.0);
        if !positive(self.min_gpu_power) {
            errors.push(format!("{prefix}.minGpuPower"), "must be greater than 0");
        }
        if !positive(self.cpus) {
            errors.push(format!("{prefix}.cpus"), "must be greater than 0");
        }
        if !positive(self.memory_gb) {
            errors.push(format!("{prefix}.memoryGb"), "must be greater than 0");
        }
        if self.gpus > MAX_GPUS {
            errors.push(
                format!("{prefix}.gpus"),
                format!("must be at most {MAX_GPUS}, got {}", self.gpus),
            );
        }
        if self.gpus == 0 && (!self.gpu_models.is_empty() || self.min_gpu_power.is_some()) {
            errors.push(
                format!("{prefix}.gpus"),
                "gpuModels/minGpuPower need gpus of at least 1",
            );
        }
    }
}

/// A Job to stamp out (Pools, TrainingTargets).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobTemplate {
    #[serde(default)]
    pub metadata: TemplateMeta,
    pub spec: JobSpec,
}

impl JobTemplate {
    pub fn validate_at(&self, prefix: &str, errors: &mut FieldErrors) {
        validate_labels(
            &format!("{prefix}.metadata.labels"),
            &self.metadata.labels,
            errors,
        );
        self.spec
            .validate_fields(&format!("{prefix}.spec"), true, errors);
    }
}

impl Spec for JobSpec {
    type Status = JobStatus;
    const KIND: &'static str = "Job";
    const PLURAL: &'static str = "jobs";
    const SINGULAR: &'static str = "job";
    const SHORT_NAMES: &'static [&'static str] = &[];

    fn validate(&self, _meta: &ObjectMeta, errors: &mut FieldErrors) {
        self.validate_at("spec", errors);
    }
}

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum JobPhase {
    #[default]
    Pending,
    Scheduled,
    Running,
    Succeeded,
    Failed,
}

impl JobPhase {
    pub const ALL: [JobPhase; 5] = [
        JobPhase::Pending,
        JobPhase::Scheduled,
        JobPhase::Running,
        JobPhase::Succeeded,
        JobPhase::Failed,
    ];

    pub fn is_finished(self) -> bool {
        matches!(self, JobPhase::Succeeded | JobPhase::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Pending => "Pending",
            JobPhase::Scheduled => "Scheduled",
            JobPhase::Running => "Running",
            JobPhase::Succeeded => "Succeeded",
            JobPhase::Failed => "Failed",
        }
    }
}

/// A Job's status as people see it: the scheduler's placement plus the runtime report of the
/// node it is placed on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobStatus {
    #[serde(default)]
    pub phase: JobPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
    /// Placement epoch this status belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
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
    /// Counters the job reports through `RIFT_PROGRESS_FILE`, e.g. `games: 120`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub progress: BTreeMap<String, f64>,
    /// What the job wrote to `RIFT_RESULT_FILE`, once it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// While its inputs are staged: bytes done, total and rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<super::job_io::StagingProgress>,
    /// A Pool member's model on its node: held by the process, prefetched, or why not yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<super::placement::JobModel>,
}
