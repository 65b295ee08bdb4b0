use super::*;
use crate::api::duration::HumanDuration;
use crate::api::meta::OwnerReference;
use crate::api::node::NodeSpec;
use crate::api::{JobPhase, JobSpec, JobStatus, Object};

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn job(name: &str, on_lost: OnNodeLost, phase: JobPhase) -> Job {
    let mut spec = JobSpec::with_command(["x"]);
    spec.on_node_lost = on_lost;
    spec.lost_after = HumanDuration::from_secs(60);
    let mut j = Object::new(name, spec);
    j.status = Some(JobStatus {
        phase,
        ..JobStatus::default()
    });
    j
}

fn node(name: &str) -> Node {
    Object::new(name, NodeSpec::default())
}

fn placed(node: &str) -> (Placement, i64) {
    (
        Placement {
            node: Some(node.into()),
            gpus: vec![],
            epoch: 3,
            pending: None,
        },
        42,
    )
}

fn run(
    nodes: &[Node],
    jobs: &[Job],
    pools: &[Pool],
    placements: &[(&str, (Placement, i64))],
    lost: &[(&str, u64)],
) -> Chores {
    let placements = placements
        .iter()
        .map(|(j, p)| (j.to_string(), p.clone()))
        .collect();
    let lost = lost
        .iter()
        .map(|(n, s)| (n.to_string(), Duration::from_secs(*s)))
        .collect();
    decide(
        nodes,
        jobs,
        pools,
        &placements,
        &lost,
        &Housekeeping::default(),
        t(0),
    )
}

#[test]
fn reschedule_jobs_move_only_after_lost_after_plus_margin_and_wait_jobs_never() {
    let jobs = [
        job("sp", OnNodeLost::Reschedule, JobPhase::Running),
        job("train", OnNodeLost::Wait, JobPhase::Running),
    ];
    let placements = [("sp", placed("n1")), ("train", placed("n1"))];
    // lostAfter 60 s + margin 10 s.
    assert!(run(&[node("n1")], &jobs, &[], &placements, &[("n1", 69)])
        .writes
        .is_empty());
    let c = run(&[node("n1")], &jobs, &[], &placements, &[("n1", 70)]);
    assert_eq!(c.writes.len(), 1);
    match &c.writes[0] {
        Write::Evict {
            job,
            node,
            epoch,
            expect,
            reason,
        } => {
            assert_eq!(
                (job.as_str(), node.as_str(), *epoch, *expect),
                ("sp", "n1", 3, Some(42))
            );
            assert!(reason.contains("lost for 70s"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn draining_and_deleted_nodes_lose_every_unfinished_job() {
    let mut draining = node("n1");
    draining
        .metadata
        .annotations
        .insert(DRAIN_ANNOTATION.into(), "now".into());
    let jobs = [
        job("a", OnNodeLost::Wait, JobPhase::Running),
        job("b", OnNodeLost::Wait, JobPhase::Succeeded),
        job("c", OnNodeLost::Wait, JobPhase::Running),
    ];
    let c = run(
        &[draining],
        &jobs,
        &[],
        &[
            ("a", placed("n1")),
            ("b", placed("n1")),
            ("c", placed("gone")),
        ],
        &[],
    );
    let evicted: Vec<&str> = c
        .writes
        .iter()
        .map(|w| match w {
            Write::Evict { job, .. } => job.as_str(),
            _ => "?",
        })
        .collect();
    assert_eq!(evicted, ["a", "c"], "finished jobs stay where they ran");
}

#[test]
fn placements_of_deleted_jobs_are_forgotten() {
    let c = run(&[node("n1")], &[], &[], &[("ghost", placed("n1"))], &[]);
    assert_eq!(
        c.writes,
        [Write::Forget {
            job: "ghost".into(),
            node: Some("n1".into()),
            expect: 42
        }]
    );
}

#[test]
fn finished_jobs_are_deleted_after_their_ttl() {
    let mut done = job("done", OnNodeLost::Wait, JobPhase::Succeeded);
    done.spec.ttl_after_finished = Some(HumanDuration::from_secs(100));
    done.status.as_mut().unwrap().finish_time = Some(t(-100));
    let mut young = done.clone();
    young.metadata.name = "young".into();
    young.status.as_mut().unwrap().finish_time = Some(t(-99));
    let c = run(&[], &[done, young], &[], &[], &[]);
    assert_eq!(c.delete_jobs, ["done"]);
}

#[test]
fn members_of_a_deleted_or_recreated_pool_are_deleted() {
    let spec: crate::api::pool::PoolSpec = serde_json::from_value(serde_json::json!(
        {"replicas": 1, "template": {"spec": {"command": ["x"]}}}))
    .unwrap();
    let mut pool = Object::new("sp", spec);
    pool.metadata.uid = Some("new".into());
    let owned = |name: &str, uid: &str| {
        let mut j = job(name, OnNodeLost::Wait, JobPhase::Running);
        j.metadata.owner_references.push(OwnerReference {
            kind: "Pool".into(),
            name: "sp".into(),
            uid: uid.into(),
            controller: true,
        });
        j
    };
    let c = run(
        &[],
        &[owned("keep", "new"), owned("stale", "old")],
        &[pool],
        &[],
        &[],
    );
    assert_eq!(c.delete_jobs, ["stale"]);
    let c = run(&[], &[owned("orphan", "new")], &[], &[], &[]);
    assert_eq!(c.delete_jobs, ["orphan"]);
}
