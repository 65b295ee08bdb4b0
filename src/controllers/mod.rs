//! Leader-run controllers, one file each, with their decisions as pure functions beside them
//! (docs/architecture.md, "Control flow": decide in pure functions, act through the store).
//!
//! * [`artifacts`]: records the outputs agents uploaded as Artifacts.
//! * [`scheduler`]: the leader's passes: pools, housekeeping, placement, written in batches.
//! * [`placement`]: which node and GPUs each pending Job gets, why-not summaries, preemption.
//! * [`pools`]: the member Jobs each Pool should have, and model rollouts.
//! * [`template_inputs`]: template input selectors resolved to artifact names.
//! * [`housekeeping`]: drain, lost nodes, TTL after finishing, orphaned Pool members.
//! * [`writes`]: placement + binding transactions, compare-and-swap and fenced.
//! * [`artifact_gc`]: deletes artifacts nothing has referenced for `gcAfter`, record then bytes.
//! * [`metrics`]: the cluster-wide figures the leader exports.

pub mod artifact_gc;
pub mod artifacts;
pub mod cluster_view;
pub mod housekeeping;
pub mod metrics;
pub mod notifier;
pub mod placement;
pub mod pools;
pub mod scheduler;
pub mod template_inputs;
pub mod training;
pub mod voters;
pub mod writes;
