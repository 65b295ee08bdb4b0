use super::*;
use crate::api::JobStatus;

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
        decide(&spec(), &status(1999, 0, None), t(0)),
        Decision::Wait { .. }
    ));
    assert!(matches!(
        decide(&spec(), &status(2000, 0, None), t(0)),
        Decision::Train { .. }
    ));
}

#[test]
fn later_runs_need_retrain_games_after_the_cooldown() {
    // Ended 100 s ago: cooling down even with plenty of games.
    match decide(&spec(), &status(5000, 1, Some(-100)), t(0)) {
        Decision::Wait { reason, .. } => assert!(reason.contains("cooling down"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decide(&spec(), &status(999, 1, Some(-1800)), t(0)),
        Decision::Wait { .. }
    ));
    assert!(matches!(
        decide(&spec(), &status(1000, 1, Some(-1800)), t(0)),
        Decision::Train { .. }
    ));
}

#[test]
fn staleness_trains_on_any_new_games_but_not_on_none() {
    let mut s = spec();
    s.staleness_hours = Some(1.0);
    assert!(matches!(
        decide(&s, &status(1, 1, Some(-3600)), t(0)),
        Decision::Train { .. }
    ));
    assert!(matches!(
        decide(&s, &status(0, 1, Some(-36_000)), t(0)),
        Decision::Wait { .. }
    ));
    assert!(matches!(
        decide(&s, &status(1, 1, Some(-3000)), t(0)),
        Decision::Wait { .. }
    ));
}

#[test]
fn one_active_run_at_a_time() {
    let mut st = status(10_000, 1, Some(-99_999));
    st.active_job = Some("hex8-2p-train-1".into());
    match decide(&spec(), &st, t(0)) {
        Decision::Wait { reason, .. } => assert!(reason.contains("active")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn priority_grows_with_new_games_and_staleness() {
    let mut s = spec();
    s.staleness_hours = Some(2.0);
    let p = |new, end| match decide(&s, &status(new, 1, Some(end)), t(0)) {
        Decision::Wait { priority, .. } | Decision::Train { priority } => priority,
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
