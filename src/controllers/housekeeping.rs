//! Decisions about jobs already placed, and the one hand-over rule: a pure function of a
//! snapshot ([`decide`]), plus the one constructor of stop orders ([`stop_order`]) that
//! preemption uses too.
//!
//! **Hand-over only after the old holder is gone** (DESIGN.md). A job leaves a node — drained,
//! node deleted, job deleted or created again, preempted, node lost — in two steps:
//!
//! 1. *Stop order*: its binding is rewritten with [`Binding::stop`] (the placement goes back to
//!    pending with the reason). The binding stays, so it keeps holding its GPUs, cpus and
//!    memory, and the job's name stays taken: nothing is placed in its stead yet.
//! 2. *Release*: the binding is deleted only when the old instance is observed gone — the
//!    node's agent reported the binding's epoch `released` (it stopped the instance and will
//!    not start it again) — or when the node has been without its alive key for
//!    `lostAfter + terminationGracePeriod + margin`, measured by this leader on its own
//!    monotonic clock since it first saw the node lost, and the job is `onNodeLost: reschedule`
//!    (its node's agent and shims stopped it `lostAfter` after the last renewal, and SIGKILL
//!    followed within the grace period) or its Node was deleted (the operator declared the
//!    machine gone). Only then may the scheduler place the job again, on its GPUs or anywhere.
//!
//! A `reschedule` job on a lost node needs no stop order: it is released at the hand-over time
//! directly. A `wait` job on a lost node is never moved. A new leader starts measuring lost
//! nodes from zero, which only delays a move. The numbers (`onNodeLost`, `lostAfter`, grace) are
//! the binding's [`LossTerms`], copied from the Job when it was bound, so a later edit of the
//! Job cannot shorten a hand-over the node is already counting toward.
//!
//! **What cannot be read is never acted on**: a Job whose stored object does not decode in
//! this version keeps its placement and bindings untouched.
//!
//! Also here: forget placements of jobs that are gone (once nothing of them is bound), delete
//! finished jobs past `ttlAfterFinished`, and delete Pool members whose Pool is gone.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::writes::{ToPending, Write};
use crate::api::job::{Job, OnNodeLost};
use crate::api::node::Node;
use crate::api::node::DRAIN_ANNOTATION;
use crate::api::placement::{Binding, LossTerms, Placement, StopOrder};
use crate::api::pool::Pool;
use crate::api::JobSpec;

/// Inputs beyond the snapshot.
#[derive(Clone, Debug)]
pub struct Housekeeping {
    /// Extra time, beyond a job's `lostAfter` and grace period, before it is taken off a lost
    /// node.
    pub margin: Duration,
}

impl Default for Housekeeping {
    fn default() -> Self {
        Self {
            margin: Duration::from_secs(10),
        }
    }
}

/// One binding as read: where, of which job, its value and its mod revision.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundRecord {
    pub node: String,
    pub job: String,
    pub binding: Binding,
    pub revision: i64,
}

/// Names of stored objects this build cannot decode, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Undecodable {
    pub nodes: HashSet<String>,
    pub jobs: HashSet<String>,
    pub pools: HashSet<String>,
    /// Jobs with a binding that does not decode: their name stays taken.
    pub bound_jobs: HashSet<String>,
    /// `(kind, name, why)` of each, for events and logs.
    pub all: Vec<(&'static str, String, String)>,
}

impl Undecodable {
    /// Keeps the decoded objects of `listed` and notes the names of the others.
    pub fn take<S: crate::api::Spec>(
        &mut self,
        listed: crate::store::objects::Listed<S>,
    ) -> Vec<crate::api::Object<S>> {
        for (name, why) in listed.undecodable {
            match S::KIND {
                "Node" => self.nodes.insert(name.clone()),
                "Job" => self.jobs.insert(name.clone()),
                "Pool" => self.pools.insert(name.clone()),
                _ => false,
            };
            self.all.push((S::KIND, name, why));
        }
        listed.objects
    }
}

