//! Overlaps as the nodes report them: a watch on every agent's runtime reports that flags any
//! revision at which two nodes both report one job Running. For jobs with no real process to
//! lock (hollow nodes' simulated ones) this is the overlap check.
//!
//! Caveat: a node that is cut off cannot update its report, so a stale Running report of a
//! cut-off node beside its replacement's is flagged too; use this where no node is cut off
//! (leader faults), and the [`super::InstanceLog`] where nodes are.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::api::placement::RuntimeReport;
use crate::api::JobPhase;
use crate::store::{keys, Store, WatchConfig, WatchEvent, Watcher};

/// Two nodes reporting one job Running at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedOverlap {
    pub job: String,
    pub nodes: Vec<String>,
    pub revision: i64,
}

#[derive(Default)]
struct State {
    /// Per job, the nodes whose latest report says Running.
    running: BTreeMap<String, BTreeSet<String>>,
    overlaps: Vec<ReportedOverlap>,
}

impl State {
    /// Folds one report in: Running or not (a delete is not).
    fn apply(&mut self, node: &str, job: &str, running: bool, revision: i64) {
        let nodes = self.running.entry(job.to_string()).or_default();
        if running {
            nodes.insert(node.to_string());
            if nodes.len() > 1 {
                self.overlaps.push(ReportedOverlap {
                    job: job.to_string(),
                    nodes: nodes.iter().cloned().collect(),
                    revision,
                });
            }
        } else {
            nodes.remove(node);
        }
    }
}

/// A running watch; dropping it ends the watch.
pub struct ReportWatch {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReportWatch {
    /// Watches every runtime report from the current revision on (the reports already there
    /// are read first), re-watching after errors (a quorum loss ends streams).
    pub async fn start(store: &Store) -> ReportWatch {
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn(watch(store.clone(), state.clone()));
        ReportWatch { state, task }
    }

    /// Every overlap seen so far.
    pub fn overlaps(&self) -> Vec<ReportedOverlap> {
        self.state.lock().expect("lock").overlaps.clone()
    }
}

impl Drop for ReportWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `(node, job)` of a runtime report key.
fn report_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(keys::AGENTS_PREFIX)?;
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(node), Some("jobs"), Some(job), None) => Some((node, job)),
        _ => None,
    }
}

fn is_running(value: &[u8]) -> bool {
    serde_json::from_slice::<RuntimeReport>(value).is_ok_and(|r| r.phase == JobPhase::Running)
}

async fn watch(store: Store, state: Arc<Mutex<State>>) {
    let mut watcher = Watcher::new(store, keys::AGENTS_PREFIX, WatchConfig::default());
    loop {
        // Errors are retried by the watcher after its backoff (a quorum loss ends streams).
        let Ok(event) = watcher.next().await else {
            continue;
        };
        let mut s = state.lock().expect("lock");
        match event {
            WatchEvent::Restarted { items, revision } => {
                // A fresh snapshot (the first list, or after a compaction): it replaces what
                // was seen, overlaps found so far stay.
                s.running.clear();
                for kv in &items {
                    if let Some((node, job)) = report_key(&kv.key) {
                        s.apply(node, job, is_running(&kv.value), revision);
                    }
                }
            }
            WatchEvent::Put(kv) => {
                if let Some((node, job)) = report_key(&kv.key) {
                    s.apply(node, job, is_running(&kv.value), kv.mod_revision);
                }
            }
            WatchEvent::Delete {
                key, mod_revision, ..
            } => {
                if let Some((node, job)) = report_key(&key) {
                    s.apply(node, job, false, mod_revision);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_nodes_running_one_job_is_an_overlap_and_a_handover_is_not() {
        let mut s = State::default();
        s.apply("a", "j", true, 1);
        s.apply("a", "j", false, 2);
        s.apply("b", "j", true, 3);
        assert!(s.overlaps.is_empty());
        s.apply("c", "j", true, 4);
        assert_eq!(
            s.overlaps,
            vec![ReportedOverlap {
                job: "j".into(),
                nodes: vec!["b".into(), "c".into()],
                revision: 4
            }]
        );
    }

    #[test]
    fn only_job_report_keys_count() {
        assert_eq!(report_key("/rift/v1/agents/n1/jobs/j1"), Some(("n1", "j1")));
        assert_eq!(report_key("/rift/v1/agents/n1/alive"), None);
        assert_eq!(report_key("/rift/v1/agents/n1/jobs/j1/x"), None);
    }
}
