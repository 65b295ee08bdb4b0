//! The cluster-wide figures the leader exports at its agent's `/metrics`: scheduler passes
//! (duration histogram, binds, preemptions), pending jobs, jobs per node and phase, each
//! TrainingTarget's games, generation, last win rate and last promotion, tunnels up or down,
//! and the etcd members' health as the voters controller last reported it.
//!
//! Guarantees: the cluster gauges exist only while this agent leads ([`LeaderMetrics::leading`]
//! clears them when it stops), so summing a gauge over every agent counts the cluster once;
//! they are refreshed from the scheduler's watch-fed view at most every [`CLUSTER_EVERY`]
//! (a deleted object's series disappears at the next refresh). Counters and the pass histogram
//! count this process's passes and keep their values across leadership changes, as counters
//! must.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::cluster_view::ClusterView;
use crate::api::voter_set::VOTER_SET_NAME;
use crate::api::JobPhase;

/// The least time between two refreshes of the cluster gauges.
pub const CLUSTER_EVERY: Duration = Duration::from_secs(5);

/// Scheduler pass durations, in seconds: 1 ms to about 16 s.
const PASS_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 16.0, 32.0,
];

/// Handles on the leader's series (cheap to clone: they share the registry's storage).
#[derive(Clone)]
pub struct LeaderMetrics {
    leader: IntGauge,
    pass_seconds: Histogram,
    binds: IntCounter,
    preemptions: IntCounter,
    pending: IntGaugeVec,
    jobs: IntGaugeVec,
    games: IntGaugeVec,
    generation: IntGaugeVec,
    win_rate: GaugeVec,
    promoted_at: GaugeVec,
    tunnel_up: IntGaugeVec,
    member_healthy: IntGaugeVec,
    quorum: IntGaugeVec,
}

