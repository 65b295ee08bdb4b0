//! Label keys rift itself reads or writes, in one place: controllers, the scheduler and the
//! simulator name them only through these constants.

/// A node-selector key every node answers with its own name (Pools pin perGpu members with it).
pub const NODE_NAME: &str = "rift.dev/node";
/// The GPU index a perGpu Pool member is named after (`<pool>-<node>-<gpu>`): placement gives it
/// that GPU when it is free, so the name says which GPU the member holds.
pub const GPU: &str = "rift.dev/gpu";
/// The label naming a Job's Pool, used when the Job has no Pool owner reference.
pub const POOL: &str = "rift.dev/pool";
/// The TrainingTarget a training or evaluation Job was made for.
pub const TRAINING_TARGET: &str = "rift.dev/training-target";
/// The training generation (1, 2, ...) a Job belongs to.
pub const GENERATION: &str = "rift.dev/generation";
/// The stage of a TrainingTarget's Job: `train` or `eval`.
pub const STAGE: &str = "rift.dev/stage";
/// On an Artifact made from a Job's output: the Job that wrote it.
pub const ARTIFACT_JOB: &str = "rift.dev/job";
/// On an Artifact made from a Job's output: the output (directory) it was sealed in.
pub const ARTIFACT_OUTPUT: &str = "rift.dev/output";
/// The Job labels an output's Artifacts inherit, when the Job has them.
pub const INHERITED_BY_OUTPUTS: [&str; 4] = [POOL, TRAINING_TARGET, GENERATION, STAGE];
/// `rift.dev/keep: "true"` on an Artifact: garbage collection never deletes it, referenced or
/// not (for artifacts pushed by hand that no Job, TrainingTarget or Pool names yet).
pub const KEEP: &str = "rift.dev/keep";
/// Marks a simulated (hollow) node.
pub const HOLLOW: &str = "hollow";
/// The Job that produced an Artifact (set by the artifacts controller).
pub const JOB: &str = "rift.dev/job";
/// The Job output an Artifact came from, e.g. `games` or `model`.
pub const OUTPUT: &str = "rift.dev/output";
/// On the output Artifacts of a Pool member with a model: the model it held when the agent took
/// the file, as `sha256-<first 16 hex>` ([`model_label_value`]): a label value holds at most 63
/// characters and an Artifact name has 71; the full name is among the Artifact's `parents`.
pub const MODEL: &str = "model";

/// The [`MODEL`] label's value for model artifact `name` (`sha256-<64 hex>`): its first 23
/// characters, `sha256-` and 16 hex digits (64 bits: no two models of a fleet collide).
pub fn model_label_value(name: &str) -> String {
    name.chars().take(23).collect()
}
