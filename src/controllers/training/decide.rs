//! What a TrainingTarget does next: pure functions of its spec, its status and what its active
//! run's Job did, returning an enum ([`Next`]); [`super::plan`] turns it into writes.
//!
//! ## When to train ([`trigger`])
//! Never while a run (training or evaluation) is active, nor within `cooldownSeconds` of the
//! last run ending (success or failure). Otherwise train when the new games reach
//! `firstTrainingGames` (before the first run) or `retrainGames` (after), or when there are any
//! new games and the last run ended more than `stalenessHours` ago.
//!
//! Priority (shown in status, and added to the training Job's priority):
//! `min(new / threshold, 10) + (age / stalenessHours if new > 0 and stalenessHours is set)`.
//!
//! ## A run's stages ([`decide`])
//! 1. No active run: [`trigger`] says wait ([`Next::Wait`]) or train ([`Next::Train`], the
//!    next generation).
//! 2. The active Job is still pending or running: [`Next::KeepGoing`].
//! 3. Training succeeded and its `model` output made an Artifact (the candidate): evaluate it
//!    when the target has an evaluation gate ([`Next::Evaluate`]), else promote it at once.
//!    The Artifact is recorded by the artifacts controller once the upload is done, so a
//!    succeeded Job without one is still [`ActiveRun::Going`] for [`MODEL_ARTIFACT_WAIT`].
//! 4. Training succeeded without a model artifact (after that wait), either stage failed, or
//!    the Job was deleted: the run ends unpromoted.
//! 5. Evaluation succeeded: promote the candidate when its `winRate` reaches
//!    `promoteWinRate` (0.55 when unset); a missing `winRate` never promotes.

use chrono::{DateTime, Utc};

use crate::api::job::{Job, JobPhase};
use crate::api::labels::OUTPUT;
use crate::api::training_target::{TrainingTargetSpec, TrainingTargetStatus, MODEL_INPUT};
use crate::controllers::cluster_view::StoredArtifact;

/// How long a succeeded training Job may be without its model Artifact before the run ends
/// unpromoted (the artifacts controller records uploads within seconds).
pub const MODEL_ARTIFACT_WAIT: chrono::TimeDelta = chrono::TimeDelta::seconds(120);

/// The Artifact `job`'s `model` output made: produced by that Job and labelled with that
/// output; the newest when attempts made several.
pub fn model_artifact<'a>(job: &str, artifacts: &'a [StoredArtifact]) -> Option<&'a str> {
    artifacts
        .iter()
        .filter(|a| {
            a.artifact
                .spec
                .producer
                .as_ref()
                .is_some_and(|p| p.job == job)
                && a.artifact.metadata.labels.get(OUTPUT).map(String::as_str) == Some(MODEL_INPUT)
        })
        .max_by_key(|a| a.created_revision)
        .map(|a| a.artifact.name())
}

/// The win rate a candidate needs when the target sets no evaluation gate of its own.
pub const DEFAULT_PROMOTE_WIN_RATE: f64 = 0.55;

/// Whether a target with no active run should start training now.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    Wait { reason: String, priority: f64 },
    Train { priority: f64 },
}

/// When the last run ended, successfully or not.
pub fn last_ended(status: &TrainingTargetStatus) -> Option<DateTime<Utc>> {
    status.history.iter().filter_map(|r| r.finished_at).max()
}

/// The new games that start the next run: `firstTrainingGames` before the first run,
/// `retrainGames` after it.
pub fn games_threshold(spec: &TrainingTargetSpec, status: &TrainingTargetStatus) -> u64 {
    if status.training_generation == 0 {
        spec.first_training_games
    } else {
        spec.retrain_games
    }
}