impl LeaderMetrics {
    /// Registers the leader's series in `registry`.
    pub fn register(registry: &Registry) -> LeaderMetrics {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone())).expect("registered once");
            c
        }
        let ints = |name: &str, help: &str, labels: &[&str]| {
            reg(
                registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        let floats = |name: &str, help: &str, labels: &[&str]| {
            reg(
                registry,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        LeaderMetrics {
            leader: reg(
                registry,
                IntGauge::new(
                    "rift_leader",
                    "1 while this agent leads (runs the controllers).",
                )
                .expect("valid gauge"),
            ),
            pass_seconds: reg(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "rift_scheduler_pass_seconds",
                        "Duration of each scheduler pass: load, decide, write.",
                    )
                    .buckets(PASS_BUCKETS.to_vec()),
                )
                .expect("valid histogram"),
            ),
            binds: reg(
                registry,
                IntCounter::new("rift_scheduler_binds_total", "Jobs the scheduler placed.")
                    .expect("valid counter"),
            ),
            preemptions: reg(
                registry,
                IntCounter::new(
                    "rift_scheduler_preemptions_total",
                    "Jobs the scheduler evicted: preempted, drained or moved off lost nodes.",
                )
                .expect("valid counter"),
            ),
            pending: ints(
                "rift_scheduler_pending_jobs",
                "Jobs waiting to be placed.",
                &[],
            ),
            jobs: ints(
                "rift_jobs",
                "Jobs by phase and the node they are placed on (empty: not placed).",
                &["job_node", "phase"],
            ),
            games: ints(
                "rift_training_games",
                "Games a TrainingTarget has counted in all.",
                &["target"],
            ),
            generation: ints(
                "rift_training_generation",
                "Training runs a TrainingTarget has started.",
                &["target"],
            ),
            win_rate: floats(
                "rift_training_last_win_rate",
                "Win rate of a TrainingTarget's last evaluated candidate (0-1).",
                &["target"],
            ),
            promoted_at: floats(
                "rift_training_last_promotion_timestamp_seconds",
                "When a TrainingTarget last promoted a model (time since: time() - this).",
                &["target"],
            ),
            tunnel_up: ints(
                "rift_tunnel_up",
                "1 while a NAT-blocked node's tunnel is connected, 0 while it is down.",
                &["tunnel", "tunnel_node", "relay"],
            ),
            member_healthy: ints(
                "rift_etcd_member_healthy",
                "1 when an etcd member answered the voters controller's last health check.",
                &["member", "id", "role"],
            ),
            quorum: ints(
                "rift_etcd_quorum",
                "1 when more than half the etcd voters were healthy at the last check.",
                &[],
            ),
        }
    }

    /// Marks this agent as leading or not; stopping clears every cluster gauge.
    pub fn leading(&self, yes: bool) {
        self.leader.set(i64::from(yes));
        if !yes {
            self.clear_cluster();
        }
    }

    fn clear_cluster(&self) {
        for g in [
            &self.pending,
            &self.jobs,
            &self.games,
            &self.generation,
            &self.tunnel_up,
            &self.member_healthy,
            &self.quorum,
        ] {
            g.reset();
        }
        self.win_rate.reset();
        self.promoted_at.reset();
    }

    /// Records one scheduler pass.
    pub fn pass(&self, took: Duration, placed: usize, evicted: usize) {
        self.pass_seconds.observe(took.as_secs_f64());
        self.binds.inc_by(placed as u64);
        self.preemptions.inc_by(evicted as u64);
    }

    /// Sets every cluster gauge from the scheduler's view (replacing the previous values).
    pub fn observe(&self, view: &ClusterView) {
        self.clear_cluster();
        let mut jobs: BTreeMap<(String, JobPhase), i64> = BTreeMap::new();
        for j in view.jobs() {
            let st = j.status.clone().unwrap_or_default();
            *jobs
                .entry((st.node.unwrap_or_default(), st.phase))
                .or_default() += 1;
        }
        let pending: i64 = jobs
            .iter()
            .filter(|((_, p), _)| *p == JobPhase::Pending)
            .map(|(_, n)| n)
            .sum();
        self.pending.with_label_values(&[] as &[&str]).set(pending);
        for ((node, phase), n) in jobs {
            self.jobs
                .with_label_values(&[node.as_str(), phase.as_str()])
                .set(n);
        }
        for t in view.targets() {
            let name = t.name().to_string();
            let st = t.status.clone().unwrap_or_default();
            let label = [name.as_str()];
            self.games
                .with_label_values(&label)
                .set(st.total_games.min(i64::MAX as u64) as i64);
            self.generation
                .with_label_values(&label)
                .set(st.training_generation.min(i64::MAX as u64) as i64);
            let evaluated = st.history.iter().filter(|r| r.win_rate.is_some());
            if let Some(w) = evaluated
                .max_by_key(|r| r.generation)
                .and_then(|r| r.win_rate)
            {
                self.win_rate.with_label_values(&label).set(w);
            }
            if let Some(at) = st
                .history
                .iter()
                .filter(|r| r.promoted)
                .filter_map(|r| r.finished_at)
                .max()
            {
                self.promoted_at
                    .with_label_values(&label)
                    .set(at.timestamp_millis() as f64 / 1000.0);
            }
        }
        for t in view.tunnels() {
            let st = t.status.clone().unwrap_or_default();
            let relay = st.relay.unwrap_or_default();
            self.tunnel_up
                .with_label_values(&[t.name(), t.spec.node.as_str(), relay.as_str()])
                .set(i64::from(st.connected));
        }
        let voters = view
            .voter_set(VOTER_SET_NAME)
            .and_then(|v| v.status.clone());
        if let Some(st) = voters.filter(|s| !s.members.is_empty()) {
            for m in &st.members {
                let role = if m.learner { "learner" } else { "voter" };
                self.member_healthy
                    .with_label_values(&[m.name.as_str(), m.id.as_str(), role])
                    .set(i64::from(m.healthy));
            }
            self.quorum
                .with_label_values(&[] as &[&str])
                .set(i64::from(st.quorum));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{KeyValue, WatchEvent};
    use serde_json::json;

    fn kv(key: &str, value: serde_json::Value) -> KeyValue {
        KeyValue::json(key, value, 1)
    }

    fn view() -> ClusterView {
        let job = |name: &str| {
            json!({"apiVersion": "rift/v1", "kind": "Job", "metadata": {"name": name},
                   "spec": {"command": ["true"]}})
        };
        let mut m = ClusterView::new();
        m.apply(&WatchEvent::Restarted {
            items: vec![
                kv("/rift/v1/jobs/a", job("a")),
                kv("/rift/v1/jobs/b", job("b")),
                kv(
                    "/rift/v1/tunnels/t1",
                    json!({"apiVersion": "rift/v1", "kind": "Tunnel", "metadata": {"name": "t1"},
                           "spec": {"node": "nat-1", "relay": "r1", "ports": [{"remotePort": 1, "localPort": 2}],
                                    "sshUser": "rift", "identityFile": "/k"}}),
                ),
            ],
            revision: 3,
        });
        m
    }

    #[test]
    fn cluster_gauges_exist_only_while_leading() {
        let registry = Registry::new();
        let m = LeaderMetrics::register(&registry);
        m.leading(true);
        m.observe(&view());
        m.pass(Duration::from_millis(12), 3, 1);
        let text = render(&registry);
        assert!(text.contains("rift_scheduler_pending_jobs 2"), "{text}");
        assert!(text.contains("rift_jobs{job_node=\"\",phase=\"Pending\"} 2"));
        assert!(text.contains("rift_tunnel_up{relay=\"\",tunnel=\"t1\",tunnel_node=\"nat-1\"} 0"));
        assert!(text.contains("rift_scheduler_binds_total 3"));
        assert!(text.contains("rift_scheduler_pass_seconds_count 1"));
        m.leading(false);
        let text = render(&registry);
        assert!(!text.contains("rift_jobs{"), "{text}");
        assert!(!text.contains("rift_tunnel_up{"));
        assert!(text.contains("rift_leader 0"));
        assert!(
            text.contains("rift_scheduler_binds_total 3"),
            "counters keep counting"
        );
    }

    fn render(registry: &Registry) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    }
}
