//! TrainingTarget: when enough new selfplay games exist for a board configuration, train; then
//! evaluate the candidate; promote it when it wins often enough.
//!
//! Decisions are pure functions ([`count_games`], [`decide`]); [`TrainingController::pass`]
//! loads, calls them, and writes. Job names are deterministic (`<target>-train-<n>`,
//! `<target>-eval-<n>`) and created only if absent, so a pass repeated after a crash adopts the
//! job it already started instead of starting a second one.
//!
//! ## Counting games
//! Each selfplay job reports a `games` counter that only grows within one run (one job uid,
//! binding epoch and attempt). The target keeps a ledger of the highest count seen per run, so
//! a restarted job (a new attempt starting from zero) adds to the total instead of replacing
//! it, and a deleted job's games stay counted ([`TrainingTargetStatus::ledger`]).
//!
//! ## When to train ([`decide`])
//! Never while a run (training or evaluation) is active, nor within `cooldownSeconds` of the
//! last run ending (success or failure). Otherwise train when the new games reach
//! `firstTrainingGames` (before the first run) or `retrainGames` (after), or when there are any
//! new games and the last run ended more than `stalenessHours` ago.
//!
//! Priority (shown in status, and added to the training Job's priority):
//! `min(new / threshold, 10) + (age / stalenessHours if new > 0 and stalenessHours is set)`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::api::job::{Job, JobSpec, JobTemplate};
use crate::api::meta::OwnerReference;
use crate::api::node::selector_matches;
use crate::api::training_target::{
    TrainingRun, TrainingTarget, TrainingTargetSpec, TrainingTargetStatus,
};
use crate::api::{JobPhase, Object};
use crate::store::{Store, StoreError};

/// A run key in the ledger: `<job>/<uid>/<epoch>/<attempt>`.
pub fn ledger_key(job: &Job) -> Option<String> {
    let s = job.status.as_ref()?;
    Some(format!(
        "{}/{}/{}/{}",
        job.name(),
        job.metadata.uid.as_deref().unwrap_or("-"),
        s.epoch?,
        s.attempts
    ))
}

/// Folds the selfplay jobs' current counters into `ledger` (highest value per run) and returns
/// the total. Counters never make the total go backwards.
pub fn count_games(ledger: &mut BTreeMap<String, u64>, selfplay: &[&Job]) -> u64 {
    for job in selfplay {
        let Some(key) = ledger_key(job) else { continue };
        let games = job
            .status
            .as_ref()
            .and_then(|s| s.progress.get("games"))
            .copied()
            .unwrap_or(0.0)
            .max(0.0) as u64;
        // A run that has reported nothing yet (not started, or no games) needs no entry.
        if games == 0 && !ledger.contains_key(&key) {
            continue;
        }
        let entry = ledger.entry(key).or_insert(0);
        *entry = (*entry).max(games);
    }
    ledger.values().sum()
}

/// What to do with a target that has no active run.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
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
pub fn decide(
    spec: &TrainingTargetSpec,
    status: &TrainingTargetStatus,
    now: DateTime<Utc>,
) -> Decision {
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
        return Decision::Wait {
            reason: format!("run {job} is active"),
            priority,
        };
    }
    if let Some(t) = ended {
        let cooling = i64::try_from(spec.cooldown_seconds)
            .map_or(true, |cooldown| (now - t).num_seconds() < cooldown);
        if cooling {
            return Decision::Wait {
                reason: format!(
                    "cooling down ({}s after the last run)",
                    spec.cooldown_seconds
                ),
                priority,
            };
        }
    }
    if new >= threshold || stale_term >= 1.0 {
        Decision::Train { priority }
    } else {
        Decision::Wait {
            reason: format!("{new}/{threshold} new games"),
            priority,
        }
    }
}

fn owner_ref(target: &TrainingTarget) -> OwnerReference {
    OwnerReference {
        kind: "TrainingTarget".into(),
        name: target.name().into(),
        uid: target.metadata.uid.clone().unwrap_or_default(),
        controller: true,
    }
}

