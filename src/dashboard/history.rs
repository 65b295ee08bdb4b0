//! What the charts plot over time, kept in memory by the dashboard: a sample of the cluster
//! every [`SAMPLE_EVERY`] for [`KEEP`] (24 h at 10 s: 8,640 samples), the games and
//! generation of each TrainingTarget at the same instants, and every training run seen.
//!
//! etcd keeps only a TrainingTarget's last `historyLimit` runs; the runs the dashboard has seen
//! are remembered here (at most [`MAX_RUNS`] per target), so the win-rate and Elo charts reach
//! further back than etcd while the dashboard runs. Everything is lost when it stops: it is a
//! view, not a store. Bounded: the samples are a ring, a deleted target's series are dropped.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::cluster::Cluster;
use crate::api::training_target::TrainingRun;
use crate::api::JobPhase;

/// How often the cluster is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How long samples are kept.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Training runs remembered per target.
pub const MAX_RUNS: usize = 1000;
/// Games per hour are measured over at most this window.
pub const RATE_WINDOW: Duration = Duration::from_secs(3600);
/// A rate over less than this is not shown.
pub const MIN_RATE_WINDOW: Duration = Duration::from_secs(60);

/// The cluster at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSample {
    pub at: DateTime<Utc>,
    pub nodes: u32,
    pub nodes_ready: u32,
    pub gpus: u32,
    pub gpus_busy: u32,
    /// Mean utilisation of the GPUs NVML measured; `None` when none was.
    pub gpu_util: Option<f64>,
    pub running: u32,
    pub pending: u32,
}

/// One TrainingTarget at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetSample {
    pub at: DateTime<Utc>,
    pub games: u64,
    pub generation: u64,
}

/// Games per hour and the window they were measured over.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_hour: f64,
    pub over: Duration,
}

#[derive(Debug)]
pub struct History {
    capacity: usize,
    cluster: VecDeque<ClusterSample>,
    targets: BTreeMap<String, VecDeque<TargetSample>>,
    runs: BTreeMap<String, BTreeMap<u64, TrainingRun>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new((KEEP.as_secs() / SAMPLE_EVERY.as_secs()) as usize)
    }
}

impl History {
    /// A history keeping at most `capacity` samples per series.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            cluster: VecDeque::new(),
            targets: BTreeMap::new(),
            runs: BTreeMap::new(),
        }
    }

    /// Takes one sample of `cluster` as of `at`, dropping what is older than [`KEEP`] or
    /// beyond the capacity, and the series of targets that no longer exist.
    pub fn sample(&mut self, cluster: &Cluster, at: DateTime<Utc>) {
        let (busy, gpus) = cluster.gpu_occupancy();
        push(
            &mut self.cluster,
            self.capacity,
            ClusterSample {
                at,
                nodes: cluster.nodes.len() as u32,
                nodes_ready: cluster.ready_nodes() as u32,
                gpus: gpus as u32,
                gpus_busy: busy as u32,
                gpu_util: cluster.gpu_utilisation(),
                running: cluster.count(JobPhase::Running) as u32,
                pending: cluster.count(JobPhase::Pending) as u32,
            },
        );
        self.targets
            .retain(|name, _| cluster.targets.iter().any(|t| t.name() == name));
        for t in &cluster.targets {
            let status = t.status.clone().unwrap_or_default();
            let series = self.targets.entry(t.name().to_string()).or_default();
            push(
                series,
                self.capacity,
                TargetSample {
                    at,
                    games: status.total_games,
                    generation: status.training_generation,
                },
            );
        }
        let oldest = at - chrono::Duration::from_std(KEEP).expect("24 h fits");
        prune(&mut self.cluster, oldest, |s| s.at);
        for series in self.targets.values_mut() {
            prune(series, oldest, |s| s.at);
        }
    }

    /// Remembers every training run `cluster` shows (a run's latest state wins), and forgets
    /// the runs of deleted targets.
    pub fn remember_runs(&mut self, cluster: &Cluster) {
        self.runs
            .retain(|name, _| cluster.targets.iter().any(|t| t.name() == name));
        for t in &cluster.targets {
            let Some(status) = &t.status else { continue };
            let runs = self.runs.entry(t.name().to_string()).or_default();
            for run in &status.history {
                runs.insert(run.generation, run.clone());
            }
            while runs.len() > MAX_RUNS {
                runs.pop_first();
            }
        }
    }

    pub fn cluster(&self) -> &VecDeque<ClusterSample> {
        &self.cluster
    }

    pub fn target(&self, name: &str) -> Option<&VecDeque<TargetSample>> {
        self.targets.get(name)
    }

    /// Every run of `target` seen, oldest generation first.
    pub fn runs(&self, target: &str) -> Vec<&TrainingRun> {
        self.runs
            .get(target)
            .map(|r| r.values().collect())
            .unwrap_or_default()
    }

    /// Games per hour of `target` over the last [`RATE_WINDOW`] of samples up to `now`;
    /// `None` with less than [`MIN_RATE_WINDOW`] of samples or when the count went down.
    pub fn games_per_hour(&self, target: &str, now: DateTime<Utc>) -> Option<Rate> {
        let series = self.targets.get(target)?;
        let last = series.iter().rev().find(|s| s.at <= now)?;
        let window_start = now - chrono::Duration::from_std(RATE_WINDOW).expect("1 h fits");
        let first = series.iter().find(|s| s.at >= window_start)?;
        let over = (last.at - first.at).to_std().ok()?;
        if over < MIN_RATE_WINDOW || last.games < first.games {
            return None;
        }
        Some(Rate {
            per_hour: (last.games - first.games) as f64 * 3600.0 / over.as_secs_f64(),
            over,
        })
    }
}

