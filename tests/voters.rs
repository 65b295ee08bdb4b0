//! Voter membership end to end: real etcd members started and supervised by real agents, one
//! "machine" per loopback address, the leader's voters controller converging the member list
//! toward the VoterSet.

mod support;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::agent::{eventually, process_alive};
use support::cli::{rift, rift_stdin};
use support::voters::{
    apply_voters, bootstrap_one, grow_to_three, local_read, member_client, voter_set,
    wait_converged, wait_node_offers_etcd, QuorumObserver, VoterNode, SERIAL,
};

const CONVERGE: Duration = Duration::from_secs(90);

/// a (bootstrapped) + b, c joined through a, grown to three voters; `before` written first.
async fn three_voters() -> (VoterNode, VoterNode, VoterNode) {
    let a = bootstrap_one("a").await;
    let (b, c) = grow_to_three(&a, CONVERGE).await;
    (a, b, c)
}

fn all_urls(nodes: &[&VoterNode]) -> Vec<String> {
    nodes.iter().map(|n| n.client_url.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_from_one_to_three_voters_keeps_quorum_and_data() {
    let _serial = SERIAL.lock().await;
    let a = bootstrap_one("a").await;
    let mut c = member_client(&a.client_url).await.unwrap();
    c.put("/test/before", "written-with-one-voter", None)
        .await
        .unwrap();
    let b = VoterNode::start("b", "127.0.0.2", Some(&a.client_url), false);
    let cc = VoterNode::start("c", "127.0.0.3", Some(&a.client_url), false);
    wait_node_offers_etcd(&a.client_url, "b").await;
    wait_node_offers_etcd(&a.client_url, "c").await;

    let observer = QuorumObserver::start(vec![a.client_url.clone()]);
    apply_voters(&a.client_url, &["a", "b", "c"]);
    let vs = wait_converged(&a.client_url, &["a", "b", "c"], CONVERGE).await;
    let (observations, violations) = observer.finish().await;
    assert!(observations > 3, "the observer saw the change happen");
    assert!(violations.is_empty(), "quorum lost at: {violations:?}");
    assert_eq!(vs["status"]["quorum"], true);

    for node in [&a, &b, &cc] {
        let value = eventually(
            Duration::from_secs(20),
            &format!("{} has the data written before it joined", node.ip),
            || async { local_read(&node.client_url, "/test/before").await },
        )
        .await;
        assert_eq!(value, "written-with-one-voter");
    }
    // The agents of b and c found every voter's client URL.
    let urls = all_urls(&[&a, &b, &cc]);
    eventually(
        Duration::from_secs(20),
        "b saved every voter's client URL",
        || async {
            let saved = std::fs::read_to_string(b.agent.state.join("endpoints.json")).ok()?;
            urls.iter().all(|u| saved.contains(u)).then_some(())
        },
    )
    .await;
    // `rift status` shows the quorum.
    let status = rift(&a.client_url, &["status", "-o", "json"]);
    let s: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(s["voters"]["quorum"], true);
    assert_eq!(s["voters"]["members"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_voter_converges_without_losing_quorum() {
    let _serial = SERIAL.lock().await;
    let (a, b, c) = three_voters().await;
    let _d = VoterNode::start("d", "127.0.0.4", Some(&a.client_url), false);
    wait_node_offers_etcd(&a.client_url, "d").await;

    let observer = QuorumObserver::start(all_urls(&[&a, &b]));
    apply_voters(&a.client_url, &["a", "b", "d"]);
    wait_converged(&a.client_url, &["a", "b", "d"], CONVERGE).await;
    let (observations, violations) = observer.finish().await;
    assert!(observations > 3);
    assert!(violations.is_empty(), "quorum lost at: {violations:?}");

    // c's agent saw it was removed: its member stopped and its data is gone.
    eventually(
        Duration::from_secs(30),
        "c's member stopped and its data cleared",
        || async {
            let stopped = c.etcd_pid().is_none_or(|p| !process_alive(p));
            (stopped && !c.has_etcd_data()).then_some(())
        },
    )
    .await;
    let mut describe = String::new();
    for _ in 0..100 {
        describe = rift(&a.client_url, &["describe", "voterset", "default"]).stdout;
        if describe.contains("voter_removed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !describe.contains("voter_removed") {
        let logs: Vec<String> = [&a, &b, &c, &_d]
            .iter()
            .map(|n| {
                let log = n.agent.log();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        l.contains("etcd_member") || l.contains("WARN") || l.contains("ERROR")
                    })
                    .collect();
                format!("--- {}:\n{}", n.agent.name, lines.join("\n"))
            })
            .collect();
        panic!("no voter_removed event:\n{describe}\n{}", logs.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_etcd_member_is_restarted_by_its_agent() {
    let _serial = SERIAL.lock().await;
    let a = bootstrap_one("a").await;
    let pid = a.etcd_pid().expect("the agent recorded its member's pid");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let new_pid = eventually(
        Duration::from_secs(30),
        "the agent starts its member again",
        || async {
            let p = a.etcd_pid()?;
            (p != pid && process_alive(p)).then_some(p)
        },
    )
    .await;
    assert_ne!(new_pid, pid);
    wait_converged(&a.client_url, &["a"], Duration::from_secs(30)).await;
    // The agent reports the restart on its next pass after etcd answers again, which can come
    // after the voters controller already sees the member healthy.
    eventually(
        Duration::from_secs(30),
        "node a reports its member Running after one restart or more",
        || async {
            let node = rift(&a.client_url, &["get", "node", "a", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_str(&node.stdout).ok()?;
            let etcd = &v["status"]["etcd"];
            (etcd["restarts"].as_u64()? >= 1 && etcd["state"] == "Running").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_adopts_its_running_member() {
    let _serial = SERIAL.lock().await;
    let mut a = bootstrap_one("a").await;
    let pid = a.etcd_pid().unwrap();
    a.agent.restart();
    // Give the new agent time to look at its member more than once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_converged(&a.client_url, &["a"], Duration::from_secs(30)).await;
    assert_eq!(a.etcd_pid(), Some(pid), "the same etcd process");
    assert!(process_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_voter_is_removed_and_replaced() {
    let _serial = SERIAL.lock().await;
    let (a, b, c) = three_voters().await;
    // c's machine dies: its agent and its etcd member.
    drop(c);
    let d = VoterNode::start("d", "127.0.0.4", Some(&a.client_url), false);
    wait_node_offers_etcd(&a.client_url, "d").await;
    apply_voters(&a.client_url, &["a", "b", "d"]);
    wait_converged(&a.client_url, &["a", "b", "d"], CONVERGE).await;
    eventually(
        Duration::from_secs(20),
        "a `c removed: dead` event",
        || async {
            let describe = rift(&a.client_url, &["describe", "voterset", "default"]);
            describe.stdout.contains("c removed: dead").then_some(())
        },
    )
    .await;
    drop((b, d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_voter_sets_are_blocked_and_change_nothing() {
    let _serial = SERIAL.lock().await;
    let a = bootstrap_one("a").await;
    // A NAT-blocked node with a live agent, and a node with no agent (never Ready).
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "natBlocked: true\n").unwrap();
    let config_path = config.path().display().to_string();
    let _nat = VoterNode::start_with(
        "nat",
        "127.0.0.2",
        Some(&a.client_url),
        &["--config", &config_path],
    );
    let node = "apiVersion: rift/v1\nkind: Node\nmetadata: {name: ghost}\nspec: {}\n";
    assert!(rift_stdin(&a.client_url, &["apply", "-f", "-"], node).ok);
    eventually(Duration::from_secs(30), "nat registered", || async {
        rift(&a.client_url, &["get", "node", "nat"])
            .ok
            .then_some(())
    })
    .await;

    let members_before = member_ids(&a.client_url).await;
    for (voters, reason) in [
        (vec!["a", "nat"], "nat is NAT-blocked"),
        (vec!["a", "ghost"], "ghost is not Ready"),
        (vec!["a", "nobody"], "nobody does not exist"),
    ] {
        apply_voters(&a.client_url, &voters);
        let vs = eventually(Duration::from_secs(20), reason, || async {
            let vs = voter_set(&a.client_url)?;
            let msg = vs["status"]["message"].as_str()?.to_string();
            (vs["status"]["phase"] == "Blocked" && msg.contains(reason)).then_some(vs)
        })
        .await;
        assert_eq!(vs["status"]["quorum"], true);
        assert_eq!(member_ids(&a.client_url).await, members_before);
    }
    // Back to a safe set: converged again, nothing was touched.
    apply_voters(&a.client_url, &["a"]);
    wait_converged(&a.client_url, &["a"], Duration::from_secs(20)).await;
    assert_eq!(member_ids(&a.client_url).await, members_before);
}

async fn member_ids(url: &str) -> Vec<u64> {
    let mut c = member_client(url).await.unwrap();
    let mut ids: Vec<u64> = c
        .member_list()
        .await
        .unwrap()
        .members()
        .iter()
        .map(|m| m.id())
        .collect();
    ids.sort();
    ids
}