/// The Job for a stage of run `n` from `template`, owned by the target and labelled with its
/// board, players and generation.
fn stage_job(
    target: &TrainingTarget,
    template: &JobTemplate,
    stage: &str,
    n: u64,
    env: &[(&str, String)],
    priority: i32,
) -> Job {
    let name = super::pools::member_name(&[target.name(), stage, &n.to_string()]);
    let mut spec: JobSpec = template.spec.clone();
    spec.priority = spec.priority.saturating_add(priority);
    spec.env
        .insert("RIFT_BOARD".into(), target.spec.board.clone());
    spec.env
        .insert("RIFT_PLAYERS".into(), target.spec.players.to_string());
    spec.env.insert("RIFT_GENERATION".into(), n.to_string());
    for (k, v) in env {
        spec.env.insert((*k).into(), v.clone());
    }
    let mut job = Object::new(name, spec);
    job.metadata.labels = template.metadata.labels.clone();
    job.metadata
        .labels
        .insert("rift.dev/training-target".into(), target.name().into());
    job.metadata
        .labels
        .insert("board".into(), target.spec.board.clone());
    job.metadata
        .labels
        .insert("players".into(), target.spec.players.to_string());
    job.metadata
        .labels
        .insert("rift.dev/generation".into(), n.to_string());
    job.metadata
        .labels
        .insert("rift.dev/stage".into(), stage.into());
    job.metadata.owner_references = vec![owner_ref(target)];
    job
}

/// Something worth telling people (the notifier's event reasons).
#[derive(Clone, Debug, PartialEq)]
pub struct Happening {
    pub target: String,
    pub reason: &'static str,
    pub message: String,
}

/// The leader's training controller.
pub struct TrainingController {
    store: Store,
}

