//! The node agent's cost and speed, with real etcd, a real agent, real shims and jobs.
//!
//! `cargo bench --bench agent` prints a table and one JSON line. Settings (environment):
//! `RIFT_BENCH_JOBS` (default 200), `RIFT_BENCH_IDLE_SECS` (default 60).
//!
//! - idle CPU (% of one core) and RSS of the agent with no jobs, then with 10 running jobs;
//! - bind → started: from writing a job's binding to the moment its process started (the
//!   start time the shim records), p50/p99 over `RIFT_BENCH_JOBS` jobs bound one at a time;
//! - shim RSS: resident memory of the shims of running jobs.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rift::api::{JobSpec, Object};
use support::agent::TestAgent;
use support::etcd::EtcdCluster;
use support::proc::{env_or, measure_idle, percentile, rss_kib};

fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmd)
                .contains(needle)
                .then_some(pid)
        })
        .collect()
}

async fn bind(client: &mut etcd_client::Client, job: &str, node: &str) -> DateTime<Utc> {
    let at = Utc::now();
    let p = serde_json::json!({"node": node, "epoch": 1}).to_string();
    let b = serde_json::json!({"epoch": 1}).to_string();
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put(format!("/rift/v1/placements/{job}"), p, None),
        etcd_client::TxnOp::put(format!("/rift/v1/bindings/{node}/{job}"), b, None),
    ]);
    client.txn(txn).await.unwrap();
    at
}

async fn started_at(agent: &TestAgent, job: &str) -> DateTime<Utc> {
    let path = agent.job_dir(job).join("attempts/1/job.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let Some(t) = v["startedAt"].as_str().and_then(|t| t.parse().ok()) {
                    return t;
                }
            }
        }
        assert!(Instant::now() < deadline, "{job} never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main]
async fn main() {
    let jobs = env_or("RIFT_BENCH_JOBS", 200);
    let idle_secs = env_or("RIFT_BENCH_IDLE_SECS", 60);
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let store = cluster.store().await;
    let mut client = cluster.client().await;
    let agent = TestAgent::start("bench-node", &ep, &[]);
    // Look the pid up once the child has exec'd (before that /proc shows the parent's command).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent_pid = *pids_with_cmdline("--name\0bench-node")
        .first()
        .expect("the agent is running");

    let (idle_cpu, idle_rss) = measure_idle(agent_pid, idle_secs).await;

    for i in 0..jobs {
        let spec = JobSpec::with_command(["sleep", "3600"]);
        store
            .create(&Object::new(format!("j{i}"), spec))
            .await
            .unwrap();
    }
    // Ten running jobs, then the idle cost with them.
    for i in 0..10 {
        bind(&mut client, &format!("j{i}"), "bench-node").await;
        started_at(&agent, &format!("j{i}")).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (busy_cpu, busy_rss) = measure_idle(agent_pid, idle_secs).await;
    let shims: Vec<f64> = pids_with_cmdline("rift\0shim")
        .into_iter()
        .filter_map(rss_kib)
        .map(|k| k as f64 / 1024.0)
        .collect();
    let shim_rss = shims.iter().sum::<f64>() / shims.len().max(1) as f64;

    // Bind → started, one job at a time.
    let mut latencies = Vec::new();
    for i in 10..jobs {
        let job = format!("j{i}");
        let bound = bind(&mut client, &job, "bench-node").await;
        let started = started_at(&agent, &job).await;
        latencies.push((started - bound).num_microseconds().unwrap() as f64 / 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));

    println!(
        "agent: 1 etcd member, release build, {} jobs bound one at a time",
        latencies.len()
    );
    println!("idle, no jobs ({idle_secs} s):      CPU {idle_cpu:.2} % of one core, RSS {idle_rss:.1} MiB");
    println!("idle, 10 running jobs ({idle_secs} s): CPU {busy_cpu:.2} % of one core, RSS {busy_rss:.1} MiB");
    println!("shim RSS (mean of {}):      {shim_rss:.2} MiB", shims.len());
    println!(
        "bind -> started: p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms",
        latencies[latencies.len() - 1]
    );
    println!(
        "{}",
        serde_json::json!({
            "idle_cpu_percent": idle_cpu, "idle_rss_mib": idle_rss,
            "busy10_cpu_percent": busy_cpu, "busy10_rss_mib": busy_rss,
            "shim_rss_mib": shim_rss, "bind_to_started_p50_ms": p50,
            "bind_to_started_p99_ms": p99, "jobs": latencies.len()
        })
    );
    drop(agent); // kills the agent and every shim and job it started
}
