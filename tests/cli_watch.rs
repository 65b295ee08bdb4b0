//! `rift get -w` and `rift status -w` as an operator runs them (the real binary, its output
//! piped), against a real etcd that is restarted, cut off and compacted underneath them.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rift::faults::LinkFault;
use serde_json::Value;
use support::cli::{rift, rift_command, rift_stdin, KillOnDrop};
use support::etcd::EtcdCluster;

fn job(name: &str, tier: &str) -> String {
    format!(
        "apiVersion: rift/v1\nkind: Job\nmetadata:\n  name: {name}\n  labels: {{tier: {tier}}}\nspec:\n  command: [\"true\"]\n"
    )
}

/// Starts `rift ARGS` against `ep` and streams its stdout lines.
fn spawn_lines(ep: &str, args: &[&str]) -> (KillOnDrop, Receiver<String>) {
    let mut child = KillOnDrop(
        rift_command(ep, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// A `get jobs -w -o json` stream folded into what it shows: name → object.
struct View {
    rx: Receiver<String>,
    jobs: BTreeMap<String, Value>,
}

impl View {
    fn drain(&mut self, wait: Duration) {
        loop {
            match self.rx.recv_timeout(wait) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line).unwrap();
                    let name = v["metadata"]["name"].as_str().unwrap().to_string();
                    if v["metadata"].get("deletionTimestamp").is_some() {
                        self.jobs.remove(&name);
                    } else {
                        self.jobs.insert(name, v);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => panic!("the watch exited"),
            }
        }
    }

    /// Waits until the view equals a fresh `rift get jobs -o json` (read straight from etcd).
    fn converges_with(&mut self, direct: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.drain(Duration::from_millis(300));
            let fresh = rift(direct, &["get", "jobs", "-o", "json"]);
            assert!(fresh.ok, "{}", fresh.stderr);
            let fresh: Value = serde_json::from_str(&fresh.stdout).unwrap();
            let fresh: BTreeMap<String, Value> = fresh["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| {
                    (
                        j["metadata"]["name"].as_str().unwrap().to_string(),
                        j.clone(),
                    )
                })
                .collect();
            if fresh == self.jobs {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the watch shows {:?}, a fresh get {:?}",
                self.jobs.keys().collect::<Vec<_>>(),
                fresh.keys().collect::<Vec<_>>()
            );
        }
    }
}

/// After an etcd restart, and after a cut link during which the revisions it needed were
/// compacted away, a running watch shows exactly what a fresh `rift get` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_etcd_restart_or_a_compacted_gap_the_watch_equals_a_fresh_get() {
    let mut cluster = EtcdCluster::single();
    let direct = cluster.endpoints_csv();
    let proxy = support::relay::relay_to(cluster.client_addr(0)).await;
    let via_proxy = cluster.url_via(proxy.listen_addr());
    for name in ["job-a", "job-b"] {
        assert!(rift_stdin(&direct, &["apply", "-f", "-"], &job(name, "x")).ok);
    }
    let (_watch, rx) = spawn_lines(&via_proxy, &["get", "jobs", "-w", "-o", "json"]);
    let mut view = View {
        rx,
        jobs: BTreeMap::new(),
    };
    view.converges_with(&direct, "the initial list");

    // 1. A real restart of the etcd member; changes after it comes back.
    cluster.stop(0);
    std::thread::sleep(Duration::from_secs(1));
    cluster.start(0);
    assert!(rift_stdin(&direct, &["apply", "-f", "-"], &job("job-c", "x")).ok);
    assert!(rift(&direct, &["delete", "job", "job-a"]).ok);
    assert!(rift_stdin(&direct, &["apply", "-f", "-"], &job("job-b", "y")).ok);
    view.converges_with(&direct, "after an etcd restart");

    // 2. The link to the watch is cut; meanwhile objects change and etcd compacts away the
    // revisions the watch would resume from.
    proxy.set(LinkFault::Cut);
    assert!(rift_stdin(&direct, &["apply", "-f", "-"], &job("job-d", "x")).ok);
    assert!(rift(&direct, &["delete", "job", "job-c"]).ok);
    assert!(rift_stdin(&direct, &["apply", "-f", "-"], &job("job-b", "z")).ok);
    cluster.compact().await;
    std::thread::sleep(Duration::from_secs(2));
    proxy.set(LinkFault::None);
    view.converges_with(&direct, "after a cut link and a compaction");
    assert_eq!(
        view.jobs.keys().collect::<Vec<_>>(),
        ["job-b", "job-d"],
        "and that is the truth"
    );
    assert_eq!(view.jobs["job-b"]["metadata"]["labels"]["tier"], "z");
}

/// Rows printed after the header line up under it; an idle cluster prints nothing more.
#[test]
fn a_piped_table_watch_appends_aligned_rows_only_for_changes() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    assert!(rift_stdin(&ep, &["apply", "-f", "-"], &job("job-a", "x")).ok);
    let (_watch, rx) = spawn_lines(&ep, &["get", "jobs", "-w"]);
    let header = rx.recv_timeout(Duration::from_secs(10)).expect("a header");
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the first row");
    assert!(first.starts_with("job-a "), "{first}");
    assert!(
        rx.recv_timeout(Duration::from_secs(3)).is_err(),
        "nothing changed, nothing printed"
    );
    assert!(rift_stdin(&ep, &["apply", "-f", "-"], &job("job-b", "x")).ok);
    assert!(rift(&ep, &["delete", "job", "job-a"]).ok);
    let mut later = Vec::new();
    while later.len() < 2 {
        later.push(
            rx.recv_timeout(Duration::from_secs(10))
                .expect("a row per change"),
        );
    }
    for line in [&first, &later[0], &later[1]] {
        for (column, value) in [("PHASE", "Pending"), ("GPUS", "0")] {
            assert_eq!(
                header.find(column),
                line.find(&format!(" {value} ")).map(|i| i + 1),
                "{column} lines up:\n{header}\n{line}"
            );
        }
    }
    assert!(later[0].starts_with("job-b "), "{later:?}");
    assert!(
        later[1].starts_with("job-a ") && later[1].ends_with("(deleted)"),
        "{later:?}"
    );
}

/// `rift status -w` piped: one view, then another only when something shown changed.
#[test]
fn a_piped_status_watch_prints_again_only_when_the_view_changes() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let (_watch, rx) = spawn_lines(&ep, &["status", "-w"]);
    let mut lines = Vec::new();
    let quiet_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < quiet_until {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    let views = |lines: &[String]| lines.iter().filter(|l| l.starts_with("Leader:")).count();
    assert_eq!(
        views(&lines),
        1,
        "idle: one view in 5 s:\n{}",
        lines.join("\n")
    );
    assert!(rift_stdin(&ep, &["apply", "-f", "-"], &job("job-a", "x")).ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l| l.contains("Pending 1")) && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("Pending 1")),
        "{}",
        lines.join("\n")
    );
    assert_eq!(views(&lines), 2, "{}", lines.join("\n"));
}
