//! Placement: which node, and which GPUs, each pending Job gets. A pure function of a snapshot
//! ([`schedule`]): no I/O, no clock; the scheduler loads Nodes, their status and bindings, calls
//! it, and writes placements and bindings with compare-and-swap.
//!
//! **Order.** Pending jobs are decided one at a time by priority (higher first), then creation
//! time (older first), then name. Each decision updates a working copy of every node's free
//! GPUs, cpus and memory, so one batch never double-books anything. Decisions come back in
//! that order, one per pending job.
//!
//! **Fit**, checked per node in this fixed rule order; a node that fails counts once, under its
//! first failing rule (the label in quotes is what the why-not says):
//! 1. `not ready`: no status, or its `Ready` condition is not `True`;
//! 2. `unschedulable`: cordoned (`spec.unschedulable`);
//! 3. `node selector mismatch`: a `nodeSelector` pair the node's labels lack. Every node also
//!    answers [`NODE_NAME_LABEL`] with its own name;
//! 4. `GPU model mismatch`: the node has enough GPUs but fewer than `gpus` of the `gpuModels`
//!    allow-list (see [`gpu_model_matches`]);
//! 5. `insufficient GPU power`: fewer than `gpus` allowed GPUs whose power is at least
//!    `minGpuPower` ([`PlacementConfig::gpu_power`]);
//! 6. `overloaded`: the agent reports `overloaded`;
//! 7. `disk pressure`: the agent reports the `DiskPressure` condition (its disk is above the
//!    ArtifactStore's high watermark);
//! 8. `insufficient disk for inputs`: the job's inputs (the sum of its input Artifacts' sizes)
//!    exceed the disk space the agent last reported available, less the inputs of jobs placed
//!    there earlier in the same call. A node that does not report it is not checked. The
//!    figure is conservative: inputs already in the node's cache are counted again;
//! 9. `insufficient GPUs`: fewer than `gpus` eligible (allowed, powerful enough) GPUs that no
//!    binding holds;
//! 10. `insufficient cpu` / 11. `insufficient memory`: the request exceeds capacity (cpus;
//!     memory in GiB) minus the requests of the jobs bound there (an unset request counts 0).
//!
//! Jobs with `gpus: 0` skip rules 4, 5 and 9 (validation forbids gpuModels/minGpuPower there).
//! Rules 1–8 never change by evicting jobs; 9–11 may.
//!
//! **Why not.** An unplaceable job gets a kubectl-style summary, e.g.
//! `0/12 nodes: 7 insufficient GPUs, 3 not ready, 2 node selector mismatch`: rules by
//! descending count, ties alphabetical. The scheduler shows it in the Job's placement
//! (`pending`, hence its status) and as an event.
//!
//! **Score** ([`ScoringPolicy`]): among the nodes that fit, the highest weighted score wins;
//! exact ties go to the node whose name sorts first.
//! * `spreadWeight` × (jobs of the same Pool already on the node), subtracted: a Pool's replicas
//!   spread over nodes first (default 100 dominates every other term);
//! * `powerWeight` × (mean power of the chosen GPUs ÷ the strongest power in the table), for
//!   training and evaluation jobs: the most powerful free GPUs;
//! * `packWeight` × (the node's share of GPUs in use once the job is placed; for a `gpus: 0`
//!   job its share of cpus requested), for every other type (selfplay, sync, custom): bin
//!   packing onto partially used nodes, leaving whole nodes free for large training jobs;
//! * `spareGpusWeight` × (the node's free share of GPUs), subtracted, for `gpus: 0` jobs: keep
//!   GPU machines for GPU work when a CPU box will do;
//! * `loadWeight` × (1 − `loadScore`): the least loaded node breaks near-ties.
//!
//! Which GPUs: training and evaluation take the most powerful eligible free GPUs, every other
//! type the least powerful (keeping the strong ones for training); lower index first.
//!
//! **Preemption** (when `preemption` is on and no node fits as is): on the nodes that failed only
//! rules 7–9, evict jobs of strictly lower priority until the job fits, lowest priority first,
//! then drop any victim the fit does not need. The node wins whose victims' highest priority is
//! lowest, then whose priority sum is lowest (each offset by 2^31, as kube-scheduler does, so
//! more victims never look cheaper), then with the fewest victims, then by name. The scheduler
//! deletes the victims' bindings and writes their placements back to pending, so they are
//! placed again in a later pass (never in the same batch). Priority alone decides: training at
//! 100 evicts selfplay at 0; equal or higher priorities are never evicted. Overloaded, cordoned
//! or mismatched nodes are never preemption targets.
//!
//! **Cost.** Node usage is computed once per call and updated incrementally; each job is one
//! pass over the nodes at O(GPU models on the node) each. Preemption looks only at nodes with
//! something of lower priority, and skips a node when a lower bound on its cost (fewest
//! victims that could free enough GPUs, all of the node's lowest priority) cannot beat the best
//! found.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::api::job::{Job, JobType, Resources};
use crate::api::node::{Node, NodeSpec, NodeStatus};

