use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::games::count_games;
use super::plan::apply;
use super::*;
use crate::api::event::Reason;
use crate::api::job::JobSpec;
use crate::api::labels::STAGE;
use crate::api::training_target::{TrainingRun, TrainingTargetStatus};
use crate::api::{JobPhase, JobStatus, Object};

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn spec() -> TrainingTargetSpec {
    serde_json::from_value(serde_json::json!({
        "board": "hex8", "players": 2, "selfplaySelector": {"board": "hex8"},
        "firstTrainingGames": 2000, "retrainGames": 1000, "cooldownSeconds": 1800,
        "training": {"spec": {"command": ["train"]}}
    }))
    .unwrap()
}

fn status(new: u64, generation: u64, last_end: Option<i64>) -> TrainingTargetStatus {
    TrainingTargetStatus {
        games_since_last_training: new,
        training_generation: generation,
        history: last_end
            .map(|e| {
                vec![TrainingRun {
                    generation,
                    finished_at: Some(t(e)),
                    ..TrainingRun::default()
                }]
            })
            .unwrap_or_default(),
        ..TrainingTargetStatus::default()
    }
}

#[test]
fn first_run_needs_first_training_games_exactly() {
    assert!(matches!(
        trigger(&spec(), &status(1999, 0, None), t(0)),
        Trigger::Wait { .. }
    ));
    assert!(matches!(
        trigger(&spec(), &status(2000, 0, None), t(0)),
        Trigger::Train { .. }
    ));
}

