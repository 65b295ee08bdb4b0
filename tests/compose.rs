//! Status composed on read, against a real etcd: a Job's from its placement and the runtime
//! report of the node it is placed on, a Node's from its agent's `status` and `alive` keys, and
//! Events from controllers and agents alike. The placements, reports, alive keys and events are
//! written straight to etcd here, as the scheduler and the agents would write them.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use rift::api::kinds;
use rift::api::selector::LabelSelector;
use rift::api::{JobSpec, NodeSpec, Object, PoolSpec};
use rift::store::{keys, Store};
use serde_json::{json, Value};
use support::cli::{rift, rift_command, KillOnDrop};
use support::etcd::EtcdCluster;

async fn setup() -> (EtcdCluster, Store, Client) {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let client = cluster.client().await;
    (cluster, store, client)
}

async fn put(client: &mut Client, key: &str, value: Value) {
    client
        .put(key, serde_json::to_vec(&value).unwrap(), None)
        .await
        .unwrap();
}

async fn create_job(store: &Store, name: &str) {
    store
        .create(&Object::new(name, JobSpec::with_command(["true"])))
        .await
        .unwrap();
}

/// `rift get KIND NAME -o json`, parsed.
fn get_json(ep: &str, kind: &str, name: &str) -> Value {
    let out = rift(ep, &["get", kind, name, "-o", "json"]);
    assert!(out.ok, "get {kind} {name}: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// The `items` of `rift get KIND -o json`.
fn list_json(ep: &str, kind: &str) -> Vec<Value> {
    let out = rift(ep, &["get", kind, "-o", "json"]);
    assert!(out.ok, "get {kind}: {}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v["items"].as_array().unwrap().clone()
}

/// A job's status, seen through every reader: `rift get NAME`, `rift get` (list), the typed
/// `Store::get` and `Store::list`. All must agree; returns it as JSON.
async fn job_status(store: &Store, ep: &str, name: &str) -> Value {
    let one = get_json(ep, "job", name)["status"].clone();
    let listed = list_json(ep, "jobs")
        .into_iter()
        .find(|j| j["metadata"]["name"] == name)
        .expect("the job is listed")["status"]
        .clone();
    assert_eq!(one, listed, "get and list agree");
    let typed = store.get::<JobSpec>(name).await.unwrap().unwrap().status;
    assert_eq!(
        serde_json::to_value(&typed).unwrap(),
        one,
        "typed get agrees"
    );
    let (all, _) = store
        .list::<JobSpec>(&LabelSelector::everything())
        .await
        .unwrap();
    let typed_listed = all.into_iter().find(|j| j.name() == name).unwrap().status;
    assert_eq!(typed_listed, typed, "typed list agrees");
    one
}

#[tokio::test]
async fn job_status_is_composed_from_placement_and_the_report_of_its_epoch() {
    let (cluster, store, mut client) = setup().await;
    let ep = cluster.endpoints_csv();
    create_job(&store, "train").await;

    // No placement: Pending. A stale status key is not used for Jobs.
    put(
        &mut client,
        &keys::status("jobs", "train"),
        json!({"phase": "Succeeded"}),
    )
    .await;
    let s = job_status(&store, &ep, "train").await;
    assert_eq!(s["phase"], "Pending", "{s}");

    // The scheduler could not place it: Pending, with why.
    put(
        &mut client,
        &keys::placement("train"),
        json!({"pending": "0/3 nodes: 3 insufficient GPUs"}),
    )
    .await;
    let s = job_status(&store, &ep, "train").await;
    assert_eq!(s["phase"], "Pending", "{s}");
    assert_eq!(s["message"], "0/3 nodes: 3 insufficient GPUs", "{s}");
    let table = rift(&ep, &["get", "jobs", "-o", "wide"]);
    assert!(
        table.stdout.contains("0/3 nodes: 3 insufficient GPUs"),
        "{}",
        table.stdout
    );

    // Placed, no report yet: Scheduled on its node.
    put(
        &mut client,
        &keys::placement("train"),
        json!({"node": "n1", "gpus": [0, 1], "epoch": 2}),
    )
    .await;
    let s = job_status(&store, &ep, "train").await;
    assert_eq!(s["phase"], "Scheduled", "{s}");
    assert_eq!(s["node"], "n1");
    assert_eq!(s["gpus"], json!([0, 1]));
    assert_eq!(s["epoch"], 2);

    // A report from an older epoch (the job's previous binding) is ignored, and so is one
    // from a node the job is not placed on.
    put(
        &mut client,
        &keys::agent_job("n1", "train"),
        json!({"phase": "Failed", "epoch": 1, "exitCode": 9}),
    )
    .await;
    put(
        &mut client,
        &keys::agent_job("n2", "train"),
        json!({"phase": "Running", "epoch": 2}),
    )
    .await;
    let s = job_status(&store, &ep, "train").await;
    assert_eq!(s["phase"], "Scheduled", "{s}");
    assert!(s.get("exitCode").is_none(), "{s}");

    // The report of the current epoch decides.
    put(
        &mut client,
        &keys::agent_job("n1", "train"),
        json!({"phase": "Running", "epoch": 2, "pid": 4242, "attempts": 1}),
    )
    .await;
    let s = job_status(&store, &ep, "train").await;
    assert_eq!((&s["phase"], &s["pid"]), (&json!("Running"), &json!(4242)));
    put(
        &mut client,
        &keys::agent_job("n1", "train"),
        json!({"phase": "Failed", "epoch": 2, "exitCode": 3, "attempts": 1}),
    )
    .await;
    let s = job_status(&store, &ep, "train").await;
    assert_eq!(s["phase"], "Failed", "{s}");
    assert_eq!(s["exitCode"], 3, "{s}");
    assert_eq!(s["node"], "n1");

    let describe = rift(&ep, &["describe", "job", "train"]);
    assert!(describe.ok, "{}", describe.stderr);
    assert!(
        describe.stdout.contains("Phase:        Failed"),
        "{}",
        describe.stdout
    );
    assert!(
        describe.stdout.contains("Exit code:    3"),
        "{}",
        describe.stdout
    );

    // `rift status` counts jobs by their composed phase.
    let status = rift(&ep, &["status", "-o", "json"]);
    assert!(status.ok, "{}", status.stderr);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["jobs"]["Failed"], 1, "{status}");
    assert_eq!(status["jobs"]["Succeeded"], 0, "{status}");
}

#[tokio::test]
async fn node_is_ready_while_its_alive_key_lives() {
    let (cluster, store, mut client) = setup().await;
    let ep = cluster.endpoints_csv();
    store
        .create(&Object::new("n1", NodeSpec::default()))
        .await
        .unwrap();
    store
        .create(&Object::new("n2", NodeSpec::default()))
        .await
        .unwrap();

    // No agent has ever reported.
    let s = get_json(&ep, "node", "n1")["status"].clone();
    assert_eq!(s["conditions"][0]["type"], "Ready", "{s}");
    assert_eq!(s["conditions"][0]["status"], "False", "{s}");
    assert_eq!(s["conditions"][0]["reason"], "NeverRegistered", "{s}");

    // The agent reports (claiming Ready itself, which does not count) and keeps a lease.
    put(
        &mut client,
        &keys::agent_status("n1"),
        json!({
            "conditions": [{"type": "Ready", "status": "False", "reason": "AgentSaysSo"}],
            "capacity": {"cpus": 32, "gpus": [{"index": 0, "model": "H100"}]},
            "agentVersion": "9.9.9"
        }),
    )
    .await;
    // A stale node status key is not used.
    put(
        &mut client,
        &keys::status("nodes", "n1"),
        json!({"agentVersion": "stale"}),
    )
    .await;
    let lease = client.lease_grant(60, None).await.unwrap().id();
    client
        .put(
            keys::agent_alive("n1"),
            "alive",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();

    let n1 = get_json(&ep, "node", "n1");
    let s = &n1["status"];
    let ready: Vec<&Value> = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "Ready")
        .collect();
    assert_eq!(ready.len(), 1, "{s}");
    assert_eq!(ready[0]["status"], "True", "{s}");
    assert_eq!(ready[0]["reason"], "AgentAlive", "{s}");
    assert_eq!(s["agentVersion"], "9.9.9", "{s}");
    let typed = store.get::<NodeSpec>("n1").await.unwrap().unwrap();
    assert!(typed.status.as_ref().unwrap().is_ready());
    let table = rift(&ep, &["get", "nodes"]);
    let line = table.stdout.lines().find(|l| l.starts_with("n1 ")).unwrap();
    assert!(
        line.contains(" Ready ") && line.contains("1x H100"),
        "{line}"
    );
    let line = table.stdout.lines().find(|l| l.starts_with("n2 ")).unwrap();
    assert!(line.contains("NotReady"), "{line}");
    let status = rift(&ep, &["status", "-o", "json"]);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["nodes"]["ready"], 1, "{status}");
    assert_eq!(status["nodes"]["notReady"], json!(["n2"]), "{status}");

    // The agent dies: its lease goes, and with it the alive key.
    client.lease_revoke(lease).await.unwrap();
    let s = get_json(&ep, "node", "n1")["status"].clone();
    assert_eq!(s["conditions"][0]["status"], "False", "{s}");
    assert_eq!(s["conditions"][0]["reason"], "AgentLeaseExpired", "{s}");
    assert_eq!(s["capacity"]["cpus"], 32, "the last report is still shown");
    let (nodes, _) = store
        .list::<NodeSpec>(&LabelSelector::everything())
        .await
        .unwrap();
    assert!(nodes.iter().all(|n| !n.status.as_ref().unwrap().is_ready()));
    let table = rift(&ep, &["get", "nodes"]);
    let line = table.stdout.lines().find(|l| l.starts_with("n1 ")).unwrap();
    assert!(line.contains("NotReady"), "{line}");
}

#[tokio::test]
async fn other_kinds_keep_their_status_key_and_bad_keys_do_not_break_a_list() {
    let (cluster, store, mut client) = setup().await;
    let ep = cluster.endpoints_csv();
    let pool: PoolSpec =
        serde_json::from_value(json!({"template": {"spec": {"command": ["true"]}}, "replicas": 2}))
            .unwrap();
    store.create(&Object::new("p", pool)).await.unwrap();
    put(
        &mut client,
        &keys::status("pools", "p"),
        json!({"desired": 2, "running": 1}),
    )
    .await;
    create_job(&store, "good").await;
    // Not JSON, and a key below a further `/`: neither is an object.
    client
        .put("/rift/v1/jobs/broken", "{nope", None)
        .await
        .unwrap();
    put(
        &mut client,
        "/rift/v1/jobs/good/extra",
        json!({"metadata": {"name": "extra"}}),
    )
    .await;
    // An undecodable placement does not hide the job either.
    client
        .put(keys::placement("good"), "not json", None)
        .await
        .unwrap();

    let p = get_json(&ep, "pool", "p");
    assert_eq!(p["status"]["running"], 1, "{p}");

    let out = rift(&ep, &["get", "jobs", "-o", "json"]);
    assert!(out.ok, "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["good"]);
    assert_eq!(v["items"][0]["status"]["phase"], "Pending");
    assert!(out.stderr.contains("broken"), "warned: {}", out.stderr);
    let (jobs, _) = store
        .list::<JobSpec>(&LabelSelector::everything())
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let (values, _) = store
        .list_objects(kinds::by_kind("Job").unwrap(), &LabelSelector::everything())
        .await
        .unwrap();
    assert_eq!(values.len(), 1);
}

/// Lines a child prints, as they come.
fn lines_of(child: &mut std::process::Child) -> Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits up to 15 s for a line matching `pred`; panics with what was seen otherwise.
fn expect_line(rx: &Receiver<String>, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if pred(&line) {
                return line;
            }
            seen.push(line);
        }
    }
    panic!("no line {what}; saw {seen:?}");
}

