use super::*;

const S: u128 = 1_000_000_000;

fn instance(
    job: &str,
    pid: u32,
    start_s: u128,
    stop: Option<(u128, &str)>,
    alive: bool,
) -> InstanceView {
    InstanceView {
        job: job.into(),
        pid,
        started_ns: start_s * S,
        stopped_ns: stop.map(|(t, _)| t * S),
        stop: stop.map(|(_, how)| how.to_string()),
        alive,
    }
}

fn running(pid: u32) -> JobView {
    JobView {
        phase: JobPhase::Running,
        node: Some("w1".into()),
        pid: Some(pid),
        ..JobView::default()
    }
}

fn snap(jobs: &[(&str, JobView)], instances: Vec<InstanceView>) -> Snapshot {
    Snapshot {
        jobs: jobs
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect(),
        instances,
        lock_overlaps: vec![],
        at_ns: 100 * S,
    }
}

fn track(jobs: &[(&str, Tracked)]) -> BTreeMap<String, Tracked> {
    jobs.iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

fn classes(v: &[Violation]) -> Vec<&'static str> {
    v.iter().map(Violation::class).collect()
}

#[test]
fn one_live_instance_named_by_the_status_keeps_every_promise() {
    let s = snap(
        &[("a", running(10))],
        vec![instance("a", 10, 1, None, true)],
    );
    assert_eq!(judge(&track(&[("a", Tracked::steady())]), &s), vec![]);
}

#[test]
fn an_instance_that_found_the_lock_held_is_one_overlap() {
    let mut s = snap(
        &[("a", running(10))],
        vec![
            instance("a", 10, 1, None, true),
            instance("a", 11, 5, Some((6, "term")), false),
        ],
    );
    s.lock_overlaps.push(Record {
        event: Event::Overlap,
        job: "a".into(),
        pid: 11,
        at_ns: 5 * S,
        detail: "2".into(),
    });
    let v = judge(&track(&[("a", Tracked::movable())]), &s);
    assert_eq!(classes(&v), ["overlap"], "{v:?}");
}

#[test]
fn lifetimes_that_intersect_are_an_overlap_the_lock_did_not_see() {
    // 11 started without the lock (its own overlap line lost), 12 started while 11 lived.
    let s = snap(
        &[("a", running(12))],
        vec![
            instance("a", 11, 1, Some((9, "term")), false),
            instance("a", 12, 5, None, true),
        ],
    );
    let v = judge(&track(&[("a", Tracked::movable())]), &s);
    assert_eq!(classes(&v), ["overlap"], "{v:?}");
}

#[test]
fn a_handover_after_the_old_instance_stopped_is_no_overlap_and_a_sigkilled_one_has_no_known_end() {
    let s = snap(
        &[("a", running(12))],
        vec![
            instance("a", 10, 1, None, false), // SIGKILLed: no stop line
            instance("a", 11, 2, Some((3, "term")), false),
            instance("a", 12, 4, None, true),
        ],
    );
    assert_eq!(judge(&track(&[("a", Tracked::movable())]), &s), vec![]);
}

#[test]
fn restarts_beyond_the_allowance_and_kills_of_a_steady_job_are_counted() {
    let s = snap(
        &[("a", running(12))],
        vec![
            instance("a", 10, 1, None, false),
            instance("a", 11, 2, Some((3, "term")), false),
            instance("a", 12, 4, None, true),
        ],
    );
    let v = judge(&track(&[("a", Tracked::steady())]), &s);
    assert_eq!(classes(&v), ["restarted", "killed", "killed"], "{v:?}");
}

#[test]
fn failed_gone_and_running_without_a_process_are_lost() {
    let failed = JobView {
        phase: JobPhase::Failed,
        reason: "NodeLost".into(),
        ..JobView::default()
    };
    let s = snap(
        &[("f", failed), ("r", running(20))],
        vec![instance("r", 20, 1, Some((2, "term")), false)],
    );
    let t = track(&[
        ("f", Tracked::movable()),
        ("gone", Tracked::movable()),
        ("r", Tracked::movable()),
    ]);
    let v = judge(&t, &s);
    assert_eq!(classes(&v), ["lost", "lost", "lost"], "{v:?}");
    assert!(v[0].to_string().contains("NodeLost"), "{}", v[0]);
    assert!(v.iter().all(Violation::is_state));
}

#[test]
fn pending_a_wrong_pid_and_an_unfinished_finisher_are_stuck() {
    let pending = JobView {
        phase: JobPhase::Pending,
        message: "0/3 nodes: 3 not ready".into(),
        ..JobView::default()
    };
    let s = snap(
        &[
            ("p", pending),
            ("w", running(31)),
            ("f", running(40)),
            ("h", running(0)),
        ],
        vec![
            instance("w", 30, 1, None, true),
            instance("f", 40, 1, None, true),
        ],
    );
    let t = track(&[
        ("p", Tracked::steady()),
        ("w", Tracked::steady()),
        ("f", Tracked::finishing(true)),
        ("h", Tracked::finishing(false)),
    ]);
    let v = judge(&t, &s);
    assert_eq!(classes(&v), ["stuck", "stuck", "stuck", "stuck"], "{v:?}");
}

#[test]
fn a_finished_job_and_a_hollow_running_one_are_fine() {
    let done = JobView {
        phase: JobPhase::Succeeded,
        ..JobView::default()
    };
    let s = snap(
        &[("d", done), ("h", running(0))],
        vec![instance("d", 50, 1, Some((2, "done")), false)],
    );
    let mut hollow = Tracked::steady();
    hollow.real = false;
    let t = track(&[("d", Tracked::finishing(true)), ("h", hollow)]);
    assert_eq!(judge(&t, &s), vec![]);
}

#[test]
fn counts_name_every_class() {
    let c = counts(&[Violation::Restarted {
        job: "a".into(),
        starts: 2,
    }]);
    assert_eq!(c.len(), 5);
    assert_eq!(c["restarted"], 1);
    assert_eq!(c["overlap"], 0);
}

#[test]
fn a_deleted_job_with_a_live_instance_is_stuck_and_without_one_is_fine() {
    let deleted = Tracked {
        expect: Expect::Deleted,
        real: true,
        max_starts: None,
        may_be_stopped: true,
    };
    let t = track(&[("d", deleted)]);
    let lives = snap(&[], vec![instance("d", 60, 1, None, true)]);
    assert_eq!(classes(&judge(&t, &lives)), ["stuck"]);
    let ended = snap(&[], vec![instance("d", 60, 1, Some((5, "term")), false)]);
    assert_eq!(judge(&t, &ended), vec![]);
}
