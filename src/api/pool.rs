//! `Pool`: keeps N copies of a Job template running, or one per GPU on matching nodes.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::job::JobTemplate;
use super::meta::ObjectMeta;
use super::object::{Object, Spec};
use super::validation::{validate_labels, FieldErrors};

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
    }
}

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
}