mod gpu;
mod state;
#[cfg(test)]
mod tests;

pub use gpu::gpu_model_matches;
use state::{Cluster, VictimCost};

/// See [`crate::api::labels::NODE_NAME`].
pub const NODE_NAME_LABEL: &str = crate::api::labels::NODE_NAME;
/// See [`crate::api::labels::POOL`].
pub const POOL_LABEL: &str = crate::api::labels::POOL;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One node as the scheduler sees it: labels, spec, the agent's status, and what is bound there.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: NodeSpec,
    /// `None` (no agent status yet) counts as not ready.
    pub status: Option<NodeStatus>,
    pub bound: Vec<BoundJob>,
}

/// A job bound to a node (its binding), with what it holds there.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundJob {
    pub job: String,
    pub gpus: Vec<u32>,
    pub priority: i32,
    pub job_type: JobType,
    /// Requested cpus; 0 when unset.
    pub cpus: f64,
    /// Requested memory in GiB; 0 when unset.
    pub memory_gb: f64,
    /// The Pool that owns the job, if any.
    pub pool: Option<String>,
}

/// A job waiting for a node.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingJob {
    pub name: String,
    pub job_type: JobType,
    pub priority: i32,
    pub resources: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub created: DateTime<Utc>,
    pub pool: Option<String>,
    /// The GPU index this job would rather hold (a perGpu Pool member's own GPU), when free.
    pub prefer_gpu: Option<u32>,
    /// Bytes of input artifacts the node must stage ([`input_bytes`]); 0 without inputs.
    pub input_bytes: u64,
}

/// What to do with one pending job.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Bind `job` to `gpus` on `node`.
    Place {
        job: String,
        node: String,
        gpus: Vec<u32>,
    },
    /// Evict `evict` (sorted) from `node`, sending them back to Pending, and bind `job` there.
    Preempt {
        job: String,
        node: String,
        gpus: Vec<u32>,
        evict: Vec<String>,
    },
    /// No node fits, even with preemption; `reason` is the why-not summary.
    Unschedulable { job: String, reason: String },
}

impl Decision {
    pub fn job(&self) -> &str {
        match self {
            Decision::Place { job, .. }
            | Decision::Preempt { job, .. }
            | Decision::Unschedulable { job, .. } => job,
        }
    }
}

/// Scheduler settings; every field has a default, and `gpuPower` entries are merged over the
/// default table rather than replacing it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PlacementConfig {
    /// Relative GPU power by model (H100 = 1.0), matched like [`gpu_model_matches`]; the longest
    /// matching key wins.
    #[serde(deserialize_with = "merge_gpu_power")]
    pub gpu_power: BTreeMap<String, f64>,
    /// The power of a CPU-only node, also given to a GPU whose model no key matches. It only
    /// decides whether such a GPU passes a `minGpuPower` and how it scores.
    pub cpu_only_power: f64,
    pub scoring: ScoringPolicy,
    /// Whether a higher-priority job may evict lower-priority ones.
    pub preemption: bool,
}

/// Weights of the score terms (see the module documentation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ScoringPolicy {
    pub spread_weight: f64,
    pub power_weight: f64,
    pub pack_weight: f64,
    pub spare_gpus_weight: f64,
    pub load_weight: f64,
}

impl Default for ScoringPolicy {
    fn default() -> Self {
        Self {
            spread_weight: 100.0,
            power_weight: 10.0,
            pack_weight: 10.0,
            spare_gpus_weight: 5.0,
            load_weight: 1.0,
        }
    }
}

/// The default power table: GH200 1.2, H100 1.0, L40S 0.9, A100 0.8, RTX 5090 0.7,
/// RTX 4090 0.5, A10 0.4.
pub fn default_gpu_power() -> BTreeMap<String, f64> {
    [
        ("GH200", 1.2),
        ("H100", 1.0),
        ("L40S", 0.9),
        ("A100", 0.8),
        ("RTX 5090", 0.7),
        ("RTX 4090", 0.5),
        ("A10", 0.4),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The default CPU-only power.
pub const DEFAULT_CPU_ONLY_POWER: f64 = 0.1;

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            gpu_power: default_gpu_power(),
            cpu_only_power: DEFAULT_CPU_ONLY_POWER,
            scoring: ScoringPolicy::default(),
            preemption: true,
        }
    }
}

fn merge_gpu_power<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let mut table = default_gpu_power();
    table.extend(BTreeMap::<String, f64>::deserialize(d)?);
    Ok(table)
}

