//! Watches what the benchmarks time: bindings written, jobs reported Running, alive keys gone.
//! Each is stamped when the watch event arrives here, first occurrence only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use etcd_client::{EventType, WatchOptions};

use super::BenchError;
use crate::api::job::JobPhase;
use crate::api::placement::RuntimeReport;
use crate::store::{keys, Store};

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

/// Starts watching everything under rift's root from now on. The task ends with the store's
/// connection.
pub async fn start(store: &Store) -> Result<Observed, BenchError> {
    let observed = Observed::default();
    let mut client = store
        .client()
        .watch_client()
        .max_decoding_message_size(crate::store::client::MAX_RESPONSE_BYTES);
    let mut stream = client
        .watch(keys::ROOT, Some(WatchOptions::new().with_prefix()))
        .await
        .map_err(|e| BenchError::Setup(format!("cannot watch etcd: {e}")))?;
    let o = observed.clone();
    tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            let now = Instant::now();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let parts: Vec<&str> = key.trim_start_matches(keys::ROOT).split('/').collect();
                match (ev.event_type(), parts.as_slice()) {
                    (EventType::Put, ["bindings", _node, job]) => stamp(&o.bound, job, now),
                    (EventType::Put, ["agents", _node, "jobs", job])
                        if serde_json::from_slice::<RuntimeReport>(kv.value())
                            .is_ok_and(|r| r.phase == JobPhase::Running) =>
                    {
                        stamp(&o.running, job, now)
                    }
                    (EventType::Delete, ["agents", node, "alive"]) => {
                        stamp(&o.not_ready, node, now)
                    }
                    _ => {}
                }
            }
        }
    });
    Ok(observed)
}
