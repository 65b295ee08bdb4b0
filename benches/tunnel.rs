//! How fast a tunnel notices a dead link, and how fast it is back once the relay returns, with
//! real etcd, a real `rift agent` running the real `ssh` client, and a real sshd relay on
//! loopback (tests/support/sshd.rs).
//!
//! `cargo bench --bench tunnel` prints a table and one JSON line. Settings (environment):
//! `RIFT_BENCH_TRIALS` (default 10), `RIFT_BENCH_OUTAGE_SECS` (how long the relay stays frozen
//! after the agent noticed, default 5).
//!
//! Each trial: the tunnel has been up for at least 11 s (a healthy run, so the restart backoff
//! has started over); the relay's sshd and its sessions are frozen (SIGSTOP: connections stay
//! open, nothing answers — a silent link or a hung relay, the case keepalives exist for);
//! **detect** is the time until the Tunnel's status says not connected; the relay is thawed
//! `RIFT_BENCH_OUTAGE_SECS` later; **restore** is the time from the thaw until the agent's HTTP
//! answers through the relay again.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rift::api::node::NodeRole;
use rift::api::tunnel::{PortForward, TunnelStatus};
use rift::api::{NodeSpec, Object, TunnelSpec};
use rift::store::Store;
use support::agent::TestAgent;
use support::etcd::EtcdCluster;
use support::proc::{env_or, free_port, percentile};
use support::sshd::{current_user, ClientKey, Sshd};

async fn status(store: &Store) -> Option<TunnelStatus> {
    store.get::<TunnelSpec>("bench").await.ok()??.status
}

/// Polls `f` every 20 ms until it is true; the time it took, or `None` after `limit`.
async fn time_until<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn agent_answers(addr: String) -> bool {
    tokio::task::spawn_blocking(move || {
        support::http::get(&addr, "/healthz", Duration::from_millis(500))
            .is_some_and(|(code, _)| code == 200)
    })
    .await
    .unwrap()
}

fn row(name: &str, samples: &mut [f64]) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
    let (min, max) = (samples[0], samples[samples.len() - 1]);
    println!("| {name} | {p50:.0} ms | {p99:.0} ms | {min:.0} ms | {max:.0} ms |");
    serde_json::json!({"p50_ms": p50, "p99_ms": p99, "min_ms": min, "max_ms": max})
}

#[tokio::main]
async fn main() {
    let trials = env_or("RIFT_BENCH_TRIALS", 10) as usize;
    let outage = Duration::from_secs(env_or("RIFT_BENCH_OUTAGE_SECS", 5));
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let store = cluster.store().await;
    let key = ClientKey::new();
    let ssh_port = free_port();
    let relay = Sshd::start("127.0.0.2", ssh_port, &key);
    let relay_node = NodeSpec {
        addresses: vec!["127.0.0.2".into()],
        roles: vec![NodeRole::Relay],
        ..NodeSpec::default()
    };
    store
        .create(&Object::new("relay-1", relay_node))
        .await
        .unwrap();
    let agent = TestAgent::start("vast-1", &eps, &[]);
    let remote = free_port();
    let spec = TunnelSpec {
        node: "vast-1".into(),
        relay: "relay-1".into(),
        ports: vec![PortForward {
            remote_port: remote,
            local_port: agent.port,
        }],
        ssh_user: current_user(),
        ssh_port,
        identity_file: key.path.display().to_string(),
        host_key: Some(relay.host_key.clone()),
        host_keys: BTreeMap::new(),
        switch_after_failures: 3,
    };
    store.create(&Object::new("bench", spec)).await.unwrap();
    let through = format!("127.0.0.2:{remote}");

    let mut detect = Vec::new();
    let mut restore = Vec::new();
    for trial in 0..trials {
        let up = time_until(Duration::from_secs(60), || async {
            status(&store).await.is_some_and(|s| s.connected)
                && agent_answers(through.clone()).await
        })
        .await;
        assert!(
            up.is_some(),
            "trial {trial}: tunnel never came up:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_secs(11)).await;

        relay.freeze();
        let d = time_until(Duration::from_secs(60), || async {
            status(&store).await.is_some_and(|s| !s.connected)
        })
        .await
        .expect("the dead link is noticed");
        tokio::time::sleep(outage).await;
        relay.thaw();
        let r = time_until(Duration::from_secs(60), || agent_answers(through.clone()))
            .await
            .expect("the tunnel comes back");
        eprintln!("trial {trial}: detect {d:?}, restore {r:?}");
        detect.push(d.as_secs_f64() * 1000.0);
        restore.push(r.as_secs_f64() * 1000.0);
    }
    println!(
        "tunnel: {trials} trials; relay sshd frozen (SIGSTOP), thawed {} s after detection; ssh ServerAliveInterval 3 × ServerAliveCountMax 3, backoff 0.5-15 s",
        outage.as_secs()
    );
    println!("| figure | p50 | p99 | min | max |");
    println!("|---|---|---|---|---|");
    let mut json = serde_json::Map::new();
    json.insert(
        "detect_dead_link".into(),
        row(
            "detect dead link (freeze → status not connected)",
            &mut detect,
        ),
    );
    json.insert(
        "restore".into(),
        row(
            "restore (thaw → agent HTTP answers through the relay)",
            &mut restore,
        ),
    );
    json.insert("trials".into(), trials.into());
    json.insert("outage_after_detect_s".into(), outage.as_secs().into());
    println!("{}", serde_json::Value::Object(json));
}
