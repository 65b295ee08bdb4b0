//! A TrainingTarget's pass as data: the status to write, the Job to create, what to tell
//! people. Pure: [`plan`] counts, calls [`decide`] and applies its [`Next`] to a copy of the
//! status; the controller only writes the result.

use chrono::{DateTime, Utc};

use super::decide::{decide, ActiveRun, Next, RunEnd, Stage};
use super::games::{count_games, selfplay_jobs};
use crate::api::event::Reason;
use crate::api::job::{Job, JobSpec, JobTemplate};
use crate::api::labels::{GENERATION, STAGE, TRAINING_TARGET};
use crate::api::meta::OwnerReference;
use crate::api::training_target::{TrainingRun, TrainingTarget, TrainingTargetStatus};
use crate::api::Object;

/// Something worth telling people (the notifier's event reasons).
#[derive(Clone, Debug, PartialEq)]
pub struct Happening {
    pub target: String,
    pub reason: Reason,
    pub message: String,
}

/// What one pass does for one target.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The Job to create if absent (its name is deterministic, so a repeated pass adopts it),
    /// before `status` is written.
    pub create: Option<Job>,
    /// The target's status after this pass; written when it differs from the stored one.
    pub status: TrainingTargetStatus,
    pub happenings: Vec<Happening>,
}

/// The pass for `target` over the cluster's `jobs` at `now`.
pub fn plan(target: &TrainingTarget, jobs: &[Job], now: DateTime<Utc>) -> Plan {
    let mut status = target.status.clone().unwrap_or_default();
    recount(target, jobs, &mut status);
    let active = status
        .active_job
        .as_deref()
        .map(|name| ActiveRun::observe(jobs.iter().find(|j| j.name() == name)));
    let next = decide(&target.spec, &status, active, now);
    apply(target, status, next, now)
}

/// Folds the selfplay jobs' counters into `status`; the games already handed to a run stay
/// consumed.
fn recount(target: &TrainingTarget, jobs: &[Job], status: &mut TrainingTargetStatus) {
    let selfplay = selfplay_jobs(&target.spec, jobs);
    let total = count_games(&mut status.ledger, &selfplay);
    let consumed = status
        .total_games
        .saturating_sub(status.games_since_last_training);
    status.total_games = total;
    status.games_since_last_training = total.saturating_sub(consumed);
}

