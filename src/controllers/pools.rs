//! The Pool controller's decisions: which member Jobs a Pool should have, and what to create
//! and delete to get there. Pure functions; the controller loads, calls [`plan`], and writes.
//!
//! Members are named deterministically, so a plan is idempotent and two passes never create
//! the same member twice:
//! - `replicas: N` → `<pool>-0` … `<pool>-(N-1)`;
//! - `perGpu: true` → `<pool>-<node>-<gpu index>` for every GPU of every schedulable node
//!   matching the selectors whose agent has reported (Ready, or NotReady because its lease
//!   lapsed), pinned to its node with the [`NODE_NAME_LABEL`] selector. A node that goes
//!   NotReady keeps its members — an agent restart or a blip must not kill them; they follow
//!   `onNodeLost`/`lostAfter` like any job — and a node no agent ever reported for gets none.
//!
//! A member that finished (Succeeded or Failed) or whose spec no longer matches the template
//! is deleted and, on a later pass, created anew.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::job::{Job, JobSpec};
use crate::api::meta::OwnerReference;
use crate::api::node::{selector_matches, Node};
use crate::api::pool::{Pool, PoolStatus};
use crate::api::JobPhase;
use crate::store::compose::{READY, REASON_LEASE_EXPIRED};

pub use super::placement::{NODE_NAME_LABEL, POOL_LABEL};

/// One Job the Pool should have.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: JobSpec,
}

/// What to do to one Pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolPlan {
    pub create: Vec<Member>,
    pub delete: Vec<String>,
    pub status: PoolStatus,
}

/// A DNS-1123 name from parts, shortened with a hash suffix when longer than 63 characters.
pub fn member_name(parts: &[&str]) -> String {
    let full = parts.join("-");
    if full.len() <= 63 {
        return full;
    }
    // FNV-1a: stable across builds and platforms.
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let head = full[..54].trim_end_matches('-');
    format!("{head}-{:08x}", hash as u32)
}

fn gpu_indices(node: &Node) -> Vec<u32> {
    match node.status.as_ref().map(|s| &s.capacity.gpus) {
        Some(gpus) if !gpus.is_empty() => gpus.iter().map(|g| g.index).collect(),
        _ => (0..node.spec.gpus.iter().map(|g| g.count).sum()).collect(),
    }
}

/// True for a node whose agent has reported: Ready, or NotReady because its lease lapsed (not
/// because no agent ever registered).
fn has_reported(node: &Node) -> bool {
    node.status.as_ref().is_some_and(|s| {
        s.is_ready()
            || s.conditions
                .iter()
                .any(|c| c.type_ == READY && c.reason == REASON_LEASE_EXPIRED)
    })
}

/// The members `pool` should have, given the cluster's Nodes.
pub fn desired_members(pool: &Pool, nodes: &[Node]) -> Vec<Member> {
    let template = &pool.spec.template;
    let mut labels = template.metadata.labels.clone();
    labels.insert(POOL_LABEL.into(), pool.name().into());
    let mut base = template.spec.clone();
    base.node_selector.extend(
        pool.spec
            .node_selector
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    if let Some(n) = pool.spec.replicas {
        return (0..n)
            .map(|i| Member {
                name: member_name(&[pool.name(), &i.to_string()]),
                labels: labels.clone(),
                spec: base.clone(),
            })
            .collect();
    }
    let mut members = Vec::new();
    for node in nodes {
        let mut node_labels = node.metadata.labels.clone();
        node_labels.insert(NODE_NAME_LABEL.into(), node.name().into());
        if !has_reported(node)
            || node.spec.unschedulable
            || !selector_matches(&base.node_selector, &node_labels)
        {
            continue;
        }
        for gpu in gpu_indices(node) {
            let mut spec = base.clone();
            spec.resources.gpus = 1;
            spec.node_selector
                .insert(NODE_NAME_LABEL.into(), node.name().into());
            let mut labels = labels.clone();
            labels.insert(crate::api::labels::GPU.into(), gpu.to_string());
            members.push(Member {
                name: member_name(&[pool.name(), node.name(), &gpu.to_string()]),
                labels,
                spec,
            });
        }
    }
    members
}

/// True when `job` is owned by `pool` (same name and uid).
pub fn owned_by(job: &Job, pool: &Pool) -> bool {
    job.metadata.owner_references.iter().any(|o| {
        o.controller
            && o.kind == "Pool"
            && o.name == pool.name()
            && Some(&o.uid) == pool.metadata.uid.as_ref()
    })
}

/// The owner reference members of `pool` carry.
pub fn owner_ref(pool: &Pool) -> OwnerReference {
    OwnerReference {
        kind: "Pool".into(),
        name: pool.name().into(),
        uid: pool.metadata.uid.clone().unwrap_or_default(),
        controller: true,
    }
}

/// Creates and deletes that take `existing` (the Pool's members) to `desired`.
pub fn plan(desired: &[Member], existing: &[&Job]) -> PoolPlan {
    let wanted: BTreeMap<&str, &Member> = desired.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut present = BTreeSet::new();
    let mut out = PoolPlan::default();
    for job in existing {
        let phase = job.status.as_ref().map(|s| s.phase).unwrap_or_default();
        match wanted.get(job.name()) {
            Some(m) if job.spec == m.spec && !phase.is_finished() => {
                present.insert(job.name());
                match phase {
                    JobPhase::Running => {
                        out.status.running += 1;
                        out.status.scheduled += 1;
                    }
                    JobPhase::Scheduled => out.status.scheduled += 1,
                    _ => {}
                }
            }
            // Finished, changed, or no longer wanted: delete (recreated next pass if wanted).
            _ => {
                present.insert(job.name());
                out.delete.push(job.name().to_string());
            }
        }
    }
    out.create = desired
        .iter()
        .filter(|m| !present.contains(m.name.as_str()))
        .cloned()
        .collect();
    out.status.desired = desired.len() as u32;
    out
}

#[cfg(test)]
mod tests;

/// Takes every Pool one step toward its plan: creates missing members, deletes finished,
/// changed and extra ones, and writes the Pool's status when it changed. Member creation
/// races are harmless: names are deterministic and creation is create-if-absent.
pub async fn reconcile(
    store: &crate::store::Store,
    pools: &[Pool],
    nodes: &[Node],
    jobs: &[Job],
) -> Result<(), crate::store::StoreError> {
    use crate::store::StoreError;
    let job_kind = crate::api::kinds::by_kind("Job").expect("Job is registered");
    for pool in pools {
        if pool.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let desired = desired_members(pool, nodes);
        let existing: Vec<&Job> = jobs.iter().filter(|j| owned_by(j, pool)).collect();
        let p = plan(&desired, &existing);
        for m in &p.create {
            let mut job = crate::api::Object::new(m.name.clone(), m.spec.clone());
            job.metadata.labels = m.labels.clone();
            job.metadata.owner_references = vec![owner_ref(pool)];
            match store.create(&job).await {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for name in &p.delete {
            store.delete_object(job_kind, name).await?;
        }
        let mut status = p.status.clone();
        status.observed_generation = pool.metadata.generation;
        if pool.status.as_ref() != Some(&status) {
            store
                .put_status::<crate::api::pool::PoolSpec>(pool.name(), &status)
                .await?;
        }
    }
    Ok(())
}