#[test]
fn later_runs_need_retrain_games_after_the_cooldown() {
    // Ended 100 s ago: cooling down even with plenty of games.
    match trigger(&spec(), &status(5000, 1, Some(-100)), t(0)) {
        Trigger::Wait { reason, .. } => assert!(reason.contains("cooling down"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        trigger(&spec(), &status(999, 1, Some(-1800)), t(0)),
        Trigger::Wait { .. }
    ));
    assert!(matches!(
        trigger(&spec(), &status(1000, 1, Some(-1800)), t(0)),
        Trigger::Train { .. }
    ));
}

#[test]
fn staleness_trains_on_any_new_games_but_not_on_none() {
    let mut s = spec();
    s.staleness_hours = Some(1.0);
    assert!(matches!(
        trigger(&s, &status(1, 1, Some(-3600)), t(0)),
        Trigger::Train { .. }
    ));
    assert!(matches!(
        trigger(&s, &status(0, 1, Some(-36_000)), t(0)),
        Trigger::Wait { .. }
    ));
    assert!(matches!(
        trigger(&s, &status(1, 1, Some(-3000)), t(0)),
        Trigger::Wait { .. }
    ));
}

#[test]
fn one_active_run_at_a_time() {
    let mut st = status(10_000, 1, Some(-99_999));
    st.active_job = Some("hex8-2p-train-1".into());
    match trigger(&spec(), &st, t(0)) {
        Trigger::Wait { reason, .. } => assert!(reason.contains("active")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn priority_grows_with_new_games_and_staleness() {
    let mut s = spec();
    s.staleness_hours = Some(2.0);
    let p = |new, end| match trigger(&s, &status(new, 1, Some(end)), t(0)) {
        Trigger::Wait { priority, .. } | Trigger::Train { priority } => priority,
    };
    assert_eq!(p(500, -3600), 0.5 + 0.5);
    assert!(p(1000, -3600) > p(500, -3600));
    assert!(p(100_000, 0) <= 10.0, "the game term is capped at 10");
}

fn selfplay(name: &str, uid: &str, epoch: u64, attempt: u32, games: f64) -> Job {
    let mut j = Object::new(name, JobSpec::with_command(["sp"]));
    j.metadata.uid = Some(uid.into());
    let mut st = JobStatus {
        epoch: Some(epoch),
        attempts: attempt,
        ..JobStatus::default()
    };
    st.progress.insert("games".into(), games);
    j.status = Some(st);
    j
}

#[test]
fn a_restarted_job_adds_to_the_total_instead_of_resetting_it() {
    let mut ledger = BTreeMap::new();
    assert_eq!(
        count_games(&mut ledger, &[&selfplay("sp", "u", 1, 1, 300.0)]),
        300
    );
    // Attempt 2 starts again from zero: the 300 stay counted.
    assert_eq!(
        count_games(&mut ledger, &[&selfplay("sp", "u", 1, 2, 20.0)]),
        320
    );
    // A rescheduled job (new epoch) likewise.
    assert_eq!(
        count_games(&mut ledger, &[&selfplay("sp", "u", 2, 1, 5.0)]),
        325
    );
}

#[test]
fn counters_never_go_backwards_and_deleted_jobs_stay_counted() {
    let mut ledger = BTreeMap::new();
    count_games(
        &mut ledger,
        &[
            &selfplay("a", "u1", 1, 1, 100.0),
            &selfplay("b", "u2", 1, 1, 50.0),
        ],
    );
    // A stale, lower reading of a and b deleted altogether.
    assert_eq!(
        count_games(&mut ledger, &[&selfplay("a", "u1", 1, 1, 90.0)]),
        150
    );
}

// ---- decide: one test per edge of a run's stages ----

fn with_eval(mut s: TrainingTargetSpec, rate: f64) -> TrainingTargetSpec {
    s.evaluation = serde_json::from_value(serde_json::json!({
        "template": {"spec": {"command": ["eval"]}}, "promoteWinRate": rate
    }))
    .unwrap();
    s
}

fn running(generation: u64, candidate: Option<&str>) -> TrainingTargetStatus {
    TrainingTargetStatus {
        training_generation: generation,
        active_job: Some(format!("hex8-2p-train-{generation}")),
        history: vec![TrainingRun {
            generation,
            job: format!("hex8-2p-train-{generation}"),
            candidate: candidate.map(str::to_string),
            ..TrainingRun::default()
        }],
        ..TrainingTargetStatus::default()
    }
}

#[test]
fn no_active_run_and_enough_games_trains_the_next_generation() {
    match decide(&spec(), &status(1000, 3, Some(-99_999)), None, t(0)) {
        Next::Train { generation, .. } => assert_eq!(generation, 4),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decide(&spec(), &status(10, 3, Some(-99_999)), None, t(0)),
        Next::Wait { .. }
    ));
}

#[test]
fn an_unfinished_job_keeps_the_run_going() {
    let st = running(2, None);
    assert_eq!(
        decide(&spec(), &st, Some(ActiveRun::Going), t(0)),
        Next::KeepGoing
    );
}

#[test]
fn a_trained_model_is_evaluated_when_a_gate_is_set() {
    let st = running(2, None);
    let trained = ActiveRun::Trained {
        model: Some("m2".into()),
    };
    assert_eq!(
        decide(&with_eval(spec(), 0.6), &st, Some(trained), t(0)),
        Next::Evaluate {
            generation: 2,
            candidate: "m2".into()
        }
    );
}

#[test]
fn a_trained_model_is_promoted_at_once_without_a_gate() {
    let st = running(2, None);
    let trained = ActiveRun::Trained {
        model: Some("m2".into()),
    };
    let next = decide(&spec(), &st, Some(trained), t(0));
    match &next {
        Next::Finish { generation: 2, end } => {
            assert!(end.promoted());
            assert_eq!(end.candidate(), Some("m2"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn training_without_a_model_name_ends_the_run_unpromoted() {
    let next = decide(
        &with_eval(spec(), 0.6),
        &running(2, None),
        Some(ActiveRun::Trained { model: None }),
        t(0),
    );
    assert_eq!(
        next,
        Next::Finish {
            generation: 2,
            end: RunEnd::NoModel
        }
    );
}

#[test]
fn a_deleted_or_failed_job_ends_the_run_unpromoted() {
    for active in [
        ActiveRun::Vanished,
        ActiveRun::Failed {
            stage: Stage::Training,
            message: "exit 1".into(),
        },
        ActiveRun::Failed {
            stage: Stage::Evaluation,
            message: "exit 2".into(),
        },
    ] {
        match decide(&spec(), &running(2, Some("m2")), Some(active.clone()), t(0)) {
            Next::Finish { generation: 2, end } => {
                assert!(!end.promoted(), "{active:?}");
                assert_eq!(end.candidate(), None, "{active:?}");
            }
            other => panic!("{active:?}: {other:?}"),
        }
    }
}

#[test]
fn evaluation_promotes_at_the_threshold_and_not_below_it() {
    let s = with_eval(spec(), 0.6);
    let st = running(2, Some("m2"));
    let end =
        |w: Option<f64>| match decide(&s, &st, Some(ActiveRun::Evaluated { win_rate: w }), t(0)) {
            Next::Finish { end, .. } => end,
            other => panic!("{other:?}"),
        };
    assert!(end(Some(0.6)).promoted());
    assert!(!end(Some(0.599)).promoted());
    assert!(!end(None).promoted(), "a missing winRate never promotes");
    assert!(end(None).outcome().contains("winRate"));
}

#[test]
fn an_evaluation_with_no_recorded_candidate_never_promotes() {
    // Status lost the candidate (edited by hand): promoting would set currentModel to nothing.
    let next = decide(
        &with_eval(spec(), 0.5),
        &running(2, None),
        Some(ActiveRun::Evaluated {
            win_rate: Some(0.9),
        }),
        t(0),
    );
    match next {
        Next::Finish { end, .. } => assert!(!end.promoted()),
        other => panic!("{other:?}"),
    }
}

// ---- observe: what a Job says about the active run ----

fn stage_job_with(stage: &str, phase: JobPhase, result: serde_json::Value) -> Job {
    let mut j = Object::new("hex8-2p-x-2", JobSpec::with_command(["x"]));
    j.metadata.labels.insert(STAGE.into(), stage.into());
    j.status = Some(JobStatus {
        phase,
        result: Some(result),
        message: "boom".into(),
        ..JobStatus::default()
    });
    j
}

#[test]
fn observe_reads_the_stage_from_the_label_and_the_result_by_stage() {
    let ok = JobPhase::Succeeded;
    assert_eq!(
        ActiveRun::observe(Some(&stage_job_with(
            "train",
            ok,
            serde_json::json!({"model": "m"})
        ))),
        ActiveRun::Trained {
            model: Some("m".into())
        }
    );
    assert_eq!(
        ActiveRun::observe(Some(&stage_job_with(
            "eval",
            ok,
            serde_json::json!({"winRate": 0.7})
        ))),
        ActiveRun::Evaluated {
            win_rate: Some(0.7)
        }
    );
    assert_eq!(
        ActiveRun::observe(Some(&stage_job_with(
            "eval",
            JobPhase::Failed,
            serde_json::json!({})
        ))),
        ActiveRun::Failed {
            stage: Stage::Evaluation,
            message: "boom".into()
        }
    );
    assert_eq!(
        ActiveRun::observe(Some(&stage_job_with(
            "train",
            JobPhase::Running,
            serde_json::json!({})
        ))),
        ActiveRun::Going
    );
    assert_eq!(ActiveRun::observe(None), ActiveRun::Vanished);
}

// ---- plan: the whole pass as data ----

fn target(s: TrainingTargetSpec, st: TrainingTargetStatus) -> TrainingTarget {
    let mut t = Object::new("hex8-2p", s);
    t.metadata.uid = Some("tuid".into());
    t.status = Some(st);
    t
}

#[test]
fn a_due_target_plans_its_training_job_and_consumes_its_games() {
    let mut sp = selfplay("sp", "u", 1, 1, 2500.0);
    sp.metadata.labels.insert("board".into(), "hex8".into());
    let tgt = target(spec(), TrainingTargetStatus::default());
    let p = plan(&tgt, &[sp], t(0));
    let job = p.create.expect("a training job");
    assert_eq!(job.name(), "hex8-2p-train-1");
    assert_eq!(job.metadata.labels[STAGE], "train");
    assert_eq!(job.metadata.owner_references[0].uid, "tuid");
    assert_eq!(p.status.active_job.as_deref(), Some("hex8-2p-train-1"));
    assert_eq!(p.status.total_games, 2500);
    assert_eq!(p.status.games_since_last_training, 0);
    assert_eq!(p.happenings[0].reason, Reason::TrainingStarted);
    // The same pass again (the job now exists but has not reported): nothing new to create.
    let again = plan(&target(spec(), p.status.clone()), &[job], t(1));
    assert_eq!(again.create, None);
    assert_eq!(again.status.training_generation, 1);
}

#[test]
fn a_promotion_sets_the_current_model_and_finishes_the_run() {
    let s = with_eval(spec(), 0.6);
    let tgt = target(s, running(2, Some("m2")));
    let mut eval = stage_job_with(
        "eval",
        JobPhase::Succeeded,
        serde_json::json!({"winRate": 0.7}),
    );
    eval.metadata.name = "hex8-2p-train-2".into();
    let p = plan(&tgt, &[eval], t(0));
    assert_eq!(p.create, None);
    assert_eq!(p.status.current_model.as_deref(), Some("m2"));
    assert_eq!(p.status.active_job, None);
    let run = p.status.history.last().unwrap();
    assert!(run.promoted && run.finished_at == Some(t(0)));
    assert_eq!(run.win_rate, Some(0.7));
    assert_eq!(p.happenings[0].reason, Reason::ModelPromoted);
}

#[test]
fn a_trained_candidate_plans_an_evaluation_job_with_both_models() {
    let s = with_eval(spec(), 0.6);
    let mut st = running(2, None);
    st.current_model = Some("m1".into());
    let mut train = stage_job_with(
        "train",
        JobPhase::Succeeded,
        serde_json::json!({"model": "m2"}),
    );
    train.metadata.name = "hex8-2p-train-2".into();
    let p = plan(&target(s, st), &[train], t(0));
    let job = p.create.expect("an evaluation job");
    assert_eq!(job.name(), "hex8-2p-eval-2");
    assert_eq!(job.spec.env["RIFT_CANDIDATE_MODEL"], "m2");
    assert_eq!(job.spec.env["RIFT_CURRENT_MODEL"], "m1");
    assert_eq!(p.status.active_job.as_deref(), Some("hex8-2p-eval-2"));
    assert_eq!(
        p.status.history.last().unwrap().candidate.as_deref(),
        Some("m2")
    );
    assert_eq!(
        p.status.current_model.as_deref(),
        Some("m1"),
        "not yet promoted"
    );
}

#[test]
fn history_is_trimmed_to_its_limit() {
    let mut s = spec();
    s.history_limit = 2;
    let mut st = status(5000, 3, Some(-99_999));
    st.history = (1..=3)
        .map(|g| TrainingRun {
            generation: g,
            finished_at: Some(t(-99_999)),
            ..TrainingRun::default()
        })
        .collect();
    let p = apply(
        &target(s, st.clone()),
        st,
        Next::Train {
            generation: 4,
            priority: 1.0,
        },
        t(0),
    );
    let gens: Vec<u64> = p.status.history.iter().map(|r| r.generation).collect();
    assert_eq!(gens, vec![3, 4]);
}