impl PlacementConfig {
    /// The power of a GPU named `gpu_name` (e.g. `NVIDIA H100 80GB HBM3` → 1.0): the entry whose
    /// key matches with the most words (then the most characters); `cpu_only_power` when none.
    pub fn gpu_power(&self, gpu_name: &str) -> f64 {
        let name = gpu::words(gpu_name);
        self.gpu_power
            .iter()
            .map(|(k, v)| (gpu::words(k), k, *v))
            .filter(|(key, _, _)| gpu::contains_words(&name, key))
            .max_by(|a, b| {
                (a.0.len(), a.1.len())
                    .cmp(&(b.0.len(), b.1.len()))
                    .then_with(|| b.1.cmp(a.1))
            })
            .map_or(self.cpu_only_power, |(_, _, v)| v)
    }
}

/// Decides every pending job against the snapshot, in priority-then-FIFO order; one decision
/// per pending job, in that order.
pub fn schedule(
    nodes: &[NodeView],
    pending: &[PendingJob],
    config: &PlacementConfig,
) -> Vec<Decision> {
    let mut order: Vec<&PendingJob> = pending.iter().collect();
    order.sort_by(|a, b| {
        (Reverse(a.priority), a.created, &a.name).cmp(&(Reverse(b.priority), b.created, &b.name))
    });
    let mut cluster = Cluster::new(nodes, config);
    order
        .into_iter()
        .map(|job| decide(&mut cluster, job, config))
        .collect()
}

fn decide<'a>(
    cluster: &mut Cluster<'a>,
    job: &'a PendingJob,
    config: &PlacementConfig,
) -> Decision {
    let needs = cluster.needs(job);
    let mut counts = [0usize; Unfit::ALL.len()];
    let mut capacity_only = Vec::new();
    let mut best: Option<(f64, usize)> = None;
    for (i, node) in cluster.nodes.iter().enumerate() {
        match node.check(&needs) {
            Ok(()) => {
                let s = node.score(&needs, &config.scoring, cluster.max_power);
                // Nodes are sorted by name: on an exact tie the first stays.
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, i));
                }
            }
            Err(u) => {
                counts[u as usize] += 1;
                if config.preemption && u.evictable() && node.may_evict_for(job.priority) {
                    capacity_only.push(i);
                }
            }
        }
    }
    if let Some((_, i)) = best {
        let gpus = cluster.nodes[i].place(&needs);
        return Decision::Place {
            job: job.name.clone(),
            node: cluster.nodes[i].name.to_string(),
            gpus,
        };
    }
    if config.preemption {
        let mut best: Option<(VictimCost, usize, Vec<usize>)> = None;
        for i in capacity_only {
            // Skip nodes that cannot beat the best found so far (ties keep the earlier name).
            match cluster.nodes[i].cheapest_possible(&needs) {
                None => continue,
                Some(bound) if best.as_ref().is_some_and(|(c, _, _)| bound >= *c) => continue,
                Some(_) => {}
            }
            if let Some(victims) = cluster.nodes[i].victims(&needs) {
                let cost = cluster.nodes[i].victim_cost(&victims);
                if best.as_ref().is_none_or(|(c, _, _)| cost < *c) {
                    best = Some((cost, i, victims));
                }
            }
        }
        if let Some((_, i, victims)) = best {
            let node = &mut cluster.nodes[i];
            let mut evict = node.evict(&victims);
            evict.sort();
            let gpus = node.place(&needs);
            return Decision::Preempt {
                job: job.name.clone(),
                node: node.name.to_string(),
                gpus,
                evict,
            };
        }
    }
    Decision::Unschedulable {
        job: job.name.clone(),
        reason: why_not(cluster.nodes.len(), &counts),
    }
}

/// Why a node does not fit a job, in the order the rules are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unfit {
    NotReady,
    Unschedulable,
    NodeSelector,
    GpuModel,
    GpuPower,
    Overloaded,
    DiskPressure,
    InsufficientDisk,
    InsufficientGpus,
    InsufficientCpu,
    InsufficientMemory,
}

impl Unfit {
    pub const ALL: [Unfit; 11] = [
        Unfit::NotReady,
        Unfit::Unschedulable,
        Unfit::NodeSelector,
        Unfit::GpuModel,
        Unfit::GpuPower,
        Unfit::Overloaded,
        Unfit::DiskPressure,
        Unfit::InsufficientDisk,
        Unfit::InsufficientGpus,
        Unfit::InsufficientCpu,
        Unfit::InsufficientMemory,
    ];

