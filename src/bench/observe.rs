//! Watches what the benchmarks time: bindings written, jobs reported Running, alive keys gone.
//! Each is stamped when the watch event arrives here, first occurrence only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::BenchError;
use crate::api::job::JobPhase;
use crate::api::placement::RuntimeReport;
use crate::store::{keys, Store, WatchConfig, WatchEvent, Watcher};

type Stamps = Arc<Mutex<HashMap<String, Instant>>>;

/// First-seen times, by job (bound, running) or node (not ready).
#[derive(Clone, Default)]
pub struct Observed {
    pub bound: Stamps,
    pub running: Stamps,
    pub not_ready: Stamps,
}

impl Observed {
    pub fn count(stamps: &Stamps) -> usize {
        stamps.lock().expect("lock").len()
    }

    pub fn get(stamps: &Stamps, name: &str) -> Option<Instant> {
        stamps.lock().expect("lock").get(name).copied()
    }
}

fn stamp(stamps: &Stamps, name: &str, at: Instant) {
    stamps
        .lock()
        .expect("lock")
        .entry(name.to_string())
        .or_insert(at);
}

/// Starts watching bindings and agents' keys (what is stamped; not the Jobs, placements and
/// other objects, whose events would cost etcd and this process for nothing) from now on. The
/// tasks end once every clone of the returned [`Observed`] is dropped.
pub async fn start(store: &Store) -> Result<Observed, BenchError> {
    let observed = Observed::default();
    let from = store
        .revision()
        .await
        .map_err(|e| BenchError::Setup(format!("cannot watch etcd: {e}")))?;
    for prefix in [
        format!("{}bindings/", keys::ROOT),
        keys::AGENTS_PREFIX.to_string(),
    ] {
        let watcher = Watcher::from_revision(store.clone(), &prefix, from, WatchConfig::default());
        tokio::spawn(stamp_from(watcher, observed.clone()));
    }
    Ok(observed)
}

async fn stamp_from(mut watcher: Watcher, o: Observed) {
    // Only the watch tasks' clones are left: nobody reads the stamps any more.
    while Arc::strong_count(&o.bound) > 2 {
        // `next` is cancel-safe: a tick that wins loses no event.
        let event = tokio::select! {
            event = watcher.next() => event,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
        };
        // Errors are retried by the watcher after its backoff.
        let Ok(event) = event else { continue };
        let now = Instant::now();
        let (put, key, value) = match &event {
            WatchEvent::Put(kv) => (true, kv.key.as_str(), kv.value.as_slice()),
            WatchEvent::Delete { key, .. } => (false, key.as_str(), &[][..]),
            WatchEvent::Restarted { .. } => continue,
        };
        let parts: Vec<&str> = key.trim_start_matches(keys::ROOT).split('/').collect();
        match (put, parts.as_slice()) {
            (true, ["bindings", _node, job]) => stamp(&o.bound, job, now),
            (true, ["agents", _node, "jobs", job])
                if serde_json::from_slice::<RuntimeReport>(value)
                    .is_ok_and(|r| r.phase == JobPhase::Running) =>
            {
                stamp(&o.running, job, now)
            }
            (false, ["agents", node, "alive"]) => stamp(&o.not_ready, node, now),
            _ => {}
        }
    }
}
