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
//! is deleted and, on a later pass, created anew. A member that differs only in its `model`
//! input (a newly promoted model) is replaced in batches instead ([`rollout`]).
//!
//! Members' outputs carry the template's labels (so a TrainingTarget's `selfplaySelector`
//! selects their game shards), and template input selectors are resolved to artifact names
//! when a member is created ([`crate::controllers::template_inputs`]); a member whose inputs
//! already resolved matches its template whatever they resolved to.

pub mod rollout;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::api::job::{Job, JobSpec};
use crate::api::job_io::JobInput;
use crate::api::meta::OwnerReference;
use crate::api::node::{selector_matches, Node};
use crate::api::placement::ModelOrder;
use crate::api::pool::{ModelUpdate, Pool, PoolStatus, MODEL_INPUT};
use crate::api::training_target::TrainingTarget;
use crate::api::JobPhase;
use crate::controllers::cluster_view::StoredArtifact;
use crate::controllers::housekeeping::BoundRecord;
use crate::controllers::template_inputs::{label_outputs, resolve, resolved_from};
use crate::store::compose::{READY, REASON_LEASE_EXPIRED};
use rollout::{replacements, rollout_status, Outdated, Progress};

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
    /// The rollout's view of the members (all zero without a model).
    pub progress: Progress,
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

/// The members `pool` should have, given the cluster's Nodes, each with `model` (when set) as
/// its `model` input.
pub fn desired_members(pool: &Pool, nodes: &[Node], model: Option<&str>) -> Vec<Member> {
    let template = &pool.spec.template;
    let mut labels = template.metadata.labels.clone();
    labels.insert(POOL_LABEL.into(), pool.name().into());
    let mut base = template.spec.clone();
    label_outputs(&mut base.outputs, &template.metadata.labels);
    if let Some(model) = model {
        base.inputs
            .push(JobInput::of(MODEL_INPUT, [model.to_string()]));
    }
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

/// How a member's spec compares with its template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    Same,
    /// Only the `model` input differs: a rollout replaces it.
    OtherModel,
    Changed,
}

/// How `stored` (a member) compares with `desired` (its template, selectors unresolved).
pub fn fit(stored: &JobSpec, desired: &JobSpec) -> Fit {
    let split = |spec: &JobSpec| {
        let (model, rest): (Vec<JobInput>, Vec<JobInput>) = spec
            .inputs
            .iter()
            .cloned()
            .partition(|i| i.name == MODEL_INPUT);
        let bare = JobSpec {
            inputs: Vec::new(),
            ..spec.clone()
        };
        (bare, rest, model)
    };
    let (s_bare, s_inputs, s_model) = split(stored);
    let (d_bare, d_inputs, d_model) = split(desired);
    if s_bare != d_bare || !resolved_from(&s_inputs, &d_inputs) {
        Fit::Changed
    } else if s_model != d_model {
        Fit::OtherModel
    } else {
        Fit::Same
    }
}

/// The model input's artifact of `spec`, if it has one.
pub fn model_of(spec: &JobSpec) -> Option<&str> {
    spec.inputs
        .iter()
        .find(|i| i.name == MODEL_INPUT)
        .and_then(|i| i.artifacts.first())
        .map(String::as_str)
}

