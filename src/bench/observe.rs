//! Watches what the benchmarks time: bindings written, jobs reported Running, alive keys gone.
//! Each is stamped when the watch event arrives here, first occurrence only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::{CancellationToken, DropGuard};

use super::BenchError;
use crate::api::job::JobPhase;
use crate::api::placement::RuntimeReport;
use crate::store::{keys, Store, WatchConfig, WatchEvent, Watcher};

type Stamps = Arc<Mutex<HashMap<String, Instant>>>;

/// First-seen times, by job (bound, running) or node (not ready). The watches stop once every
/// clone is dropped.
#[derive(Clone)]
pub struct Observed {
    pub bound: Stamps,
    pub running: Stamps,
    pub not_ready: Stamps,
    _watching: Arc<DropGuard>,
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
    let from = store
        .revision()
        .await
        .map_err(|e| BenchError::Setup(format!("cannot watch etcd: {e}")))?;
    let stop = CancellationToken::new();
    let observed = Observed {
        bound: Stamps::default(),
        running: Stamps::default(),
        not_ready: Stamps::default(),
        _watching: Arc::new(stop.clone().drop_guard()),
    };
    for prefix in [
        format!("{}bindings/", keys::ROOT),
        keys::AGENTS_PREFIX.to_string(),
    ] {
        let watcher = Watcher::from_revision(store.clone(), &prefix, from, WatchConfig::default());
        let sinks = Sinks {
            bound: observed.bound.clone(),
            running: observed.running.clone(),
            not_ready: observed.not_ready.clone(),
        };
        tokio::spawn(stamp_from(watcher, sinks, stop.clone()));
    }
    Ok(observed)
}

/// What a watch task writes (not an [`Observed`]: holding one would keep it watching).
struct Sinks {
    bound: Stamps,
    running: Stamps,
    not_ready: Stamps,
}

/// A watch event as (a put?, its key's segments under rift's root, the value put); `None` for a
/// restart.
pub fn event_parts(event: &WatchEvent) -> Option<(bool, Vec<&str>, &[u8])> {
    let (put, key, value) = match event {
        WatchEvent::Put(kv) => (true, kv.key.as_str(), kv.value.as_slice()),
        WatchEvent::Delete { key, .. } => (false, key.as_str(), &[][..]),
        WatchEvent::Restarted { .. } => return None,
    };
    Some((
        put,
        key.trim_start_matches(keys::ROOT).split('/').collect(),
        value,
    ))
}

async fn stamp_from(mut watcher: Watcher, o: Sinks, stop: CancellationToken) {
    loop {
        // `next` is cancel-safe.
        let event = tokio::select! {
            event = watcher.next() => event,
            _ = stop.cancelled() => return,
        };
        // Errors are retried by the watcher after its backoff.
        let Ok(event) = event else { continue };
        let now = Instant::now();
        let Some((put, parts, value)) = event_parts(&event) else {
            continue;
        };
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
