use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::games::{count_artifact_games, count_games, games_between};
use super::plan::apply;
use super::*;
use crate::api::artifact::Producer;
use crate::api::event::Reason;
use crate::api::job::JobSpec;
use crate::api::job_io::JobInput;
use crate::api::labels::STAGE;
use crate::api::labels::{JOB, OUTPUT, TRAINING_TARGET};
use crate::api::training_target::{TrainingRun, TrainingTargetStatus};
use crate::api::{JobPhase, JobStatus, Object};
use crate::controllers::cluster_view::StoredArtifact;
use crate::controllers::template_inputs::tests::art;

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
    let observe = |job: &Job| ActiveRun::observe(Some(job), &[], t(0));
    assert_eq!(
        observe(&stage_job_with(
            "eval",
            ok,
            serde_json::json!({"winRate": 0.7})
        )),
        ActiveRun::Evaluated {
            win_rate: Some(0.7)
        }
    );
    assert_eq!(
        observe(&stage_job_with(
            "eval",
            JobPhase::Failed,
            serde_json::json!({})
        )),
        ActiveRun::Failed {
            stage: Stage::Evaluation,
            message: "boom".into()
        }
    );
    assert_eq!(
        observe(&stage_job_with(
            "train",
            JobPhase::Running,
            serde_json::json!({})
        )),
        ActiveRun::Going
    );
    assert_eq!(ActiveRun::observe(None, &[], t(0)), ActiveRun::Vanished);
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
    let p = plan(&tgt, &[sp], &[], t(0));
    let job = p.create.expect("a training job");
    assert_eq!(job.name(), "hex8-2p-train-1");
    assert_eq!(job.metadata.labels[STAGE], "train");
    assert_eq!(job.metadata.owner_references[0].uid, "tuid");
    assert_eq!(p.status.active_job.as_deref(), Some("hex8-2p-train-1"));
    assert_eq!(p.status.total_games, 2500);
    assert_eq!(p.status.games_since_last_training, 0);
    assert_eq!(p.happenings[0].reason, Reason::TrainingStarted);
    // The same pass again (the job now exists but has not reported): nothing new to create.
    let again = plan(&target(spec(), p.status.clone()), &[job], &[], t(1));
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
    let p = plan(&tgt, &[eval], &[], t(0));
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
    let m1 = shard(1, 1, &[]).artifact.name().to_string();
    st.current_model = Some(m1.clone());
    let mut train = stage_job_with("train", JobPhase::Succeeded, serde_json::json!({}));
    train.metadata.name = "hex8-2p-train-2".into();
    let m2 = model_of("hex8-2p-train-2", 2, 50);
    let m2_name = m2.artifact.name().to_string();
    let p = plan(&target(s, st), &[train], &[m2], t(0));
    let job = p.create.expect("an evaluation job");
    assert_eq!(job.name(), "hex8-2p-eval-2");
    assert_eq!(job.spec.env["RIFT_CANDIDATE_MODEL"], m2_name);
    assert_eq!(job.spec.env["RIFT_CURRENT_MODEL"], m1);
    assert_eq!(
        job.spec.inputs,
        vec![
            JobInput::of("candidate", [m2_name.clone()]),
            JobInput::of("model", [m1.clone()]),
        ]
    );
    assert_eq!(p.status.active_job.as_deref(), Some("hex8-2p-eval-2"));
    assert_eq!(
        p.status.history.last().unwrap().candidate.as_deref(),
        Some(m2_name.as_str())
    );
    assert_eq!(
        p.status.current_model.as_deref(),
        Some(m1.as_str()),
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
        &[],
        t(0),
    );
    let gens: Vec<u64> = p.status.history.iter().map(|r| r.generation).collect();
    assert_eq!(gens, vec![3, 4]);
}

// ---- the loop on artifacts: games in, model out ----

/// A game shard as the artifacts controller records it: the selfplay Job's labels and a
/// `games` count.
fn shard(n: u8, rev: i64, labels: &[(&str, &str)]) -> StoredArtifact {
    let mut a = art(n, rev, labels);
    a.artifact.spec.counts.insert("games".into(), 100);
    a
}

