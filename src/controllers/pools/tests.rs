use super::*;
use crate::api::job_io::JobInput;
use crate::api::meta::Condition;
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
        conditions: vec![Condition::new("Ready", ready)],
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
    let names: Vec<String> = desired_members(&pool(Some(3), false), &[], None)
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
    let members = desired_members(&pool(None, true), &nodes, None);
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
    let names: Vec<String> = desired_members(&pool(None, true), &[lapsed, never], None)
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["sp-a-0", "sp-a-1"]);
}

#[test]
fn plan_creates_missing_and_deletes_extra_finished_and_changed_members() {
    let desired = desired_members(&pool(Some(3), false), &[], None);
    let running = member_job(&desired[0], JobPhase::Running);
    let failed = member_job(&desired[1], JobPhase::Failed);
    let mut extra = member_job(&desired[0], JobPhase::Running);
    extra.metadata.name = "sp-9".into();
    let p = plan(&desired, &[&running, &failed, &extra], None, false);
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
    assert_eq!(plan(&desired, &[&changed], None, false).delete, ["sp-2"]);
}

#[test]
fn plan_is_idempotent_once_converged() {
    let desired = desired_members(&pool(Some(2), false), &[], None);
    let jobs: Vec<Job> = desired
        .iter()
        .map(|m| member_job(m, JobPhase::Running))
        .collect();
    let refs: Vec<&Job> = jobs.iter().collect();
    let p = plan(&desired, &refs, None, false);
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
    let mut j = member_job(&desired_members(&p, &[], None)[0], JobPhase::Running);
    j.metadata.owner_references.push(owner_ref(&p));
    assert!(owned_by(&j, &p));
    j.metadata.owner_references[0].uid = "other".into();
    assert!(!owned_by(&j, &p));
}

// ---- models: rollouts of a promoted model ----

fn model(n: u8) -> String {
    format!("sha256-{}", format!("{n:02x}").repeat(32))
}

fn model_pool(replicas: u32, max_unavailable: &str) -> Pool {
    let mut p = pool(Some(replicas), false);
    p.spec.model = serde_json::from_value(serde_json::json!({
        "fromTrainingTarget": "hex8-2p", "maxUnavailable": max_unavailable
    }))
    .unwrap();
    p.spec.template.spec.outputs = vec![serde_json::from_value(
        serde_json::json!({"name": "games", "labels": {"type": "games"}}),
    )
    .unwrap()];
    p
}

