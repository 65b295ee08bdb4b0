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
kind: VoterSet
metadata: {name: default}
spec: {voters: [ctl]}
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
    let out = rift_stdin(&ep, &["apply", "-f", "-"], OBJECTS);
    assert!(out.ok, "{}", out.stderr);
    // A target that has promoted once (as the training controller records it), so its
    // win-rate and promotion series exist.
    let status = serde_json::json!({
        "trainingGeneration": 1, "currentModel": "m1",
        "history": [{"generation": 1, "job": "hex8-2p-train-1", "winRate": 0.6, "promoted": true,
                     "finishedAt": chrono::Utc::now()}]
    });
    etcd.client()
        .await
        .put(
            "/rift/v1/status/trainingtargets/hex8-2p",
            status.to_string(),
            None,
        )
        .await
        .unwrap();
    // The agents start only now: a training controller already running could write the
    // target's status from its own older view over the one just put (only it writes that
    // status in a real cluster).
    let mut leader = TestAgent::start("ctl", &ep, &["--controllers", "--lease-ttl", "2"]);
    let worker = TestAgent::start("w1", &ep, &["--gpus", "H100x2"]);

    let wanted = [
        "rift_scheduler_pending_jobs{node=\"ctl\"} 1",
        "rift_training_games{target=\"hex8-2p\",node=\"ctl\"} 0",
        "rift_tunnel_up{",
        "rift_etcd_quorum{node=\"ctl\"} 1",
        "rift_training_last_win_rate{target=\"hex8-2p\",node=\"ctl\"} 0.6",
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

    // What config/ builds on is what the agents export.
    for name in referenced_metrics() {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        let exported = lead.contains(&format!("# TYPE {family} "))
            || follow.contains(&format!("# TYPE {family} "))
            || NVML_ONLY.contains(&family);
        assert!(exported, "config/ uses {name}, which no agent exports");
    }

    // The leader dies: its series go with it, and the cluster is counted by no one else.
    leader.kill();
    let follow = scrape(&worker).unwrap();
    assert!(!follow.contains("rift_scheduler_pending_jobs{"));
    check_metrics(&follow).unwrap();
    worker.kill_shims();
}

/// Series only a node whose GPUs NVML measures exports (covered by unit tests; CI has no GPU).
const NVML_ONLY: [&str; 3] = [
    "rift_gpu_utilization_ratio",
    "rift_gpu_memory_used_ratio",
    "rift_gpu_memory_bytes",
];

fn config_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Every PromQL expression of the Grafana dashboard.
fn grafana_exprs() -> Vec<String> {
    let dash: serde_json::Value = serde_json::from_str(&config_file("grafana-dashboard.json"))
        .expect("the Grafana dashboard is JSON");
    dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

/// Every `rift_*` name the Grafana dashboard and the alert rules use.
fn referenced_metrics() -> std::collections::BTreeSet<String> {
    let text = grafana_exprs().join(" ") + &config_file("prometheus-rules.example.yml");
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("rift_") {
        let start = i + at;
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[test]
fn the_prometheus_example_and_every_grafana_query_parse() {
    let dir = env!("CARGO_MANIFEST_DIR");
    // promtool checks that the files a config names exist: the example's (the scrape token
    // and the cluster CA under /etc/prometheus/) are put in a scratch directory beside a copy.
    let scratch = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(format!("{dir}/config/prometheus.example.yml")).unwrap();
    let example = example.replace(
        "/etc/prometheus/",
        &format!("{}/", scratch.path().display()),
    );
    for name in ["rift-scrape-token", "rift-ca.crt"] {
        assert!(example.contains(name), "the example names {name}");
        std::fs::write(scratch.path().join(name), "placeholder\n").unwrap();
    }
    std::fs::copy(
        format!("{dir}/config/prometheus-rules.example.yml"),
        scratch.path().join("prometheus-rules.example.yml"),
    )
    .unwrap();
    let config = scratch.path().join("prometheus.example.yml");
    std::fs::write(&config, example).unwrap();
    let check = std::process::Command::new(support::promtool::promtool_bin())
        .args(["check", "config", &config.display().to_string()])
        .output()
        .expect("promtool runs (scripts/install-deps.sh installs it)");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // promtool parses PromQL in rule files: every dashboard query as a recording rule.
    let rules = tempfile::NamedTempFile::new().unwrap();
    let body: String = grafana_exprs()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "      - record: grafana_query_{i}\n        expr: {}\n",
                serde_json::to_string(e).unwrap()
            )
        })
        .collect();
    std::fs::write(
        rules.path(),
        format!("groups:\n  - name: grafana\n    rules:\n{body}"),
    )
    .unwrap();
    let check = std::process::Command::new(support::promtool::promtool_bin())
        .args(["check", "rules"])
        .arg(rules.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "a Grafana query does not parse:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