/// Whether to start training now. Pure; see the module docs for the rules.
pub fn trigger(
    spec: &TrainingTargetSpec,
    status: &TrainingTargetStatus,
    now: DateTime<Utc>,
) -> Trigger {
    let new = status.games_since_last_training;
    let threshold = games_threshold(spec, status);
    let ended = last_ended(status);
    let age_hours = ended.map(|t| (now - t).num_seconds() as f64 / 3600.0);
    let stale_term = match (spec.staleness_hours, age_hours) {
        (Some(limit), Some(age)) if new > 0 => age / limit,
        _ => 0.0,
    };
    let priority = (new as f64 / threshold.max(1) as f64).min(10.0) + stale_term;
    if let Some(job) = &status.active_job {
        return Trigger::Wait {
            reason: format!("run {job} is active"),
            priority,
        };
    }
    if let Some(t) = ended {
        let cooling = i64::try_from(spec.cooldown_seconds)
            .map_or(true, |cooldown| (now - t).num_seconds() < cooldown);
        if cooling {
            return Trigger::Wait {
                reason: format!(
                    "cooling down ({}s after the last run)",
                    spec.cooldown_seconds
                ),
                priority,
            };
        }
    }
    if new >= threshold || stale_term >= 1.0 {
        Trigger::Train { priority }
    } else {
        Trigger::Wait {
            reason: format!("{new}/{threshold} new games"),
            priority,
        }
    }
}

/// A stage of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Training,
    Evaluation,
}

impl Stage {
    /// The `rift.dev/stage` label value and the middle of the Job's name.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Training => "train",
            Stage::Evaluation => "eval",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Stage::Training => "training",
            Stage::Evaluation => "evaluation",
        }
    }
}

/// What the target's active run (its `status.activeJob`) is doing, as its Job shows.
#[derive(Clone, Debug, PartialEq)]
pub enum ActiveRun {
    /// The Job is gone (deleted by hand).
    Vanished,
    /// Pending, scheduled or running.
    Going,
    /// The training Job succeeded; `model` is the Artifact its `model` output made.
    Trained { model: Option<String> },
    /// The evaluation Job succeeded; `win_rate` is its result's `winRate`.
    Evaluated { win_rate: Option<f64> },
    /// Either stage's Job failed.
    Failed { stage: Stage, message: String },
}

