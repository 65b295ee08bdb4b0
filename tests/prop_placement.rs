//! Property tests of placement (`rift::controllers::placement::schedule`) over random clusters
//! and random pending jobs: whatever the snapshot, applying one batch of decisions never puts
//! two jobs on one GPU, never goes over a node's cpus or memory (nor its free disk with the
//! inputs placed there), never uses a node that may not run the job (not ready, cordoned,
//! overloaded, under disk pressure), and evicts only lower-priority jobs that were there.
//!
//! Clusters are generated valid (every bound job's GPUs distinct and existing, requests within
//! capacity), as the scheduler's own bindings keep them; the properties are about what one
//! call adds to such a cluster.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use rift::api::job::{JobType, Resources};
use rift::api::meta::{Condition, ConditionStatus};
use rift::api::node::{Capacity, Gpu, NodeSpec, NodeStatus, Usage, DISK_PRESSURE};
use rift::controllers::placement::{
    gpu_model_matches, schedule, BoundJob, Decision, NodeView, PendingJob, PlacementConfig,
    NODE_NAME_LABEL,
};

const GIB: u64 = 1 << 30;
/// Disk figures (free space, input sizes) are generated in these units.
const DISK_UNIT: u64 = 10 * GIB;
const MODELS: [&str; 5] = [
    "NVIDIA H100 80GB HBM3",
    "NVIDIA GH200 480GB",
    "NVIDIA A100-SXM4-40GB",
    "NVIDIA GeForce RTX 4090",
    "Tesla T4",
];
const WANTED_MODELS: [&str; 3] = ["H100", "A100", "RTX 4090"];
const TYPES: [JobType; 5] = [
    JobType::Selfplay,
    JobType::Training,
    JobType::Evaluation,
    JobType::Sync,
    JobType::Custom,
];

/// A job already bound somewhere, before it is fitted onto a node.
#[derive(Clone, Debug)]
struct Resident {
    gpus: u32,
    cpus: f64,
    memory_gb: f64,
    priority: i32,
    pool: Option<u8>,
}

fn resident() -> impl Strategy<Value = Resident> {
    (
        0u32..4,
        0u32..16,
        0u32..64,
        -3i32..6,
        prop::option::of(0u8..3),
    )
        .prop_map(|(gpus, cpus, mem, priority, pool)| Resident {
            gpus,
            cpus: cpus as f64 / 2.0,
            memory_gb: mem as f64,
            priority,
            pool,
        })
}

fn ready(yes: bool) -> Vec<Condition> {
    vec![Condition::new("Ready", yes)]
}

/// One node: readiness, cordon, overload, zone label, capacity, and the residents that fit.
#[allow(clippy::type_complexity)]
fn node(i: usize) -> impl Strategy<Value = NodeView> {
    (
        (prop::bool::weighted(0.85), prop::bool::weighted(0.1)),
        (
            prop::bool::weighted(0.1),
            prop::option::of(0u8..2),
            prop::bool::weighted(0.1),
            prop::option::of(0u64..100),
        ),
        (
            0u32..9,
            0usize..MODELS.len(),
            0u32..65,
            0u64..257,
            0u32..100,
        ),
        prop::collection::vec(resident(), 0..6),
    )
        .prop_map(
            move |(
                (is_ready, cordoned),
                (overloaded, zone, disk_pressure, disk_free),
                (gpus, model, cpus, mem, load),
                residents,
            )| {
                let name = format!("n{i}");
                let mut labels = BTreeMap::new();
                if let Some(z) = zone {
                    labels.insert("zone".to_string(), format!("z{z}"));
                }
                let mut conditions = ready(is_ready);
                conditions.push(Condition::new(DISK_PRESSURE, disk_pressure));
                let status = NodeStatus {
                    conditions,
                    usage: Usage {
                        disk_available_bytes: disk_free.map(|d| d * DISK_UNIT),
                        ..Usage::default()
                    },
                    capacity: Capacity {
                        cpus,
                        memory_bytes: mem * GIB,
                        disk_bytes: 0,
                        gpus: (0..gpus)
                            .map(|index| Gpu {
                                index,
                                model: MODELS[model].into(),
                                ..Gpu::default()
                            })
                            .collect(),
                    },
                    overloaded,
                    load_score: load as f64 / 100.0,
                    ..NodeStatus::default()
                };
                // Fit residents greedily, as earlier passes would have placed them.
                let (mut free, mut cpus_left, mut mem_left) =
                    ((0..gpus).collect::<Vec<u32>>(), cpus as f64, mem as f64);
                let mut bound = Vec::new();
                for (k, r) in residents.into_iter().enumerate() {
                    if r.gpus as usize > free.len() || r.cpus > cpus_left || r.memory_gb > mem_left
                    {
                        continue;
                    }
                    let held: Vec<u32> = free.drain(..r.gpus as usize).collect();
                    cpus_left -= r.cpus;
                    mem_left -= r.memory_gb;
                    bound.push(BoundJob {
                        job: format!("{name}-r{k}"),
                        gpus: held,
                        priority: r.priority,
                        job_type: JobType::Selfplay,
                        cpus: r.cpus,
                        memory_gb: r.memory_gb,
                        pool: r.pool.map(|p| format!("pool{p}")),
                    });
                }
                NodeView {
                    name,
                    labels,
                    spec: NodeSpec {
                        unschedulable: cordoned,
                        ..NodeSpec::default()
                    },
                    status: Some(status),
                    bound,
                }
            },
        )
}

