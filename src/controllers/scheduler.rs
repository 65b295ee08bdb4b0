//! The scheduler: in passes over a snapshot of the cluster, it keeps Pools at their size,
//! does the housekeeping (drain, lost nodes, TTL, orphans), and places every Pending job.
//!
//! A pass reads Nodes and Jobs (with composed status), Pools, placements and bindings, decides
//! with pure functions ([`super::pools::plan`], [`super::housekeeping::decide`],
//! [`super::placement::schedule`]) and writes placement + binding pairs in batched,
//! compare-and-swap, leader-fenced transactions ([`super::writes::apply`]). Passes run after
//! any change that can alter a decision ([`ClusterView::apply`], coalesced) and at least every
//! [`TICK`]. While it runs, the scheduler keeps a typed [`ClusterView`] current one watch event
//! at a time, first brought up to etcd's current revision before each pass ([`catch_up`]),
//! instead of re-reading (or re-decoding) the whole cluster every pass; when the view cannot be
//! shown current it reads from etcd.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::cluster_view::ClusterView;
use super::housekeeping::{self, BoundRecord, Housekeeping, Undecodable, World};
use super::metrics::{LeaderMetrics, CLUSTER_EVERY};
use super::placement::{self, BoundJob, Decision, NodeView, PendingJob, PlacementConfig};
use super::pools;
use super::training::TrainingController;
use super::writes::{self, ToPending, Write};
use crate::api::event::Reason;
use crate::api::kinds;
use crate::api::placement::{EmbeddedJob, LossTerms};
use crate::api::Job;
use crate::store::events::EventRecorder;
use crate::store::watcher::{WatchConfig, WatchEvent, Watcher};
use crate::store::{keys, Store, StoreError};
use crate::tasks::CancellationToken;
use futures::FutureExt;

/// The longest time between passes when nothing changes.
pub const TICK: Duration = Duration::from_secs(1);
/// Changes arriving within this window share one pass.
pub const COALESCE: Duration = Duration::from_millis(20);

pub use super::cluster_view::Snapshot;

/// Reads a snapshot from etcd: one listing of `/rift/v1/`, composed as the watch-fed
/// [`ClusterView`] composes it (one code path for both).
pub async fn load(store: &Store) -> Result<Snapshot, StoreError> {
    let (items, revision) = store.list_raw(keys::ROOT, None).await?;
    let mut view = ClusterView::new();
    view.apply(&WatchEvent::Restarted { items, revision });
    Ok(view.snapshot())
}

/// What one pass did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    pub placed: usize,
    pub unschedulable: usize,
    pub evicted: usize,
    pub deleted_jobs: usize,
    pub conflicts: usize,
    pub training_events: usize,
}

/// The scheduler's state between passes.
pub struct Scheduler {
    store: Store,
    placement: PlacementConfig,
    housekeeping: Housekeeping,
    /// When this leader first saw each node NotReady (its own monotonic clock).
    lost_since: HashMap<String, Instant>,
    /// Undecodable objects already reported by this leader, by (kind, name).
    reported_undecodable: HashSet<(String, String)>,
    events: EventRecorder,
    metrics: Option<LeaderMetrics>,
}

impl Scheduler {
    /// `store` must be the leader's fenced store.
    pub fn new(store: Store, placement: PlacementConfig, housekeeping: Housekeeping) -> Self {
        Self {
            events: EventRecorder::controller(store.clone(), "scheduler"),
            store,
            placement,
            housekeeping,
            lost_since: HashMap::new(),
            reported_undecodable: HashSet::new(),
            metrics: None,
        }
    }