/// The cluster as housekeeping sees it.
#[derive(Clone, Copy, Debug)]
pub struct World<'a> {
    pub nodes: &'a [Node],
    pub jobs: &'a [Job],
    /// Objects that exist but do not decode in this version: never acted on.
    pub undecodable: &'a Undecodable,
    pub pools: &'a [Pool],
    /// Placement and its mod revision, by job.
    pub placements: &'a HashMap<String, (Placement, i64)>,
    pub bindings: &'a [BoundRecord],
    /// `(node, job, epoch)` whose agent reported the instance released.
    pub released: &'a HashSet<(String, String, u64)>,
    /// How long each node (named by a Node or a binding) has been without its alive key, as
    /// this leader measured it; absent when alive.
    pub lost_for: &'a HashMap<String, Duration>,
}

/// What housekeeping decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chores {
    pub writes: Vec<Write>,
    /// Jobs to delete (TTL after finishing, or their Pool is gone).
    pub delete_jobs: Vec<String>,
}

fn is_pool_orphan(job: &Job, pools: &HashMap<&str, &Pool>, unreadable: &HashSet<String>) -> bool {
    job.metadata
        .owner_references
        .iter()
        .filter(|o| o.controller && o.kind == "Pool" && !unreadable.contains(&o.name))
        .any(|o| {
            pools
                .get(o.name.as_str())
                .is_none_or(|p| p.metadata.uid.as_deref() != Some(o.uid.as_str()))
        })
}

/// The terms a binding is handed over under: its own, else the Job's current ones, else
/// `wait` (never moved off a lost node).
pub fn terms_of(binding: &Binding, job: Option<&Job>) -> LossTerms {
    binding
        .terms
        .or_else(|| job.map(|j| LossTerms::of(&j.spec)))
        .unwrap_or_else(|| LossTerms::of(&JobSpec::with_command(["?"])))
}

/// How long a node must have been lost before a binding there is released: `lostAfter` +
/// grace + margin (saturating: an absurd user number means "never", not an overflow).
pub fn handover_after(terms: &LossTerms, margin: Duration) -> Duration {
    terms
        .lost_after
        .0
        .saturating_add(terms.termination_grace_period.0)
        .saturating_add(margin)
}

/// The placement update that goes with taking `b` off its node: back to pending with `reason`
/// when the placement still names this binding (node and epoch); `None` otherwise.
fn to_pending(
    b: &BoundRecord,
    placement: Option<&(Placement, i64)>,
    reason: &str,
) -> Option<ToPending> {
    let (p, rev) = placement?;
    (p.node.as_deref() == Some(b.node.as_str()) && p.epoch == b.binding.epoch).then(|| ToPending {
        reason: reason.to_string(),
        epoch: p.epoch,
        uid: p.uid.clone(),
        expect: Some(*rev),
    })
}

/// The stop order for binding `b`: step 1 of a hand-over (see the module documentation).
/// `for_job` names the preemptor waiting for its GPUs.
pub fn stop_order(
    b: &BoundRecord,
    placement: Option<&(Placement, i64)>,
    reason: String,
    for_job: Option<String>,
) -> Write {
    let mut binding = b.binding.clone();
    let placement = to_pending(b, placement, &reason);
    binding.stop = Some(StopOrder { reason, for_job });
    Write::Stop {
        job: b.job.clone(),
        node: b.node.clone(),
        binding,
        expect_binding: b.revision,
        placement,
    }
}