fn hex8(n: u8, rev: i64) -> StoredArtifact {
    shard(n, rev, &[("board", "hex8"), (OUTPUT, "games")])
}

/// The artifact a training Job's `model` output made.
fn model_of(job: &str, n: u8, rev: i64) -> StoredArtifact {
    let mut a = art(
        n,
        rev,
        &[(JOB, job), (OUTPUT, "model"), (TRAINING_TARGET, "hex8-2p")],
    );
    a.artifact.spec.producer = Some(Producer {
        job: job.into(),
        attempt: 1,
        node: "n1".into(),
    });
    a
}

#[test]
fn each_game_artifact_is_counted_once_however_often_it_is_seen() {
    let s = spec();
    let mut st = TrainingTargetStatus::default();
    let arts = vec![hex8(1, 10), hex8(2, 11)];
    count_artifact_games(&s, &mut st, &arts);
    count_artifact_games(&s, &mut st, &arts);
    assert_eq!((st.artifact_games, st.games_revision), (200, 11));
    // A new shard (and the old ones seen again) adds only its own games.
    let more = vec![hex8(1, 10), hex8(2, 11), hex8(3, 12)];
    count_artifact_games(&s, &mut st, &more);
    assert_eq!((st.artifact_games, st.games_revision), (300, 12));
    // A shard deleted by GC leaves the count alone.
    count_artifact_games(&s, &mut st, &[hex8(3, 12)]);
    assert_eq!(st.artifact_games, 300);
}

#[test]
fn only_the_selected_selfplay_shards_count_never_models_or_other_boards() {
    let s = spec();
    let mut st = TrainingTargetStatus::default();
    let mut own_output = shard(4, 13, &[("board", "hex8")]);
    own_output
        .artifact
        .metadata
        .labels
        .insert(TRAINING_TARGET.into(), "hex8-2p".into());
    let arts = vec![
        hex8(1, 10),
        shard(2, 11, &[("board", "square8")]),
        art(3, 12, &[("board", "hex8")]), // no `games` count: not a game shard
        own_output,                       // a target's own job made it
    ];
    count_artifact_games(&s, &mut st, &arts);
    assert_eq!(st.artifact_games, 100);
}

#[test]
fn a_training_run_gets_the_games_since_the_last_run_and_the_current_model() {
    let m1 = model_of("hex8-2p-train-1", 9, 5);
    let mut st = status(0, 1, Some(-99_999));
    st.current_model = Some(m1.artifact.name().into());
    // Run 1 trained on the shards up to revision 11.
    st.games_revision = 11;
    st.trained_revision = 11;
    st.artifact_games = 2000;
    st.total_games = 2000;
    let arts: Vec<StoredArtifact> = (1..=12).map(|i| hex8(i, 10 + i as i64)).collect();
    let p = plan(&target(spec(), st), &[], &arts, t(0));
    let job = p.create.expect("run 2 has 1100 new games");
    let games: Vec<String> = arts[1..]
        .iter()
        .map(|a| a.artifact.name().to_string())
        .collect();
    assert_eq!(job.spec.inputs[0], JobInput::of("games", games));
    assert_eq!(
        job.spec.inputs[1],
        JobInput::of("model", [m1.artifact.name().to_string()]),
        "warm start from the current model"
    );
    assert_eq!(p.status.trained_revision, 22);
    assert_eq!(p.status.games_since_last_training, 0);
    // The next run starts after revision 22: the same shards are never trained on twice.
    let mut next = p.status.clone();
    next.active_job = None;
    let later = games_between(&spec(), &arts, next.trained_revision, 99, 10_000);
    assert!(later.is_empty(), "{later:?}");
}