    /// Records every pass, and the cluster as its view shows it, in `metrics`.
    pub fn with_metrics(mut self, metrics: LeaderMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How long each node named by a Node or a binding has been without its alive key, as
    /// this leader measured it on its own monotonic clock.
    fn track_lost_nodes(&mut self, snap: &Snapshot) -> HashMap<String, Duration> {
        let now = Instant::now();
        let named: HashSet<&str> = snap
            .nodes
            .iter()
            .map(|n| n.name())
            .chain(snap.bindings.iter().map(|b| b.node.as_str()))
            .collect();
        self.lost_since.retain(|n, _| named.contains(n.as_str()));
        for name in named {
            if snap.alive.contains(name) {
                self.lost_since.remove(name);
            } else if let std::collections::hash_map::Entry::Vacant(e) =
                self.lost_since.entry(name.to_string())
            {
                e.insert(now);
                if snap.nodes.iter().any(|n| n.name() == name) {
                    self.events.record(
                        "Node",
                        name,
                        Reason::NodeNotReady,
                        "the node's agent lease expired (or it never registered)",
                    );
                }
            }
        }
        self.lost_since
            .iter()
            .map(|(n, t)| (n.clone(), now.duration_since(*t)))
            .collect()
    }

    /// Reports (once per object and leader) every stored object this build cannot decode: it
    /// is left untouched, and people must hear why.
    fn report_undecodable(&mut self, undecodable: &Undecodable) {
        for (kind, name, why) in &undecodable.all {
            if self
                .reported_undecodable
                .insert((kind.to_string(), name.clone()))
            {
                tracing::warn!(
                    kind,
                    name,
                    why,
                    "an object cannot be decoded; leaving it and what it placed untouched"
                );
                self.events.record(
                    kind,
                    name,
                    Reason::ObjectUndecodable,
                    format!("rift {} cannot read this {kind} ({why}); it was probably written by a newer version. Nothing is done to it or its jobs until it can be read.", env!("CARGO_PKG_VERSION")),
                );
            }
        }
        let now: HashSet<(String, String)> = undecodable
            .all
            .iter()
            .map(|(k, n, _)| (k.to_string(), n.clone()))
            .collect();
        self.reported_undecodable.retain(|k| now.contains(k));
    }

    /// One pass over a snapshot read from etcd: pools, housekeeping, placement.
    pub async fn pass(&mut self) -> Result<PassStats, StoreError> {
        let snap = load(&self.store).await?;
        self.pass_on(snap).await
    }

    /// One pass over `snap`: pools, housekeeping, placement.
    pub async fn pass_on(&mut self, snap: Snapshot) -> Result<PassStats, StoreError> {
        let mut stats = PassStats::default();
        self.report_undecodable(&snap.undecodable);
        pools::reconcile(&self.store, &snap, Utc::now()).await?;
        let happenings = TrainingController::new(self.store.clone())
            .pass(&snap.targets, &snap.jobs, &snap.artifacts, Utc::now())
            .await?;
        for h in &happenings {
            tracing::info!(target = %h.target, reason = %h.reason, "{}", h.message);
            self.events
                .record("TrainingTarget", &h.target, h.reason, &h.message);
        }
        stats.training_events += happenings.len();

        let lost_for = self.track_lost_nodes(&snap);
        let world = World {
            nodes: &snap.nodes,
            jobs: &snap.jobs,
            undecodable: &snap.undecodable,
            pools: &snap.pools,
            placements: &snap.placements,
            bindings: &snap.bindings,
            released: &snap.released,
            lost_for: &lost_for,
        };
        let chores = housekeeping::decide(&world, &self.housekeeping, Utc::now());
        let job_kind = kinds::by_kind("Job").expect("Job is registered");
        for job in &chores.delete_jobs {
            self.store.delete_object(job_kind, job).await?;
            stats.deleted_jobs += 1;
        }
        let applied = writes::apply(&self.store, &chores.writes).await?;
        stats.conflicts += applied.conflicts;
        stats.evicted += chores
            .writes
            .iter()
            .filter(|w| matches!(w, Write::Stop { .. }))
            .count();

        // Jobs touched by housekeeping wait for the next pass, which sees the result.
        let touched: HashSet<&str> = chores
            .delete_jobs
            .iter()
            .map(String::as_str)
            .chain(chores.writes.iter().map(Write::job))
            .collect();
        let writes = self.placement_writes(&snap, &touched, &mut stats);
        let applied = writes::apply(&self.store, &writes).await?;
        stats.conflicts += applied.conflicts;
        self.record_placement_events(chores.writes.iter().chain(&writes));
        Ok(stats)
    }

    /// Events for the state changes this pass wrote (never for unchanged state: event writes
    /// wake the scheduler again). Placements themselves are not announced: too many.
    fn record_placement_events<'a>(&self, writes: impl Iterator<Item = &'a Write>) {
        for w in writes {
            match w {
                Write::Pending { job, pending } => {
                    self.events
                        .record("Job", job, Reason::JobUnschedulable, pending.reason.clone())
                }
                Write::Stop { job, binding, .. } => {
                    let reason = binding
                        .stop
                        .as_ref()
                        .map(|s| s.reason.clone())
                        .unwrap_or_default();
                    self.events.record("Job", job, Reason::JobEvicted, reason)
                }
                Write::Place { .. } | Write::Release { .. } | Write::Forget { .. } => {}
            }
        }
    }