fn target_with(current: Option<String>) -> TrainingTarget {
    let spec = serde_json::from_value(serde_json::json!({
        "board": "hex8", "players": 2, "selfplaySelector": {"board": "hex8"},
        "training": {"spec": {"command": ["train"]}}
    }))
    .unwrap();
    let mut t = Object::new("hex8-2p", spec);
    t.status = Some(crate::api::training_target::TrainingTargetStatus {
        current_model: current,
        ..Default::default()
    });
    t
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// Members of `pool` on `model`, all in `phase`, owned by the pool.
fn members_on(pool: &Pool, model: Option<&str>, phase: JobPhase) -> Vec<Job> {
    desired_members(pool, &[], model)
        .iter()
        .map(|m| {
            let mut j = member_job(m, phase);
            j.metadata.owner_references = vec![owner_ref(pool)];
            j
        })
        .collect()
}

#[test]
fn members_get_the_model_input_and_their_outputs_the_template_labels() {
    let p = model_pool(2, "25%");
    let (plan, create) = plan_pool(&p, &[], &[], &[target_with(Some(model(1)))], &[], now());
    assert_eq!(create.len(), 2);
    let job = &create[0];
    assert_eq!(
        job.spec.inputs,
        vec![JobInput::of("model", [model(1)])],
        "the promoted model, staged under $RIFT_INPUTS/model/"
    );
    assert_eq!(job.spec.outputs[0].labels["board"], "hex8");
    assert_eq!(job.spec.outputs[0].labels["type"], "games");
    assert!(job.validate().is_empty(), "{}", job.validate());
    let r = plan.status.rollout.unwrap();
    assert_eq!((r.artifact, r.updated, r.total), (model(1), 0, 2));
    assert_eq!(plan.status.current_model, Some(model(1)));
}

#[test]
fn a_promotion_replaces_running_members_in_batches_until_the_rollout_completes() {
    let p = model_pool(8, "25%");
    // Every node has prefetched the new model.
    let mut jobs = reporting(
        members_on(&p, Some(&model(1)), JobPhase::Running),
        &model(1),
        Some(&model(2)),
    );
    let targets = [target_with(Some(model(2)))];
    let mut batches = Vec::new();
    for _ in 0..10 {
        let (plan, create) = plan_pool(&p, &[], &jobs, &targets, &[], now());
        let down = jobs
            .iter()
            .filter(|j| j.status.as_ref().unwrap().phase != JobPhase::Running)
            .count()
            + plan.delete.len();
        assert!(
            down <= 2,
            "never more than maxUnavailable (2 of 8) down: {down}"
        );
        if !plan.delete.is_empty() {
            batches.push(plan.delete.clone());
        }
        // The agent stops the deleted ones; the next pass creates them on the new model and
        // they start running (as the scheduler and agents would make them).
        jobs.retain(|j| !plan.delete.contains(&j.metadata.name));
        for job in create {
            let mut j = job;
            j.status = Some(JobStatus {
                phase: JobPhase::Running,
                ..JobStatus::default()
            });
            jobs.push(j);
        }
    }
    assert_eq!(batches.len(), 4, "{batches:?}");
    assert!(batches.iter().all(|b| b.len() == 2), "{batches:?}");
    let (done, _) = plan_pool(&p, &[], &jobs, &targets, &[], now());
    let r = done.status.rollout.unwrap();
    assert_eq!((r.artifact, r.updated, r.total), (model(2), 8, 8));
    assert!(r.completed_at.is_some());
    assert!(jobs
        .iter()
        .all(|j| j.spec.inputs == vec![JobInput::of("model", [model(2)])]));
}

#[test]
fn a_new_model_whose_members_fail_stops_after_the_first_batch() {
    let p = model_pool(8, "2");
    let mut jobs = reporting(
        members_on(&p, Some(&model(1)), JobPhase::Running),
        &model(1),
        Some(&model(2)),
    );
    let targets = [target_with(Some(model(2)))];
    let (first, _) = plan_pool(&p, &[], &jobs, &targets, &[], now());
    assert_eq!(first.delete, ["sp-0", "sp-1"]);
    // The replacements crash and restart over and over: Failed, then Pending again.
    jobs.retain(|j| !first.delete.contains(&j.metadata.name));
    let replaced = desired_members(&p, &[], Some(&model(2)));
    for (i, phase) in [(0, JobPhase::Failed), (1, JobPhase::Pending)] {
        let mut j = member_job(&replaced[i], phase);
        j.metadata.owner_references = vec![owner_ref(&p)];
        jobs.push(j);
    }
    let (next, _) = plan_pool(&p, &[], &jobs, &targets, &[], now());
    assert_eq!(next.delete, ["sp-0"], "only the failed member is remade");
    let r = next.status.rollout.unwrap();
    assert_eq!((r.updated, r.completed_at), (1, None));
    assert_eq!(
        next.status.running, 6,
        "six members keep playing on the old model"
    );
}

#[test]
fn a_deleted_target_or_one_without_a_model_leaves_members_on_their_model() {
    let mut p = model_pool(2, "25%");
    p.status = Some(PoolStatus {
        current_model: Some(model(1)),
        ..PoolStatus::default()
    });
    let jobs = members_on(&p, Some(&model(1)), JobPhase::Running);
    for targets in [vec![], vec![target_with(None)]] {
        let (plan, create) = plan_pool(&p, &[], &jobs, &targets, &[], now());
        assert!(plan.delete.is_empty() && create.is_empty(), "{plan:?}");
    }
}

#[test]
fn a_resolved_selector_input_does_not_make_a_member_look_changed() {
    let mut p = pool(Some(1), false);
    p.spec.template.spec.inputs = vec![JobInput {
        name: "book".into(),
        artifacts: vec![],
        selector: [("type".to_string(), "openings".to_string())].into(),
    }];
    let (plan, create) = plan_pool(&p, &[], &[], &[], &[], now());
    assert!(create.is_empty(), "nothing matches yet");
    assert!(
        plan.status.message.contains("type=openings"),
        "{}",
        plan.status.message
    );
    let book = crate::controllers::template_inputs::tests::art(7, 3, &[("type", "openings")]);
    let (_, create) = plan_pool(&p, &[], &[], &[], std::slice::from_ref(&book), now());
    let mut member = create[0].clone();
    assert_eq!(member.spec.inputs[0].artifacts, [book.artifact.name()]);
    member.status = Some(JobStatus {
        phase: JobPhase::Running,
        ..JobStatus::default()
    });
    // A newer book appears: the running member keeps the one it was made with.
    let newer = crate::controllers::template_inputs::tests::art(8, 4, &[("type", "openings")]);
    let (plan, create) = plan_pool(&p, &[], &[member], &[], &[book, newer], now());
    assert!(plan.delete.is_empty() && create.is_empty(), "{plan:?}");
}

#[test]
fn pool_model_validation_refuses_bad_budgets_and_a_template_model_input() {
    let mut p = model_pool(2, "25%");
    assert!(p.validate().is_empty(), "{}", p.validate());
    p.spec.model.as_mut().unwrap().update = crate::api::pool::ModelUpdate::Reload;
    assert!(
        p.validate().is_empty(),
        "Reload is accepted: {}",
        p.validate()
    );
    p.spec.model.as_mut().unwrap().max_unavailable = "0%".into();
    p.spec.template.spec.inputs = vec![JobInput::of("model", [model(1)])];
    let errors = p.validate().to_string();
    for field in ["spec.model.maxUnavailable", "spec.template.spec.inputs"] {
        assert!(errors.contains(field), "{field}: {errors}");
    }
}

/// `jobs` with the model their node reports: held and prefetched.
fn reporting(mut jobs: Vec<Job>, held: &str, prefetched: Option<&str>) -> Vec<Job> {
    for j in &mut jobs {
        j.metadata.uid = Some(format!("uid-{}", j.name()));
        j.status.as_mut().unwrap().model = Some(crate::api::placement::JobModel {
            held: Some(held.into()),
            prefetched: prefetched.map(str::to_string),
            problem: String::new(),
        });
    }
    jobs
}

#[test]
fn a_reload_pool_replaces_no_member_and_counts_those_whose_node_swapped_the_model() {
    let mut p = model_pool(4, "25%");
    p.spec.model.as_mut().unwrap().update = crate::api::pool::ModelUpdate::Reload;
    p.status = Some(PoolStatus {
        current_model: Some(model(1)),
        ..PoolStatus::default()
    });
    let targets = [target_with(Some(model(2)))];
    let mut jobs = reporting(
        members_on(&p, Some(&model(1)), JobPhase::Running),
        &model(1),
        None,
    );
    let (plan, create) = plan_pool(&p, &[], &jobs, &targets, &[], now());
    assert!(plan.delete.is_empty() && create.is_empty(), "{plan:?}");
    let r = plan.status.rollout.clone().unwrap();
    assert_eq!((r.updated, r.total, r.completed_at), (0, 4, None));
    // Two nodes swapped it in; one could not fetch it (it keeps the old model).
    for j in &mut jobs[..2] {
        j.status.as_mut().unwrap().model.as_mut().unwrap().held = Some(model(2));
    }
    jobs[2]
        .status
        .as_mut()
        .unwrap()
        .model
        .as_mut()
        .unwrap()
        .problem = "store down".into();
    let (plan, _) = plan_pool(&p, &[], &jobs, &targets, &[], now());
    assert!(plan.delete.is_empty(), "{plan:?}");
    assert_eq!(plan.status.rollout.as_ref().unwrap().updated, 2);
    assert!(plan.status.rollout.as_ref().unwrap().completed_at.is_none());
    for j in &mut jobs[2..] {
        j.status.as_mut().unwrap().model.as_mut().unwrap().held = Some(model(2));
    }
    let (plan, _) = plan_pool(&p, &[], &jobs, &targets, &[], now());
    let r = plan.status.rollout.unwrap();
    assert_eq!(r.updated, 4);
    assert!(r.completed_at.is_some(), "every member holds the new model");
}

#[test]
fn a_rolling_restart_waits_for_each_members_node_to_prefetch_the_model() {
    let mut p = model_pool(2, "100%");
    p.status = Some(PoolStatus {
        current_model: Some(model(1)),
        ..PoolStatus::default()
    });
    let targets = [target_with(Some(model(2)))];
    let jobs = members_on(&p, Some(&model(1)), JobPhase::Running);
    let mut jobs = reporting(jobs, &model(1), None);
    let (plan, _) = plan_pool(&p, &[], &jobs, &targets, &[], now());
    assert!(plan.delete.is_empty(), "nothing prefetched yet: {plan:?}");
    jobs[1]
        .status
        .as_mut()
        .unwrap()
        .model
        .as_mut()
        .unwrap()
        .prefetched = Some(model(2));
    let (plan, _) = plan_pool(&p, &[], &jobs, &targets, &[], now());
    assert_eq!(plan.delete, ["sp-1"]);
}

#[test]
fn model_orders_go_to_members_bindings_that_lack_them() {
    use crate::api::placement::{Binding, ModelOrder, StopOrder};
    let mut p = model_pool(3, "25%");
    p.spec.model.as_mut().unwrap().update = crate::api::pool::ModelUpdate::Reload;
    let desired = desired_members(&p, &[], Some(&model(2)));
    let jobs = reporting(
        members_on(&p, Some(&model(1)), JobPhase::Running),
        &model(1),
        None,
    );
    let refs: Vec<&Job> = jobs.iter().collect();
    let bound = |job: &str, model: Option<ModelOrder>, stop: bool| BoundRecord {
        node: "n1".into(),
        job: job.into(),
        binding: Binding {
            epoch: 1,
            uid: format!("uid-{job}"),
            model,
            stop: stop.then(StopOrder::default),
            ..Binding::default()
        },
        revision: 9,
    };
    let order = ModelOrder {
        artifact: model(2),
        reload: true,
    };
    let bindings = [
        bound("sp-0", None, false),
        bound("sp-1", Some(order.clone()), false),
        bound("sp-2", None, true),
        bound("other", None, false),
    ];
    let out = model_orders(&desired, &refs, &bindings, true);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (
            out[0].job.as_str(),
            out[0].binding.model.as_ref(),
            out[0].revision
        ),
        ("sp-0", Some(&order), 9)
    );
    // A binding of another Job of the member's name gets no order.
    let mut stale = bindings[0].clone();
    stale.binding.uid = "older".into();
    assert!(model_orders(&desired, &refs, &[stale], true).is_empty());
}
