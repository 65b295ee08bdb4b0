//! `Pool`: keeps N copies of a Job template running, or one per GPU on matching nodes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::job::JobTemplate;
use super::meta::ObjectMeta;
use super::object::{Object, Spec};
use super::validation::{dns1123_problem, validate_labels, FieldErrors};

pub type Pool = Object<PoolSpec>;

/// Exactly one of `replicas` or `perGpu: true`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    pub template: JobTemplate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// One job per GPU on every node matching `nodeSelector` (e.g. selfplay on every GPU).
    #[serde(default)]
    pub per_gpu: bool,
    /// Nodes the pool's jobs may use (added to the template's own selector).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// The model every member runs: a TrainingTarget's current model, rolled out when it is
    /// promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PoolModel>,
}

/// Where a Pool's model comes from and how a newly promoted one reaches its members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolModel {
    /// The TrainingTarget whose `status.currentModel` the members get as their `model` input.
    pub from_training_target: String,
    #[serde(default)]
    pub update: ModelUpdate,
    /// At most this many members are down for the rollout at once: a count (`2`) or a share
    /// of the members (`25%`, rounded down, at least 1).
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: String,
}

fn default_max_unavailable() -> String {
    "25%".into()
}

/// How members move to a newly promoted model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ModelUpdate {
    /// Replace members in batches of at most `maxUnavailable` with Jobs whose `model` input is
    /// the new artifact.
    #[default]
    RollingRestart,
    /// Swap the model under running members: each member's node prefetches it into its cache,
    /// points `$RIFT_INPUTS/model/current` at it (a symlink renamed over the old one, so it
    /// names a complete file at every instant) and sends SIGHUP to the job's process group.
    /// Members are not replaced; a job without a SIGHUP handler exits and is restarted by its
    /// `restartPolicy`, and then reads the new model.
    Reload,
}

impl PoolModel {
    /// `maxUnavailable` as a member count for a Pool of `total` members: a percentage rounds
    /// down, and the result is at least 1 so a rollout always moves. `None` when malformed.
    pub fn max_unavailable_of(&self, total: u32) -> Option<u32> {
        parse_max_unavailable(&self.max_unavailable, total)
    }
}

/// See [`PoolModel::max_unavailable_of`].
pub fn parse_max_unavailable(text: &str, total: u32) -> Option<u32> {
    let n = match text.strip_suffix('%') {
        Some(pct) => {
            let pct: u64 = pct.parse().ok().filter(|p| (1..=100).contains(p))?;
            (u64::from(total) * pct / 100) as u32
        }
        None => text.parse::<u32>().ok().filter(|n| *n >= 1)?,
    };
    Some(n.max(1))
}

/// The most members one Pool may ask for.
pub const MAX_REPLICAS: u32 = 100_000;

impl Spec for PoolSpec {
    type Status = PoolStatus;
    const KIND: &'static str = "Pool";
    const PLURAL: &'static str = "pools";
    const SINGULAR: &'static str = "pool";
    const SHORT_NAMES: &'static [&'static str] = &[];

    fn validate(&self, _meta: &ObjectMeta, errors: &mut FieldErrors) {
        match (self.replicas, self.per_gpu) {
            (Some(_), true) => errors.push(
                "spec.replicas",
                "set either `replicas` or `perGpu: true`, not both",
            ),
            (None, false) => errors.push(
                "spec.replicas",
                "required unless `perGpu: true` (how many jobs should the pool keep?)",
            ),
            _ => {}
        }
        if self.replicas.is_some_and(|r| r > MAX_REPLICAS) {
            errors.push(
                "spec.replicas",
                format!(
                    "must be at most {MAX_REPLICAS}, got {}",
                    self.replicas.unwrap_or_default()
                ),
            );
        }
        if self.per_gpu && self.template.spec.resources.gpus > 1 {
            errors.push(
                "spec.template.spec.resources.gpus",
                "a perGpu pool runs one job per GPU: gpus must be 0 or 1",
            );
        }
        validate_labels("spec.nodeSelector", &self.node_selector, errors);
        self.template.validate_at("spec.template", errors);
        if let Some(model) = &self.model {
            model.validate(&self.template, errors);
        }
    }
}

impl PoolModel {
    fn validate(&self, template: &JobTemplate, errors: &mut FieldErrors) {
        if let Some(problem) = dns1123_problem(&self.from_training_target) {
            errors.push("spec.model.fromTrainingTarget", problem);
        }
        if parse_max_unavailable(&self.max_unavailable, 1).is_none() {
            errors.push(
                "spec.model.maxUnavailable",
                format!(
                    "must be a count of at least 1 (`2`) or a percentage from 1% to 100% \
                     (`25%`), got `{}`",
                    self.max_unavailable.chars().take(40).collect::<String>()
                ),
            );
        }
        if template.spec.inputs.len() >= super::job_io::MAX_IO_ENTRIES {
            errors.push(
                "spec.template.spec.inputs",
                format!(
                    "at most {} inputs: the Pool's `model` adds one",
                    super::job_io::MAX_IO_ENTRIES - 1
                ),
            );
        }
        if template.spec.inputs.iter().any(|i| i.name == MODEL_INPUT) {
            errors.push(
                "spec.template.spec.inputs",
                "the Pool's `model` fills the `model` input: remove it from the template",
            );
        }
    }
}

/// The input a Pool's (and a training run's) model is staged under: `$RIFT_INPUTS/model/`.
pub const MODEL_INPUT: &str = "model";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolStatus {
    #[serde(default)]
    pub desired: u32,
    #[serde(default)]
    pub scheduled: u32,
    #[serde(default)]
    pub running: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The model artifact every member runs once the rollout is complete (pinned on the
    /// members' nodes and kept by garbage collection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_model: Option<String>,
    /// The model before `currentModel` (members may still run it mid-rollout; pinned too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_model: Option<String>,
    /// The latest rollout of a promoted model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A model's way to every member of a Pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    /// The model artifact being rolled out.
    pub artifact: String,
    /// Members running (or about to run) `artifact`.
    pub updated: u32,
    /// Members the Pool wants.
    pub total: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Set once every member runs `artifact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}