/// Creates and deletes that take `existing` (the Pool's members) to `desired`. A member on
/// another model is up to date once its node reports it holds the desired one (a Reload
/// swapped it in); otherwise, with `reload`, it waits for its node to swap it, and without,
/// it is replaced at most `max_unavailable` at a time once its node prefetched the new model
/// ([`rollout::replacements`]); `None` replaces them all at once.
pub fn plan(
    desired: &[Member],
    existing: &[&Job],
    max_unavailable: Option<u32>,
    reload: bool,
) -> PoolPlan {
    let wanted: BTreeMap<&str, &Member> = desired.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut present = BTreeSet::new();
    let mut out = PoolPlan::default();
    let mut outdated = Vec::new();
    for job in existing {
        let phase = job.status.as_ref().map(|s| s.phase).unwrap_or_default();
        present.insert(job.name());
        let Some(m) = wanted.get(job.name()) else {
            out.delete.push(job.name().to_string());
            continue;
        };
        let fit = fit(&job.spec, &m.spec);
        if phase.is_finished() || fit == Fit::Changed {
            // Finished or changed: delete (recreated next pass).
            out.delete.push(job.name().to_string());
            continue;
        }
        match phase {
            JobPhase::Running => {
                out.status.running += 1;
                out.status.scheduled += 1;
            }
            JobPhase::Scheduled => out.status.scheduled += 1,
            _ => {}
        }
        let reported = job.status.as_ref().and_then(|s| s.model.as_ref());
        let wanted_model = model_of(&m.spec);
        let holds = |m: Option<&String>| m.is_some() && m.map(String::as_str) == wanted_model;
        if fit == Fit::OtherModel && !reported.is_some_and(|r| holds(r.held.as_ref())) {
            if !reload {
                outdated.push(Outdated {
                    name: job.name().to_string(),
                    running: phase == JobPhase::Running,
                    prefetched: reported.is_some_and(|r| holds(r.prefetched.as_ref())),
                });
            }
        } else {
            out.progress.updated += 1;
            out.progress.updated_running += u32::from(phase == JobPhase::Running);
        }
    }
    let total = desired.len() as u32;
    out.progress.total = total;
    let limit = max_unavailable.unwrap_or(total.max(1));
    out.delete
        .extend(replacements(&outdated, out.status.running, total, limit));
    out.create = desired
        .iter()
        .filter(|m| !present.contains(m.name.as_str()))
        .cloned()
        .collect();
    out.status.desired = total;
    out
}

#[cfg(test)]
mod tests;

/// The bindings of `pool`'s members to rewrite with a model order ([`ModelOrder`]): every
/// binding (not ordered to stop) of a member whose desired spec has a model, when it does not
/// carry that order yet. The agent prefetches the ordered model into its node cache and, with
/// `reload`, swaps it under the running process. Pure.
pub fn model_orders(
    desired: &[Member],
    existing: &[&Job],
    bindings: &[BoundRecord],
    reload: bool,
) -> Vec<BoundRecord> {
    let wanted: BTreeMap<&str, &Member> = desired.iter().map(|m| (m.name.as_str(), m)).collect();
    let uids: BTreeMap<&str, &str> = existing
        .iter()
        .map(|j| (j.name(), j.metadata.uid.as_deref().unwrap_or_default()))
        .collect();
    let mut out = Vec::new();
    for b in bindings {
        let (Some(m), Some(uid)) = (wanted.get(b.job.as_str()), uids.get(b.job.as_str())) else {
            continue;
        };
        let Some(artifact) = model_of(&m.spec) else {
            continue;
        };
        if b.binding.stop.is_some() || (!b.binding.uid.is_empty() && b.binding.uid != *uid) {
            continue;
        }
        let order = ModelOrder {
            artifact: artifact.to_string(),
            reload,
        };
        if b.binding.model.as_ref() != Some(&order) {
            let mut next = b.clone();
            next.binding.model = Some(order);
            out.push(next);
        }
    }
    out
}