/// `next` applied to `status`.
pub fn apply(
    target: &TrainingTarget,
    mut status: TrainingTargetStatus,
    next: Next,
    now: DateTime<Utc>,
) -> Plan {
    let mut happenings = Vec::new();
    let mut say = |reason, message: String| {
        happenings.push(Happening {
            target: target.name().into(),
            reason,
            message,
        })
    };
    let mut create = None;
    match next {
        Next::KeepGoing => {}
        Next::Wait { reason, priority } => {
            status.priority = priority;
            status.message = reason;
        }
        Next::Train {
            generation,
            priority,
        } => {
            let env = [(
                "RIFT_CURRENT_MODEL",
                status.current_model.clone().unwrap_or_default(),
            )];
            let template = &target.spec.training;
            let bump = priority.round() as i32;
            let job = stage_job(target, template, Stage::Training, generation, &env, bump);
            status.training_generation = generation;
            status.active_job = Some(job.name().into());
            status.priority = priority;
            // The games counted so far are the ones this run trains on.
            status.games_since_last_training = 0;
            status.message = format!("training run {generation}");
            status.history.push(TrainingRun {
                generation,
                job: job.name().into(),
                ..TrainingRun::default()
            });
            let limit = target.spec.history_limit.max(1) as usize;
            if status.history.len() > limit {
                let extra = status.history.len() - limit;
                status.history.drain(..extra);
            }
            say(
                Reason::TrainingStarted,
                format!("run {generation} started as job {}", job.name()),
            );
            create = Some(job);
        }
        Next::Evaluate {
            generation,
            candidate,
        } => {
            status.last_trained_at = Some(now);
            say(
                Reason::TrainingComplete,
                format!("run {generation} trained {candidate}"),
            );
            let eval = target
                .spec
                .evaluation
                .as_ref()
                .expect("decide evaluates only when an evaluation gate is set");
            let env = [
                ("RIFT_CANDIDATE_MODEL", candidate.clone()),
                (
                    "RIFT_CURRENT_MODEL",
                    status.current_model.clone().unwrap_or_default(),
                ),
            ];
            let job = stage_job(
                target,
                &eval.template,
                Stage::Evaluation,
                generation,
                &env,
                0,
            );
            status.active_job = Some(job.name().into());
            status.message = format!("evaluating {candidate}");
            if let Some(run) = run_mut(&mut status, generation) {
                run.candidate = Some(candidate);
            }
            create = Some(job);
        }
        Next::Finish { generation, end } => {
            let outcome = end.outcome();
            match &end {
                RunEnd::Vanished => say(
                    Reason::TrainingFailed,
                    format!("run {generation}: its job was deleted"),
                ),
                RunEnd::Failed { .. } => say(
                    Reason::TrainingFailed,
                    format!("run {generation}: {outcome}"),
                ),
                RunEnd::NoModel => {
                    status.last_trained_at = Some(now);
                    say(
                        Reason::TrainingComplete,
                        format!("run {generation} trained a model without a name"),
                    );
                    say(
                        Reason::TrainingFailed,
                        format!("run {generation}: the training result has no `model`"),
                    );
                }
                RunEnd::PromotedUnevaluated { model } => {
                    status.last_trained_at = Some(now);
                    say(
                        Reason::TrainingComplete,
                        format!("run {generation} trained {model}"),
                    );
                    say(
                        Reason::ModelPromoted,
                        format!("run {generation}: {model} promoted (no evaluation configured)"),
                    );
                }
                RunEnd::Evaluated { candidate, .. } if end.promoted() => say(
                    Reason::ModelPromoted,
                    format!(
                        "run {generation}: {} {outcome}",
                        candidate.as_deref().unwrap_or_default()
                    ),
                ),
                RunEnd::Evaluated { .. } => {}
            }
            status.active_job = None;
            status.message = outcome.clone();
            if end.promoted() {
                status.current_model = end.candidate().map(str::to_string);
            }
            let promoted = end.promoted();
            if let Some(run) = run_mut(&mut status, generation) {
                if let Some(c) = end.candidate() {
                    run.candidate = Some(c.into());
                }
                run.win_rate = match &end {
                    RunEnd::Evaluated { win_rate, .. } => *win_rate,
                    _ => None,
                };
                run.promoted = promoted;
                run.finished_at = Some(now);
                run.outcome = outcome;
            }
        }
    }
    Plan {
        create,
        status,
        happenings,
    }
}

fn run_mut(status: &mut TrainingTargetStatus, generation: u64) -> Option<&mut TrainingRun> {
    status
        .history
        .iter_mut()
        .rev()
        .find(|r| r.generation == generation)
}

fn owner_ref(target: &TrainingTarget) -> OwnerReference {
    OwnerReference {
        kind: "TrainingTarget".into(),
        name: target.name().into(),
        uid: target.metadata.uid.clone().unwrap_or_default(),
        controller: true,
    }
}

/// The Job for `stage` of run `n` from `template`, owned by the target and labelled with its
/// board, players and generation.
fn stage_job(
    target: &TrainingTarget,
    template: &JobTemplate,
    stage: Stage,
    n: u64,
    env: &[(&str, String)],
    priority: i32,
) -> Job {
    let name =
        crate::controllers::pools::member_name(&[target.name(), stage.label(), &n.to_string()]);
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
    let labels = &mut job.metadata.labels;
    *labels = template.metadata.labels.clone();
    labels.insert(TRAINING_TARGET.into(), target.name().into());
    labels.insert("board".into(), target.spec.board.clone());
    labels.insert("players".into(), target.spec.players.to_string());
    labels.insert(GENERATION.into(), n.to_string());
    labels.insert(STAGE.into(), stage.label().into());
    job.metadata.owner_references = vec![owner_ref(target)];
    job
}