/// Decides the chores for one pass.
pub fn decide(world: &World, config: &Housekeeping, now: DateTime<Utc>) -> Chores {
    let mut out = Chores::default();
    let jobs_by_name: HashMap<&str, &Job> = world.jobs.iter().map(|j| (j.name(), j)).collect();
    let nodes_by_name: HashMap<&str, &Node> = world.nodes.iter().map(|n| (n.name(), n)).collect();
    let pools_by_name: HashMap<&str, &Pool> = world.pools.iter().map(|p| (p.name(), p)).collect();

    for job in world.jobs {
        let status = job.status.clone().unwrap_or_default();
        let expired = match (job.spec.ttl_after_finished, status.finish_time) {
            (Some(ttl), Some(done)) if status.phase.is_finished() => {
                chrono::Duration::from_std(ttl.0).is_ok_and(|ttl| now - done >= ttl)
            }
            _ => false,
        };
        if expired || is_pool_orphan(job, &pools_by_name, &world.undecodable.pools) {
            out.delete_jobs.push(job.name().to_string());
        }
    }

    let mut bound: Vec<&BoundRecord> = world.bindings.iter().collect();
    bound.sort_by(|a, b| (&a.job, &a.node).cmp(&(&b.job, &b.node)));
    let mut still_bound: HashSet<&str> = HashSet::new();
    for b in bound {
        still_bound.insert(&b.job);
        if world.undecodable.jobs.contains(&b.job) || world.undecodable.nodes.contains(&b.node) {
            continue;
        }
        if let Some(w) = handover(world, config, &jobs_by_name, &nodes_by_name, b) {
            out.writes.push(w);
        }
    }

    let mut names: Vec<&String> = world.placements.keys().collect();
    names.sort();
    for name in names {
        let gone =
            !jobs_by_name.contains_key(name.as_str()) && !world.undecodable.jobs.contains(name);
        let bound =
            still_bound.contains(name.as_str()) || world.undecodable.bound_jobs.contains(name);
        if gone && !bound {
            out.writes.push(Write::Forget {
                job: name.clone(),
                expect: world.placements[name].1,
            });
        }
    }
    out
}

/// The hand-over step for one binding, if any.
fn handover(
    world: &World,
    config: &Housekeeping,
    jobs: &HashMap<&str, &Job>,
    nodes: &HashMap<&str, &Node>,
    b: &BoundRecord,
) -> Option<Write> {
    let job = jobs.get(b.job.as_str()).copied();
    let placement = world.placements.get(&b.job);
    let terms = terms_of(&b.binding, job);
    let node = nodes.get(b.node.as_str());
    let finished = job.is_some_and(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished()));
    let release = |reason: String| Write::Release {
        job: b.job.clone(),
        node: b.node.clone(),
        expect_binding: b.revision,
        placement: to_pending(b, placement, &reason),
    };

    // Step 2 first: is the old instance gone?
    if let Some(stop) = &b.binding.stop {
        let key = (b.node.clone(), b.job.clone(), b.binding.epoch);
        if world.released.contains(&key) {
            return Some(release(stop.reason.clone()));
        }
    }
    if let Some(lost) = world.lost_for.get(&b.node) {
        let movable = terms.on_node_lost == OnNodeLost::Reschedule || node.is_none();
        if movable
            && *lost >= handover_after(&terms, config.margin)
            && (!finished || b.binding.stop.is_some())
        {
            return Some(release(format!(
                "node {} was lost for {}s (onNodeLost: {}): its instance was stopped there",
                b.node,
                lost.as_secs(),
                if terms.on_node_lost == OnNodeLost::Reschedule {
                    "reschedule"
                } else {
                    "wait, and the node was deleted"
                },
            )));
        }
    }
    if b.binding.stop.is_some() {
        return None; // ordered to stop; waiting for the old instance to go
    }

    // Step 1: must this live binding go?
    let why = match job {
        None => Some("the job was deleted".to_string()),
        Some(j)
            if !b.binding.uid.is_empty()
                && j.metadata
                    .uid
                    .as_deref()
                    .is_some_and(|u| u != b.binding.uid) =>
        {
            Some("the job was deleted and created again".to_string())
        }
        Some(_)
            if placement.is_none_or(|(p, _)| {
                p.node.as_deref() != Some(b.node.as_str()) || p.epoch != b.binding.epoch
            }) =>
        {
            Some("the binding is not the job's placement".to_string())
        }
        Some(_) if finished => None,
        Some(_) => match node {
            None => Some(format!("node {} was deleted", b.node)),
            Some(n) if n.metadata.annotations.contains_key(DRAIN_ANNOTATION) => {
                Some(format!("node {} is being drained", b.node))
            }
            Some(_) => None,
        },
    }?;
    // A deleted job's placement is forgotten once released, not sent back to pending.
    let placement = if job.is_some() { placement } else { None };
    Some(stop_order(b, placement, why, None))
}

#[cfg(test)]
mod tests;