impl ActiveRun {
    /// The active run as `job` (named in `status.activeJob`; `None`: not found) and the
    /// cluster's `artifacts` show it at `now`.
    pub fn observe(
        job: Option<&Job>,
        artifacts: &[StoredArtifact],
        now: DateTime<Utc>,
    ) -> ActiveRun {
        let Some(job) = job else {
            return ActiveRun::Vanished;
        };
        let stage = match job
            .metadata
            .labels
            .get(crate::api::labels::STAGE)
            .map(String::as_str)
        {
            Some("eval") => Stage::Evaluation,
            _ => Stage::Training,
        };
        let Some(status) = job.status.as_ref() else {
            return ActiveRun::Going;
        };
        let result = status.result.as_ref();
        match (status.phase, stage) {
            (JobPhase::Succeeded, Stage::Training) => match model_artifact(job.name(), artifacts) {
                Some(model) => ActiveRun::Trained {
                    model: Some(model.to_string()),
                },
                None if status
                    .finish_time
                    .is_some_and(|t| now - t < MODEL_ARTIFACT_WAIT) =>
                {
                    ActiveRun::Going
                }
                None => ActiveRun::Trained { model: None },
            },
            (JobPhase::Succeeded, Stage::Evaluation) => ActiveRun::Evaluated {
                win_rate: result.and_then(|r| r["winRate"].as_f64()),
            },
            (JobPhase::Failed, stage) => ActiveRun::Failed {
                stage,
                message: status.message.clone(),
            },
            _ => ActiveRun::Going,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEnd {
    /// Its Job was deleted.
    Vanished,
    /// A stage's Job failed with `message`.
    Failed { stage: Stage, message: String },
    /// Training succeeded but its `model` output made no Artifact.
    NoModel,
    /// Training produced `model` and the target has no evaluation gate.
    PromotedUnevaluated { model: String },
    /// Evaluation of `candidate` reported `win_rate` against `threshold`.
    Evaluated {
        candidate: Option<String>,
        win_rate: Option<f64>,
        threshold: f64,
    },
}

impl RunEnd {
    /// Whether the run's candidate becomes the current model.
    pub fn promoted(&self) -> bool {
        match self {
            RunEnd::PromotedUnevaluated { .. } => true,
            RunEnd::Evaluated {
                candidate: Some(_),
                win_rate: Some(w),
                threshold,
            } => w >= threshold,
            _ => false,
        }
    }

    /// The model the run produced, if it named one.
    pub fn candidate(&self) -> Option<&str> {
        match self {
            RunEnd::PromotedUnevaluated { model } => Some(model),
            RunEnd::Evaluated { candidate, .. } => candidate.as_deref(),
            _ => None,
        }
    }

    /// The run's outcome in words (`status.history[].outcome`).
    pub fn outcome(&self) -> String {
        match self {
            RunEnd::Vanished => "the job was deleted".into(),
            RunEnd::Failed { stage, message } => format!("{} failed: {message}", stage.noun()),
            RunEnd::NoModel => format!(
                "training succeeded but its `model` output made no artifact within {}s (write \
                 the model under $RIFT_OUTPUTS/model/)",
                MODEL_ARTIFACT_WAIT.num_seconds()
            ),
            RunEnd::PromotedUnevaluated { .. } => "promoted without evaluation".into(),
            RunEnd::Evaluated {
                candidate: None, ..
            } => "the evaluated run has no candidate model".into(),
            RunEnd::Evaluated {
                win_rate: Some(w),
                threshold,
                ..
            } if self.promoted() => format!("promoted: win rate {w:.3} ≥ {threshold}"),
            RunEnd::Evaluated {
                win_rate: Some(w),
                threshold,
                ..
            } => format!("kept the current model: win rate {w:.3} < {threshold}"),
            RunEnd::Evaluated { win_rate: None, .. } => "evaluation wrote no `winRate`".into(),
        }
    }
}

/// The next action for a target.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// No run is active and none is due.
    Wait { reason: String, priority: f64 },
    /// The active run's Job has not finished.
    KeepGoing,
    /// Start training run `generation`.
    Train { generation: u64, priority: f64 },
    /// Training run `generation` produced `candidate`: evaluate it against the current model.
    Evaluate { generation: u64, candidate: String },
    /// Run `generation` is over.
    Finish { generation: u64, end: RunEnd },
}

/// The next action for a target whose games are counted in `status`, whose active run (if
/// `status.activeJob` is set) is `active`. Pure; see the module docs for the rules.
pub fn decide(
    spec: &TrainingTargetSpec,
    status: &TrainingTargetStatus,
    active: Option<ActiveRun>,
    now: DateTime<Utc>,
) -> Next {
    let generation = status.training_generation;
    let finish = |end| Next::Finish { generation, end };
    match active {
        None => match trigger(spec, status, now) {
            Trigger::Wait { reason, priority } => Next::Wait { reason, priority },
            Trigger::Train { priority } => Next::Train {
                generation: generation + 1,
                priority,
            },
        },
        Some(ActiveRun::Going) => Next::KeepGoing,
        Some(ActiveRun::Vanished) => finish(RunEnd::Vanished),
        Some(ActiveRun::Failed { stage, message }) => finish(RunEnd::Failed { stage, message }),
        Some(ActiveRun::Trained { model: None }) => finish(RunEnd::NoModel),
        Some(ActiveRun::Trained { model: Some(model) }) => match spec.evaluation {
            Some(_) => Next::Evaluate {
                generation,
                candidate: model,
            },
            None => finish(RunEnd::PromotedUnevaluated { model }),
        },
        Some(ActiveRun::Evaluated { win_rate }) => finish(RunEnd::Evaluated {
            candidate: status
                .history
                .iter()
                .rev()
                .find(|r| r.generation == generation)
                .and_then(|r| r.candidate.clone()),
            win_rate,
            threshold: spec
                .evaluation
                .as_ref()
                .map_or(DEFAULT_PROMOTE_WIN_RATE, |e| e.promote_win_rate),
        }),
    }
}
