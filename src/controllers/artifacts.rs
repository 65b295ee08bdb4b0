//! The artifacts controller, run by the leader: records the outputs agents uploaded as
//! `Artifact` objects (agents may write only their own keys, so they report; the leader
//! creates — as it adopts the Nodes agents announce).
//!
//! It watches every agent's `outputs/` reports ([`crate::api::job_io::OutputReport`]) and, for
//! each, creates `Artifact sha256-<hex>` if absent: producer `{job, attempt, node}` (the node
//! from the key, never the value), the report's labels, format, parents and counts. Identical
//! bytes reported twice (a resumed upload, two jobs) make one Artifact: the first report's. A
//! report that does not make a valid Artifact is logged once and left alone; one whose write
//! failed (etcd busy) is retried every [`RETRY`].
//!
//! Caveat: the bytes are not checked in the store here; the agent reports only after its
//! verified upload finished.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::api::artifact::{Artifact, ArtifactSpec, Digest, Producer};
use crate::api::job_io::OutputReport;
use crate::api::Object;
use crate::store::watcher::{WatchConfig, WatchEvent, Watcher};
use crate::store::{keys, KeyValue, Store, StoreError};
use crate::tasks::CancellationToken;

/// How often reports whose Artifact could not be written are tried again.
pub const RETRY: Duration = Duration::from_secs(1);

/// Records agents' output reports as Artifacts.
pub struct ArtifactsController {
    store: Store,
    /// Reports not recorded yet, by key.
    todo: BTreeMap<String, KeyValue>,
    /// Keys already warned about as invalid (once each).
    warned: HashSet<String>,
}

impl ArtifactsController {
    /// `store` should carry the leader's fence.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            todo: BTreeMap::new(),
            warned: HashSet::new(),
        }
    }

    /// Runs until `stop` (`Ok`) or until a write is fenced off (`Err`: no longer the leader).
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), StoreError> {
        let mut watcher = Watcher::new(
            self.store.clone(),
            keys::AGENTS_PREFIX,
            WatchConfig::default(),
        );
        let mut retry = tokio::time::interval(RETRY);
        loop {
            tokio::select! {
                ev = watcher.next() => match ev {
                    Ok(WatchEvent::Restarted { items, .. }) => {
                        self.todo.clear();
                        for kv in items {
                            self.take(kv);
                        }
                    }
                    Ok(WatchEvent::Put(kv)) => self.take(kv),
                    Ok(WatchEvent::Delete { key, .. }) => {
                        self.todo.remove(&key);
                    }
                    Err(e) => tracing::debug!(%e, "artifacts controller: watch retrying"),
                },
                _ = retry.tick() => {}
                _ = stop.cancelled() => return Ok(()),
            }
            self.record_all().await?;
        }
    }

    fn take(&mut self, kv: KeyValue) {
        if keys::parse_agent_output(&kv.key).is_some() {
            self.todo.insert(kv.key.clone(), kv);
        }
    }

    /// Creates the Artifact of every pending report; `Err` only when fenced.
    async fn record_all(&mut self) -> Result<(), StoreError> {
        let keys: Vec<String> = self.todo.keys().cloned().collect();
        for key in keys {
            let kv = &self.todo[&key];
            let artifact = match artifact_of(&kv.key, &kv.value) {
                Ok(a) => a,
                Err(why) => {
                    if self.warned.insert(key.clone()) {
                        tracing::warn!(
                            key,
                            why,
                            "an output report that makes no valid Artifact; ignored"
                        );
                    }
                    self.todo.remove(&key);
                    continue;
                }
            };
            match self.store.create(&artifact).await {
                Ok(_) => {
                    tracing::info!(
                        artifact = artifact.name(),
                        key,
                        "recorded an output as an Artifact"
                    );
                    self.todo.remove(&key);
                }
                Err(StoreError::AlreadyExists { .. }) => {
                    self.todo.remove(&key);
                }
                Err(StoreError::Fenced) => return Err(StoreError::Fenced),
                Err(e) => {
                    tracing::debug!(key, %e, "cannot record the Artifact yet");
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The Artifact an output report under `key` makes, or why it makes none.
pub fn artifact_of(key: &str, value: &[u8]) -> Result<Artifact, String> {
    let node = keys::parse_agent_output(key).ok_or("not an output report key")?;
    let report: OutputReport = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    let digest = Digest::parse(&report.digest).map_err(|e| e.to_string())?;
    let mut artifact = Object::new(
        digest.artifact_name(),
        ArtifactSpec {
            digest: digest.to_string(),
            size: report.size,
            format: report.format,
            producer: Some(Producer {
                job: report.job,
                attempt: report.attempt,
                node: node.to_string(),
            }),
            parents: report.parents,
            counts: report.counts,
        },
    );
    artifact.metadata.labels = report.labels;
    let errors = artifact.validate();
    if !errors.is_empty() {
        return Err(errors.to_string());
    }
    Ok(artifact)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(digest: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "job": "sp-1", "uid": "u", "attempt": 2, "output": "games",
            "digest": digest, "size": 5, "format": "npz",
            "labels": {"type": "games", "rift.dev/job": "sp-1"},
            "parents": [], "counts": {"games": 500}
        }))
        .unwrap()
    }

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn the_producer_node_is_the_reporting_key_s_never_the_value_s() {
        let key = keys::agent_output("n1", "sp-1", HEX);
        let a = artifact_of(&key, &report(&format!("sha256:{HEX}"))).unwrap();
        assert_eq!(a.name(), format!("sha256-{HEX}"));
        let p = a.spec.producer.unwrap();
        assert_eq!(
            (p.job.as_str(), p.attempt, p.node.as_str()),
            ("sp-1", 2, "n1")
        );
        assert_eq!(a.spec.counts["games"], 500);
    }

    #[test]
    fn a_report_that_makes_no_valid_artifact_is_refused() {
        let key = keys::agent_output("n1", "sp-1", HEX);
        assert!(artifact_of(&key, &report("sha256:zz")).is_err());
        assert!(artifact_of(&key, b"not json").is_err());
        assert!(artifact_of("/rift/v1/agents/n1/jobs/x", &report(HEX)).is_err());
    }
}
