//! The cluster as the scheduler sees it, kept current one watch event at a time.
//!
//! Nodes, Jobs, Pools, TrainingTargets and Artifacts (with their creation revision, which the
//! training loop counts games by) are held typed, with their status composed in
//! (docs/architecture.md, "Status is composed on read"); placements and bindings typed with
//! their mod revisions; every agent key the scheduler needs decoded once, when it changes
//! ([`StatusSources`]). A change recomposes only the objects it concerns (an agent's status key
//! its Node, a placement or runtime report its Job), so a pass costs a copy of typed values
//! ([`ClusterView::snapshot`]), not a decode of the cluster.
//!
//! Guarantees: after [`ClusterView::apply`] has been given every event a watcher on
//! `/rift/v1/` delivered, [`ClusterView::snapshot`] is what [`crate::store::Store::list`] and
//! friends would have returned at that revision, with objects that do not decode set aside by
//! name ([`Undecodable`]), never taken for deleted. [`ClusterView::apply`] also says whether a
//! change can alter a scheduling decision (see [`ClusterView::apply`]).

use std::collections::{HashMap, HashSet};

use super::housekeeping::{BoundRecord, Undecodable};
use crate::api::artifact::{Artifact, ArtifactSpec};
use crate::api::placement::{Binding, JobModel, Placement, RuntimeReport};
use crate::api::{
    Job, JobPhase, JobSpec, Node, NodeSpec, Pool, PoolSpec, Spec, TrainingTarget,
    TrainingTargetSpec, Tunnel, TunnelSpec, VoterSet, VoterSetSpec,
};
use crate::store::cache::{self, direct_child, object, Cached, Keyed};
use crate::store::compose::{parse_agent_key, AgentKey, StatusSources};
use crate::store::{keys, KeyValue, WatchEvent};

/// The cluster as one pass sees it.
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub jobs: Vec<Job>,
    pub pools: Vec<Pool>,
    pub targets: Vec<TrainingTarget>,
    /// Every Artifact that decodes, oldest first (by creation revision). Shared, not copied:
    /// a fleet keeps hundreds of thousands of shards, and passes run every second.
    pub artifacts: std::sync::Arc<Vec<StoredArtifact>>,
    /// Objects that exist but do not decode in this version: never acted on.
    pub undecodable: Undecodable,
    /// Placement and its mod revision, by job.
    pub placements: HashMap<String, (Placement, i64)>,
    pub bindings: Vec<BoundRecord>,
    /// Nodes (named by a Node or a binding) whose alive key exists.
    pub alive: HashSet<String>,
    /// `(node, job, epoch)` of stop-ordered bindings whose agent reported them released.
    pub released: HashSet<(String, String, u64)>,
    /// The size in bytes of every Artifact some Job names as an input (and that exists).
    pub input_sizes: HashMap<String, u64>,
}

/// An Artifact with the etcd revision that created it. Revisions only grow, so "created after
/// revision R" is a bounded watermark for "not seen yet" (a deleted and re-made artifact is new).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredArtifact {
    pub artifact: Artifact,
    pub created_revision: i64,
}

fn stored_artifact(kv: &KeyValue) -> Result<StoredArtifact, String> {
    Ok(StoredArtifact {
        artifact: object::<ArtifactSpec>(kv)?,
        created_revision: kv.create_revision,
    })
}

fn with_revision<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<(T, i64), String> {
    Ok((cache::json(kv)?, kv.mod_revision))
}

/// `node/job` under `/rift/v1/bindings/`.
fn node_and_job(rest: &str) -> Option<&str> {
    let (node, job) = rest.split_once('/')?;
    (!node.is_empty() && direct_child(job).is_some()).then_some(rest)
}

/// Conditions (type and state), capacity and overload of a node's status.
type PlacementFacts<'a> = (Vec<(String, String)>, &'a crate::api::node::Capacity, bool);

/// What placement reads of a node's status: its conditions (type and state), capacity and
/// overload. Usage figures and running jobs only change what people see.
fn placement_facts(s: Option<&crate::api::node::NodeStatus>) -> Option<PlacementFacts<'_>> {
    s.map(|s| {
        let conditions = s
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), format!("{:?}", c.status)))
            .collect();
        (conditions, &s.capacity, s.overloaded)
    })
}