/// The whole pass for one Pool as data: its plan (with the model fields of its status) and the
/// members to create, their template selectors resolved against `artifacts`.
pub fn plan_pool(
    pool: &Pool,
    nodes: &[Node],
    jobs: &[Job],
    targets: &[TrainingTarget],
    artifacts: &[StoredArtifact],
    now: DateTime<Utc>,
) -> (PoolPlan, Vec<Job>) {
    let model = rollout::wanted_model(pool, targets);
    let desired = desired_members(pool, nodes, model.as_deref());
    let existing: Vec<&Job> = jobs.iter().filter(|j| owned_by(j, pool)).collect();
    let limit = pool
        .spec
        .model
        .as_ref()
        .and_then(|m| m.max_unavailable_of(desired.len() as u32));
    let reload = pool
        .spec
        .model
        .as_ref()
        .is_some_and(|m| m.update == ModelUpdate::Reload);
    let mut p = plan(&desired, &existing, limit, reload);
    let (rollout, current, previous) =
        rollout_status(pool.status.as_ref(), model.as_deref(), p.progress, now);
    p.status.rollout = rollout;
    p.status.current_model = current;
    p.status.previous_model = previous;
    p.status.observed_generation = pool.metadata.generation;
    let mut create = Vec::new();
    for m in &p.create {
        match resolve(&m.spec.inputs, artifacts) {
            Ok(inputs) => {
                let mut job = crate::api::Object::new(m.name.clone(), m.spec.clone());
                job.spec.inputs = inputs;
                job.metadata.labels = m.labels.clone();
                job.metadata.owner_references = vec![owner_ref(pool)];
                create.push(job);
            }
            Err(e) => p.status.message = format!("members wait: {e}"),
        }
    }
    if pool.spec.model.is_some() && model.is_none() && p.status.message.is_empty() {
        p.status.message = "no model promoted yet: members run without a `model` input".into();
    }
    (p, create)
}

/// Takes every Pool one step toward its plan: creates missing members, deletes finished,
/// changed and extra ones (members on an older model in batches), and writes the Pool's status
/// when it changed. Member creation races are harmless: names are deterministic and creation
/// is create-if-absent.
pub async fn reconcile(
    store: &crate::store::Store,
    snap: &crate::controllers::cluster_view::Snapshot,
    now: DateTime<Utc>,
) -> Result<(), crate::store::StoreError> {
    use crate::store::StoreError;
    let job_kind = crate::api::kinds::by_kind("Job").expect("Job is registered");
    for pool in &snap.pools {
        if pool.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let (p, create) = plan_pool(
            pool,
            &snap.nodes,
            &snap.jobs,
            &snap.targets,
            &snap.artifacts,
            now,
        );
        for job in &create {
            match store.create(job).await {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for name in &p.delete {
            store.delete_object(job_kind, name).await?;
        }
        write_model_orders(store, pool, snap, p.status.current_model.as_deref()).await?;
        let status = p.status.clone();
        if pool.status.as_ref() != Some(&status) {
            store
                .put_status::<crate::api::pool::PoolSpec>(pool.name(), &status)
                .await?;
        }
    }
    Ok(())
}

/// Writes `pool`'s model orders into its members' bindings, each guarded by the binding as
/// read (a binding the scheduler rewrote meanwhile is ordered again next pass).
async fn write_model_orders(
    store: &crate::store::Store,
    pool: &Pool,
    snap: &crate::controllers::cluster_view::Snapshot,
    model: Option<&str>,
) -> Result<(), crate::store::StoreError> {
    let (Some(source), Some(model)) = (&pool.spec.model, model) else {
        return Ok(());
    };
    let desired = desired_members(pool, &snap.nodes, Some(model));
    let existing: Vec<&Job> = snap.jobs.iter().filter(|j| owned_by(j, pool)).collect();
    let orders = model_orders(
        &desired,
        &existing,
        &snap.bindings,
        source.update == ModelUpdate::Reload,
    );
    for batch in orders.chunks(crate::controllers::writes::BATCH) {
        let guards = batch
            .iter()
            .map(|b| {
                crate::store::Guard::unchanged(
                    crate::store::keys::binding(&b.node, &b.job),
                    b.revision,
                )
            })
            .collect();
        let ops = batch
            .iter()
            .map(|b| {
                crate::store::Op::put(
                    crate::store::keys::binding(&b.node, &b.job),
                    serde_json::to_vec(&b.binding).expect("bindings serialize"),
                )
            })
            .collect();
        if !store.txn(guards, ops, vec![]).await?.succeeded {
            tracing::debug!(
                pool = pool.name(),
                "a member's binding changed: ordering its model next pass"
            );
        }
    }
    Ok(())
}