fn cluster() -> impl Strategy<Value = Vec<NodeView>> {
    (1usize..7).prop_flat_map(|n| (0..n).map(node).collect::<Vec<_>>())
}

#[allow(clippy::type_complexity)]
fn pending(i: usize) -> impl Strategy<Value = PendingJob> {
    (
        (
            0u32..5,
            prop::option::of(1u32..33),
            prop::option::of(1u32..129),
        ),
        (-3i32..8, 0usize..TYPES.len(), 0i64..100),
        (
            prop::option::of(0u8..2),
            prop::option::of(0usize..WANTED_MODELS.len()),
            prop::option::of(5u32..13),
            prop::option::of(0u8..3),
        ),
        prop::option::of(1u64..60),
    )
        .prop_map(
            move |(
                (gpus, cpus, mem),
                (priority, t, created),
                (zone, model, power, pool),
                inputs,
            )| {
                let mut node_selector = BTreeMap::new();
                if let Some(z) = zone {
                    node_selector.insert("zone".to_string(), format!("z{z}"));
                }
                PendingJob {
                    name: format!("p{i}"),
                    job_type: TYPES[t],
                    priority,
                    resources: Resources {
                        gpus,
                        gpu_models: model
                            .filter(|_| gpus > 0)
                            .map(|m| vec![WANTED_MODELS[m].to_string()])
                            .unwrap_or_default(),
                        min_gpu_power: power.filter(|_| gpus > 0).map(|p| p as f64 / 10.0),
                        cpus: cpus.map(|c| c as f64 / 2.0),
                        memory_gb: mem.map(f64::from),
                    },
                    node_selector,
                    created: Utc.timestamp_opt(1_700_000_000 + created, 0).unwrap(),
                    pool: pool.map(|p| format!("pool{p}")),
                    // A perGpu member's wish; the properties hold whatever is preferred.
                    prefer_gpu: (created % 3 == 0).then_some((created % 8) as u32),
                    input_bytes: inputs.map_or(0, |i| i * DISK_UNIT),
                }
            },
        )
}

fn pendings() -> impl Strategy<Value = Vec<PendingJob>> {
    (0usize..12).prop_flat_map(|n| (0..n).map(pending).collect::<Vec<_>>())
}

/// What a node holds while decisions are applied.
struct Held {
    gpus: BTreeMap<u32, String>,
    cpus: f64,
    mem: f64,
    jobs: BTreeMap<String, (i32, Vec<u32>, f64, f64)>,
}

fn holdings(nodes: &[NodeView]) -> BTreeMap<String, Held> {
    nodes
        .iter()
        .map(|n| {
            let mut h = Held {
                gpus: BTreeMap::new(),
                cpus: 0.0,
                mem: 0.0,
                jobs: BTreeMap::new(),
            };
            for b in &n.bound {
                for g in &b.gpus {
                    h.gpus.insert(*g, b.job.clone());
                }
                h.cpus += b.cpus;
                h.mem += b.memory_gb;
                h.jobs.insert(
                    b.job.clone(),
                    (b.priority, b.gpus.clone(), b.cpus, b.memory_gb),
                );
            }
            (n.name.clone(), h)
        })
        .collect()
}