/// What a runtime report says that a decision can depend on: that the job finished, or that a
/// stop order was answered (a Running report changes only what people see).
fn decisive(r: Option<&RuntimeReport>) -> bool {
    r.is_some_and(|r| r.phase.is_finished() || r.released)
}

/// What a Pool member's runtime report tells its Pool's rollout: whether it runs (the
/// `maxUnavailable` budget) and the model its node holds or has prefetched (the prefetch gate,
/// `Reload` progress). Not why a model is missing: that text is for people, and it changes
/// with every retry of a failing fetch.
type RolloutFacts = (Option<JobPhase>, Option<(Option<String>, Option<String>)>);

fn rollout_facts(r: Option<&RuntimeReport>) -> RolloutFacts {
    r.map_or((None, None), |r| {
        let model = r
            .model
            .as_ref()
            .map(|m: &JobModel| (m.held.clone(), m.prefetched.clone()));
        (Some(r.phase), model)
    })
}

/// See the module docs.
pub struct ClusterView {
    nodes: Keyed<Node>,
    jobs: Keyed<Job>,
    pools: Keyed<Pool>,
    targets: Keyed<TrainingTarget>,
    artifacts: Keyed<StoredArtifact>,
    /// `artifacts` oldest first, rebuilt only after an Artifact changed.
    sorted_artifacts: std::cell::RefCell<Option<std::sync::Arc<Vec<StoredArtifact>>>>,
    pool_status: Keyed<<PoolSpec as Spec>::Status>,
    target_status: Keyed<<TrainingTargetSpec as Spec>::Status>,
    placements: Keyed<(Placement, i64)>,
    bindings: Keyed<(Binding, i64)>,
    /// For the leader's metrics only (no decision reads them).
    tunnels: Keyed<Tunnel>,
    voter_sets: Keyed<VoterSet>,
    voter_status: Keyed<<VoterSetSpec as Spec>::Status>,
    /// Placements and agent keys, each decoded once, that Job and Node status is composed from.
    sources: StatusSources,
    synced: bool,
}

impl Default for ClusterView {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterView {
    pub fn new() -> Self {
        let objects = |plural: &str| keys::objects_prefix(plural);
        Self {
            nodes: Keyed::new(objects(NodeSpec::PLURAL), direct_child, object::<NodeSpec>),
            jobs: Keyed::new(objects(JobSpec::PLURAL), direct_child, object::<JobSpec>),
            pools: Keyed::new(objects(PoolSpec::PLURAL), direct_child, object::<PoolSpec>),
            targets: Keyed::new(
                objects(TrainingTargetSpec::PLURAL),
                direct_child,
                object::<TrainingTargetSpec>,
            ),
            artifacts: Keyed::new(objects(ArtifactSpec::PLURAL), direct_child, stored_artifact),
            sorted_artifacts: std::cell::RefCell::new(None),
            pool_status: Keyed::new(
                keys::status_prefix(PoolSpec::PLURAL),
                direct_child,
                cache::json,
            ),
            target_status: Keyed::new(
                keys::status_prefix(TrainingTargetSpec::PLURAL),
                direct_child,
                cache::json,
            ),
            placements: Keyed::new(keys::PLACEMENTS_PREFIX, direct_child, with_revision),
            bindings: Keyed::new(bindings_root(), node_and_job, with_revision),
            tunnels: Keyed::new(
                objects(TunnelSpec::PLURAL),
                direct_child,
                object::<TunnelSpec>,
            ),
            voter_sets: Keyed::new(
                objects(VoterSetSpec::PLURAL),
                direct_child,
                object::<VoterSetSpec>,
            ),
            voter_status: Keyed::new(
                keys::status_prefix(VoterSetSpec::PLURAL),
                direct_child,
                cache::json,
            ),
            sources: StatusSources::default(),
            synced: false,
        }
    }

