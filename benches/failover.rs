//! Leader failover and idle cost, with real etcd and real `rift agent --controllers` processes.
//!
//! `cargo bench --bench failover` prints a table and one JSON line. Settings (environment):
//! `RIFT_BENCH_TRIALS` (default 20), `RIFT_BENCH_TTL` (lease TTL in seconds, default 2),
//! `RIFT_BENCH_IDLE_SECS` (default 60).
//!
//! Three ways a leader goes away, each timed from the signal to the moment etcd names a new
//! leader:
//! - `sigterm`: graceful shutdown; the leader revokes its lease.
//! - `sigkill`: the process dies, the host stays up; a standby's probe of the leader's agent
//!   port is refused three times and it revokes the dead leader's lease.
//! - `sigstop`: the process hangs (or its host vanishes): nothing answers, so the lease must
//!   expire; bounded by the TTL.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::agent::spawn_candidate;
use support::etcd::EtcdCluster;
use support::proc::{env_or, free_port, measure_idle, percentile};

struct Agent {
    name: String,
    child: Child,
}

impl Agent {
    fn start(name: &str, endpoints: &str, ttl: u64) -> Agent {
        let child = spawn_candidate(name, endpoints, free_port(), ttl);
        Agent {
            name: name.to_string(),
            child,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn leader(client: &mut etcd_client::Client) -> Option<String> {
    let resp = client.get("/rift/v1/leader", None).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(resp.kvs().first()?.value()).ok()?;
    Some(v["node"].as_str()?.to_string())
}

async fn wait_for_leader(client: &mut etcd_client::Client, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = leader(client).await {
            if Some(l.as_str()) != not {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no leader within 60 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Failover times in ms for `trials` leaders taken down with `sig`.
async fn failover(endpoints: &str, ttl: u64, trials: u64, sig: Signal, round: &str) -> Vec<f64> {
    let mut client = etcd_client::Client::connect([endpoints], None)
        .await
        .unwrap();
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| Agent::start(&format!("{round}-{i}"), endpoints, ttl))
        .collect();
    let mut times = Vec::new();
    for next_id in 3..3 + trials {
        // A leader from an earlier round may hold the key until its lease expires.
        let current = loop {
            let l = wait_for_leader(&mut client, None).await;
            if agents.iter().any(|a| a.name == l) {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // Let the standbys settle into waiting on this leader.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let i = agents
            .iter()
            .position(|a| a.name == current)
            .expect("leader is ours");
        let start = Instant::now();
        kill(agents[i].pid(), sig).unwrap();
        wait_for_leader(&mut client, Some(&current)).await;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        // Replace the taken-down agent so every trial starts from three.
        let old = agents.swap_remove(i);
        drop(old);
        agents.push(Agent::start(&format!("{round}-{next_id}"), endpoints, ttl));
    }
    times.sort_by(f64::total_cmp);
    times
}

/// CPU (% of one core) and RSS (MiB) of an idle leader over `secs`.
async fn idle(endpoints: &str, ttl: u64, secs: u64) -> (f64, f64) {
    let mut client = etcd_client::Client::connect([endpoints], None)
        .await
        .unwrap();
    let leader_agent = Agent::start("idle-leader", endpoints, ttl);
    let _standby = Agent::start("idle-standby", endpoints, ttl);
    wait_for_leader(&mut client, None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    measure_idle(leader_agent.child.id(), secs).await
}

#[tokio::main]
async fn main() {
    let trials = env_or("RIFT_BENCH_TRIALS", 20);
    let ttl = env_or("RIFT_BENCH_TTL", 2);
    let idle_secs = env_or("RIFT_BENCH_IDLE_SECS", 60);
    let cluster = EtcdCluster::single();
    let ep = cluster.client_url(0);

    println!("leader failover: {trials} trials each, lease TTL {ttl} s, 3 agents, 1 etcd member");
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9}",
        "how", "p50 ms", "p99 ms", "min ms", "max ms"
    );
    let mut json = serde_json::Map::new();
    for (name, sig) in [
        ("sigterm", Signal::SIGTERM),
        ("sigkill", Signal::SIGKILL),
        ("sigstop", Signal::SIGSTOP),
    ] {
        let t = failover(&ep, ttl, trials, sig, name).await;
        let (p50, p99) = (percentile(&t, 0.5), percentile(&t, 0.99));
        println!(
            "{name:<10} {p50:>9.0} {p99:>9.0} {:>9.0} {:>9.0}",
            t[0],
            t[t.len() - 1]
        );
        json.insert(
            name.into(),
            serde_json::json!({"p50_ms": p50, "p99_ms": p99, "min_ms": t[0], "max_ms": t[t.len()-1]}),
        );
    }
    let (cpu, rss) = idle(&ep, ttl, idle_secs).await;
    println!("idle leader over {idle_secs} s: CPU {cpu:.2} % of one core, RSS {rss:.1} MiB");
    json.insert("idle_cpu_percent".into(), cpu.into());
    json.insert("idle_rss_mib".into(), rss.into());
    json.insert("trials".into(), trials.into());
    json.insert("ttl_s".into(), ttl.into());
    println!("{}", serde_json::Value::Object(json));
}