    /// The words of the why-not summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Unfit::NotReady => "not ready",
            Unfit::Unschedulable => "unschedulable",
            Unfit::NodeSelector => "node selector mismatch",
            Unfit::GpuModel => "GPU model mismatch",
            Unfit::GpuPower => "insufficient GPU power",
            Unfit::Overloaded => "overloaded",
            Unfit::DiskPressure => "disk pressure",
            Unfit::InsufficientDisk => "insufficient disk for inputs",
            Unfit::InsufficientGpus => "insufficient GPUs",
            Unfit::InsufficientCpu => "insufficient cpu",
            Unfit::InsufficientMemory => "insufficient memory",
        }
    }

    /// Whether evicting jobs could cure it.
    fn evictable(self) -> bool {
        matches!(
            self,
            Unfit::InsufficientGpus | Unfit::InsufficientCpu | Unfit::InsufficientMemory
        )
    }
}

/// `0/<nodes> nodes: <count> <rule>, ...`, rules by descending count, ties alphabetical.
fn why_not(nodes: usize, counts: &[usize; Unfit::ALL.len()]) -> String {
    if nodes == 0 {
        return "0/0 nodes: no nodes registered".into();
    }
    let mut rules: Vec<(usize, &str)> = Unfit::ALL
        .iter()
        .filter(|u| counts[**u as usize] > 0)
        .map(|u| (counts[*u as usize], u.as_str()))
        .collect();
    rules.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let parts: Vec<String> = rules.iter().map(|(n, r)| format!("{n} {r}")).collect();
    format!("0/{nodes} nodes: {}", parts.join(", "))
}

/// The Pool a job belongs to: its Pool owner reference, else its [`POOL_LABEL`].
fn pool_of(job: &Job) -> Option<String> {
    job.metadata
        .owner_references
        .iter()
        .find(|o| o.kind == "Pool")
        .map(|o| o.name.clone())
        .or_else(|| job.metadata.labels.get(POOL_LABEL).cloned())
}

impl NodeView {
    /// The view of a stored node with what is bound to it.
    pub fn from_node(node: &Node, bound: Vec<BoundJob>) -> Self {
        Self {
            name: node.metadata.name.clone(),
            labels: node.metadata.labels.clone(),
            spec: node.spec.clone(),
            status: node.status.clone(),
            bound,
        }
    }
}

impl BoundJob {
    /// A stored job bound to `gpus`.
    pub fn from_job(job: &Job, gpus: Vec<u32>) -> Self {
        let r = &job.spec.resources;
        Self {
            job: job.metadata.name.clone(),
            gpus,
            priority: job.spec.priority,
            job_type: job.spec.job_type,
            cpus: r.cpus.unwrap_or(0.0),
            memory_gb: r.memory_gb.unwrap_or(0.0),
            pool: pool_of(job),
        }
    }
}

impl BoundJob {
    /// A binding whose Job is gone (or cannot be read): it holds its GPUs and nothing else.
    pub fn from_binding(job: &str, gpus: Vec<u32>) -> Self {
        Self {
            job: job.to_string(),
            gpus,
            priority: i32::MAX,
            job_type: JobType::default(),
            cpus: 0.0,
            memory_gb: 0.0,
            pool: None,
        }
    }
}

impl PendingJob {
    /// A stored job waiting for a node; one without a creation time sorts as the oldest.
    pub fn from_job(job: &Job) -> Self {
        Self {
            name: job.metadata.name.clone(),
            job_type: job.spec.job_type,
            priority: job.spec.priority,
            resources: job.spec.resources.clone(),
            node_selector: job.spec.node_selector.clone(),
            created: job
                .metadata
                .creation_timestamp
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            pool: pool_of(job),
            prefer_gpu: job
                .metadata
                .labels
                .get(crate::api::labels::GPU)
                .and_then(|g| g.parse().ok()),
            input_bytes: 0,
        }
    }

    /// [`PendingJob::from_job`] with its input bytes, from the artifact sizes in `sizes`.
    pub fn with_inputs(job: &Job, sizes: &HashMap<String, u64>) -> Self {
        Self {
            input_bytes: input_bytes(job, sizes),
            ..Self::from_job(job)
        }
    }
}

/// The bytes a node must stage to run `job`: the sizes of its input artifacts, each counted
/// once (saturating). An artifact missing from `sizes` (unknown, or not readable) counts 0:
/// the job fails its staging with a clear reason wherever it lands.
pub fn input_bytes(job: &Job, sizes: &HashMap<String, u64>) -> u64 {
    let names: std::collections::BTreeSet<&str> = job.spec.input_artifacts().collect();
    names
        .into_iter()
        .filter_map(|n| sizes.get(n))
        .fold(0u64, |sum, s| sum.saturating_add(*s))
}

fn cmp_f64(a: f64, b: f64) -> Ordering {
    a.total_cmp(&b)
}
