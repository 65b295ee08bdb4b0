use super::*;
use crate::api::duration::HumanDuration;
use crate::api::meta::OwnerReference;
use crate::api::node::NodeSpec;
use crate::api::placement::{Binding, StopOrder};
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
            uid: String::new(),
        },
        42,
    )
}

fn bound(node: &str, job: &str) -> BoundRecord {
    BoundRecord {
        node: node.into(),
        job: job.into(),
        binding: Binding {
            gpus: vec![0],
            epoch: 3,
            ..Binding::default()
        },
        revision: 7,
    }
}

fn ordered_off(node: &str, job: &str) -> BoundRecord {
    let mut b = bound(node, job);
    b.binding.stop = Some(StopOrder {
        reason: "node n1 is being drained".into(),
        for_job: None,
    });
    b
}

/// Everything [`decide`] reads, with defaults for what a test does not set.
#[derive(Default)]
struct Given {
    nodes: Vec<Node>,
    jobs: Vec<Job>,
    pools: Vec<Pool>,
    placements: Vec<(&'static str, (Placement, i64))>,
    bindings: Vec<BoundRecord>,
    released: Vec<(&'static str, &'static str, u64)>,
    lost: Vec<(&'static str, u64)>,
    undecodable: Undecodable,
}

impl Given {
    fn decide(&self) -> Chores {
        let placements = self
            .placements
            .iter()
            .map(|(j, p)| (j.to_string(), p.clone()))
            .collect();
        let lost = self
            .lost
            .iter()
            .map(|(n, s)| (n.to_string(), Duration::from_secs(*s)))
            .collect();
        let released = self
            .released
            .iter()
            .map(|(n, j, e)| (n.to_string(), j.to_string(), *e))
            .collect();
        let world = World {
            nodes: &self.nodes,
            jobs: &self.jobs,
            undecodable: &self.undecodable,
            pools: &self.pools,
            placements: &placements,
            bindings: &self.bindings,
            released: &released,
            lost_for: &lost,
        };
        decide(&world, &Housekeeping::default(), t(0))
    }
}

fn run(
    nodes: &[Node],
    jobs: &[Job],
    pools: &[Pool],
    placements: &[(&'static str, (Placement, i64))],
    lost: &[(&'static str, u64)],
) -> Chores {
    Given {
        nodes: nodes.to_vec(),
        jobs: jobs.to_vec(),
        pools: pools.to_vec(),
        placements: placements.to_vec(),
        lost: lost.to_vec(),
        ..Given::default()
    }
    .decide()
}

fn kinds(c: &Chores) -> Vec<(&'static str, String)> {
    c.writes
        .iter()
        .map(|w| {
            let kind = match w {
                Write::Place { .. } => "place",
                Write::Pending { .. } => "pending",
                Write::Stop { .. } => "stop",
                Write::Release { .. } => "release",
                Write::Forget { .. } => "forget",
            };
            (kind, w.job().to_string())
        })
        .collect()
}

#[test]
fn a_reschedule_job_leaves_a_lost_node_only_after_lost_after_plus_grace_plus_margin_and_a_wait_job_never(
) {
    // lostAfter 60 s + grace 30 s (the default) + margin 10 s = 100 s.
    let given = |lost: u64| Given {
        nodes: vec![node("n1")],
        jobs: vec![
            job("sp", OnNodeLost::Reschedule, JobPhase::Running),
            job("train", OnNodeLost::Wait, JobPhase::Running),
        ],
        placements: vec![("sp", placed("n1")), ("train", placed("n1"))],
        bindings: vec![bound("n1", "sp"), bound("n1", "train")],
        lost: vec![("n1", lost)],
        ..Given::default()
    };
    assert!(
        given(99).decide().writes.is_empty(),
        "not before the grace period is over"
    );
    let c = given(100).decide();
    assert_eq!(kinds(&c), [("release", "sp".to_string())]);
    match &c.writes[0] {
        Write::Release {
            node,
            expect_binding,
            placement: Some(p),
            ..
        } => {
            assert_eq!((node.as_str(), *expect_binding), ("n1", 7));
            assert_eq!((p.epoch, p.expect), (3, Some(42)));
            assert!(p.reason.contains("lost for 100s"), "{}", p.reason);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn draining_and_deleted_nodes_order_every_unfinished_job_off_and_hand_nothing_over_yet() {
    let mut draining = node("n1");
    draining
        .metadata
        .annotations
        .insert(DRAIN_ANNOTATION.into(), "now".into());
    let c = Given {
        nodes: vec![draining],
        jobs: vec![
            job("a", OnNodeLost::Wait, JobPhase::Running),
            job("b", OnNodeLost::Wait, JobPhase::Succeeded),
            job("c", OnNodeLost::Wait, JobPhase::Running),
        ],
        placements: vec![
            ("a", placed("n1")),
            ("b", placed("n1")),
            ("c", placed("gone")),
        ],
        bindings: vec![bound("n1", "a"), bound("n1", "b"), bound("gone", "c")],
        ..Given::default()
    }
    .decide();
    assert_eq!(
        kinds(&c),
        [("stop", "a".to_string()), ("stop", "c".to_string())],
        "finished jobs stay where they ran; nothing is released before its instance is gone"
    );
    match &c.writes[1] {
        Write::Stop {
            binding,
            expect_binding,
            placement: Some(p),
            ..
        } => {
            let stop = binding.stop.as_ref().unwrap();
            assert_eq!(stop.reason, "node gone was deleted");
            assert_eq!(
                (binding.gpus.as_slice(), binding.epoch),
                (&[0][..], 3),
                "it keeps its GPUs"
            );
            assert_eq!((*expect_binding, p.expect), (7, Some(42)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_stop_order_is_released_only_when_its_agent_reports_that_epoch_released() {
    let given = |released: Vec<(&'static str, &'static str, u64)>| Given {
        nodes: vec![node("n1")],
        jobs: vec![job("a", OnNodeLost::Wait, JobPhase::Pending)],
        bindings: vec![ordered_off("n1", "a")],
        released,
        ..Given::default()
    };
    assert!(given(vec![]).decide().writes.is_empty(), "still stopping");
    assert!(
        given(vec![("n1", "a", 2)]).decide().writes.is_empty(),
        "a report of another epoch proves nothing"
    );
    assert_eq!(
        kinds(&given(vec![("n1", "a", 3)]).decide()),
        [("release", "a".to_string())]
    );
}

#[test]
fn a_stopping_wait_job_on_a_lost_node_is_released_only_if_its_node_was_deleted() {
    let given = |nodes: Vec<Node>| Given {
        nodes,
        jobs: vec![job("train", OnNodeLost::Wait, JobPhase::Running)],
        bindings: vec![ordered_off("n1", "train")],
        lost: vec![("n1", 10_000)],
        ..Given::default()
    };
    assert!(
        given(vec![node("n1")]).decide().writes.is_empty(),
        "it may still run there"
    );
    assert_eq!(
        kinds(&given(vec![]).decide()),
        [("release", "train".to_string())],
        "deleting the Node declares the machine gone"
    );
}

#[test]
fn the_binding_terms_win_over_a_later_edit_of_the_job() {
    let mut b = bound("n1", "sp");
    let mut spec = JobSpec::with_command(["x"]);
    spec.on_node_lost = OnNodeLost::Reschedule;
    spec.lost_after = HumanDuration::from_secs(600);
    b.binding.terms = Some(LossTerms::of(&spec));
    let given = Given {
        nodes: vec![node("n1")],
        // Edited since: 60 s now; the node counts with 600 s.
        jobs: vec![job("sp", OnNodeLost::Reschedule, JobPhase::Running)],
        placements: vec![("sp", placed("n1"))],
        bindings: vec![b],
        lost: vec![("n1", 200)],
        ..Given::default()
    };
    assert!(given.decide().writes.is_empty());
}

#[test]
fn a_job_created_again_under_its_name_has_the_old_instance_ordered_off_first() {
    let mut old = bound("n1", "a");
    old.binding.uid = "uid-1".into();
    let mut again = job("a", OnNodeLost::Wait, JobPhase::Running);
    again.metadata.uid = Some("uid-2".into());
    let c = Given {
        nodes: vec![node("n1")],
        jobs: vec![again],
        placements: vec![("a", placed("n1"))],
        bindings: vec![old],
        ..Given::default()
    }
    .decide();
    assert_eq!(kinds(&c), [("stop", "a".to_string())]);
}

#[test]
fn placements_of_deleted_jobs_are_forgotten_once_nothing_of_them_is_bound() {
    let c = Given {
        nodes: vec![node("n1")],
        placements: vec![("ghost", placed("n1"))],
        bindings: vec![bound("n1", "ghost")],
        ..Given::default()
    }
    .decide();
    assert_eq!(
        kinds(&c),
        [("stop", "ghost".to_string())],
        "its instance goes first"
    );
    match &c.writes[0] {
        Write::Stop { placement, .. } => {
            assert!(placement.is_none(), "no pending for a deleted job")
        }
        other => panic!("{other:?}"),
    }
    let c = run(&[node("n1")], &[], &[], &[("ghost", placed("n1"))], &[]);
    assert_eq!(
        c.writes,
        [Write::Forget {
            job: "ghost".into(),
            expect: 42
        }]
    );
}

#[test]
fn what_cannot_be_decoded_is_never_acted_on() {
    let mut undecodable = Undecodable::default();
    undecodable.jobs.insert("newer".into());
    undecodable.nodes.insert("n2".into());
    undecodable.pools.insert("p".into());
    let mut member = job("member", OnNodeLost::Wait, JobPhase::Running);
    member.metadata.owner_references.push(OwnerReference {
        kind: "Pool".into(),
        name: "p".into(),
        uid: "u".into(),
        controller: true,
    });
    let c = Given {
        nodes: vec![node("n1")],
        jobs: vec![member],
        placements: vec![("newer", placed("n1")), ("member", placed("n2"))],
        bindings: vec![bound("n1", "newer"), bound("n2", "member")],
        lost: vec![("n2", 10_000)],
        undecodable,
        ..Given::default()
    }
    .decide();
    assert_eq!(c, Chores::default(), "{c:?}");
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