    /// True once a full listing has been taken in.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Takes in one event of a watch on `/rift/v1/`. Returns true when the change can alter a
    /// scheduling decision: a Node, Job, Pool, TrainingTarget, Artifact, placement or binding changed, a
    /// node's alive key came or went, or a runtime report says (or stops saying) that a job
    /// finished or was released, or a Pool member's report changes its phase or model (a
    /// rollout waits on those). Not: events, statuses controllers write, the leader's record
    /// and heartbeat, node status reports (capacity and load are read again at the next tick),
    /// the Running report of a job no Pool owns, tunnel and etcd-member reports.
    pub fn apply(&mut self, event: &WatchEvent) -> bool {
        let key = match event {
            WatchEvent::Restarted { items, .. } => {
                self.relist(event, items);
                return true;
            }
            WatchEvent::Put(kv) => kv.key.as_str(),
            WatchEvent::Delete { key, .. } => key.as_str(),
        };
        if let Some(name) = self.nodes.name_of(key).map(str::to_string) {
            self.nodes.apply(event);
            self.compose_node(&name);
            return true;
        }
        if let Some(name) = self.jobs.name_of(key).map(str::to_string) {
            self.jobs.apply(event);
            self.compose_job(&name);
            return true;
        }
        if self.pools.name_of(key).is_some() {
            for name in self.pools.apply(event) {
                self.compose_pool(&name);
            }
            return true;
        }
        if self.targets.name_of(key).is_some() {
            for name in self.targets.apply(event) {
                self.compose_target(&name);
            }
            return true;
        }
        if self.artifacts.name_of(key).is_some() {
            self.artifacts.apply(event);
            self.sorted_artifacts.replace(None);
            return true;
        }
        if self.pool_status.name_of(key).is_some() {
            for name in self.pool_status.apply(event) {
                self.compose_pool(&name);
            }
            return false;
        }
        if self.target_status.name_of(key).is_some() {
            for name in self.target_status.apply(event) {
                self.compose_target(&name);
            }
            return false;
        }
        if let Some(job) = self.placements.name_of(key).map(str::to_string) {
            self.placements.apply(event);
            self.place_into_sources(&job);
            self.compose_job(&job);
            return true;
        }
        if self.bindings.name_of(key).is_some() {
            self.bindings.apply(event);
            return true;
        }
        if self.tunnels.name_of(key).is_some() {
            for name in self.tunnels.apply(event) {
                self.compose_tunnel(&name);
            }
            return false;
        }
        if self.voter_sets.name_of(key).is_some() || self.voter_status.name_of(key).is_some() {
            let mut changed = self.voter_sets.apply(event);
            changed.extend(self.voter_status.apply(event));
            for name in changed {
                self.compose_voter_set(&name);
            }
            return false;
        }
        self.agent_key(event, key)
    }

    /// An agent key changed: fold it into the sources and recompose what it concerns.
    fn agent_key(&mut self, event: &WatchEvent, key: &str) -> bool {
        let Some(parsed) = parse_agent_key(key) else {
            return false;
        };
        let (was_decisive, facts_before) = match parsed {
            AgentKey::Job { node, job } => {
                let r = self.sources.report(node, job);
                (decisive(r), rollout_facts(r))
            }
            _ => (false, (None, None)),
        };
        match event {
            WatchEvent::Put(kv) => self.sources.add(kv),
            _ => self.sources.remove(key),
        }
        match parsed {
            AgentKey::Alive { node } => {
                self.compose_node(node);
                self.compose_tunnels_of(node);
                true
            }
            // A status report starts a pass only when it changes what placement reads (a node
            // turning Ready with its first report, overloaded, a GPU appearing): a why-not
            // must not keep naming a state the node has left.
            AgentKey::Status { node } | AgentKey::Etcd { node } => self.compose_node(node),
            AgentKey::Job { node, job } => {
                self.compose_job(job);
                let after = self.sources.report(node, job);
                was_decisive
                    || decisive(after)
                    || (self.is_pool_member(job) && facts_before != rollout_facts(after))
            }
            AgentKey::Tunnel { tunnel, .. } => {
                self.compose_tunnel(tunnel);
                false
            }
            AgentKey::Event { .. } => false,
        }
    }

