//! The scheduler's writes: placements and bindings together, compare-and-swap on what each
//! write was decided from (the placement, the binding), fenced by the leader's store, batched
//! into few transactions.

use futures::StreamExt;

use crate::api::placement::{Binding, EmbeddedJob, LossTerms, Placement};
use crate::api::{JobSpec, Spec};
use crate::store::{keys, Store, StoreError};
use crate::store::{Guard, Op};

/// A placement going back to pending, guarded by the placement as read.
#[derive(Clone, Debug, PartialEq)]
pub struct ToPending {
    pub reason: String,
    pub epoch: u64,
    pub uid: String,
    pub expect: Option<i64>,
}

/// One change to a job's placement and bindings.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Bind `job` (the Job of `uid`) to `node` at `epoch`: placement and binding together,
    /// guarded by the placement as read, by the binding key being free (an old instance's
    /// binding on that node must be gone first) and by the Job being as read at
    /// `job_revision`, so that a binding never carries (or was decided from) a Job edited,
    /// or deleted and created again, while the pass ran.
    Place {
        job: String,
        node: String,
        gpus: Vec<u32>,
        epoch: u64,
        uid: String,
        terms: LossTerms,
        /// The Job's stored form for the binding ([`Binding::job`]).
        embedded: Option<EmbeddedJob>,
        expect: Option<i64>,
        /// The Job's revision as read (`None`: unguarded, for a Job read without one).
        job_revision: Option<i64>,
    },
    /// `job` cannot be placed: record why (it stays Pending).
    Pending { job: String, pending: ToPending },
    /// Order `job` off `node`: its binding (as read at `expect_binding`) is rewritten as
    /// `binding`, which carries the stop order and keeps holding its GPUs; the placement goes
    /// back to pending when it still names this binding.
    Stop {
        job: String,
        node: String,
        binding: Binding,
        expect_binding: i64,
        placement: Option<ToPending>,
    },
    /// The old instance on `node` is gone (its agent reported it released, or the node has
    /// been lost past the hand-over time): delete its binding (as read at `expect_binding`);
    /// the placement goes back to pending when it still names it.
    Release {
        job: String,
        node: String,
        expect_binding: i64,
        placement: Option<ToPending>,
    },
    /// `job` no longer exists and nothing of it is bound anywhere: remove its placement.
    Forget { job: String, expect: i64 },
}

impl Write {
    /// The job this write is about.
    pub fn job(&self) -> &str {
        match self {
            Write::Place { job, .. }
            | Write::Pending { job, .. }
            | Write::Stop { job, .. }
            | Write::Release { job, .. }
            | Write::Forget { job, .. } => job,
        }
    }

    fn placement_guard(job: &str, expect: Option<i64>) -> Guard {
        let key = keys::placement(job);
        match expect {
            Some(rev) => Guard::unchanged(key, rev),
            None => Guard::absent(key),
        }
    }

    fn guards(&self) -> Vec<Guard> {
        let binding_at =
            |node: &str, job: &str, rev: i64| Guard::unchanged(keys::binding(node, job), rev);
        match self {
            Write::Place {
                job,
                node,
                expect,
                job_revision,
                ..
            } => {
                let mut g = vec![
                    Self::placement_guard(job, *expect),
                    Guard::absent(keys::binding(node, job)),
                ];
                if let Some(rev) = job_revision {
                    g.push(Guard::unchanged(keys::object(JobSpec::PLURAL, job), *rev));
                }
                g
            }
            Write::Pending { job, pending } => vec![Self::placement_guard(job, pending.expect)],
            Write::Stop {
                job,
                node,
                expect_binding,
                placement,
                ..
            }
            | Write::Release {
                job,
                node,
                expect_binding,
                placement,
            } => {
                let mut g = vec![binding_at(node, job, *expect_binding)];
                if let Some(p) = placement {
                    g.push(Self::placement_guard(job, p.expect));
                }
                g
            }
            Write::Forget { job, expect } => vec![Self::placement_guard(job, Some(*expect))],
        }
    }

