//! Counters the agent exposes at `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::api::job::JobPhase;

#[derive(Default)]
pub struct Metrics {
    pub restarts: AtomicU64,
    pub status_writes: AtomicU64,
    pub etcd_reconnects: AtomicU64,
    pub lease_renewals: AtomicU64,
    /// Sum of lease renewal round trips, in microseconds.
    pub lease_renew_micros: AtomicU64,
    /// HTTP connections refused for being over a connection limit.
    pub http_refused: AtomicU64,
    /// Followed-log requests refused for being over the follow-stream limit.
    pub follows_refused: AtomicU64,
    jobs_by_phase: Mutex<[u64; 5]>,
}

fn phase_index(p: JobPhase) -> usize {
    JobPhase::ALL.iter().position(|x| *x == p).unwrap_or(0)
}

impl Metrics {
    /// Replaces the per-phase job counts.
    pub fn set_jobs(&self, phases: impl Iterator<Item = JobPhase>) {
        let mut counts = [0u64; 5];
        for p in phases {
            counts[phase_index(p)] += 1;
        }
        *self.jobs_by_phase.lock().expect("lock") = counts;
    }

    /// The Prometheus text exposition.
    pub fn render(&self, node: &str) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{node=\"{node}\"}} {v}"
            );
        };
        let _ = writeln!(
            out,
            "# HELP rift_agent_jobs Jobs on this node by phase.\n# TYPE rift_agent_jobs gauge"
        );
        let counts = *self.jobs_by_phase.lock().expect("lock");
        for (p, n) in JobPhase::ALL.iter().zip(counts) {
            let _ = writeln!(
                out,
                "rift_agent_jobs{{node=\"{node}\",phase=\"{}\"}} {n}",
                p.as_str()
            );
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "rift_agent_job_restarts_total",
            "Job attempts started after the first.",
            load(&self.restarts),
        );
        counter(
            &mut out,
            "rift_agent_status_writes_total",
            "Runtime and node status writes to etcd.",
            load(&self.status_writes),
        );
        counter(
            &mut out,
            "rift_agent_etcd_reconnects_total",
            "Times etcd became reachable again.",
            load(&self.etcd_reconnects),
        );
        counter(
            &mut out,
            "rift_agent_lease_renewals_total",
            "Successful lease renewals.",
            load(&self.lease_renewals),
        );
        counter(
            &mut out,
            "rift_agent_http_connections_refused_total",
            "HTTP connections refused for being over a connection limit.",
            load(&self.http_refused),
        );
        counter(
            &mut out,
            "rift_agent_log_follows_refused_total",
            "Followed-log requests refused for being over the follow-stream limit.",
            load(&self.follows_refused),
        );
        let _ = writeln!(
            out,
            "# HELP rift_agent_lease_renew_seconds_sum Total lease renewal round-trip time.\n# TYPE rift_agent_lease_renew_seconds_sum counter\nrift_agent_lease_renew_seconds_sum{{node=\"{node}\"}} {}",
            load(&self.lease_renew_micros) as f64 / 1e6
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_jobs_by_phase_and_counters() {
        let m = Metrics::default();
        m.set_jobs([JobPhase::Running, JobPhase::Running, JobPhase::Failed].into_iter());
        m.restarts.store(2, Ordering::Relaxed);
        let text = m.render("n1");
        assert!(
            text.contains("rift_agent_jobs{node=\"n1\",phase=\"Running\"} 2"),
            "{text}"
        );
        assert!(text.contains("rift_agent_jobs{node=\"n1\",phase=\"Failed\"} 1"));
        assert!(text.contains("rift_agent_job_restarts_total{node=\"n1\"} 2"));
    }
}