    /// Placement of every pending job. A job's name is taken while any binding of it exists
    /// (a new instance starts only once the old one is released), and every binding holds its
    /// GPUs, cpus and memory until it is deleted — stop-ordered ones too, at a priority nothing
    /// can preempt. A preemptor does not take its victims' GPUs in the same pass: they get stop
    /// orders, and it waits (skipped while any of them stands) until they are released.
    fn placement_writes(
        &self,
        snap: &Snapshot,
        touched: &HashSet<&str>,
        stats: &mut PassStats,
    ) -> Vec<Write> {
        let jobs: HashMap<&str, &Job> = snap.jobs.iter().map(|j| (j.name(), j)).collect();
        let mut bound: HashMap<&str, Vec<BoundJob>> = HashMap::new();
        let mut taken: HashSet<&str> = snap
            .undecodable
            .bound_jobs
            .iter()
            .map(String::as_str)
            .collect();
        let mut waiting_preemptors: HashSet<&str> = HashSet::new();
        let mut live: HashMap<&str, &BoundRecord> = HashMap::new();
        for b in &snap.bindings {
            taken.insert(b.job.as_str());
            let job = jobs.get(b.job.as_str()).copied();
            // A finished job keeps its binding (its logs and report stay on the node) but holds
            // no GPUs, cpus or memory.
            if job.is_some_and(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())) {
                continue;
            }
            let mut held = match job {
                Some(j) => BoundJob::from_job(j, b.binding.gpus.clone()),
                None => BoundJob::from_binding(&b.job, b.binding.gpus.clone()),
            };
            match &b.binding.stop {
                Some(stop) => {
                    held.priority = i32::MAX; // leaving already: never a victim
                    if let Some(p) = &stop.for_job {
                        waiting_preemptors.insert(p.as_str());
                    }
                }
                None => {
                    live.insert(b.job.as_str(), b);
                }
            }
            bound.entry(b.node.as_str()).or_default().push(held);
        }
        let views: Vec<NodeView> = snap
            .nodes
            .iter()
            .map(|n| NodeView::from_node(n, bound.remove(n.name()).unwrap_or_default()))
            .collect();
        let pending: Vec<PendingJob> = snap
            .jobs
            .iter()
            .filter(|j| {
                !touched.contains(j.name())
                    && !taken.contains(j.name())
                    && !waiting_preemptors.contains(j.name())
                    && j.metadata.deletion_timestamp.is_none()
            })
            .filter(|j| match snap.placements.get(j.name()) {
                None => true,
                Some((p, _)) => p.node.is_none(),
            })
            .map(|j| PendingJob::with_inputs(j, &snap.input_sizes))
            .collect();
        if pending.is_empty() {
            return Vec::new();
        }
        let placed = |job: &str| snap.placements.get(job);
        let mut out = Vec::new();
        for decision in placement::schedule(&views, &pending, &self.placement) {
            let prev = placed(decision.job());
            let epoch = prev.map_or(0, |(p, _)| p.epoch);
            let expect = prev.map(|(_, rev)| *rev);
            let job = jobs[decision.job()];
            let uid = job.metadata.uid.clone().unwrap_or_default();
            let pending_write = |job: String, reason: String| Write::Pending {
                job,
                pending: ToPending {
                    reason,
                    epoch,
                    uid: uid.clone(),
                    expect,
                },
            };
            let unchanged = |reason: &str| {
                prev.is_some_and(|(p, _)| p.pending.as_deref() == Some(reason) && p.uid == uid)
            };
            match decision {
                Decision::Place {
                    job: name,
                    node,
                    gpus,
                } => {
                    stats.placed += 1;
                    // A new binding always gets the next epoch, guarded by the placement as read.
                    out.push(Write::Place {
                        job: name,
                        node,
                        gpus,
                        epoch: epoch + 1,
                        uid: uid.clone(),
                        terms: LossTerms::of(&job.spec),
                        embedded: EmbeddedJob::of(job),
                        expect,
                        job_revision: job.metadata.revision(),
                    });
                }
                Decision::Preempt {
                    job: name,
                    node,
                    evict,
                    ..
                } => {
                    for victim in &evict {
                        if let Some(b) = live.get(victim.as_str()) {
                            stats.evicted += 1;
                            out.push(housekeeping::stop_order(
                                b,
                                placed(victim),
                                format!("preempted by higher-priority job {name}"),
                                Some(name.clone()),
                            ));
                        }
                    }
                    let reason = format!(
                        "waiting for {} preempted job(s) to stop on node {node}: {}",
                        evict.len(),
                        evict.join(", ")
                    );
                    if !unchanged(&reason) {
                        out.push(pending_write(name, reason));
                    }
                }
                Decision::Unschedulable { job: name, reason } => {
                    stats.unschedulable += 1;
                    if !unchanged(&reason) {
                        out.push(pending_write(name, reason));
                    }
                }
            }
        }
        out
    }

    /// Runs passes until `stop` resolves or a write is refused by the leader fence (then
    /// returns [`StoreError::Fenced`]: the caller must step down).
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), StoreError> {
        let mut watcher = Watcher::new(self.store.clone(), keys::ROOT, WatchConfig::default());
        let mut view = ClusterView::new();
        let mut observed_at: Option<Instant> = None;
        loop {
            // A stop ends the pass in flight: each write is its own compare-and-swap
            // transaction, so the next leader simply decides again from what landed. (Waiting
            // for the pass would delay a graceful handover by as long as the pass takes.)
            let started = Instant::now();
            let pass = async {
                let snap = match catch_up(&self.store, &mut watcher, &mut view).await {
                    Ok(true) => Ok(view.snapshot()),
                    // The view could not be shown current: read from etcd this time.
                    Ok(false) | Err(_) => load(&self.store).await,
                };
                match snap {
                    Ok(snap) => self.pass_on(snap).await,
                    Err(e) => Err(e),
                }
            };
            let result = tokio::select! {
                r = pass => r,
                _ = stop.cancelled() => return Ok(()),
            };
            if let (Some(m), Ok(stats)) = (&self.metrics, &result) {
                m.pass(started.elapsed(), stats.placed, stats.evicted);
                if view.synced() && observed_at.is_none_or(|t| t.elapsed() >= CLUSTER_EVERY) {
                    m.observe(&view);
                    observed_at = Some(Instant::now());
                }
            }
            match result {
                Ok(stats) if stats != PassStats::default() => {
                    tracing::info!(?stats, "scheduler pass")
                }
                Ok(_) => {}
                Err(StoreError::Fenced) => return Err(StoreError::Fenced),
                Err(e) => tracing::warn!(%e, "scheduler pass failed; retrying"),
            }
            // Wait for a change that can alter a decision (or the tick), let a burst settle,
            // then take everything already queued: one pass answers them all.
            let tick = tokio::time::sleep(TICK);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    ev = watcher.next() => match &ev {
                        Ok(ev) => if view.apply(ev) {
                            break;
                        },
                        // Errors end the wait: the pass reads from etcd if need be.
                        Err(_) => break,
                    },
                    _ = &mut tick => break,
                    _ = stop.cancelled() => return Ok(()),
                }
            }
            tokio::time::sleep(COALESCE).await;
            for _ in 0..MAX_DRAIN {
                // `next` is cancel-safe: a poll that would wait is dropped without loss.
                match watcher.next().now_or_never() {
                    Some(Ok(ev)) => {
                        view.apply(&ev);
                    }
                    Some(Err(_)) => {}
                    None => break,
                }
            }
        }
    }
}

/// How long a pass waits for the view to reach etcd's current revision before it reads from
/// etcd instead.
const CATCH_UP: Duration = Duration::from_secs(1);

/// Brings `view` up to etcd's current revision (everything written before this call),
/// applying watch events; false when that did not happen within [`CATCH_UP`] (e.g. the last
/// write was outside rift's prefix, so no event under it carries that revision).
async fn catch_up(
    store: &Store,
    watcher: &mut Watcher,
    view: &mut ClusterView,
) -> Result<bool, StoreError> {
    let target = store.revision().await?;
    let deadline = tokio::time::sleep(CATCH_UP);
    tokio::pin!(deadline);
    while !view.synced() || watcher.revision() < target {
        tokio::select! {
            ev = watcher.next() => {
                if let Ok(ev) = &ev {
                    view.apply(ev);
                }
            }
            _ = &mut deadline => return Ok(false),
        }
    }
    Ok(true)
}

/// Most queued watch events taken at once before a pass.
const MAX_DRAIN: usize = 100_000;
