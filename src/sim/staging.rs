//! Simulated input staging for hollow nodes: no bytes move, but a job's inputs take the time a
//! download would, and the node keeps a cache, as the real agent's stager does.
//!
//! Every artifact counts as [`TransferModel::artifact_bytes`] long and downloads at
//! [`TransferModel::bytes_per_second`], one job's missing artifacts one after another; an
//! artifact staged once on a node is in its cache from then on (a later job with it is staged at
//! once). While a job waits, the runner reports it as the real one does (`Scheduled`, reason
//! `Staging`, bytes done and total), so `rift get jobs` and the rollout see the same phases.
//!
//! Caveats: artifacts' real sizes are not read (the run spec names artifacts, not sizes); two
//! jobs on one node wanting the same missing artifact each wait their own download (the real
//! stager shares one); and a finished staging is noticed on the runner's next tick, as on a real
//! agent.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::agent::jobio::staging::Stage;
use crate::api::job_io::JobInput;

/// How long simulated transfers take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferModel {
    /// The size every artifact counts as.
    pub artifact_bytes: u64,
    /// The simulated download rate (at least 1).
    pub bytes_per_second: u64,
}

impl TransferModel {
    /// How long `artifacts` artifacts take to download.
    pub fn duration(&self, artifacts: usize) -> Duration {
        let bytes = self.artifact_bytes as f64 * artifacts as f64;
        Duration::try_from_secs_f64(bytes / self.bytes_per_second.max(1) as f64)
            .unwrap_or(Duration::MAX)
    }
}

/// One hollow node's simulated stager and cache.
#[derive(Debug)]
pub struct SimStaging {
    model: TransferModel,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// When each job instance's download began.
    started: HashMap<String, Instant>,
    /// Artifacts this node has.
    cached: HashSet<String>,
}

/// What the runner asks about: job, instance (`uid#epoch`), inputs, inputs directory.
pub type Wanted = (String, String, Vec<JobInput>, PathBuf);

impl SimStaging {
    pub fn new(model: TransferModel) -> Self {
        Self {
            model,
            inner: Mutex::default(),
        }
    }

    /// Where the staging of every job in `wanted` stands at `now`; instances no longer wanted
    /// are forgotten (the cache stays).
    pub fn stage_all(&self, wanted: &[Wanted], now: Instant) -> HashMap<String, Stage> {
        let mut inner = self.inner.lock().expect("staging lock");
        let live: HashSet<&str> = wanted.iter().map(|(_, i, ..)| i.as_str()).collect();
        inner.started.retain(|i, _| live.contains(i.as_str()));
        wanted
            .iter()
            .map(|(job, instance, inputs, _)| {
                (job.clone(), self.stage(&mut inner, instance, inputs, now))
            })
            .collect()
    }

    fn stage(&self, inner: &mut Inner, instance: &str, inputs: &[JobInput], now: Instant) -> Stage {
        let missing: Vec<&String> = inputs
            .iter()
            .flat_map(|i| &i.artifacts)
            .filter(|a| !inner.cached.contains(*a))
            .collect();
        if missing.is_empty() {
            inner.started.remove(instance);
            return Stage::Ready;
        }
        let since = *inner.started.entry(instance.to_string()).or_insert(now);
        let elapsed = now.saturating_duration_since(since);
        let need = self.model.duration(missing.len());
        if elapsed >= need {
            let missing: Vec<String> = missing.into_iter().cloned().collect();
            inner.cached.extend(missing);
            inner.started.remove(instance);
            return Stage::Ready;
        }
        let total = self
            .model
            .artifact_bytes
            .saturating_mul(missing.len() as u64);
        let done = (elapsed.as_secs_f64() * self.model.bytes_per_second as f64) as u64;
        Stage::Staging {
            done: done.min(total),
            total,
            bytes_per_second: self.model.bytes_per_second,
            note: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(job: &str, artifacts: &[&str]) -> Wanted {
        (
            job.into(),
            format!("{job}-uid#1"),
            vec![JobInput {
                name: "model".into(),
                artifacts: artifacts.iter().map(|a| a.to_string()).collect(),
                ..JobInput::default()
            }],
            PathBuf::new(),
        )
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn an_input_takes_its_simulated_download_then_is_cached_for_later_jobs() {
        let s = SimStaging::new(TransferModel {
            artifact_bytes: 100 * MIB,
            bytes_per_second: 50 * MIB,
        });
        let t0 = Instant::now();
        let a = [wanted("a", &["m1"])];
        match &s.stage_all(&a, t0)["a"] {
            Stage::Staging { done, total, .. } => assert_eq!((*done, *total), (0, 100 * MIB)),
            other => panic!("{other:?}"),
        }
        match &s.stage_all(&a, t0 + Duration::from_secs(1))["a"] {
            Stage::Staging { done, .. } => assert_eq!(*done, 50 * MIB),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.stage_all(&a, t0 + Duration::from_secs(2))["a"],
            Stage::Ready
        );
        // Another job with the same model on this node: from the cache, at once.
        let b = [wanted("b", &["m1"])];
        let later = t0 + Duration::from_secs(3);
        assert_eq!(s.stage_all(&b, later)["b"], Stage::Ready);
        // A new model is downloaded again.
        let c = [wanted("c", &["m1", "m2"])];
        assert!(
            matches!(s.stage_all(&c, later)["c"], Stage::Staging { total, .. } if total == 100 * MIB)
        );
    }

    #[test]
    fn a_job_without_missing_inputs_and_a_zero_size_are_ready_at_once() {
        let s = SimStaging::new(TransferModel {
            artifact_bytes: 0,
            bytes_per_second: 1,
        });
        let now = Instant::now();
        assert_eq!(s.stage_all(&[wanted("a", &["m1"])], now)["a"], Stage::Ready);
        assert_eq!(s.stage_all(&[wanted("b", &[])], now)["b"], Stage::Ready);
    }
}
