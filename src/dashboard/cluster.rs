//! [`Cluster`]: one typed, read-only snapshot of everything the pages show, copied from the
//! watch-fed caches at one revision (the scheduler's [`ClusterView`], which composes status the
//! way `rift get` does, plus the events and the leader record), with the few indexes the pages need (jobs by node, counts
//! by phase). Pages render from it without touching etcd.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use crate::api::voter_set::VOTER_SET_NAME;
use crate::api::{Event, Job, JobPhase, Node, TrainingTarget, Tunnel, VoterSet};
use crate::controllers::cluster_view::ClusterView;
use crate::store::leader::LeaderRecord;

/// A job holding GPUs (or at least a place) on a node: Scheduled or Running there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub job: String,
    pub phase: JobPhase,
    pub gpus: Vec<u32>,
}

/// The cluster at one revision.
#[derive(Debug, Default)]
pub struct Cluster {
    /// The etcd revision the caches had reached (0 before the first listing).
    pub revision: i64,
    /// When this snapshot was taken: the "now" of every age on a page rendered from it.
    pub taken_at: DateTime<Utc>,
    pub leader: Option<LeaderRecord>,
    pub nodes: Vec<Node>,
    /// In name order.
    pub jobs: Vec<Job>,
    pub targets: Vec<TrainingTarget>,
    pub voter_set: Option<VoterSet>,
    pub tunnels: Vec<Tunnel>,
    /// Newest first (by last occurrence).
    pub events: Vec<Event>,
    /// Scheduled and Running jobs by node.
    pub placed: HashMap<String, Vec<Placed>>,
    /// Jobs by phase, every phase present.
    pub phase_counts: BTreeMap<JobPhase, usize>,
}

impl Cluster {
    /// Everything the followed caches hold, copied out typed: nothing is decoded here, so a
    /// snapshot of 10,000 jobs costs a copy, not a parse.
    pub fn from_view<'a>(
        view: &ClusterView,
        events: impl Iterator<Item = &'a Event>,
        leader: Option<LeaderRecord>,
        revision: i64,
        taken_at: DateTime<Utc>,
    ) -> Cluster {
        let mut events: Vec<Event> = events.cloned().collect();
        events.sort_by_key(|e| std::cmp::Reverse(e.spec.last_seen));
        Cluster::assemble(Parts {
            revision,
            taken_at,
            leader,
            nodes: view.nodes().cloned().collect(),
            jobs: view.jobs().cloned().collect(),
            targets: view.targets().cloned().collect(),
            voter_set: view.voter_set(VOTER_SET_NAME).cloned(),
            tunnels: view.tunnels().cloned().collect(),
            events,
        })
    }

    /// A snapshot from typed parts (tests build clusters this way).
    pub fn assemble(mut parts: Parts) -> Cluster {
        parts.jobs.sort_by(|a, b| a.name().cmp(b.name()));
        let mut placed: HashMap<String, Vec<Placed>> = HashMap::new();
        let mut phase_counts: BTreeMap<JobPhase, usize> =
            JobPhase::ALL.iter().map(|p| (*p, 0)).collect();
        for job in &parts.jobs {
            let status = job.status.clone().unwrap_or_default();
            *phase_counts.entry(status.phase).or_default() += 1;
            if let (Some(node), JobPhase::Scheduled | JobPhase::Running) =
                (status.node, status.phase)
            {
                placed.entry(node).or_default().push(Placed {
                    job: job.name().to_string(),
                    phase: status.phase,
                    gpus: status.gpus,
                });
            }
        }
        Cluster {
            revision: parts.revision,
            taken_at: parts.taken_at,
            leader: parts.leader,
            nodes: parts.nodes,
            jobs: parts.jobs,
            targets: parts.targets,
            voter_set: parts.voter_set,
            tunnels: parts.tunnels,
            events: parts.events,
            placed,
            phase_counts,
        }
    }

    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs
            .binary_search_by(|j| j.name().cmp(name))
            .ok()
            .map(|i| &self.jobs[i])
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name() == name)
    }

    /// Jobs Scheduled or Running on `node`.
    pub fn placed_on(&self, node: &str) -> &[Placed] {
        self.placed.get(node).map_or(&[], Vec::as_slice)
    }

    pub fn count(&self, phase: JobPhase) -> usize {
        self.phase_counts.get(&phase).copied().unwrap_or(0)
    }

    /// Nodes whose Ready condition is True.
    pub fn ready_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| is_ready(n)).count()
    }

    /// `(GPUs held by placed jobs, GPUs the nodes have)`.
    pub fn gpu_occupancy(&self) -> (usize, usize) {
        let total = self
            .nodes
            .iter()
            .map(|n| n.status.as_ref().map_or(0, |s| s.capacity.gpus.len()))
            .sum();
        let busy = self
            .placed
            .values()
            .flat_map(|jobs| jobs.iter().map(|p| p.gpus.len()))
            .sum();
        (busy, total)
    }

    /// Mean utilisation over every GPU NVML measured, when any was.
    pub fn gpu_utilisation(&self) -> Option<f64> {
        let utils: Vec<f64> = self
            .nodes
            .iter()
            .filter_map(|n| n.status.as_ref())
            .flat_map(|s| s.usage.gpus.iter().filter_map(|g| g.util_percent))
            .collect();
        (!utils.is_empty()).then(|| utils.iter().sum::<f64>() / utils.len() as f64)
    }

    /// Tunnels of `node` (a NAT-blocked node has one, or none yet).
    pub fn tunnels_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Tunnel> + 'a {
        self.tunnels.iter().filter(move |t| t.spec.node == node)
    }
}

/// What [`Cluster::assemble`] is built from.
#[derive(Default)]
pub struct Parts {
    pub revision: i64,
    pub taken_at: DateTime<Utc>,
    pub leader: Option<LeaderRecord>,
    pub nodes: Vec<Node>,
    pub jobs: Vec<Job>,
    pub targets: Vec<TrainingTarget>,
    pub voter_set: Option<VoterSet>,
    pub tunnels: Vec<Tunnel>,
    pub events: Vec<Event>,
}

pub fn is_ready(node: &Node) -> bool {
    node.status.as_ref().is_some_and(|s| s.is_ready())
}
