//! `rift bench etcd-limit`: what etcd itself can do on this machine, from the same client
//! rift uses, so every other rate can be read as a fraction of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::report::{round, Report};
use super::BenchError;
use crate::store::Op;
use crate::store::Store;

/// Keys written here (overwritten in a small set), outside rift's prefix so no controller
/// wakes up; deleted afterwards.
const PREFIX: &str = "/rift-bench/limit/";
/// Puts per transaction in the batched run: about what the scheduler writes per transaction
/// (42 placements + 42 bindings).
pub const BATCH: usize = 100;

/// etcd's own rates.
#[derive(Clone, Copy, Debug, Default)]
pub struct EtcdLimit {
    /// Single-put transactions per second, `concurrency` in flight.
    pub txn_per_s: f64,
    /// Keys per second written in transactions of [`BATCH`] puts.
    pub batched_keys_per_s: f64,
    pub concurrency: usize,
}

impl EtcdLimit {
    pub fn add_to(&self, r: &mut Report) {
        r.add(
            "etcd_txn_per_s",
            format!(
                "{:.0} single-put txns/s ({} in flight); {:.0} keys/s in txns of {BATCH}",
                self.txn_per_s, self.concurrency, self.batched_keys_per_s
            ),
            json!(round(self.txn_per_s)),
        );
        r.field(
            "etcd_batched_keys_per_s",
            json!(round(self.batched_keys_per_s)),
        );
    }

    /// `rate` as a fraction of the single-put transaction rate.
    pub fn fraction(&self, rate: f64) -> f64 {
        if self.txn_per_s > 0.0 {
            (rate / self.txn_per_s * 1000.0).round() / 1000.0
        } else {
            0.0
        }
    }
}

async fn hammer(store: &Store, concurrency: usize, run_for: Duration, batch: usize) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let store = store.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                while start.elapsed() < run_for {
                    let ops = (0..batch)
                        .map(|b| Op::put(format!("{PREFIX}{t}/{}/{b}", i % 10), "x".repeat(64)))
                        .collect();
                    if store.txn(vec![], ops, vec![]).await.is_ok() {
                        done.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Measures for `run_for` each: single-put transactions, then batched ones; then deletes the
/// keys written.
pub async fn measure(
    store: &Store,
    concurrency: usize,
    run_for: Duration,
) -> Result<EtcdLimit, BenchError> {
    let txn_per_s = hammer(store, concurrency, run_for, 1).await;
    let batched_keys_per_s = hammer(store, concurrency.min(8), run_for, BATCH).await;
    store.delete_prefix(PREFIX).await?;
    Ok(EtcdLimit {
        txn_per_s,
        batched_keys_per_s,
        concurrency,
    })
}

/// The scenario on its own.
pub async fn run(common: &super::Common) -> Result<Report, BenchError> {
    let (concurrency, run_for) = (common.concurrency, common.limit_for);
    let etcd = super::env::LocalEtcd::start(common.tls, common.etcd_gogc).await?;
    let store = etcd.store().await?;
    let before = etcd.usage().await;
    let limit = measure(&store, concurrency, run_for).await?;
    let mut r = Report::new("etcd-limit");
    limit.add_to(&mut r);
    before.until(&etcd.usage().await).add_to(&mut r);
    r.field("seconds", json!(run_for.as_secs_f64()));
    Ok(r)
}