    fn relist(&mut self, event: &WatchEvent, items: &[KeyValue]) {
        self.nodes.apply(event);
        self.jobs.apply(event);
        self.pools.apply(event);
        self.targets.apply(event);
        self.artifacts.apply(event);
        self.sorted_artifacts.replace(None);
        self.pool_status.apply(event);
        self.target_status.apply(event);
        self.placements.apply(event);
        self.bindings.apply(event);
        self.tunnels.apply(event);
        self.voter_sets.apply(event);
        self.voter_status.apply(event);
        self.sources = StatusSources::from_kvs(
            items
                .iter()
                .filter(|kv| kv.key.starts_with(keys::AGENTS_PREFIX)),
        );
        let placed: Vec<String> = self.placements.iter().map(|(k, _)| k.clone()).collect();
        for job in placed {
            self.place_into_sources(&job);
        }
        for name in self.names(|v| &v.nodes) {
            self.compose_node(&name);
        }
        for name in self.names(|v| &v.jobs) {
            self.compose_job(&name);
        }
        for name in self.names(|v| &v.pools) {
            self.compose_pool(&name);
        }
        for name in self.names(|v| &v.targets) {
            self.compose_target(&name);
        }
        for name in self.names(|v| &v.tunnels) {
            self.compose_tunnel(&name);
        }
        for name in self.names(|v| &v.voter_sets) {
            self.compose_voter_set(&name);
        }
        self.synced = true;
    }

    fn names<T>(&self, of: impl Fn(&Self) -> &Keyed<T>) -> Vec<String> {
        of(self).iter().map(|(k, _)| k.clone()).collect()
    }

    /// Gives the status sources `job`'s placement as cached (decoded once, here).
    fn place_into_sources(&mut self, job: &str) {
        match self.placements.get(job) {
            Some(Cached::Ready((p, _))) => self.sources.set_placement(job, Some(p.clone())),
            Some(Cached::Undecodable(_)) => self.sources.set_placement(job, None),
            None => self.sources.forget_placement(job),
        }
    }

    /// Recomposes node `name`'s status; true when what placement reads of it changed
    /// (readiness and other conditions, capacity, overload).
    fn compose_node(&mut self, name: &str) -> bool {
        if self.nodes.ready(name).is_none() {
            return false;
        }
        let status = self.sources.node_status(name);
        match self.nodes.ready_mut(name) {
            Some(n) => {
                let changed = placement_facts(n.status.as_ref()) != placement_facts(Some(&status));
                n.status = Some(status);
                changed
            }
            None => false,
        }
    }

    /// Whether Job `name` is a Pool's member (its controller is a Pool).
    fn is_pool_member(&self, name: &str) -> bool {
        self.jobs.ready(name).is_some_and(|j| {
            j.metadata
                .owner_references
                .iter()
                .any(|o| o.controller && o.kind == "Pool")
        })
    }

    fn compose_job(&mut self, name: &str) {
        let Some(job) = self.jobs.ready(name) else {
            return;
        };
        let status = self
            .sources
            .job_status_for(name, job.metadata.uid.as_deref());
        if let Some(j) = self.jobs.ready_mut(name) {
            j.status = Some(status);
        }
    }

    fn compose_pool(&mut self, name: &str) {
        let status = self.pool_status.ready(name).cloned();
        if let Some(p) = self.pools.ready_mut(name) {
            p.status = status;
        }
    }

    fn compose_target(&mut self, name: &str) {
        let status = self.target_status.ready(name).cloned();
        if let Some(t) = self.targets.ready_mut(name) {
            t.status = status;
        }
    }

    /// A Tunnel's status: what the agent of the node in its spec reports (see
    /// [`crate::store::compose::compose_tunnel_status`]).
    fn compose_tunnel(&mut self, name: &str) {
        let Some(t) = self.tunnels.ready(name) else {
            return;
        };
        let node = &t.spec.node;
        let status = (!node.is_empty() && !node.contains('/'))
            .then(|| self.sources.tunnel_status(node, name))
            .flatten();
        if let Some(t) = self.tunnels.ready_mut(name) {
            t.status = status;
        }
    }

    fn compose_tunnels_of(&mut self, node: &str) {
        let names: Vec<String> = self
            .tunnels
            .iter()
            .filter(|(_, t)| t.ready().is_some_and(|t| t.spec.node == node))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.compose_tunnel(&name);
        }
    }

    fn compose_voter_set(&mut self, name: &str) {
        let status = self.voter_status.ready(name).cloned();
        if let Some(v) = self.voter_sets.ready_mut(name) {
            v.status = status;
        }
    }

