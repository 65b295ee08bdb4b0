//! Decisions about jobs already placed: forget placements of deleted jobs, evict jobs from
//! draining, deleted or lost nodes, delete finished jobs past `ttlAfterFinished`, and delete
//! Pool members whose Pool is gone. A pure function of a snapshot.
//!
//! Lost nodes: a `reschedule` job is moved only once its node has been NotReady (alive key
//! gone) for `lostAfter` + [`Housekeeping::margin`], measured by the leader on its own
//! monotonic clock since it first saw the node NotReady. The node's own agent and shims stop
//! the job after `lostAfter` of failed renewals, so the two windows cannot overlap: the job
//! never runs twice. A new leader starts measuring from zero, which only delays the move.
//! `wait` jobs are never moved.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::writes::Write;
use crate::api::job::{Job, OnNodeLost};
use crate::api::node::Node;
use crate::api::node::DRAIN_ANNOTATION;
use crate::api::placement::Placement;
use crate::api::pool::Pool;

/// Inputs beyond the snapshot.
#[derive(Clone, Debug)]
pub struct Housekeeping {
    /// Extra time, beyond a job's `lostAfter`, before it is moved off a lost node.
    pub margin: Duration,
}

impl Default for Housekeeping {
    fn default() -> Self {
        Self {
            margin: Duration::from_secs(10),
        }
    }
}

/// What housekeeping decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chores {
    pub writes: Vec<Write>,
    /// Jobs to delete (TTL after finishing, or their Pool is gone).
    pub delete_jobs: Vec<String>,
}

fn is_pool_orphan(job: &Job, pools: &HashMap<&str, &Pool>) -> bool {
    job.metadata
        .owner_references
        .iter()
        .filter(|o| o.controller && o.kind == "Pool")
        .any(|o| {
            pools
                .get(o.name.as_str())
                .is_none_or(|p| p.metadata.uid.as_deref() != Some(o.uid.as_str()))
        })
}

/// Decides the chores for one pass. `lost_for` is how long each NotReady node has been seen
/// NotReady by this leader.
pub fn decide(
    nodes: &[Node],
    jobs: &[Job],
    pools: &[Pool],
    placements: &HashMap<String, (Placement, i64)>,
    lost_for: &HashMap<String, Duration>,
    config: &Housekeeping,
    now: DateTime<Utc>,
) -> Chores {
    let mut out = Chores::default();
    let jobs_by_name: HashMap<&str, &Job> = jobs.iter().map(|j| (j.name(), j)).collect();
    let nodes_by_name: HashMap<&str, &Node> = nodes.iter().map(|n| (n.name(), n)).collect();
    let pools_by_name: HashMap<&str, &Pool> = pools.iter().map(|p| (p.name(), p)).collect();
    let mut deleting = HashSet::new();

    for job in jobs {
        let status = job.status.clone().unwrap_or_default();
        let expired = match (job.spec.ttl_after_finished, status.finish_time) {
            (Some(ttl), Some(done)) if status.phase.is_finished() => {
                now - done >= chrono::Duration::from_std(ttl.0).unwrap_or_default()
            }
            _ => false,
        };
        if expired || is_pool_orphan(job, &pools_by_name) {
            deleting.insert(job.name());
            out.delete_jobs.push(job.name().to_string());
        }
    }

    let mut names: Vec<&String> = placements.keys().collect();
    names.sort();
    for name in names {
        let (placement, rev) = &placements[name];
        let Some(job) = jobs_by_name.get(name.as_str()) else {
            out.writes.push(Write::Forget {
                job: name.clone(),
                node: placement.node.clone(),
                expect: *rev,
            });
            continue;
        };
        let Some(node_name) = &placement.node else {
            continue;
        };
        let finished = job.status.as_ref().is_some_and(|s| s.phase.is_finished());
        if finished || deleting.contains(name.as_str()) {
            continue;
        }
        let why = match nodes_by_name.get(node_name.as_str()) {
            None => Some(format!("node {node_name} was deleted")),
            Some(n) if n.metadata.annotations.contains_key(DRAIN_ANNOTATION) => {
                Some(format!("node {node_name} is being drained"))
            }
            Some(_) => lost_for.get(node_name).and_then(|lost| {
                let limit = job.spec.lost_after.0 + config.margin;
                (job.spec.on_node_lost == OnNodeLost::Reschedule && *lost >= limit).then(|| {
                    format!(
                        "node {node_name} was lost for {}s (onNodeLost: reschedule)",
                        lost.as_secs()
                    )
                })
            }),
        };
        if let Some(reason) = why {
            out.writes.push(Write::Evict {
                job: name.clone(),
                node: node_name.clone(),
                reason,
                epoch: placement.epoch,
                expect: Some(*rev),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
