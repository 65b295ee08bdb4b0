//! `TrainingTarget`: when enough new selfplay games exist for a board configuration, train,
//! evaluate, and promote the better model.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::job::JobTemplate;
use super::meta::ObjectMeta;
use super::object::{Object, Spec};
use super::validation::{validate_labels, FieldErrors};

pub type TrainingTarget = Object<TrainingTargetSpec>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrainingTargetSpec {
    /// Board type, e.g. `hex8`, `square8`, `square19`, `hexagonal`.
    pub board: String,
    /// Players per game, 2 to 4.
    pub players: u8,
    /// Labels of the selfplay whose games count toward this target: matched against Artifact
    /// labels (game shards, `counts.games`) and, for Jobs without outputs, against the labels of
    /// Jobs reporting a `games` progress counter.
    #[serde(default)]
    pub selfplay_selector: BTreeMap<String, String>,
    /// New games needed before the first training run.
    #[serde(default = "default_first_training_games")]
    pub first_training_games: u64,
    /// New games needed before each later run.
    #[serde(default = "default_retrain_games")]
    pub retrain_games: u64,
    /// Minimum time between the end of one training run and the start of the next.
    #[serde(default = "default_cooldown_seconds")]
    pub cooldown_seconds: u64,
    /// Train when any new games exist and the last run is older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness_hours: Option<f64>,
    pub training: JobTemplate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationSpec>,
    /// Runs kept in `status.history`.
    #[serde(default = "default_history_limit")]
    pub history_limit: u32,
}

fn default_first_training_games() -> u64 {
    2000
}
fn default_retrain_games() -> u64 {
    1000
}
fn default_cooldown_seconds() -> u64 {
    1800
}
fn default_history_limit() -> u32 {
    10
}

/// The gate a candidate model must pass to be promoted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvaluationSpec {
    pub template: JobTemplate,
    /// Promote when the candidate's reported `winRate` is at least this.
    #[serde(default = "default_promote_win_rate")]
    pub promote_win_rate: f64,
}

fn default_promote_win_rate() -> f64 {
    0.55
}

impl Spec for TrainingTargetSpec {
    type Status = TrainingTargetStatus;
    const KIND: &'static str = "TrainingTarget";
    const PLURAL: &'static str = "trainingtargets";
    const SINGULAR: &'static str = "trainingtarget";
    const SHORT_NAMES: &'static [&'static str] = &["tt"];

    fn validate(&self, _meta: &ObjectMeta, errors: &mut FieldErrors) {
        if self.board.trim().is_empty() {
            errors.push("spec.board", "must name a board type, e.g. hex8");
        }
        if !(2..=4).contains(&self.players) {
            errors.push(
                "spec.players",
                format!("must be 2, 3 or 4, got {}", self.players),
            );
        }
        if self.selfplay_selector.is_empty() {
            errors.push(
                "spec.selfplaySelector",
                "must select the selfplay jobs whose games count (e.g. board: hex8)",
            );
        }
        validate_labels("spec.selfplaySelector", &self.selfplay_selector, errors);
        if self.first_training_games == 0 || self.retrain_games == 0 {
            errors.push("spec.retrainGames", "game thresholds must be at least 1");
        }
        if let Some(h) = self.staleness_hours {
            if !(h.is_finite() && h > 0.0) {
                errors.push("spec.stalenessHours", "must be greater than 0");
            } else if h * 3600.0 > super::validation::MAX_DURATION.as_secs_f64() {
                errors.push("spec.stalenessHours", "must be at most 10 years (87600)");
            }
        }
        super::validation::validate_seconds("spec.cooldownSeconds", self.cooldown_seconds, errors);
        self.training.validate_at("spec.training", errors);
        reserved_inputs(
            "spec.training",
            &self.training,
            &[GAMES_INPUT, MODEL_INPUT],
            errors,
        );
        if let Some(eval) = &self.evaluation {
            reserved_inputs(
                "spec.evaluation.template",
                &eval.template,
                &[CANDIDATE_INPUT, MODEL_INPUT],
                errors,
            );
            if !(0.0..=1.0).contains(&eval.promote_win_rate) {
                errors.push("spec.evaluation.promoteWinRate", "must be between 0 and 1");
            }
            eval.template
                .validate_at("spec.evaluation.template", errors);
        }
    }
}

/// The training Job's input holding the game artifacts since the last run.
pub const GAMES_INPUT: &str = "games";
/// The evaluation Job's input holding the candidate model.
pub const CANDIDATE_INPUT: &str = "candidate";
pub use super::pool::MODEL_INPUT;

/// Refuses template inputs the controller fills itself, and more than leave room for them.
fn reserved_inputs(at: &str, template: &JobTemplate, names: &[&str], errors: &mut FieldErrors) {
    let room = super::job_io::MAX_IO_ENTRIES - names.len();
    if template.spec.inputs.len() > room {
        errors.push(
            format!("{at}.spec.inputs"),
            format!(
                "at most {room} inputs: the TrainingTarget adds {}",
                names.join(" and ")
            ),
        );
    }
    for (i, input) in template.spec.inputs.iter().enumerate() {
        if names.contains(&input.name.as_str()) {
            errors.push(
                format!("{at}.spec.inputs[{i}].name"),
                format!(
                    "`{}` is filled by the TrainingTarget (the {}): remove this input or rename it",
                    input.name,
                    match input.name.as_str() {
                        GAMES_INPUT => "game artifacts since the last run",
                        CANDIDATE_INPUT => "candidate model",
                        _ => "current model",
                    }
                ),
            );
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrainingTargetStatus {
    #[serde(default)]
    pub total_games: u64,
    #[serde(default)]
    pub games_since_last_training: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trained_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub priority: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_model: Option<String>,
    /// Training runs started so far.
    #[serde(default)]
    pub training_generation: u64,
    /// Games counted from game artifacts (part of `totalGames`).
    #[serde(default)]
    pub artifact_games: u64,
    /// Game artifacts created at or before this etcd revision are counted; later ones are new.
    /// A watermark, not a list: each artifact is counted once, whatever the number of shards.
    #[serde(default)]
    pub games_revision: i64,
    /// Game artifacts created at or before this revision were handed to a training run; the
    /// next run gets those after it.
    #[serde(default)]
    pub trained_revision: i64,
    /// Games counted per selfplay job and attempt, so restarts and deletions never double count.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ledger: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<TrainingRun>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrainingRun {
    pub generation: u64,
    pub job: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win_rate: Option<f64>,
    #[serde(default)]
    pub promoted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub outcome: String,
}