async fn create_if_absent(store: &Store, job: &Job) -> Result<(), StoreError> {
    match store.create(job).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

impl TrainingController {
    /// `store` must be the leader's fenced store.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// One pass over every target; returns what happened (for events).
    pub async fn pass(
        &self,
        targets: &[TrainingTarget],
        jobs: &[Job],
        now: DateTime<Utc>,
    ) -> Result<Vec<Happening>, StoreError> {
        let mut out = Vec::new();
        for target in targets {
            if target.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let before = target.status.clone().unwrap_or_default();
            let mut status = before.clone();
            self.step(target, jobs, &mut status, now, &mut out).await?;
            if status != before {
                self.store
                    .put_status::<TrainingTargetSpec>(target.name(), &status)
                    .await?;
            }
        }
        Ok(out)
    }

    async fn step(
        &self,
        target: &TrainingTarget,
        jobs: &[Job],
        status: &mut TrainingTargetStatus,
        now: DateTime<Utc>,
        out: &mut Vec<Happening>,
    ) -> Result<(), StoreError> {
        let spec = &target.spec;
        let selfplay: Vec<&Job> = jobs
            .iter()
            .filter(|j| selector_matches(&spec.selfplay_selector, &j.metadata.labels))
            .filter(|j| !j.metadata.labels.contains_key("rift.dev/training-target"))
            .collect();
        let total = count_games(&mut status.ledger, &selfplay);
        let consumed = status
            .total_games
            .saturating_sub(status.games_since_last_training);
        status.total_games = total;
        status.games_since_last_training = total.saturating_sub(consumed);
        let say = |reason, message: String| Happening {
            target: target.name().into(),
            reason,
            message,
        };

        if let Some(active) = status.active_job.clone() {
            let job = jobs.iter().find(|j| j.name() == active);
            let phase = job.and_then(|j| j.status.as_ref()).map(|s| s.phase);
            let result = job
                .and_then(|j| j.status.as_ref())
                .and_then(|s| s.result.clone());
            let is_eval = job.is_some_and(|j| {
                j.metadata.labels.get("rift.dev/stage").map(String::as_str) == Some("eval")
            });
            let n = status.training_generation;
            match (phase, is_eval) {
                (None, _) => {
                    // The job vanished (deleted by hand): the run failed.
                    self.finish(status, n, None, None, false, "the job was deleted", now);
                    out.push(say(
                        "training_failed",
                        format!("run {n}: job {active} was deleted"),
                    ));
                }
                (Some(JobPhase::Succeeded), false) => {
                    let candidate = result
                        .as_ref()
                        .and_then(|r| r["model"].as_str())
                        .map(str::to_string);
                    status.last_trained_at = Some(now);
                    out.push(say(
                        "training_complete",
                        format!(
                            "run {n} trained {}",
                            candidate.as_deref().unwrap_or("a model without a name")
                        ),
                    ));
                    match (&spec.evaluation, &candidate) {
                        (Some(eval), Some(model)) => {
                            let job = stage_job(
                                target,
                                &eval.template,
                                "eval",
                                n,
                                &[
                                    ("RIFT_CANDIDATE_MODEL", model.clone()),
                                    (
                                        "RIFT_CURRENT_MODEL",
                                        status.current_model.clone().unwrap_or_default(),
                                    ),
                                ],
                                0,
                            );
                            create_if_absent(&self.store, &job).await?;
                            status.active_job = Some(job.name().into());
                            status.message = format!("evaluating {model}");
                            if let Some(run) =
                                status.history.iter_mut().rev().find(|r| r.generation == n)
                            {
                                run.candidate = Some(model.clone());
                            }
                        }
                        (None, Some(model)) => {
                            self.finish(
                                status,
                                n,
                                Some(model.clone()),
                                None,
                                true,
                                "promoted without evaluation",
                                now,
                            );
                            out.push(say(
                                "model_promoted",
                                format!("run {n}: {model} promoted (no evaluation configured)"),
                            ));
                        }
                        (_, None) => {
                            self.finish(
                                status,
                                n,
                                None,
                                None,
                                false,
                                "training wrote no `model` in its result",
                                now,
                            );
                            out.push(say(
                                "training_failed",
                                format!("run {n}: the training result has no `model`"),
                            ));
                        }
                    }
                }
                (Some(JobPhase::Succeeded), true) => {
                    let win_rate = result.as_ref().and_then(|r| r["winRate"].as_f64());
                    let candidate = status.history.last().and_then(|r| r.candidate.clone());
                    let threshold = spec
                        .evaluation
                        .as_ref()
                        .map_or(0.55, |e| e.promote_win_rate);
                    let promoted = win_rate.is_some_and(|w| w >= threshold);
                    let outcome = match win_rate {
                        Some(w) if promoted => format!("promoted: win rate {w:.3} ≥ {threshold}"),
                        Some(w) => format!("kept the current model: win rate {w:.3} < {threshold}"),
                        None => "evaluation wrote no `winRate`".to_string(),
                    };
                    self.finish(
                        status,
                        n,
                        candidate.clone(),
                        win_rate,
                        promoted,
                        &outcome,
                        now,
                    );
                    if promoted {
                        out.push(say(
                            "model_promoted",
                            format!("run {n}: {} {outcome}", candidate.unwrap_or_default()),
                        ));
                    }
                }
                (Some(JobPhase::Failed), stage) => {
                    let msg = job
                        .and_then(|j| j.status.as_ref())
                        .map(|s| s.message.clone())
                        .unwrap_or_default();
                    let what = if stage { "evaluation" } else { "training" };
                    self.finish(
                        status,
                        n,
                        None,
                        None,
                        false,
                        &format!("{what} failed: {msg}"),
                        now,
                    );
                    out.push(say(
                        "training_failed",
                        format!("run {n}: {what} job {active} failed: {msg}"),
                    ));
                }
                _ => {} // still running
            }
            return Ok(());
        }

        match decide(spec, status, now) {
            Decision::Wait { reason, priority } => {
                status.priority = priority;
                status.message = reason;
            }
            Decision::Train { priority } => {
                let n = status.training_generation + 1;
                let env = [(
                    "RIFT_CURRENT_MODEL",
                    status.current_model.clone().unwrap_or_default(),
                )];
                let job = stage_job(
                    target,
                    &spec.training,
                    "train",
                    n,
                    &env,
                    priority.round() as i32,
                );
                create_if_absent(&self.store, &job).await?;
                status.training_generation = n;
                status.active_job = Some(job.name().into());
                status.priority = priority;
                // The games counted so far are the ones this run trains on.
                status.games_since_last_training = 0;
                status.message = format!("training run {n}");
                status.history.push(TrainingRun {
                    generation: n,
                    job: job.name().into(),
                    ..TrainingRun::default()
                });
                let limit = spec.history_limit.max(1) as usize;
                if status.history.len() > limit {
                    let extra = status.history.len() - limit;
                    status.history.drain(..extra);
                }
                out.push(say(
                    "training_started",
                    format!("run {n} started as job {}", job.name()),
                ));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        status: &mut TrainingTargetStatus,
        n: u64,
        candidate: Option<String>,
        win_rate: Option<f64>,
        promoted: bool,
        outcome: &str,
        now: DateTime<Utc>,
    ) {
        status.active_job = None;
        status.message = outcome.into();
        if promoted {
            status.current_model = candidate.clone();
        }
        if let Some(run) = status.history.iter_mut().rev().find(|r| r.generation == n) {
            if candidate.is_some() {
                run.candidate = candidate;
            }
            run.win_rate = win_rate;
            run.promoted = promoted;
            run.finished_at = Some(now);
            run.outcome = outcome.into();
        }
    }
}

#[cfg(test)]
mod tests;
