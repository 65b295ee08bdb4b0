//! TrainingTarget: when enough new selfplay games exist for a board configuration, train; then
//! evaluate the candidate; promote it when it wins often enough.
//!
//! The controller is load → decide → write: [`plan`] (pure: [`games`] counts, [`decide`]
//! chooses the [`Next`] action, [`plan::apply`] turns it into a status and a Job) and
//! [`TrainingController::pass`] writes what it returns. Job names are deterministic
//! (`<target>-train-<n>`, `<target>-eval-<n>`) and created only if absent before the status
//! naming them is written, so a pass repeated after a crash adopts the job it already started
//! instead of starting a second one.

pub mod decide;
pub mod games;
pub mod plan;

use chrono::{DateTime, Utc};

pub use decide::{
    decide, games_threshold, last_ended, model_artifact, trigger, ActiveRun, Next, RunEnd, Stage,
    Trigger, MODEL_ARTIFACT_WAIT,
};
pub use plan::{plan, Happening, Plan};

use crate::api::job::Job;
use crate::api::training_target::{TrainingTarget, TrainingTargetSpec};
use crate::controllers::cluster_view::StoredArtifact;
use crate::store::{Store, StoreError};

/// The leader's training controller.
pub struct TrainingController {
    store: Store,
}

impl TrainingController {
    /// `store` must be the leader's fenced store.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// One pass over every target; returns what happened (for events). A target whose Job
    /// cannot be created keeps its stored status (the next pass plans the same Job again).
    pub async fn pass(
        &self,
        targets: &[TrainingTarget],
        jobs: &[Job],
        artifacts: &[StoredArtifact],
        now: DateTime<Utc>,
    ) -> Result<Vec<Happening>, StoreError> {
        let mut out = Vec::new();
        for target in targets {
            if target.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let plan = plan(target, jobs, artifacts, now);
            if let Some(job) = &plan.create {
                match self.store.create(job).await {
                    Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if target.status.clone().unwrap_or_default() != plan.status {
                self.store
                    .put_status::<TrainingTargetSpec>(target.name(), &plan.status)
                    .await?;
            }
            out.extend(plan.happenings);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