fn phase_of(line: &str) -> Option<&str> {
    line.split_whitespace().nth(2)
}

#[tokio::test]
async fn get_jobs_watch_reprints_a_job_when_its_placement_or_report_changes() {
    let (cluster, store, mut client) = setup().await;
    let ep = cluster.endpoints_csv();
    create_job(&store, "sp").await;
    let mut watch = KillOnDrop(
        rift_command(&ep, &["get", "jobs", "-w"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rx = lines_of(&mut watch.0);
    expect_line(&rx, "header", |l| l.starts_with("NAME"));
    let first = expect_line(&rx, "for sp", |l| l.starts_with("sp "));
    assert_eq!(phase_of(&first), Some("Pending"), "{first}");

    put(
        &mut client,
        &keys::placement("sp"),
        json!({"node": "n1", "epoch": 1}),
    )
    .await;
    let line = expect_line(&rx, "with sp Scheduled", |l| l.starts_with("sp "));
    assert_eq!(phase_of(&line), Some("Scheduled"), "{line}");
    assert!(line.contains(" n1 "), "{line}");

    put(
        &mut client,
        &keys::agent_job("n1", "sp"),
        json!({"phase": "Running", "epoch": 1}),
    )
    .await;
    let line = expect_line(&rx, "with sp Running", |l| l.starts_with("sp "));
    assert_eq!(phase_of(&line), Some("Running"), "{line}");

    // A report from a node the job is not placed on changes nothing people see: no line.
    // The next real change comes through as the very next line for `sp`.
    put(
        &mut client,
        &keys::agent_job("n2", "sp"),
        json!({"phase": "Failed", "epoch": 1}),
    )
    .await;
    put(
        &mut client,
        &keys::agent_job("n1", "sp"),
        json!({"phase": "Succeeded", "epoch": 1, "exitCode": 0}),
    )
    .await;
    let line = expect_line(&rx, "with sp Succeeded", |l| l.starts_with("sp "));
    assert_eq!(phase_of(&line), Some("Succeeded"), "{line}");
}

#[tokio::test]
async fn get_nodes_watch_follows_the_alive_key() {
    let (cluster, store, mut client) = setup().await;
    let ep = cluster.endpoints_csv();
    store
        .create(&Object::new("n1", NodeSpec::default()))
        .await
        .unwrap();
    let mut watch = KillOnDrop(
        rift_command(&ep, &["get", "nodes", "-w"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rx = lines_of(&mut watch.0);
    let first = expect_line(&rx, "for n1", |l| l.starts_with("n1 "));
    assert!(first.contains("NotReady"), "{first}");
    let lease = client.lease_grant(60, None).await.unwrap().id();
    client
        .put(
            keys::agent_alive("n1"),
            "alive",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    let line = expect_line(&rx, "with n1 Ready", |l| l.starts_with("n1 "));
    assert!(line.contains(" Ready "), "{line}");
    client.lease_revoke(lease).await.unwrap();
    let line = expect_line(&rx, "with n1 NotReady", |l| l.starts_with("n1 "));
    assert!(line.contains("NotReady"), "{line}");
}

#[tokio::test]
async fn get_watch_drops_an_object_that_stops_matching_the_selector() {
    let (cluster, store, _client) = setup().await;
    let ep = cluster.endpoints_csv();
    let mut job = Object::new("a", JobSpec::with_command(["true"]));
    job.metadata.labels.insert("tier".into(), "x".into());
    store.create(&job).await.unwrap();
    let mut watch = KillOnDrop(
        rift_command(&ep, &["get", "jobs", "-w", "-l", "tier=x"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rx = lines_of(&mut watch.0);
    expect_line(&rx, "for a", |l| l.starts_with("a "));
    let mut changed = store.get::<JobSpec>("a").await.unwrap().unwrap();
    changed.metadata.labels.insert("tier".into(), "y".into());
    let changed = store.update(&changed).await.unwrap();
    let line = expect_line(&rx, "for a", |l| l.starts_with("a "));
    assert!(
        line.starts_with("a ") && line.ends_with("(no longer matches)"),
        "{line}"
    );
    // Further changes to it are not printed; a matching object still is.
    let mut again = changed.clone();
    again.spec.priority = 7;
    store.update(&again).await.unwrap();
    let mut b = Object::new("b", JobSpec::with_command(["true"]));
    b.metadata.labels.insert("tier".into(), "x".into());
    store.create(&b).await.unwrap();
    let line = expect_line(&rx, "for a or b", |l| {
        l.starts_with("a ") || l.starts_with("b ")
    });
    assert!(line.starts_with("b "), "{line}");
}

fn event(name: &str, kind: &str, object: &str, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "rift/v1",
        "kind": "Event",
        "metadata": {"name": name},
        "spec": {
            "involvedObject": {"kind": kind, "name": object},
            "reason": reason,
            "message": message,
            "type": "Warning",
            "count": 1,
            "firstSeen": "2026-01-01T00:00:00Z",
            "lastSeen": chrono::Utc::now(),
            "source": "agent/n1"
        }
    })
}

#[tokio::test]
async fn agent_events_show_in_get_events_and_describe() {
    let (cluster, store, mut client) = setup().await;
    let ep = cluster.endpoints_csv();
    create_job(&store, "train").await;
    let lease = client.lease_grant(3600, None).await.unwrap().id();
    client
        .put(
            keys::agent_event("n1", "train.oom"),
            serde_json::to_vec(&event(
                "train.oom",
                "Job",
                "train",
                "OOMKilled",
                "out of memory on GPU 0",
            ))
            .unwrap(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    put(
        &mut client,
        &keys::event("train.scheduled"),
        event(
            "train.scheduled",
            "Job",
            "train",
            "Scheduled",
            "placed on n1",
        ),
    )
    .await;

    let out = rift(&ep, &["get", "events"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("OOMKilled"), "{}", out.stdout);
    assert!(out.stdout.contains("Scheduled"), "{}", out.stdout);
    let names: Vec<String> = list_json(&ep, "ev")
        .iter()
        .map(|e| e["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["train.oom", "train.scheduled"]);
    let one = get_json(&ep, "event", "train.oom");
    assert_eq!(one["spec"]["reason"], "OOMKilled");

    let d = rift(&ep, &["describe", "job", "train"]);
    assert!(d.ok, "{}", d.stderr);
    let events = d.stdout.split("Events:").nth(1).unwrap();
    assert!(events.contains("out of memory on GPU 0"), "{}", d.stdout);
    assert!(events.contains("placed on n1"), "{}", d.stdout);

    // A watch of events sees a new agent event.
    let mut watch = KillOnDrop(
        rift_command(&ep, &["get", "ev", "-w"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rx = lines_of(&mut watch.0);
    expect_line(&rx, "with the existing event", |l| l.contains("OOMKilled"));
    put(
        &mut client,
        &keys::agent_event("n2", "n2.disk"),
        event("n2.disk", "Node", "n2", "DiskPressure", "disk 97% full"),
    )
    .await;
    expect_line(&rx, "with the new agent event", |l| {
        l.contains("DiskPressure")
    });
}

#[tokio::test]
async fn get_watch_warns_about_a_bad_read_and_keeps_watching() {
    let (cluster, store, mut client) = setup().await;
    let ep = cluster.endpoints_csv();
    let mut watch = KillOnDrop(
        rift_command(&ep, &["get", "jobs", "-w"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rx = lines_of(&mut watch.0);
    let stderr = watch.0.stderr.take().unwrap();
    let (tx, errors) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    expect_line(&rx, "header", |l| l.starts_with("NAME"));
    client
        .put("/rift/v1/jobs/bad", "{nope", None)
        .await
        .unwrap();
    expect_line(&errors, "warning about job/bad", |l| {
        l.starts_with("warning: cannot read job/bad")
    });
    create_job(&store, "good").await;
    put(
        &mut client,
        &keys::placement("good"),
        json!({"node": "n1", "epoch": 1}),
    )
    .await;
    let line = expect_line(&rx, "for good, Scheduled", |l| {
        l.starts_with("good ") && phase_of(l) == Some("Scheduled")
    });
    assert!(line.contains(" n1 "), "{line}");
    assert!(
        watch.0.try_wait().unwrap().is_none(),
        "the watch still runs"
    );
}