fn push<T>(series: &mut VecDeque<T>, capacity: usize, item: T) {
    if series.len() == capacity {
        series.pop_front();
    }
    series.push_back(item);
}

fn prune<T>(series: &mut VecDeque<T>, oldest: DateTime<Utc>, at: impl Fn(&T) -> DateTime<Utc>) {
    while series.front().is_some_and(|s| at(s) < oldest) {
        series.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TrainingTarget;
    use crate::dashboard::cluster::Parts;
    use crate::dashboard::fixtures;

    fn target(name: &str, games: u64, runs: &[(u64, bool)]) -> TrainingTarget {
        let runs: Vec<_> = runs.iter().map(|&(g, p)| (g, Some(0.6), p)).collect();
        fixtures::target(name, games, &runs, Utc::now())
    }

    fn cluster(at: DateTime<Utc>, targets: Vec<TrainingTarget>) -> Cluster {
        Cluster::assemble(Parts {
            taken_at: at,
            targets,
            ..Parts::default()
        })
    }

    #[test]
    fn samples_form_a_ring_and_age_out_after_a_day() {
        let t0 = Utc::now();
        let mut h = History::new(3);
        for i in 0..5 {
            let at = t0 + chrono::Duration::seconds(i * 10);
            h.sample(&cluster(at, vec![]), at);
        }
        assert_eq!(h.cluster().len(), 3, "capacity bounds the ring");
        let later = t0 + chrono::Duration::hours(25);
        h.sample(&cluster(later, vec![]), later);
        assert_eq!(h.cluster().len(), 1, "older than 24 h is dropped");
    }

    #[test]
    fn games_per_hour_come_from_the_last_hour_of_samples() {
        let t0 = Utc::now();
        let mut h = History::default();
        for (secs, games) in [(0, 0), (1800, 500), (3600, 1000), (5400, 1600)] {
            let at = t0 + chrono::Duration::seconds(secs);
            h.sample(&cluster(at, vec![target("hex8", games, &[])]), at);
        }
        let now = t0 + chrono::Duration::seconds(5400);
        let rate = h.games_per_hour("hex8", now).unwrap();
        assert_eq!(rate.over, Duration::from_secs(3600));
        assert!((rate.per_hour - 1100.0).abs() < 1e-9, "{rate:?}");
        assert_eq!(h.games_per_hour("hex8", t0), None, "one sample is no rate");
        assert_eq!(h.games_per_hour("other", now), None);
    }

    #[test]
    fn a_count_that_went_down_is_no_rate() {
        let t0 = Utc::now();
        let mut h = History::default();
        h.sample(&cluster(t0, vec![target("hex8", 900, &[])]), t0);
        let later = t0 + chrono::Duration::seconds(600);
        h.sample(&cluster(later, vec![target("hex8", 100, &[])]), later);
        assert_eq!(h.games_per_hour("hex8", later), None);
    }

    #[test]
    fn runs_outlive_the_etcd_history_limit_and_go_with_their_target() {
        let mut h = History::default();
        let now = Utc::now();
        h.remember_runs(&cluster(
            now,
            vec![target("hex8", 0, &[(1, true), (2, false)])],
        ));
        h.remember_runs(&cluster(
            now,
            vec![target("hex8", 0, &[(2, true), (3, true)])],
        ));
        let runs: Vec<(u64, bool)> = h
            .runs("hex8")
            .iter()
            .map(|r| (r.generation, r.promoted))
            .collect();
        assert_eq!(runs, [(1, true), (2, true), (3, true)], "latest state wins");
        h.remember_runs(&cluster(now, vec![]));
        assert!(
            h.runs("hex8").is_empty(),
            "a deleted target's runs are dropped"
        );
        h.sample(&cluster(now, vec![target("hex8", 1, &[])]), now);
        h.sample(&cluster(now, vec![]), now);
        assert!(h.target("hex8").is_none());
    }
}
