//! What the agent exposes at `/metrics`, in the Prometheus text format (`promtool check
//! metrics` clean: counters end in `_total`, latencies are histograms in seconds, every family
//! has help text).
//!
//! Every agent: its jobs by phase, job restarts, status writes, etcd reconnects, lease renewal
//! latency, HTTP refusals, and each GPU NVML measures (utilisation, memory). While the agent
//! leads, the same registry also carries the cluster-wide figures the controllers see
//! ([`LeaderMetrics`]: scheduler, training, tunnels, etcd members, jobs per node); a follower
//! exports none of those series. Every series carries the constant label `node`.

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::api::job::JobPhase;
use crate::api::node::{Capacity, Usage};
pub use crate::controllers::metrics::LeaderMetrics;

/// Lease renewal round trips, in seconds: from 1 ms to about 4 s.
const RENEW_BUCKETS: [f64; 13] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0,
];

/// The node cache's hits and misses, counted once per input a job stages (an input
/// downloaded for one job and linked for the next counts one miss, then one hit).
#[derive(Clone, Debug)]
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub hit_bytes: IntCounter,
    pub fetched_bytes: IntCounter,
}

impl Default for CacheMetrics {
    /// Counters registered nowhere (for a stager outside an agent).
    fn default() -> Self {
        let c = |name: &str| IntCounter::new(name, "unregistered").expect("valid counter");
        Self {
            hits: c("hits"),
            misses: c("misses"),
            hit_bytes: c("hit_bytes"),
            fetched_bytes: c("fetched_bytes"),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub restarts: IntCounter,
    pub status_writes: IntCounter,
    pub etcd_reconnects: IntCounter,
    /// Lease renewal round trips (its `_count` is the number of renewals).
    pub lease_renew_seconds: Histogram,
    /// HTTP connections refused for being over a connection limit.
    pub http_refused: IntCounter,
    /// Followed-log requests refused for being over the follow-stream limit.
    pub follows_refused: IntCounter,
    /// Job inputs found in the node cache and fetched into it.
    pub cache: CacheMetrics,
    jobs: IntGaugeVec,
    gpu_util: GaugeVec,
    gpu_memory: GaugeVec,
    gpu_memory_bytes: GaugeVec,
    /// The cluster-wide figures, filled only while this agent leads.
    pub leader: LeaderMetrics,
}

impl Default for Metrics {
    /// Metrics without a `node` label (for processes that are no node: hollow nodes, tests).
    fn default() -> Self {
        Self::new("")
    }
}

impl Metrics {
    /// A registry whose every series carries `node="<node>"` (none when `node` is empty).
    pub fn new(node: &str) -> Self {
        let labels = (!node.is_empty()).then(|| {
            [("node".to_string(), node.to_string())]
                .into_iter()
                .collect()
        });
        let registry = Registry::new_custom(None, labels).expect("a valid node label");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let restarts = counter(
            "rift_agent_job_restarts_total",
            "Job attempts started after the first.",
        );
        let status_writes = counter(
            "rift_agent_status_writes_total",
            "Runtime and node status writes to etcd.",
        );
        let etcd_reconnects = counter(
            "rift_agent_etcd_reconnects_total",
            "Times etcd became reachable again.",
        );
        let http_refused = counter(
            "rift_agent_http_connections_refused_total",
            "HTTP connections refused for being over a connection limit.",
        );
        let follows_refused = counter(
            "rift_agent_log_follows_refused_total",
            "Followed-log requests refused for being over the follow-stream limit.",
        );
        let cache = CacheMetrics {
            hits: counter(
                "rift_agent_cache_hits_total",
                "Job inputs found complete in the node cache (linked, nothing fetched).",
            ),
            misses: counter(
                "rift_agent_cache_misses_total",
                "Job inputs fetched from the artifact store into the node cache.",
            ),
            hit_bytes: counter(
                "rift_agent_cache_hit_bytes_total",
                "Bytes of job inputs served from the node cache.",
            ),
            fetched_bytes: counter(
                "rift_agent_cache_fetched_bytes_total",
                "Bytes of job inputs fetched from the artifact store.",
            ),
        };
        let lease_renew_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "rift_agent_lease_renew_seconds",
                "Round trip of each successful node lease renewal.",
            )
            .buckets(RENEW_BUCKETS.to_vec()),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(lease_renew_seconds.clone()))
            .expect("registered once");
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let jobs = gauge_vec("rift_agent_jobs", "Jobs on this node by phase.", &["phase"]);
        for p in JobPhase::ALL {
            jobs.with_label_values(&[p.as_str()]).set(0);
        }
        let float_vec = |name: &str, help: &str| {
            let g = GaugeVec::new(Opts::new(name, help), &["gpu", "model", "uuid"])
                .expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let gpu_util = float_vec(
            "rift_gpu_utilization_ratio",
            "Share of time each GPU was busy over NVML's last sample period (0-1).",
        );
        let gpu_memory = float_vec(
            "rift_gpu_memory_used_ratio",
            "Share of each GPU's memory in use (0-1).",
        );
        let gpu_memory_bytes = float_vec("rift_gpu_memory_bytes", "Each GPU's memory size.");
        let leader = LeaderMetrics::register(&registry);
        Metrics {
            registry,
            restarts,
            status_writes,
            etcd_reconnects,
            lease_renew_seconds,
            http_refused,
            follows_refused,
            cache,
            jobs,
            gpu_util,
            gpu_memory,
            gpu_memory_bytes,
            leader,
        }
    }

    /// Records one successful lease renewal that took `took`.
    pub fn lease_renewed(&self, took: Duration) {
        self.lease_renew_seconds.observe(took.as_secs_f64());
    }

    /// Replaces the per-phase job counts.
    pub fn set_jobs(&self, phases: impl Iterator<Item = JobPhase>) {
        let mut counts = [0i64; 5];
        for p in phases {
            if let Some(i) = JobPhase::ALL.iter().position(|x| *x == p) {
                counts[i] += 1;
            }
        }
        for (p, n) in JobPhase::ALL.iter().zip(counts) {
            self.jobs.with_label_values(&[p.as_str()]).set(n);
        }
    }

    /// Replaces the per-GPU figures with one probe's: only the GPUs NVML measured (declared
    /// GPUs have no measurements); a GPU gone from the probe is gone from the metrics.
    pub fn set_gpus(&self, capacity: &Capacity, usage: &Usage) {
        for g in [&self.gpu_util, &self.gpu_memory, &self.gpu_memory_bytes] {
            g.reset();
        }
        for u in &usage.gpus {
            let Some(gpu) = capacity.gpus.iter().find(|g| g.index == u.index) else {
                continue;
            };
            let index = gpu.index.to_string();
            let labels = [index.as_str(), gpu.model.as_str(), gpu.uuid.as_str()];
            if let Some(util) = u.util_percent {
                self.gpu_util.with_label_values(&labels).set(util / 100.0);
            }
            self.gpu_memory
                .with_label_values(&labels)
                .set(u.memory_percent / 100.0);
            self.gpu_memory_bytes
                .with_label_values(&labels)
                .set(gpu.memory_bytes as f64);
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("the text encoder writes to memory");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

/// The content type of [`Metrics::render`]'s answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::node::{Gpu, GpuUsage};

    #[test]
    fn renders_jobs_by_phase_counters_and_the_renewal_histogram() {
        let m = Metrics::new("n1");
        m.set_jobs([JobPhase::Running, JobPhase::Running, JobPhase::Failed].into_iter());
        m.restarts.inc_by(2);
        m.lease_renewed(Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains("rift_agent_jobs{phase=\"Running\",node=\"n1\"} 2"),
            "{text}"
        );
        assert!(text.contains("rift_agent_jobs{phase=\"Failed\",node=\"n1\"} 1"));
        assert!(text.contains("rift_agent_job_restarts_total{node=\"n1\"} 2"));
        assert!(text.contains("# TYPE rift_agent_lease_renew_seconds histogram"));
        assert!(text.contains("rift_agent_lease_renew_seconds_count{node=\"n1\"} 1"));
        assert!(text.contains("rift_agent_lease_renew_seconds_bucket{node=\"n1\",le=\"0.005\"} 1"));
        assert!(!text.contains("# TYPE rift_agent_lease_renew_seconds_sum"));
    }

    #[test]
    fn only_measured_gpus_are_exported_and_a_vanished_one_goes() {
        let m = Metrics::new("n1");
        let gpu = |index| Gpu {
            index,
            uuid: format!("GPU-{index}"),
            model: "H100".into(),
            memory_bytes: 80 << 30,
        };
        let capacity = Capacity {
            gpus: vec![gpu(0), gpu(1), gpu(2)],
            ..Capacity::default()
        };
        let usage = Usage {
            gpus: vec![
                GpuUsage {
                    index: 0,
                    util_percent: Some(50.0),
                    memory_percent: 25.0,
                },
                GpuUsage {
                    index: 1,
                    util_percent: None,
                    memory_percent: 10.0,
                },
            ],
            ..Usage::default()
        };
        m.set_gpus(&capacity, &usage);
        let text = m.render();
        assert!(text.contains(
            "rift_gpu_utilization_ratio{gpu=\"0\",model=\"H100\",uuid=\"GPU-0\",node=\"n1\"} 0.5"
        ), "{text}");
        assert!(
            !text.contains("rift_gpu_utilization_ratio{gpu=\"1\""),
            "unread is absent, not 0"
        );
        assert!(!text.contains("gpu=\"2\""), "GPU 2 was not measured");
        m.set_gpus(&capacity, &Usage::default());
        assert!(!m.render().contains("gpu=\"0\""));
    }
}
