use super::*;
use crate::api::meta::{Condition, ConditionStatus};
use crate::api::node::{Capacity, Gpu, NodeSpec, NodeStatus};
use crate::api::pool::PoolSpec;
use crate::api::{JobStatus, Object};

fn pool(replicas: Option<u32>, per_gpu: bool) -> Pool {
    let spec: PoolSpec = serde_json::from_value(serde_json::json!({
        "replicas": replicas, "perGpu": per_gpu,
        "nodeSelector": {"gpu": "yes"},
        "template": {"metadata": {"labels": {"board": "hex8"}}, "spec": {"command": ["selfplay"]}}
    }))
    .unwrap();
    let mut p = Object::new("sp", spec);
    p.metadata.uid = Some("u1".into());
    p
}

fn node(name: &str, gpus: u32, ready: bool, labelled: bool) -> Node {
    let mut n = Object::new(name, NodeSpec::default());
    if labelled {
        n.metadata.labels.insert("gpu".into(), "yes".into());
    }
    n.status = Some(NodeStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: if ready {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: String::new(),
            message: String::new(),
            last_transition_time: None,
        }],
        capacity: Capacity {
            gpus: (0..gpus)
                .map(|i| Gpu {
                    index: i,
                    model: "H100".into(),
                    ..Gpu::default()
                })
                .collect(),
            ..Capacity::default()
        },
        ..NodeStatus::default()
    });
    n
}

fn member_job(m: &Member, phase: JobPhase) -> Job {
    let mut j = Object::new(m.name.clone(), m.spec.clone());
    j.status = Some(JobStatus {
        phase,
        ..JobStatus::default()
    });
    j
}

#[test]
fn replicas_name_members_by_index() {
    let names: Vec<String> = desired_members(&pool(Some(3), false), &[])
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["sp-0", "sp-1", "sp-2"]);
}

#[test]
fn per_gpu_fills_every_gpu_of_matching_ready_schedulable_nodes_only() {
    let mut cordoned = node("c", 2, true, true);
    cordoned.spec.unschedulable = true;
    let nodes = vec![
        node("a", 2, true, true),
        node("b", 4, false, true),
        node("d", 1, true, false),
        cordoned,
        node("e", 1, true, true),
    ];
    let members = desired_members(&pool(None, true), &nodes);
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["sp-a-0", "sp-a-1", "sp-e-0"]);
    assert_eq!(members[0].spec.node_selector[NODE_NAME_LABEL], "a");
    assert_eq!(members[0].spec.resources.gpus, 1);
    assert_eq!(members[0].labels[POOL_LABEL], "sp");
    assert_eq!(members[0].labels["board"], "hex8");
}

#[test]
fn a_node_whose_lease_lapsed_keeps_its_members_and_one_never_registered_gets_none() {
    let mut lapsed = node("a", 2, false, true);
    lapsed.status.as_mut().unwrap().conditions[0].reason =
        crate::store::compose::REASON_LEASE_EXPIRED.into();
    let mut never = node("n", 2, false, true);
    never.status.as_mut().unwrap().conditions[0].reason =
        crate::store::compose::REASON_NEVER_REGISTERED.into();
    let names: Vec<String> = desired_members(&pool(None, true), &[lapsed, never])
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["sp-a-0", "sp-a-1"]);
}

#[test]
fn plan_creates_missing_and_deletes_extra_finished_and_changed_members() {
    let desired = desired_members(&pool(Some(3), false), &[]);
    let running = member_job(&desired[0], JobPhase::Running);
    let failed = member_job(&desired[1], JobPhase::Failed);
    let mut extra = member_job(&desired[0], JobPhase::Running);
    extra.metadata.name = "sp-9".into();
    let p = plan(&desired, &[&running, &failed, &extra]);
    assert_eq!(
        p.create.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["sp-2"]
    );
    assert_eq!(p.delete, ["sp-1", "sp-9"]);
    assert_eq!(
        (p.status.desired, p.status.scheduled, p.status.running),
        (3, 1, 1)
    );

    let mut changed = member_job(&desired[2], JobPhase::Running);
    changed.spec.command = vec!["old".into()];
    assert_eq!(plan(&desired, &[&changed]).delete, ["sp-2"]);
}

#[test]
fn plan_is_idempotent_once_converged() {
    let desired = desired_members(&pool(Some(2), false), &[]);
    let jobs: Vec<Job> = desired
        .iter()
        .map(|m| member_job(m, JobPhase::Running))
        .collect();
    let refs: Vec<&Job> = jobs.iter().collect();
    let p = plan(&desired, &refs);
    assert!(p.create.is_empty() && p.delete.is_empty());
}

#[test]
fn long_member_names_stay_valid_and_distinct() {
    let long = "a".repeat(40);
    let a = member_name(&[&long, &"n".repeat(30), "0"]);
    let b = member_name(&[&long, &"n".repeat(30), "1"]);
    assert!(a.len() <= 63 && b.len() <= 63);
    assert_ne!(a, b);
    assert!(crate::api::validation::dns1123_problem(&a).is_none(), "{a}");
}

#[test]
fn ownership_needs_the_pools_uid() {
    let p = pool(Some(1), false);
    let mut j = member_job(&desired_members(&p, &[])[0], JobPhase::Running);
    j.metadata.owner_references.push(owner_ref(&p));
    assert!(owned_by(&j, &p));
    j.metadata.owner_references[0].uid = "other".into();
    assert!(!owned_by(&j, &p));
}
