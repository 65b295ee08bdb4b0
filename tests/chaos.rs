//! The fault campaign, short: every `rift bench chaos` scenario run small (a few faults, a few
//! jobs, lease TTL 2 s) through the real binary, as a user runs it. Each starts its own etcd,
//! real agents, real shims and real job processes, injects its fault, and the invariant
//! checker judges the run; the test asserts that the JSON line reports the faults injected
//! and no violation, and shows the scenario's whole table when there is one.
//!
//! The full-scale figures are in RELIABILITY.md (same commands, default sizes).

mod support;

use std::process::Stdio;

use serde_json::Value;
use support::cli::rift_bin;

/// Runs `rift bench chaos SCENARIO --lease-ttl 2 FLAGS`; returns the JSON line.
fn chaos(scenario: &str, flags: &[&str]) -> Value {
    let out = std::process::Command::new(rift_bin())
        .args([
            "bench",
            "chaos",
            scenario,
            "--lease-ttl",
            "2",
            "--timeout",
            "120",
        ])
        .args(flags)
        .env_remove("RIFT_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("the rift binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json: Value = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!("no JSON line from rift bench chaos {scenario}:\n{stdout}\n{stderr}")
        });
    assert!(
        json["faults"].as_u64().unwrap_or(0) > 0,
        "no fault was injected:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        json["violations"], 0,
        "rift bench chaos {scenario} found broken promises:\n{stdout}\n{stderr}"
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    json
}

#[test]
fn killing_the_leader_again_and_again_loses_duplicates_and_strands_no_job() {
    let j = chaos(
        "leader-kills",
        &["--faults", "4", "--jobs", "40", "--nodes", "5"],
    );
    assert_eq!(
        j["recovery"]["count"], 4,
        "every kill's batch was bound: {j}"
    );
}

#[test]
fn a_node_cut_off_and_restored_never_runs_a_job_twice_at_once_nor_loses_one() {
    chaos("node-cut", &["--faults", "3", "--jobs", "1", "--seed", "1"]);
}

#[test]
fn a_node_cut_off_in_its_own_network_namespace_never_runs_a_job_twice_at_once() {
    if let Err(e) = rift::faults::netns::available() {
        eprintln!(
            "SKIPPED a_node_cut_off_in_its_own_network_namespace_never_runs_a_job_twice_at_once: {e}"
        );
        return;
    }
    chaos(
        "node-cut",
        &[
            "--link", "netns", "--faults", "2", "--jobs", "1", "--seed", "3",
        ],
    );
}

#[test]
fn losing_etcd_quorum_kills_no_job_and_scheduling_comes_back() {
    let j = chaos("quorum-loss", &["--seconds", "10", "--jobs", "1"]);
    assert_eq!(j["scheduling_resumed"]["count"], 1, "{j}");
}

#[test]
fn killing_an_agent_every_second_restarts_no_job() {
    chaos("agent-kills", &["--seconds", "10", "--jobs", "10"]);
}

#[test]
fn killing_shims_never_leaves_a_job_running_twice_or_not_at_all() {
    chaos("shim-kills", &["--faults", "3", "--jobs", "2"]);
}

#[test]
fn restarting_every_agent_in_turn_restarts_no_job() {
    chaos("rolling-upgrade", &["--jobs", "1"]);
}

#[test]
fn a_job_rewritten_with_a_field_this_version_does_not_know_is_never_killed() {
    chaos("unknown-field", &["--seconds", "10", "--jobs", "2"]);
}