/// Applies every decision to a model of the cluster and checks each step; `Err` says what
/// broke.
fn check(nodes: &[NodeView], jobs: &[PendingJob], decisions: &[Decision]) -> Result<(), String> {
    let config = PlacementConfig::default();
    let names: BTreeSet<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let decided: Vec<&str> = decisions.iter().map(Decision::job).collect();
    let decided_set: BTreeSet<&str> = decided.iter().copied().collect();
    if decided.len() != jobs.len() || decided_set != names {
        return Err(format!("one decision per pending job: {decided:?}"));
    }
    let mut held = holdings(nodes);
    let mut evicted_so_far = BTreeSet::new();
    let mut inputs_on: BTreeMap<&str, u64> = BTreeMap::new();
    for d in decisions {
        let (job, node, gpus, evict) = match d {
            Decision::Place { job, node, gpus } => (job, node, gpus, &[][..]),
            Decision::Preempt {
                job,
                node,
                gpus,
                evict,
            } => (job, node, gpus, evict.as_slice()),
            Decision::Unschedulable { .. } => continue,
        };
        let p = jobs
            .iter()
            .find(|j| &j.name == job)
            .expect("decided jobs are pending");
        let view = nodes
            .iter()
            .find(|n| &n.name == node)
            .ok_or(format!("{job} placed on {node}, which does not exist"))?;
        let status = view.status.as_ref().expect("generated with a status");
        let is_ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True);
        if !is_ready || view.spec.unschedulable || status.overloaded || status.has_disk_pressure() {
            return Err(format!("{job} placed on {node}, which may not take jobs"));
        }
        let inputs = inputs_on.entry(node.as_str()).or_default();
        *inputs += p.input_bytes;
        if let Some(free) = status.usage.disk_available_bytes {
            if *inputs > free {
                return Err(format!(
                    "{job} placed on {node}: inputs placed there in this call {inputs} > free {free}"
                ));
            }
        }
        for (k, v) in &p.node_selector {
            let has = if k == NODE_NAME_LABEL {
                Some(&view.name)
            } else {
                view.labels.get(k)
            };
            if has != Some(v) {
                return Err(format!("{job} placed on {node}, whose labels miss {k}={v}"));
            }
        }
        let h = held.get_mut(node).expect("every node has holdings");
        for victim in evict {
            let Some((prio, vgpus, vcpus, vmem)) = h.jobs.remove(victim) else {
                return Err(format!("{job} evicts {victim}, which is not on {node}"));
            };
            if prio >= p.priority {
                return Err(format!(
                    "{job} (priority {}) evicts {victim} of priority {prio}",
                    p.priority
                ));
            }
            for g in vgpus {
                h.gpus.remove(&g);
            }
            h.cpus -= vcpus;
            h.mem -= vmem;
            evicted_so_far.insert(victim.clone());
        }
        if gpus.len() != p.resources.gpus as usize {
            return Err(format!(
                "{job} wants {} GPUs, got {gpus:?}",
                p.resources.gpus
            ));
        }
        let distinct: BTreeSet<&u32> = gpus.iter().collect();
        if distinct.len() != gpus.len() {
            return Err(format!("{job} got one GPU twice: {gpus:?}"));
        }
        for g in gpus {
            let Some(gpu) = status.capacity.gpus.iter().find(|x| x.index == *g) else {
                return Err(format!("{job} got GPU {g}, which {node} does not have"));
            };
            if let Some(other) = h.gpus.insert(*g, job.clone()) {
                return Err(format!("{job} and {other} both hold GPU {g} of {node}"));
            }
            if !p.resources.gpu_models.is_empty()
                && !p
                    .resources
                    .gpu_models
                    .iter()
                    .any(|m| gpu_model_matches(m, &gpu.model))
            {
                return Err(format!("{job} got a {} it did not allow", gpu.model));
            }
            if let Some(min) = p.resources.min_gpu_power {
                if config.gpu_power(&gpu.model) < min {
                    return Err(format!("{job} got a {} below power {min}", gpu.model));
                }
            }
        }
        let (cpus, mem) = (
            p.resources.cpus.unwrap_or(0.0),
            p.resources.memory_gb.unwrap_or(0.0),
        );
        h.cpus += cpus;
        h.mem += mem;
        h.jobs
            .insert(job.clone(), (p.priority, gpus.clone(), cpus, mem));
        let cap_cpus = f64::from(status.capacity.cpus);
        let cap_mem = status.capacity.memory_bytes as f64 / GIB as f64;
        if h.cpus > cap_cpus + 1e-6 || h.mem > cap_mem + 1e-6 {
            return Err(format!(
                "{node} over capacity after {job}: cpus {} of {cap_cpus}, memory {} of {cap_mem} GiB",
                h.cpus, h.mem
            ));
        }
    }
    Ok(())
}

