use chrono::TimeZone;

use super::*;
use crate::api::meta::{Condition, ConditionStatus, ObjectMeta, OwnerReference};
use crate::api::node::{Capacity, Gpu};
use crate::api::JobSpec;

mod bench;

const GIB_BYTES: u64 = 1 << 30;

fn ready_status() -> NodeStatus {
    NodeStatus {
        conditions: vec![Condition::new("Ready", true)],
        ..NodeStatus::default()
    }
}

/// A Ready node with `gpus` GPUs named `model`, 64 cpus and 256 GiB.
pub(super) fn node(name: &str, model: &str, gpus: u32) -> NodeView {
    let mut status = ready_status();
    status.capacity = Capacity {
        cpus: 64,
        memory_bytes: 256 * GIB_BYTES,
        disk_bytes: 0,
        gpus: (0..gpus)
            .map(|index| Gpu {
                index,
                model: model.into(),
                ..Gpu::default()
            })
            .collect(),
    };
    NodeView {
        name: name.into(),
        status: Some(status),
        ..NodeView::default()
    }
}

pub(super) fn bound(job: &str, gpus: &[u32], priority: i32, job_type: JobType) -> BoundJob {
    BoundJob {
        job: job.into(),
        gpus: gpus.to_vec(),
        priority,
        job_type,
        cpus: 0.0,
        memory_gb: 0.0,
        pool: None,
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

/// A selfplay job of priority 0 wanting `gpus` GPUs, created at t0.
pub(super) fn job(name: &str, gpus: u32) -> PendingJob {
    PendingJob {
        name: name.into(),
        job_type: JobType::Selfplay,
        priority: 0,
        resources: Resources {
            gpus,
            ..Resources::default()
        },
        node_selector: BTreeMap::new(),
        created: at(0),
        pool: None,
        prefer_gpu: None,
        input_bytes: 0,
    }
}

fn training(name: &str, gpus: u32, priority: i32) -> PendingJob {
    PendingJob {
        job_type: JobType::Training,
        priority,
        ..job(name, gpus)
    }
}

fn one(nodes: &[NodeView], j: PendingJob) -> Decision {
    let mut d = schedule(nodes, &[j], &PlacementConfig::default());
    assert_eq!(d.len(), 1);
    d.pop().unwrap()
}

fn place(node: &str, gpus: &[u32]) -> (String, Vec<u32>) {
    (node.to_string(), gpus.to_vec())
}

fn placed(d: &Decision) -> (String, Vec<u32>) {
    match d {
        Decision::Place { node, gpus, .. } => (node.clone(), gpus.clone()),
        other => panic!("expected a placement, got {other:?}"),
    }
}

fn reason(d: &Decision) -> &str {
    match d {
        Decision::Unschedulable { reason, .. } => reason,
        other => panic!("expected unschedulable, got {other:?}"),
    }
}

#[test]
fn a_node_that_is_not_ready_is_skipped() {
    let mut no_status = node("a", "H100", 8);
    no_status.status = None;
    let mut not_ready = node("b", "H100", 8);
    not_ready.status.as_mut().unwrap().conditions[0].status = ConditionStatus::False;
    let d = one(&[no_status, not_ready], job("j", 1));
    assert_eq!(reason(&d), "0/2 nodes: 2 not ready");
    let d = one(&[node("a", "H100", 8)], job("j", 1));
    assert_eq!(placed(&d), place("a", &[0]));
}

#[test]
fn a_cordoned_node_is_skipped() {
    let mut cordoned = node("a", "H100", 8);
    cordoned.spec.unschedulable = true;
    let d = one(&[cordoned, node("b", "H100", 1)], job("j", 1));
    assert_eq!(placed(&d).0, "b");
    let mut cordoned = node("a", "H100", 8);
    cordoned.spec.unschedulable = true;
    assert_eq!(
        reason(&one(&[cordoned], job("j", 1))),
        "0/1 nodes: 1 unschedulable"
    );
}

#[test]
fn the_node_selector_must_match_and_every_node_answers_its_name() {
    let mut gh = node("a", "GH200", 1);
    gh.labels.insert("provider".into(), "lambda".into());
    let nodes = [gh, node("b", "H100", 8)];
    let mut j = job("j", 1);
    j.node_selector.insert("provider".into(), "lambda".into());
    assert_eq!(placed(&one(&nodes, j.clone())).0, "a");
    j.node_selector.insert("provider".into(), "vast".into());
    assert_eq!(
        reason(&one(&nodes, j)),
        "0/2 nodes: 2 node selector mismatch"
    );
    let mut pinned = job("p", 1);
    pinned
        .node_selector
        .insert(NODE_NAME_LABEL.into(), "b".into());
    assert_eq!(placed(&one(&nodes, pinned)).0, "b");
}

#[test]
fn gpus_bound_to_other_jobs_are_not_free() {
    let mut a = node("a", "H100", 4);
    a.bound = vec![
        bound("x", &[0, 1], 0, JobType::Selfplay),
        bound("y", &[3], 0, JobType::Selfplay),
    ];
    assert_eq!(
        reason(&one(std::slice::from_ref(&a), job("j", 2))),
        "0/1 nodes: 1 insufficient GPUs"
    );
    assert_eq!(placed(&one(&[a], job("j", 1))), place("a", &[2]));
    let cpu_only = node("c", "", 0);
    assert_eq!(
        reason(&one(&[cpu_only], job("j", 1))),
        "0/1 nodes: 1 insufficient GPUs"
    );
}

#[test]
fn gpu_models_match_nvml_names_as_whole_words() {
    assert!(gpu_model_matches("H100", "NVIDIA H100 80GB HBM3"));
    assert!(gpu_model_matches("h100", "NVIDIA H100-SXM5"));
    assert!(gpu_model_matches("GH200", "NVIDIA GH200 480GB"));
    assert!(gpu_model_matches("RTX 4090", "NVIDIA GeForce RTX 4090"));
    assert!(gpu_model_matches("A10", "A10"));
    assert!(!gpu_model_matches("H100", "NVIDIA GH100"));
    assert!(!gpu_model_matches("H100", "NVIDIA H1000"));
    assert!(!gpu_model_matches("A10", "NVIDIA A100-SXM4-80GB"));
    assert!(!gpu_model_matches("RTX 4090", "NVIDIA GeForce RTX 4080"));
    assert!(!gpu_model_matches("", "NVIDIA H100"));
}

#[test]
fn the_gpu_models_allow_list_uses_nvml_names() {
    let nodes = [
        node("a", "NVIDIA GeForce RTX 4090", 8),
        node("b", "NVIDIA A100-SXM4-80GB", 8),
        node("c", "NVIDIA H100 80GB HBM3", 2),
    ];
    let mut j = job("j", 2);
    j.resources.gpu_models = vec!["H100".into(), "GH200".into()];
    assert_eq!(placed(&one(&nodes, j.clone())), place("c", &[0, 1]));
    j.resources.gpus = 4;
    // c has too few GPUs at all: insufficient, not a model mismatch.
    assert_eq!(
        reason(&one(&nodes, j)),
        "0/3 nodes: 2 GPU model mismatch, 1 insufficient GPUs"
    );
}

#[test]
fn the_power_table_takes_the_longest_matching_key_and_merges_overrides() {
    let c = PlacementConfig::default();
    assert_eq!(c.gpu_power("NVIDIA GH200 480GB"), 1.2);
    assert_eq!(c.gpu_power("NVIDIA H100 80GB HBM3"), 1.0);
    assert_eq!(c.gpu_power("NVIDIA A10"), 0.4);
    assert_eq!(c.gpu_power("NVIDIA A100-SXM4-80GB"), 0.8);
    assert_eq!(c.gpu_power("NVIDIA GeForce RTX 4090"), 0.5);
    assert_eq!(c.gpu_power("Apple M2 Ultra"), DEFAULT_CPU_ONLY_POWER);
    let c: PlacementConfig =
        serde_json::from_str(r#"{"gpuPower": {"5090": 0.1, "B200": 2.0}, "preemption": false}"#)
            .unwrap();
    assert_eq!(
        c.gpu_power("NVIDIA GeForce RTX 5090"),
        0.7,
        "RTX 5090 beats 5090"
    );
    assert_eq!(c.gpu_power("NVIDIA B200"), 2.0);
    assert_eq!(c.gpu_power("NVIDIA H100"), 1.0, "defaults kept");
    assert!(!c.preemption);
    assert_eq!(c.scoring, ScoringPolicy::default());
}

#[test]
fn min_gpu_power_uses_the_power_table() {
    let nodes = [
        node("a", "NVIDIA GeForce RTX 4090", 8),
        node("b", "NVIDIA A100-SXM4-80GB", 8),
        node("c", "NVIDIA L40S", 8),
    ];
    let mut j = job("j", 1);
    j.resources.min_gpu_power = Some(0.85);
    assert_eq!(placed(&one(&nodes, j.clone())).0, "c");
    j.resources.min_gpu_power = Some(1.0);
    assert_eq!(
        reason(&one(&nodes, j.clone())),
        "0/3 nodes: 3 insufficient GPU power"
    );
    // An allowed model too weak is a power problem; a disallowed one a model problem.
    j.resources.gpu_models = vec!["A100".into()];
    assert_eq!(
        reason(&one(&nodes, j)),
        "0/3 nodes: 2 GPU model mismatch, 1 insufficient GPU power"
    );
}

#[test]
fn cpus_and_memory_requests_count_against_bound_jobs() {
    let mut a = node("a", "H100", 8);
    let mut held = bound("x", &[], 0, JobType::Sync);
    held.cpus = 60.0;
    held.memory_gb = 100.0;
    a.bound = vec![held];
    let mut j = job("j", 0);
    j.resources.cpus = Some(4.0);
    assert_eq!(placed(&one(std::slice::from_ref(&a), j.clone())).0, "a");
    j.resources.cpus = Some(4.5);
    assert_eq!(
        reason(&one(std::slice::from_ref(&a), j.clone())),
        "0/1 nodes: 1 insufficient cpu"
    );
    j.resources.cpus = None;
    j.resources.memory_gb = Some(157.0);
    assert_eq!(
        reason(&one(std::slice::from_ref(&a), j.clone())),
        "0/1 nodes: 1 insufficient memory"
    );
    j.resources.memory_gb = Some(156.0);
    assert_eq!(placed(&one(&[a], j)).0, "a");
}

#[test]
fn an_overloaded_node_is_avoided() {
    let mut a = node("a", "H100", 8);
    a.status.as_mut().unwrap().overloaded = true;
    assert_eq!(
        reason(&one(std::slice::from_ref(&a), job("j", 1))),
        "0/1 nodes: 1 overloaded"
    );
    assert_eq!(placed(&one(&[a, node("b", "A10", 1)], job("j", 1))).0, "b");
}

#[test]
fn higher_priority_goes_first_then_oldest_first() {
    let nodes = [node("a", "H100", 1)];
    let mut old = job("old", 1);
    old.created = at(-10);
    let new = job("new", 1);
    let mut urgent = job("urgent", 1);
    urgent.created = at(100);
    urgent.priority = 5;
    let config = PlacementConfig {
        preemption: false,
        ..PlacementConfig::default()
    };
    let d = schedule(&nodes, &[new, old, urgent], &config);
    let order: Vec<&str> = d.iter().map(Decision::job).collect();
    assert_eq!(order, ["urgent", "old", "new"]);
    assert_eq!(placed(&d[0]).0, "a");
    assert_eq!(reason(&d[1]), "0/1 nodes: 1 insufficient GPUs");
}

#[test]
fn a_batch_never_double_books() {
    let nodes = [node("a", "H100", 3), node("b", "H100", 2)];
    let jobs: Vec<PendingJob> = (0..6).map(|i| job(&format!("j{i}"), 1)).collect();
    let d = schedule(&nodes, &jobs, &PlacementConfig::default());
    let mut seen = std::collections::BTreeSet::new();
    for x in &d[..5] {
        let (n, g) = placed(x);
        assert!(seen.insert((n, g[0])), "{x:?} double-booked");
    }
    assert_eq!(reason(&d[5]), "0/2 nodes: 2 insufficient GPUs");
    let mut cpu = node("c", "", 0);
    cpu.status.as_mut().unwrap().capacity.cpus = 8;
    let mut jobs: Vec<PendingJob> = (0..3).map(|i| job(&format!("c{i}"), 0)).collect();
    for j in &mut jobs {
        j.resources.cpus = Some(3.0);
    }
    let d = schedule(&[cpu], &jobs, &PlacementConfig::default());
    assert_eq!(reason(&d[2]), "0/1 nodes: 1 insufficient cpu");
}

#[test]
fn training_prefers_the_most_powerful_gpus() {
    let nodes = [
        node("a-4090", "NVIDIA GeForce RTX 4090", 1),
        node("b-gh200", "NVIDIA GH200 480GB", 1),
        node("c-a100", "NVIDIA A100-SXM4-80GB", 1),
    ];
    assert_eq!(placed(&one(&nodes, training("t", 1, 0))).0, "b-gh200");
    // Within a mixed node training takes the strongest GPUs, selfplay the weakest.
    let mut mixed = node("m", "NVIDIA A10", 4);
    let gpus = &mut mixed.status.as_mut().unwrap().capacity.gpus;
    gpus[1].model = "NVIDIA H100 80GB HBM3".into();
    gpus[3].model = "NVIDIA H100 80GB HBM3".into();
    let mixed = [mixed];
    assert_eq!(placed(&one(&mixed, training("t", 2, 0))).1, [1, 3]);
    assert_eq!(placed(&one(&mixed, job("s", 2))).1, [0, 2]);
}

#[test]
fn selfplay_packs_onto_a_partially_used_node() {
    let mut used = node("b", "H100", 8);
    used.bound = vec![bound("x", &[0, 1], 0, JobType::Selfplay)];
    let nodes = [node("a", "H100", 8), used];
    assert_eq!(placed(&one(&nodes, job("s", 1))), place("b", &[2]));
    // Training does not care about packing: equal power, the name breaks the tie.
    assert_eq!(placed(&one(&nodes, training("t", 1, 0))).0, "a");
}

#[test]
fn a_per_gpu_member_gets_the_gpu_it_is_named_after_when_free() {
    let mut a = node("a", "H100", 4);
    a.bound = vec![bound("other", &[0], 0, JobType::Selfplay)];
    let member = |name: &str, gpu| PendingJob {
        prefer_gpu: Some(gpu),
        ..job(name, 1)
    };
    let d = schedule(
        std::slice::from_ref(&a),
        &[
            member("sp-a-3", 3),
            member("sp-a-1", 1),
            member("sp-z-0", 0),
        ],
        &PlacementConfig::default(),
    );
    let got = |name: &str| {
        d.iter()
            .find_map(|x| match x {
                Decision::Place { job, node, gpus } if job == name => Some(place(node, gpus)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name} placed: {d:?}"))
    };
    assert_eq!(got("sp-a-3"), place("a", &[3]), "its own GPU");
    assert_eq!(got("sp-a-1"), place("a", &[1]), "its own GPU");
    let instead = got("sp-z-0");
    assert_eq!(
        instead.1.len(),
        1,
        "GPU 0 is held by another job: any free GPU instead"
    );
    assert_ne!(instead.1, [0]);
}

#[test]
fn pool_replicas_spread_across_nodes() {
    let mut a = node("a", "H100", 8);
    let mut member = bound("sp-0", &[0], 0, JobType::Selfplay);
    member.pool = Some("sp".into());
    a.bound = vec![member];
    let nodes = [a, node("b", "H100", 8), node("c", "H100", 8)];
    let jobs: Vec<PendingJob> = (1..5)
        .map(|i| PendingJob {
            pool: Some("sp".into()),
            ..job(&format!("sp-{i}"), 1)
        })
        .collect();
    let d = schedule(&nodes, &jobs, &PlacementConfig::default());
    let on: Vec<String> = d.iter().map(|x| placed(x).0).collect();
    // b and c first (no replica yet), then one more each, packing among equals (a, then b).
    assert_eq!(on, ["b", "c", "a", "b"]);
}

#[test]
fn cpu_only_jobs_leave_gpu_machines_free() {
    let nodes = [node("a-gpu", "H100", 8), node("b-cpu", "", 0)];
    assert_eq!(placed(&one(&nodes, job("sync", 0))).0, "b-cpu");
}

#[test]
fn why_not_summarises_a_mixed_cluster() {
    let mut nodes = Vec::new();
    for i in 0..7 {
        let mut n = node(&format!("full-{i}"), "H100", 2);
        n.bound = vec![bound(&format!("x{i}"), &[0, 1], 0, JobType::Training)];
        n.labels.insert("gpu".into(), "yes".into());
        nodes.push(n);
    }
    for i in 0..3 {
        let mut n = node(&format!("down-{i}"), "H100", 8);
        n.status.as_mut().unwrap().conditions.clear();
        nodes.push(n);
    }
    for i in 0..2 {
        nodes.push(node(&format!("cpu-{i}"), "", 0));
    }
    let mut j = job("j", 1);
    j.priority = 0;
    j.node_selector.insert("gpu".into(), "yes".into());
    let d = one(&nodes, j);
    assert_eq!(
        reason(&d),
        "0/12 nodes: 7 insufficient GPUs, 3 not ready, 2 node selector mismatch"
    );
    assert_eq!(
        reason(&one(&[], job("j", 1))),
        "0/0 nodes: no nodes registered"
    );
}

#[test]
fn training_preempts_lower_priority_selfplay() {
    let mut a = node("a", "H100", 2);
    a.bound = vec![
        bound("sp-1", &[0], 0, JobType::Selfplay),
        bound("sp-2", &[1], 0, JobType::Selfplay),
    ];
    let mut b = node("b", "H100", 2);
    b.bound = vec![
        bound("sp-3", &[0], 0, JobType::Selfplay),
        bound("eval", &[1], 50, JobType::Evaluation),
    ];
    let nodes = [a, b];
    let d = schedule(
        &nodes,
        &[
            training("t1", 1, 100),
            training("t2", 2, 100),
            job("late", 1),
        ],
        &PlacementConfig::default(),
    );
    // t1 needs one GPU: one victim; the cheapest is a priority-0 selfplay, on `a` by name.
    assert_eq!(
        d[0],
        Decision::Preempt {
            job: "t1".into(),
            node: "a".into(),
            gpus: vec![0],
            evict: vec!["sp-1".into()],
        }
    );
    // t2 needs two: on `a` only sp-2 is left to evict (t1 is 100, not lower); on `b` it would
    // take the priority-50 eval too. a cannot free two GPUs any more, so b it is.
    assert_eq!(
        d[1],
        Decision::Preempt {
            job: "t2".into(),
            node: "b".into(),
            gpus: vec![0, 1],
            evict: vec!["eval".into(), "sp-3".into()],
        }
    );
    // Equal priority never preempts: the freed GPUs are taken.
    assert_eq!(reason(&d[2]), "0/2 nodes: 2 insufficient GPUs");
}

#[test]
fn preemption_picks_the_cheapest_node_and_fewest_victims() {
    let mut a = node("a", "H100", 2);
    a.bound = vec![bound("a-eval", &[0, 1], 50, JobType::Evaluation)];
    let mut b = node("b", "H100", 4);
    b.bound = vec![
        bound("b-1", &[0], 0, JobType::Selfplay),
        bound("b-2", &[1], 0, JobType::Selfplay),
        bound("b-3", &[2, 3], 0, JobType::Selfplay),
    ];
    let d = one(&[a, b], training("t", 2, 100));
    assert_eq!(
        d,
        Decision::Preempt {
            job: "t".into(),
            node: "b".into(),
            gpus: vec![2, 3],
            evict: vec!["b-3".into()],
        }
    );
}

#[test]
fn equal_or_higher_priority_is_never_evicted() {
    let mut a = node("a", "H100", 2);
    a.bound = vec![
        bound("same", &[0], 100, JobType::Training),
        bound("higher", &[1], 200, JobType::Training),
    ];
    assert_eq!(
        reason(&one(&[a], training("t", 1, 100))),
        "0/1 nodes: 1 insufficient GPUs"
    );
}

#[test]
fn preemption_that_cannot_help_gives_the_why_not() {
    // Evicting everything on `a` still leaves too few GPUs; `b` is the wrong model, `c` down.
    let mut a = node("a", "H100", 2);
    a.bound = vec![bound("sp", &[0], 0, JobType::Selfplay)];
    let mut b = node("b", "RTX 4090", 8);
    b.bound = vec![bound("sp-b", &[0], 0, JobType::Selfplay)];
    let mut c = node("c", "H100", 8);
    c.status = None;
    let mut t = training("t", 4, 100);
    t.resources.gpu_models = vec!["H100".into()];
    assert_eq!(
        reason(&one(&[a, b, c], t)),
        "0/3 nodes: 1 GPU model mismatch, 1 insufficient GPUs, 1 not ready"
    );
    // Disabled preemption also leaves the why-not.
    let mut a = node("a", "H100", 1);
    a.bound = vec![bound("sp", &[0], 0, JobType::Selfplay)];
    let config = PlacementConfig {
        preemption: false,
        ..PlacementConfig::default()
    };
    let d = schedule(&[a], &[training("t", 1, 100)], &config);
    assert_eq!(reason(&d[0]), "0/1 nodes: 1 insufficient GPUs");
}

#[test]
fn views_are_built_from_stored_objects() {
    let mut spec = JobSpec::with_command(["selfplay"]);
    spec.priority = 3;
    spec.resources.cpus = Some(2.0);
    let mut meta = ObjectMeta::named("sp-0");
    meta.owner_references = vec![OwnerReference {
        kind: "Pool".into(),
        name: "sp".into(),
        uid: "u".into(),
        controller: true,
    }];
    meta.creation_timestamp = Some(at(5));
    let j = Job {
        api_version: crate::api::API_VERSION.into(),
        kind: "Job".into(),
        metadata: meta,
        spec,
        status: None,
    };
    let p = PendingJob::from_job(&j);
    assert_eq!(
        (p.pool.as_deref(), p.priority, p.created),
        (Some("sp"), 3, at(5))
    );
    let b = BoundJob::from_job(&j, vec![1]);
    assert_eq!((b.cpus, b.memory_gb, b.gpus), (2.0, 0.0, vec![1]));
}

#[test]
fn more_victims_never_look_cheaper_even_at_negative_priorities() {
    let mut a = node("a", "H100", 2);
    a.bound = vec![
        bound("a-1", &[0], -5, JobType::Selfplay),
        bound("a-2", &[1], -5, JobType::Selfplay),
    ];
    let mut b = node("b", "H100", 2);
    b.bound = vec![bound("b-1", &[0, 1], -5, JobType::Selfplay)];
    let d = one(&[a, b], training("t", 2, 0));
    assert_eq!(
        d,
        Decision::Preempt {
            job: "t".into(),
            node: "b".into(),
            gpus: vec![0, 1],
            evict: vec!["b-1".into()],
        }
    );
}

#[test]
fn preemption_frees_cpus_and_memory_too() {
    let mut a = node("a", "H100", 8);
    let mut hog = bound("hog", &[], 0, JobType::Sync);
    hog.cpus = 64.0;
    let mut small = bound("small", &[0], 0, JobType::Selfplay);
    small.memory_gb = 1.0;
    a.bound = vec![small, hog];
    let mut t = training("t", 1, 10);
    t.resources.cpus = Some(16.0);
    let d = one(&[a], t);
    assert_eq!(
        d,
        Decision::Preempt {
            job: "t".into(),
            node: "a".into(),
            gpus: vec![1],
            evict: vec!["hog".into()],
        }
    );
}

fn with_disk(mut n: NodeView, free: Option<u64>, pressure: bool) -> NodeView {
    let s = n.status.as_mut().unwrap();
    s.usage.disk_available_bytes = free;
    if pressure {
        s.conditions
            .push(Condition::new(crate::api::node::DISK_PRESSURE, true));
    }
    n
}

fn with_inputs(j: PendingJob, bytes: u64) -> PendingJob {
    PendingJob {
        input_bytes: bytes,
        ..j
    }
}

#[test]
fn a_node_under_disk_pressure_gets_no_new_job_and_the_why_not_names_it() {
    let a = with_disk(node("a", "H100", 8), Some(1 << 40), true);
    assert_eq!(
        reason(&one(std::slice::from_ref(&a), job("j", 1))),
        "0/1 nodes: 1 disk pressure"
    );
    assert_eq!(placed(&one(&[a, node("b", "A10", 1)], job("j", 1))).0, "b");
}

#[test]
fn a_job_whose_inputs_do_not_fit_one_node_lands_on_another() {
    let small = with_disk(node("a", "H100", 8), Some(10 * GIB_BYTES), false);
    let big = with_disk(node("b", "A10", 1), Some(100 * GIB_BYTES), false);
    let j = with_inputs(job("j", 1), 50 * GIB_BYTES);
    assert_eq!(
        reason(&one(std::slice::from_ref(&small), j.clone())),
        "0/1 nodes: 1 insufficient disk for inputs"
    );
    // `a` packs better (more GPUs in use would be the same), but only `b` has room.
    assert_eq!(placed(&one(&[small, big], j)).0, "b");
}

#[test]
fn inputs_placed_in_one_call_use_up_the_nodes_free_disk() {
    let a = with_disk(node("a", "H100", 8), Some(100 * GIB_BYTES), false);
    let b = with_disk(node("b", "H100", 8), Some(100 * GIB_BYTES), false);
    let jobs: Vec<PendingJob> = (0..3)
        .map(|i| with_inputs(job(&format!("j{i}"), 1), 60 * GIB_BYTES))
        .collect();
    let d = schedule(&[a, b], &jobs, &PlacementConfig::default());
    let on: Vec<&str> = d
        .iter()
        .filter_map(|x| match x {
            Decision::Place { node, .. } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(on, ["a", "b"], "{d:?}");
    assert_eq!(reason(&d[2]), "0/2 nodes: 2 insufficient disk for inputs");
}

#[test]
fn a_node_that_does_not_report_free_disk_is_not_checked_and_a_job_without_inputs_fits_a_full_disk()
{
    let unknown = with_disk(node("a", "H100", 8), None, false);
    assert_eq!(
        placed(&one(&[unknown], with_inputs(job("j", 1), u64::MAX))).0,
        "a"
    );
    let full = with_disk(node("b", "H100", 8), Some(0), false);
    assert_eq!(placed(&one(&[full], job("k", 1))).0, "b");
}

#[test]
fn a_jobs_input_bytes_count_each_artifact_once_and_never_overflow() {
    let name = |c: char| format!("sha256-{}", c.to_string().repeat(64));
    let mut spec = JobSpec::with_command(["x"]);
    spec.inputs = vec![
        crate::api::JobInput::of("a", [name('a'), name('b')]),
        crate::api::JobInput::of("b", [name('a'), name('c')]),
    ];
    let job = Job::new("j", spec);
    let sizes: HashMap<String, u64> = [(name('a'), 5), (name('b'), 7)].into();
    assert_eq!(input_bytes(&job, &sizes), 12, "c is unknown and counts 0");
    let huge: HashMap<String, u64> = [(name('a'), u64::MAX), (name('b'), u64::MAX)].into();
    assert_eq!(input_bytes(&job, &huge), u64::MAX);
}
