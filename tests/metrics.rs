//! `/metrics` on real agents: every endpoint passes `promtool check metrics`, the leader
//! exports the cluster (scheduler, jobs per node, training, tunnels, etcd members) and a
//! follower does not, and the series follow a change of leader.

mod support;

use std::time::Duration;

use support::agent::TestAgent;
use support::cli::rift_stdin;
use support::etcd::EtcdCluster;
use support::http;
use support::promtool::check_metrics;

const OBJECTS: &str = r#"apiVersion: rift/v1
kind: Job
metadata: {name: sleeper}
spec:
  command: [sh, -c, 'sleep 600']
---
apiVersion: rift/v1
kind: Job
metadata: {name: too-big}
spec:
  command: ['true']
  resources: {gpus: 64}
---
apiVersion: rift/v1
kind: TrainingTarget
metadata: {name: hex8-2p}
spec:
  board: hex8
  players: 2
  selfplaySelector: {board: hex8}
  training:
    spec:
      command: ['true']
---
apiVersion: rift/v1
kind: Node
metadata: {name: nat-1}
spec:
  natBlocked: true
---
apiVersion: rift/v1
kind: Tunnel
metadata: {name: nat-1}
spec:
  node: nat-1
  relay: relay-1
  ports: [{remotePort: 18770, localPort: 8770}]
  sshUser: rift
  identityFile: /nonexistent/key
  hostKeys:
    relay-1: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJFUExBQ0UtTUUtd2l0aC1zc2gta2V5c2Nhbi1rZXkh placeholder
"#;

fn scrape(agent: &TestAgent) -> Option<String> {
    http::get(&agent.addr(), "/metrics", Duration::from_secs(5))
        .filter(|(code, _)| *code == 200)
        .map(|(_, body)| body)
}

#[tokio::test]
async fn every_metrics_endpoint_passes_promtool_and_only_the_leader_exports_the_cluster() {
    let etcd = EtcdCluster::single();
    let ep = etcd.endpoints_csv();
    let mut leader = TestAgent::start("ctl", &ep, &["--controllers", "--lease-ttl", "2"]);
    let worker = TestAgent::start("w1", &ep, &["--gpus", "H100x2"]);
    let out = rift_stdin(&ep, &["apply", "-f", "-"], OBJECTS);
    assert!(out.ok, "{}", out.stderr);

    let wanted = [
        "rift_scheduler_pending_jobs{node=\"ctl\"} 1",
        "rift_training_games{target=\"hex8-2p\",node=\"ctl\"} 0",
        "rift_tunnel_up{",
        "rift_jobs{job_node=\"\",phase=\"Pending\",node=\"ctl\"} 1",
    ];
    let start = std::time::Instant::now();
    let lead = loop {
        let text = scrape(&leader).unwrap_or_default();
        if wanted.iter().all(|w| text.contains(w)) {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the leader does not export {wanted:?} within 30 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let follow = scrape(&worker).expect("the worker answers /metrics");
    for (name, text) in [("leader", &lead), ("worker", &follow)] {
        if let Err(problems) = check_metrics(text) {
            panic!("promtool finds problems in the {name}'s metrics:\n{problems}\n{text}");
        }
    }
    assert!(lead.contains("rift_leader{node=\"ctl\"} 1"));
    assert!(
        lead.contains(
            "rift_tunnel_up{relay=\"\",tunnel=\"nat-1\",tunnel_node=\"nat-1\",node=\"ctl\"} 0"
        ),
        "{lead}"
    );
    assert!(lead.contains("# TYPE rift_scheduler_pass_seconds histogram"));
    assert!(
        lead.contains("rift_scheduler_binds_total{node=\"ctl\"} 1"),
        "{lead}"
    );
    assert!(follow.contains("rift_leader{node=\"w1\"} 0"));
    assert!(
        !follow.contains("rift_jobs{"),
        "a follower exports no cluster series:\n{follow}"
    );
    let running_on = |t: &str| t.contains("rift_agent_jobs{phase=\"Running\",node=\"w1\"} 1");
    assert!(
        running_on(&follow) || lead.contains("rift_agent_jobs{phase=\"Running\",node=\"ctl\"} 1"),
        "the sleeper runs on one of them"
    );
    assert!(follow.contains("# TYPE rift_agent_lease_renew_seconds histogram"));

    // The leader dies: its series go with it, and the cluster is counted by no one else.
    leader.kill();
    let follow = scrape(&worker).unwrap();
    assert!(!follow.contains("rift_scheduler_pending_jobs{"));
    check_metrics(&follow).unwrap();
    worker.kill_shims();
}