#[test]
fn a_training_template_without_a_model_output_gets_one_labelled_with_the_run() {
    let p = plan(
        &target(spec(), TrainingTargetStatus::default()),
        &[],
        &(1..=20).map(|i| hex8(i, i as i64)).collect::<Vec<_>>(),
        t(0),
    );
    let job = p.create.expect("2000 games start run 1");
    let model = job
        .spec
        .outputs
        .iter()
        .find(|o| o.name == "model")
        .expect("a model output");
    assert_eq!(model.labels["type"], "model");
    assert_eq!(model.labels[TRAINING_TARGET], "hex8-2p");
    assert_eq!(model.labels["board"], "hex8");
    assert!(
        job.spec.inputs.iter().all(|i| i.name != "model"),
        "no current model: a cold start"
    );
    assert!(job.validate().is_empty(), "{}", job.validate());
}

#[test]
fn the_candidate_is_the_artifact_of_the_model_output_waited_for_a_while() {
    let mut train = stage_job_with("train", JobPhase::Succeeded, serde_json::json!({}));
    train.metadata.name = "hex8-2p-train-2".into();
    train.status.as_mut().unwrap().finish_time = Some(t(0));
    let m2 = model_of("hex8-2p-train-2", 2, 50);
    let other = model_of("hex8-2p-train-1", 1, 40);
    assert_eq!(
        ActiveRun::observe(Some(&train), &[other.clone(), m2.clone()], t(1)),
        ActiveRun::Trained {
            model: Some(m2.artifact.name().into())
        }
    );
    // Succeeded, but its upload not yet recorded: the run waits, then ends without a model.
    assert_eq!(
        ActiveRun::observe(Some(&train), std::slice::from_ref(&other), t(1)),
        ActiveRun::Going
    );
    let late = t(MODEL_ARTIFACT_WAIT.num_seconds());
    assert_eq!(
        ActiveRun::observe(Some(&train), &[other], late),
        ActiveRun::Trained { model: None }
    );
    assert!(RunEnd::NoModel.outcome().contains("$RIFT_OUTPUTS/model/"));
}

#[test]
fn a_promotion_names_the_model_artifact_as_the_current_model() {
    let mut train = stage_job_with("train", JobPhase::Succeeded, serde_json::json!({}));
    train.metadata.name = "hex8-2p-train-2".into();
    let m2 = model_of("hex8-2p-train-2", 2, 50);
    let p = plan(
        &target(spec(), running(2, None)),
        &[train],
        std::slice::from_ref(&m2),
        t(0),
    );
    assert_eq!(
        p.status.current_model.as_deref(),
        Some(m2.artifact.name()),
        "no evaluation gate: promoted at once"
    );
}

#[test]
fn a_template_selector_matching_nothing_holds_the_run_back_and_says_why() {
    let mut s = spec();
    s.training.spec.inputs = vec![JobInput {
        name: "book".into(),
        artifacts: vec![],
        selector: [("type".to_string(), "openings".to_string())].into(),
    }];
    let arts: Vec<StoredArtifact> = (1..=20).map(|i| hex8(i, i as i64)).collect();
    let p = plan(
        &target(s.clone(), TrainingTargetStatus::default()),
        &[],
        &arts,
        t(0),
    );
    assert_eq!(p.create, None);
    assert_eq!(p.status.training_generation, 0, "no run started");
    assert_eq!(p.status.trained_revision, 0, "no games consumed");
    assert!(
        p.status.message.contains("type=openings"),
        "{}",
        p.status.message
    );
    // Once a book exists, the run starts with it resolved to its name.
    let mut with_book = arts.clone();
    with_book.push(art(99, 30, &[("type", "openings")]));
    let p = plan(
        &target(s, TrainingTargetStatus::default()),
        &[],
        &with_book,
        t(0),
    );
    let job = p.create.expect("run 1");
    assert_eq!(
        job.spec.inputs[0],
        JobInput::of("book", [with_book[20].artifact.name().to_string()])
    );
}

#[test]
fn templates_may_not_declare_the_inputs_the_target_fills() {
    let mut s = spec();
    s.training.spec.inputs = vec![JobInput::of(
        "games",
        [art(1, 1, &[]).artifact.name().to_string()],
    )];
    let errors = Object::new("t", s).validate().to_string();
    assert!(
        errors.contains("spec.training.spec.inputs[0].name"),
        "{errors}"
    );
    assert!(errors.contains("filled by the TrainingTarget"), "{errors}");
}