    fn ops(&self) -> Vec<Op> {
        let pending = |job: &str, p: &ToPending| {
            Op::put(
                keys::placement(job),
                json(&Placement {
                    node: None,
                    gpus: vec![],
                    epoch: p.epoch,
                    pending: Some(p.reason.clone()),
                    uid: p.uid.clone(),
                }),
            )
        };
        match self {
            Write::Place {
                job,
                node,
                gpus,
                epoch,
                uid,
                terms,
                embedded,
                ..
            } => vec![
                Op::put(
                    keys::placement(job),
                    json(&Placement {
                        node: Some(node.clone()),
                        gpus: gpus.clone(),
                        epoch: *epoch,
                        pending: None,
                        uid: uid.clone(),
                    }),
                ),
                Op::put(
                    keys::binding(node, job),
                    json(&Binding {
                        gpus: gpus.clone(),
                        epoch: *epoch,
                        uid: uid.clone(),
                        terms: Some(*terms),
                        stop: None,
                        model: None,
                        job: embedded.clone(),
                    }),
                ),
            ],
            Write::Pending { job, pending: p } => vec![pending(job, p)],
            Write::Stop {
                job,
                node,
                binding,
                placement,
                ..
            } => {
                let mut ops = vec![Op::put(keys::binding(node, job), json(binding))];
                ops.extend(placement.iter().map(|p| pending(job, p)));
                ops
            }
            Write::Release {
                job,
                node,
                placement,
                ..
            } => {
                let mut ops = vec![Op::delete(keys::binding(node, job))];
                ops.extend(placement.iter().map(|p| pending(job, p)));
                ops
            }
            Write::Forget { job, .. } => vec![Op::delete(keys::placement(job))],
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("placement records serialize")
}

/// Writes per transaction: each takes at most three compares and two operations, so a batch
/// with the leader fence's compare stays under etcd's default limit of 128 of each (127).
pub const BATCH: usize = 42;

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub written: usize,
    /// Writes refused because the placement changed since it was read (retried next pass).
    pub conflicts: usize,
}

/// Batches in flight at once: each write guards its own keys (one job's placement and
/// binding), so batches of one pass do not depend on each other's order.
pub const IN_FLIGHT: usize = 4;

/// Applies `writes` in batches, [`IN_FLIGHT`] at a time; a batch whose compares fail is
/// retried one write at a time, so one stale read costs one write, not the batch. A refused
/// fence ends it (the batches already in flight finish or fail on their own).
pub async fn apply(store: &Store, writes: &[Write]) -> Result<Applied, StoreError> {
    // The futures are made first: a stream combinator over a closure borrowing `store` is not
    // `Send` for every lifetime, which a spawned leader task needs.
    let batches: Vec<_> = writes
        .chunks(BATCH)
        .map(|batch| apply_batch(store, batch))
        .collect();
    let mut batches = futures::stream::iter(batches).buffer_unordered(IN_FLIGHT);
    let mut out = Applied::default();
    while let Some(done) = batches.next().await {
        let done = done?;
        out.written += done.written;
        out.conflicts += done.conflicts;
    }
    Ok(out)
}

async fn apply_batch(store: &Store, batch: &[Write]) -> Result<Applied, StoreError> {
    let mut out = Applied::default();
    let compares = batch.iter().flat_map(Write::guards).collect();
    let ops = batch.iter().flat_map(Write::ops).collect();
    if store.txn(compares, ops, vec![]).await?.succeeded {
        out.written += batch.len();
        return Ok(out);
    }
    for w in batch {
        if store.txn(w.guards(), w.ops(), vec![]).await?.succeeded {
            out.written += 1;
        } else {
            out.conflicts += 1;
        }
    }
    Ok(out)
}