proptest! {
    // Failures are reported with their shrunk input; none is written into the tree.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn one_batch_never_puts_two_jobs_on_a_gpu_nor_goes_over_capacity(
        nodes in cluster(),
        jobs in pendings(),
    ) {
        let decisions = schedule(&nodes, &jobs, &PlacementConfig::default());
        if let Err(broken) = check(&nodes, &jobs, &decisions) {
            prop_assert!(false, "{broken}\ndecisions: {decisions:#?}");
        }
    }

    #[test]
    fn without_preemption_nothing_is_ever_evicted(nodes in cluster(), jobs in pendings()) {
        let config = PlacementConfig { preemption: false, ..PlacementConfig::default() };
        let decisions = schedule(&nodes, &jobs, &config);
        prop_assert!(
            decisions.iter().all(|d| !matches!(d, Decision::Preempt { .. })),
            "{decisions:#?}"
        );
        if let Err(broken) = check(&nodes, &jobs, &decisions) {
            prop_assert!(false, "{broken}");
        }
    }

    #[test]
    fn placement_is_a_pure_function_of_the_snapshot(nodes in cluster(), jobs in pendings()) {
        let config = PlacementConfig::default();
        let mut reversed = nodes.clone();
        reversed.reverse();
        let mut later_first = jobs.clone();
        later_first.reverse();
        prop_assert_eq!(
            schedule(&nodes, &jobs, &config),
            schedule(&reversed, &later_first, &config)
        );
    }
}

/// The checker itself catches what it is there to catch.
#[test]
fn the_checker_refuses_a_gpu_given_twice_and_an_overfull_node() {
    let mut nodes = vec![NodeView {
        name: "n0".into(),
        status: Some(NodeStatus {
            conditions: ready(true),
            capacity: Capacity {
                cpus: 4,
                memory_bytes: 8 * GIB,
                disk_bytes: 0,
                gpus: vec![Gpu {
                    index: 0,
                    model: MODELS[0].into(),
                    ..Gpu::default()
                }],
            },
            ..NodeStatus::default()
        }),
        ..NodeView::default()
    }];
    nodes[0].bound.push(BoundJob {
        job: "old".into(),
        gpus: vec![0],
        priority: 5,
        job_type: JobType::Training,
        cpus: 3.0,
        memory_gb: 0.0,
        pool: None,
    });
    let mut job = PendingJob {
        name: "p0".into(),
        job_type: JobType::Selfplay,
        priority: 0,
        resources: Resources {
            gpus: 1,
            ..Resources::default()
        },
        node_selector: BTreeMap::new(),
        created: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        pool: None,
        prefer_gpu: None,
        input_bytes: 0,
    };
    let twice = Decision::Place {
        job: "p0".into(),
        node: "n0".into(),
        gpus: vec![0],
    };
    let e = check(&nodes, std::slice::from_ref(&job), &[twice]).unwrap_err();
    assert!(e.contains("both hold GPU 0"), "{e}");
    job.resources = Resources {
        cpus: Some(2.0),
        ..Resources::default()
    };
    let over = Decision::Place {
        job: "p0".into(),
        node: "n0".into(),
        gpus: vec![],
    };
    let e = check(&nodes, &[job], &[over]).unwrap_err();
    assert!(e.contains("over capacity"), "{e}");
}
