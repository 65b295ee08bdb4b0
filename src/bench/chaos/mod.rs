//! `rift bench chaos SCENARIO`: the fault campaign. Each scenario starts its own cluster (etcd,
//! real agents running real processes, hollow nodes where it needs scale), runs jobs, injects
//! one kind of fault over and over, and then asks the invariant checker
//! ([`crate::faults::invariants`]) whether rift kept its promises: no two instances of a job at
//! once, no job lost, none stuck past a stated bound, and — where the scenario promises it —
//! none restarted or killed.
//!
//! | scenario | faults | promise |
//! |---|---|---|
//! | [`leader_kills`] | the leader SIGKILLed or SIGSTOPped, over and over, during a run of finishing jobs | 0 lost, 0 duplicated, 0 stuck |
//! | [`node_cut`] | a worker's link to etcd cut, partitioned or its replies blackholed, then restored | at most one instance at every instant; `wait` jobs never stopped |
//! | [`quorum_loss`] | two of three etcd members down (one SIGKILLed, one SIGSTOPped) | 0 jobs killed; scheduling resumes within 5 s of quorum |
//! | [`agent_kills`] | a worker's agent SIGKILLed every second (and restarted) | 0 jobs restarted |
//! | [`shim_kills`] | a job's shim SIGKILLed (the job process lives on), one after another | at most one instance; every job running again |
//! | [`rolling_upgrade`] | every agent stopped (SIGTERM) and started again, one at a time | 0 jobs restarted |
//! | [`unknown_field`] | running Jobs rewritten with a field this version does not know | 0 jobs killed |
//!
//! Each prints a table and one JSON line: the faults injected, the operations (writes the
//! scenario made), the violations found (by class, and each one), and recovery times
//! (p50/p99/max; what is timed is stated per scenario). Flags shrink a scenario (`--faults`,
//! `--jobs`, `--nodes`, `--seconds`) so that a test can run a short version; `--keep` leaves
//! the run's directory (agent logs, the instance log) for reading what happened.

pub mod bed;
pub mod etcd;

pub mod agent_kills;
pub mod leader_kills;
pub mod node_cut;
pub mod quorum_loss;
pub mod rolling_upgrade;
pub mod shim_kills;
pub mod unknown_field;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::report::{Report, Spread};
use super::{BenchError, Common};
use crate::faults::invariants::{counts, Violation};
pub use bed::Link;

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ChaosScenario {
    /// The leader SIGKILLed / SIGSTOPped during a run of finishing jobs (hollow nodes plus 3
    /// real agents): 0 lost, 0 duplicated, 0 stuck.
    LeaderKills,
    /// A worker cut off from etcd and restored, with `wait` and `reschedule` jobs: at most one
    /// instance at every instant.
    NodeCut,
    /// Two of three etcd members down: 0 jobs killed, scheduling back within 5 s of quorum.
    QuorumLoss,
    /// A worker's agent SIGKILLed every second with running jobs: 0 restarted.
    AgentKills,
    /// Jobs' shims SIGKILLed while their jobs run on: at most one instance, all running.
    ShimKills,
    /// Every agent stopped and started again in turn: 0 restarted.
    RollingUpgrade,
    /// Running Jobs rewritten with an unknown field: 0 killed.
    UnknownField,
}

impl ChaosScenario {
    pub fn label(self) -> &'static str {
        match self {
            ChaosScenario::LeaderKills => "leader-kills",
            ChaosScenario::NodeCut => "node-cut",
            ChaosScenario::QuorumLoss => "quorum-loss",
            ChaosScenario::AgentKills => "agent-kills",
            ChaosScenario::ShimKills => "shim-kills",
            ChaosScenario::RollingUpgrade => "rolling-upgrade",
            ChaosScenario::UnknownField => "unknown-field",
        }
    }
}

/// How big a run is; `None` takes the scenario's default (the scale).
#[derive(Clone, Debug)]
pub struct ChaosArgs {
    pub scenario: ChaosScenario,
    /// Fault injections (leader kills, cuts, outages, upgrade rounds, rewritten jobs).
    pub faults: Option<usize>,
    /// Jobs.
    pub jobs: Option<usize>,
    /// Hollow nodes (leader-kills).
    pub nodes: Option<usize>,
    /// Seconds a fault lasts (quorum loss), faults go on (agent kills) or are watched
    /// (unknown field).
    pub seconds: Option<u64>,
    /// How the faulted worker reaches etcd (node-cut).
    pub link: Link,
    /// Seeds the fault schedule; the same seed gives the same sequence of faults.
    pub seed: u64,
    /// Leave the run's directory in place.
    pub keep: bool,
}

impl ChaosArgs {
    /// Refuses sizes no run on one machine could reach (and that arithmetic on them could
    /// overflow), saying which flag and what to use.
    pub fn validate(&self) -> Result<(), String> {
        let limits: [(&str, Option<u64>, u64); 4] = [
            ("--faults", self.faults.map(|v| v as u64), 100_000),
            ("--jobs", self.jobs.map(|v| v as u64), 100_000),
            ("--nodes", self.nodes.map(|v| v as u64), 20_000),
            ("--seconds", self.seconds, 86_400),
        ];
        for (flag, value, most) in limits {
            if let Some(v) = value.filter(|v| *v > most) {
                return Err(format!(
                    "{flag} {v} is more than one machine can run; use at most {most}"
                ));
            }
        }
        Ok(())
    }
}