    /// Every Node that decodes, with its status, in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// Every Job that decodes, with its status, in name order.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// Every TrainingTarget that decodes, with its status.
    pub fn targets(&self) -> impl Iterator<Item = &TrainingTarget> {
        self.targets.values()
    }

    /// Every Tunnel that decodes, with its status.
    pub fn tunnels(&self) -> impl Iterator<Item = &Tunnel> {
        self.tunnels.values()
    }

    /// The VoterSet `name`, with its status.
    pub fn voter_set(&self, name: &str) -> Option<&VoterSet> {
        self.voter_sets.ready(name)
    }

    /// The cluster as of the last event applied: typed values copied out, nothing decoded.
    pub fn snapshot(&self) -> Snapshot {
        let mut undecodable = Undecodable::default();
        for (name, why) in self.nodes.undecodable() {
            undecodable.nodes.insert(name.clone());
            undecodable.all.push(("Node", name.clone(), why.clone()));
        }
        for (name, why) in self.jobs.undecodable() {
            undecodable.jobs.insert(name.clone());
            undecodable.all.push(("Job", name.clone(), why.clone()));
        }
        for (name, why) in self.pools.undecodable() {
            undecodable.pools.insert(name.clone());
            undecodable.all.push(("Pool", name.clone(), why.clone()));
        }
        let mut bindings = Vec::with_capacity(self.bindings.len());
        for (name, cached) in self.bindings.iter() {
            let Some((node, job)) = name.split_once('/') else {
                continue;
            };
            match cached {
                Cached::Ready((binding, revision)) => bindings.push(BoundRecord {
                    node: node.to_string(),
                    job: job.to_string(),
                    binding: binding.clone(),
                    revision: *revision,
                }),
                Cached::Undecodable(_) => {
                    undecodable.bound_jobs.insert(job.to_string());
                }
            }
        }
        let nodes: Vec<Node> = self.nodes.values().cloned().collect();
        let artifacts = self
            .sorted_artifacts
            .borrow_mut()
            .get_or_insert_with(|| {
                let mut all: Vec<StoredArtifact> = self.artifacts.values().cloned().collect();
                all.sort_by_key(|a| a.created_revision);
                std::sync::Arc::new(all)
            })
            .clone();
        let (alive, released) = self.agent_facts(&nodes, &bindings);
        let input_sizes = self
            .jobs
            .values()
            .flat_map(|j| j.spec.input_artifacts())
            .filter_map(|a| Some((a.to_string(), self.artifacts.ready(a)?.artifact.spec.size)))
            .collect();
        Snapshot {
            nodes,
            jobs: self.jobs.values().cloned().collect(),
            pools: self.pools.values().cloned().collect(),
            targets: self.targets.values().cloned().collect(),
            artifacts,
            undecodable,
            placements: self
                .placements
                .iter()
                .filter_map(|(job, c)| Some((job.clone(), c.ready()?.clone())))
                .collect(),
            bindings,
            alive,
            released,
            input_sizes,
        }
    }

    /// Which nodes are alive (a Node's composed Ready, or the alive key of a node only a
    /// binding names), and which stop orders their agents answered.
    fn agent_facts(
        &self,
        nodes: &[Node],
        bindings: &[BoundRecord],
    ) -> (HashSet<String>, HashSet<(String, String, u64)>) {
        let mut alive: HashSet<String> = nodes
            .iter()
            .filter(|n| n.status.as_ref().is_some_and(|s| s.is_ready()))
            .map(|n| n.name().to_string())
            .collect();
        let mut released = HashSet::new();
        for b in bindings {
            if !alive.contains(&b.node)
                && self.nodes.ready(&b.node).is_none()
                && self.sources.alive(&b.node)
            {
                alive.insert(b.node.clone());
            }
            if b.binding.stop.is_some()
                && self
                    .sources
                    .report(&b.node, &b.job)
                    .is_some_and(|r| r.released && r.epoch == b.binding.epoch)
            {
                released.insert((b.node.clone(), b.job.clone(), b.binding.epoch));
            }
        }
        (alive, released)
    }
}

/// `/rift/v1/bindings/`.
pub fn bindings_root() -> String {
    format!("{}bindings/", keys::ROOT)
}

#[cfg(test)]
mod tests;
