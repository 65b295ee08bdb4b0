//! Typed objects for the dashboard's unit tests, built the way etcd hands them over (JSON).

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::api::{Job, Node, TrainingTarget, Tunnel};

pub fn node(name: &str, ready: bool, gpus: u32) -> Node {
    let gpu_list: Vec<_> = (0..gpus)
        .map(|i| json!({"index": i, "model": "H100", "memoryBytes": 85_899_345_920u64}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "rift/v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"gpu": "h100"}},
        "spec": {"addresses": ["127.0.0.1"]},
        "status": {
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                            "reason": if ready { "AgentAlive" } else { "AgentLeaseExpired" }}],
            "capacity": {"cpus": 64, "memoryBytes": 1u64 << 38, "gpus": gpu_list},
            "usage": {"cpuPercent": 12.5, "memoryPercent": 40.0},
            "loadScore": 0.2
        }
    }))
    .expect("a valid node")
}

/// A job in `phase`, on `node` with `gpus` when given.
pub fn job(name: &str, phase: &str, node: Option<&str>, gpus: &[u32]) -> Job {
    let mut status = json!({"phase": phase, "gpus": gpus});
    if let Some(n) = node {
        status["node"] = json!(n);
    }
    if phase == "Pending" {
        status["message"] = json!("no node has 8 free GPUs");
    }
    serde_json::from_value(json!({
        "apiVersion": "rift/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "demo"},
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"type": "selfplay", "command": ["sh", "-c", "true"], "resources": {"gpus": gpus.len()}},
        "status": status
    }))
    .expect("a valid job")
}

/// A TrainingTarget with `games` and runs `(generation, win rate, promoted)`.
pub fn target(
    name: &str,
    games: u64,
    runs: &[(u64, Option<f64>, bool)],
    at: DateTime<Utc>,
) -> TrainingTarget {
    let history: Vec<_> = runs
        .iter()
        .map(|&(generation, win_rate, promoted)| {
            json!({
                "generation": generation, "job": format!("{name}-train-{generation}"),
                "winRate": win_rate, "promoted": promoted,
                "finishedAt": at + chrono::Duration::minutes(generation as i64),
                "outcome": if promoted { "promoted" } else { "rejected" }
            })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "rift/v1", "kind": "TrainingTarget",
        "metadata": {"name": name},
        "spec": {
            "board": "hex8", "players": 2, "selfplaySelector": {"board": "hex8"},
            "firstTrainingGames": 200, "retrainGames": 200,
            "training": {"spec": {"command": ["true"]}},
            "evaluation": {"template": {"spec": {"command": ["true"]}}, "promoteWinRate": 0.55}
        },
        "status": {
            "totalGames": games, "gamesSinceLastTraining": games % 200,
            "trainingGeneration": runs.len(), "currentModel": "hex8-2p-candidate",
            "history": history
        }
    }))
    .expect("a valid training target")
}

pub fn tunnel(name: &str, node: &str, connected: bool) -> Tunnel {
    serde_json::from_value(json!({
        "apiVersion": "rift/v1", "kind": "Tunnel",
        "metadata": {"name": name},
        "spec": {"node": node, "relay": "relay-1", "ports": [{"remotePort": 18770, "localPort": 8770}],
                 "sshUser": "rift", "identityFile": "/etc/rift/tunnel_ed25519"},
        "status": {"connected": connected, "relay": "relay-1", "restarts": 2,
                   "lastError": if connected { "" } else { "ssh exited: connection refused" }}
    }))
    .expect("a valid tunnel")
}