/// What a scenario found.
pub struct Outcome {
    pub scenario: ChaosScenario,
    pub setup: String,
    pub setup_json: Value,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Writes the scenario made.
    pub operations: usize,
    pub violations: Vec<Violation>,
    /// What the recovery times time.
    pub recovery: String,
    pub recovery_ms: Vec<f64>,
    /// How long a job may take to converge before it counts as stuck.
    pub bound: Duration,
    /// Figures of the scenario's own.
    pub rows: Vec<(String, String, Value)>,
    /// The run's directory, when kept.
    pub kept: Option<PathBuf>,
}

/// The most violations listed one by one.
const LISTED: usize = 40;

impl Outcome {
    pub fn new(scenario: ChaosScenario, bound: Duration) -> Outcome {
        Outcome {
            scenario,
            setup: String::new(),
            setup_json: json!({}),
            faults: BTreeMap::new(),
            operations: 0,
            violations: Vec::new(),
            recovery: String::new(),
            recovery_ms: Vec::new(),
            bound,
            rows: Vec::new(),
            kept: None,
        }
    }

    pub fn fault(&mut self, kind: &str) {
        *self.faults.entry(kind.to_string()).or_default() += 1;
    }

    pub fn row(&mut self, key: &str, shown: String, value: Value) {
        self.rows.push((key.into(), shown, value));
    }

    pub fn report(&self) -> Report {
        let mut r = Report::new(&format!("chaos {}", self.scenario.label()));
        r.add("setup", self.setup.clone(), self.setup_json.clone());
        let total: usize = self.faults.values().sum();
        let kinds: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        r.add(
            "faults",
            format!("{total} injected: {}", kinds.join(", ")),
            json!(total),
        );
        r.field("fault_kinds", json!(self.faults));
        r.add(
            "operations",
            format!(
                "{} writes (jobs created, updated, deleted)",
                self.operations
            ),
            json!(self.operations),
        );
        let by_class = counts(&self.violations);
        let shown: Vec<String> = by_class.iter().map(|(k, n)| format!("{n} {k}")).collect();
        r.add(
            "violations",
            format!(
                "{} found: {} (stuck: not converged, and stable for two lease TTLs, within {} s of a fault's end)",
                self.violations.len(),
                shown.join(", "),
                self.bound.as_secs()
            ),
            json!(self.violations.len()),
        );
        r.field("violations_by_class", json!(by_class));
        let s = Spread::of(self.recovery_ms.clone());
        r.add(
            "recovery",
            format!("{}: {}", self.recovery, s.show()),
            s.json(),
        );
        for (k, shown, v) in &self.rows {
            r.add(k, shown.clone(), v.clone());
        }
        for (i, v) in self.violations.iter().take(LISTED).enumerate() {
            r.add(
                &format!("violation_{}", i + 1),
                v.to_string(),
                json!(v.to_string()),
            );
        }
        if self.violations.len() > LISTED {
            r.add(
                "violations_not_listed",
                format!("{} more", self.violations.len() - LISTED),
                json!(self.violations.len() - LISTED),
            );
        }
        if let Some(dir) = &self.kept {
            r.add(
                "kept",
                format!("agent logs and the instance log are in {}", dir.display()),
                json!(dir.display().to_string()),
            );
        }
        r
    }
}

/// Runs one scenario.
pub async fn run(args: &ChaosArgs, common: &Common) -> Result<Outcome, BenchError> {
    match args.scenario {
        ChaosScenario::LeaderKills => leader_kills::run(args, common).await,
        ChaosScenario::NodeCut => node_cut::run(args, common).await,
        ChaosScenario::QuorumLoss => quorum_loss::run(args, common).await,
        ChaosScenario::AgentKills => agent_kills::run(args, common).await,
        ChaosScenario::ShimKills => shim_kills::run(args, common).await,
        ChaosScenario::RollingUpgrade => rolling_upgrade::run(args, common).await,
        ChaosScenario::UnknownField => unknown_field::run(args, common).await,
    }
}

/// Milliseconds of a duration, for recovery times.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_past_one_machine_are_refused_with_the_flag_named() {
        let args = ChaosArgs {
            scenario: ChaosScenario::LeaderKills,
            faults: Some(usize::MAX),
            jobs: None,
            nodes: None,
            seconds: None,
            link: Link::Proxy,
            seed: 1,
            keep: false,
        };
        let e = args.validate().unwrap_err();
        assert!(e.starts_with("--faults 18446744073709551615"), "{e}");
        let fine = ChaosArgs {
            faults: Some(100),
            seconds: Some(60),
            ..args
        };
        assert_eq!(fine.validate(), Ok(()));
    }

    #[test]
    fn the_json_line_names_faults_operations_violations_and_recovery() {
        let mut o = Outcome::new(ChaosScenario::NodeCut, Duration::from_secs(30));
        o.fault("cut");
        o.fault("cut");
        o.fault("partition");
        o.operations = 7;
        o.recovery_ms = vec![100.0, 300.0, 200.0];
        o.violations.push(Violation::Lost {
            job: "move-0".into(),
            detail: "Failed (NodeLost)".into(),
        });
        let j = o.report().json();
        assert_eq!(j["scenario"], "chaos node-cut");
        assert_eq!(j["faults"], 3);
        assert_eq!(j["fault_kinds"]["cut"], 2);
        assert_eq!(j["operations"], 7);
        assert_eq!(j["violations"], 1);
        assert_eq!(j["violations_by_class"]["lost"], 1);
        assert_eq!(j["violations_by_class"]["overlap"], 0);
        assert_eq!(j["violation_1"], "lost: move-0: Failed (NodeLost)");
        assert_eq!(j["recovery"]["p50_ms"], 200.0);
        assert_eq!(j["recovery"]["max_ms"], 300.0);
    }
}
