//! The scheduler's writes: placements and bindings together, compare-and-swap on the
//! placement, fenced by the leader's store, batched into few transactions.

use etcd_client::{Compare, CompareOp, TxnOp};

use crate::api::placement::{Binding, Placement};
use crate::store::{keys, Store, StoreError};

/// One change to a job's placement (and the binding that goes with it).
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Bind `job` to `node` at `epoch`.
    Place {
        job: String,
        node: String,
        gpus: Vec<u32>,
        epoch: u64,
        expect: Option<i64>,
    },
    /// `job` cannot be placed: record why (it stays Pending).
    Pending {
        job: String,
        reason: String,
        epoch: u64,
        expect: Option<i64>,
    },
    /// Take `job` off `node` (drain, preemption, lost node): back to Pending.
    Evict {
        job: String,
        node: String,
        reason: String,
        epoch: u64,
        expect: Option<i64>,
    },
    /// `job` no longer exists: remove its placement and binding.
    Forget {
        job: String,
        node: Option<String>,
        expect: i64,
    },
}

impl Write {
    /// The job this write is about.
    pub fn job(&self) -> &str {
        match self {
            Write::Place { job, .. }
            | Write::Pending { job, .. }
            | Write::Evict { job, .. }
            | Write::Forget { job, .. } => job,
        }
    }

    fn guard(&self) -> Compare {
        let key = keys::placement(self.job());
        let expect = match self {
            Write::Place { expect, .. }
            | Write::Pending { expect, .. }
            | Write::Evict { expect, .. } => *expect,
            Write::Forget { expect, .. } => Some(*expect),
        };
        match expect {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            None => Compare::version(key, CompareOp::Equal, 0),
        }
    }

    fn ops(&self) -> Vec<TxnOp> {
        match self {
            Write::Place {
                job,
                node,
                gpus,
                epoch,
                ..
            } => vec![
                TxnOp::put(
                    keys::placement(job),
                    json(&Placement {
                        node: Some(node.clone()),
                        gpus: gpus.clone(),
                        epoch: *epoch,
                        pending: None,
                    }),
                    None,
                ),
                TxnOp::put(
                    keys::binding(node, job),
                    json(&Binding {
                        gpus: gpus.clone(),
                        epoch: *epoch,
                    }),
                    None,
                ),
            ],
            Write::Pending {
                job, reason, epoch, ..
            } => vec![TxnOp::put(
                keys::placement(job),
                json(&Placement {
                    node: None,
                    gpus: vec![],
                    epoch: *epoch,
                    pending: Some(reason.clone()),
                }),
                None,
            )],
            Write::Evict {
                job,
                node,
                reason,
                epoch,
                ..
            } => vec![
                TxnOp::put(
                    keys::placement(job),
                    json(&Placement {
                        node: None,
                        gpus: vec![],
                        epoch: *epoch,
                        pending: Some(reason.clone()),
                    }),
                    None,
                ),
                TxnOp::delete(keys::binding(node, job), None),
            ],
            Write::Forget { job, node, .. } => {
                let mut ops = vec![TxnOp::delete(keys::placement(job), None)];
                if let Some(n) = node {
                    ops.push(TxnOp::delete(keys::binding(n, job), None));
                }
                ops
            }
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("placement records serialize")
}

/// Writes per transaction: each takes one compare and at most two operations, well under
/// etcd's default limit of 128 operations.
pub const BATCH: usize = 50;

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub written: usize,
    /// Writes refused because the placement changed since it was read (retried next pass).
    pub conflicts: usize,
}

/// Applies `writes` in batches; a batch whose compares fail is retried one write at a time,
/// so one stale read costs one write, not the batch. A refused fence ends it at once.
pub async fn apply(store: &Store, writes: &[Write]) -> Result<Applied, StoreError> {
    let mut out = Applied::default();
    for batch in writes.chunks(BATCH) {
        let compares = batch.iter().map(Write::guard).collect();
        let ops = batch.iter().flat_map(Write::ops).collect();
        if store.txn(compares, ops, vec![]).await?.succeeded {
            out.written += batch.len();
            continue;
        }
        for w in batch {
            if store.txn(vec![w.guard()], w.ops(), vec![]).await?.succeeded {
                out.written += 1;
            } else {
                out.conflicts += 1;
            }
        }
    }
    Ok(out)
}
