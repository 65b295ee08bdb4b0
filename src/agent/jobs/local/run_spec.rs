//! The run spec a binding asks for, made from its Job, and whether a run spec is that one.

use super::super::layout::RunSpec;
use crate::api::job::JobSpec;
use crate::api::placement::Binding;
use crate::api::Object;

impl RunSpec {
    /// What to run for the Job `job` under `binding`: the Job's command and policy, the
    /// binding's epoch, GPUs, uid and (when it has them) its node-loss terms, so the agent
    /// counts with the numbers the scheduler hands over by.
    pub fn for_binding(job: &Object<JobSpec>, binding: &Binding) -> RunSpec {
        let s = &job.spec;
        let terms = binding
            .terms
            .unwrap_or_else(|| crate::api::placement::LossTerms::of(s));
        RunSpec {
            job: job.metadata.name.clone(),
            uid: job.metadata.uid.clone().unwrap_or_default(),
            epoch: binding.epoch,
            command: s.command.clone(),
            env: s.env.clone(),
            env_from: s.env_from.iter().map(|e| e.file.clone()).collect(),
            workdir: s.workdir.clone(),
            gpus: binding.gpus.clone(),
            restart_policy: s.restart_policy,
            backoff_limit: s.backoff_limit,
            active_deadline_seconds: s.active_deadline_seconds,
            on_node_lost: terms.on_node_lost,
            lost_after_secs: terms.lost_after.0.as_secs(),
            grace_secs: terms.termination_grace_period.0.as_secs(),
            inputs: s.inputs.clone(),
            outputs: s.outputs.clone(),
            labels: job.metadata.labels.clone(),
        }
    }
}

/// Whether a run spec is the one `b` binds: the same epoch, and the same Job (uid) when both
/// know it.
pub(super) fn matches(spec: &RunSpec, b: &Binding) -> bool {
    spec.epoch == b.epoch && (b.uid.is_empty() || spec.uid.is_empty() || spec.uid == b.uid)
}
