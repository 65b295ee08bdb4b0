//! Disk and placement with real agents measuring their real disk: a node above the
//! ArtifactStore's high watermark reports `DiskPressure` and gets no new job until it is below
//! the low one; a job whose inputs do not fit a node's free disk is placed on a node where they
//! fit — here a hollow node (`rift sim`, a simulated 4 TiB disk), since the real agents share
//! one filesystem and so one free figure — or waits with the reason when none has room.
//!
//! The disk is the real filesystem under the agents' state directories. Rather than filling it
//! (the machine is shared), the test moves the watermarks across its real usage: `highPercent:
//! 1` puts any disk in use above it, `highPercent: 99, lowPercent: 98` puts it below (the test
//! checks the real usage lies between).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rift::api::meta::ConditionStatus;
use rift::api::node::DISK_PRESSURE;
use std::process::{Child, Command, Stdio};

use rift::api::{ArtifactSpec, Digest, JobInput, JobPhase, JobSpec, Node, NodeSpec, Object};
use sha2::Digest as _;
use support::agent::eventually;
use support::cli::rift_stdin;
use support::cluster::{create_job, sh, Cluster};

/// A `rift sim` process, killed on drop.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pressure(node: &Node) -> Option<ConditionStatus> {
    node.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == DISK_PRESSURE)
        .map(|c| c.status)
}

async fn wait_pressure(cluster: &Cluster, node: &str, want: ConditionStatus) -> Node {
    eventually(
        Duration::from_secs(30),
        &format!("{node} DiskPressure={want:?}"),
        || async {
            cluster
                .store
                .get::<NodeSpec>(node)
                .await
                .unwrap()
                .filter(|n| pressure(n) == Some(want))
        },
    )
    .await
}

/// Waits until Job `name` is Pending with a why-not containing `words`.
/// Records an Artifact named after `bytes`' digest that claims `size` bytes (only its record:
/// placement reads sizes, and these jobs never get as far as staging).
async fn record_artifact(cluster: &Cluster, bytes: &[u8], size: u64) -> String {
    let digest = Digest::from_bytes(sha2::Sha256::digest(bytes).into());
    let spec = ArtifactSpec {
        digest: digest.to_string(),
        size,
        format: None,
        producer: None,
        parents: vec![],
        counts: BTreeMap::new(),
    };
    cluster
        .store
        .create(&Object::new(digest.artifact_name(), spec))
        .await
        .unwrap();
    digest.artifact_name()
}

async fn wait_why_not(cluster: &Cluster, name: &str, words: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("{name} pending: {words}"),
        || async {
            cluster
                .job(name)
                .await
                .and_then(|j| j.status)
                .filter(|s| s.phase == JobPhase::Pending && s.message.contains(words))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_past_its_watermark_gets_no_new_jobs_and_inputs_land_where_they_fit() {
    let cluster = Cluster::start().await;
    let ep = cluster.etcd.endpoints_csv();
    let _w1 = cluster.worker("w1", &[]);
    let objects = tempfile::tempdir().unwrap();
    let store_yaml = |high: u8, low: u8| {
        format!(
            "apiVersion: rift/v1\nkind: ArtifactStore\nmetadata: {{name: default}}\nspec:\n  url: file://{}\n  cache: {{highPercent: {high}, lowPercent: {low}}}\n",
            objects.path().display()
        )
    };
    cluster.apply(&store_yaml(99, 98));
    let node = wait_pressure(&cluster, "w1", ConditionStatus::False).await;
    let status = node.status.unwrap();
    let (used, disk_total) = (status.usage.disk_percent, status.capacity.disk_bytes);
    assert!(
        (1.0..98.0).contains(&used),
        "this test moves the watermarks across the real disk's usage, {used}%: it needs 1-98%"
    );

    // Above the high watermark: DiskPressure, and a new job waits with the reason.
    cluster.apply(&store_yaml(1, 0));
    wait_pressure(&cluster, "w1", ConditionStatus::True).await;
    let nodes = support::cli::rift(&ep, &["get", "nodes"]);
    let w1 = nodes
        .stdout
        .lines()
        .find(|l| l.starts_with("w1 "))
        .unwrap_or_default();
    assert!(w1.contains("Ready,DiskPressure"), "{}", nodes.stdout);
    create_job(&cluster.store, "blocked", sh("sleep 60"), |_| {}).await;
    wait_why_not(&cluster, "blocked", "1 disk pressure").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = cluster.job("blocked").await.unwrap();
    assert_eq!(
        j.status.unwrap().phase,
        JobPhase::Pending,
        "placed under pressure"
    );

    // Between the watermarks the condition holds (hysteresis): low 0 is never crossed; then
    // below the low one it clears and the job runs.
    cluster.apply(&store_yaml(99, 98));
    wait_pressure(&cluster, "w1", ConditionStatus::False).await;
    cluster.wait_running_on("blocked", "w1", 30).await;

    // A job whose inputs exceed the node's free disk is not placed there; one whose inputs
    // fit is. The huge artifact is a record only (a petabyte of bytes is not to be had here).
    let free = eventually(Duration::from_secs(10), "w1's free disk", || async {
        cluster
            .store
            .get::<NodeSpec>("w1")
            .await
            .unwrap()
            .and_then(|n| n.status?.usage.disk_available_bytes)
    })
    .await;
    let huge_name =
        record_artifact(&cluster, b"a petabyte", free.saturating_mul(2).max(1 << 50)).await;
    let small = tempfile::tempdir().unwrap();
    let file = small.path().join("small.npz");
    std::fs::write(&file, b"small input").unwrap();
    let r = support::cli::rift(&ep, &["artifact", "push", file.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    let small_digest: [u8; 32] = sha2::Sha256::digest(b"small input").into();
    let small_name = Digest::from_bytes(small_digest).artifact_name();

    create_job(&cluster.store, "too-big", sh("sleep 60"), |s| {
        s.inputs = vec![JobInput::of("games", [huge_name.clone()])];
    })
    .await;
    create_job(&cluster.store, "fits", sh("sleep 60"), |s| {
        s.inputs = vec![JobInput::of("games", [small_name.clone()])];
    })
    .await;
    wait_why_not(&cluster, "too-big", "1 insufficient disk for inputs").await;

    // Inputs larger than both real nodes' free disk, smaller than the hollow node's: the job
    // lands on the hollow node.
    let state = tempfile::tempdir().unwrap();
    let _sim = Sim(Command::new(support::cli::rift_bin())
        .args([
            "sim",
            "--nodes",
            "1",
            "--prefix",
            "h",
            "--job-duration",
            "60s",
        ])
        .args(["--node-lease-ttl", "2", "--state-dir"])
        .arg(state.path())
        .env("RIFT_ENDPOINTS", &ep)
        .env("RIFT_CONFIG", cluster.etcd.admin_conf())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let hollow_free = rift::sim::hollow::capacity(0).disk_bytes;
    // More than the real disk holds at all, so no free figure on it can reach it.
    let mid = disk_total.saturating_add(1 << 30);
    assert!(
        mid < hollow_free,
        "the real disk ({disk_total} bytes) is larger than a hollow node's"
    );
    let mid_name = record_artifact(&cluster, b"between the nodes", mid).await;
    let mut spec = JobSpec::with_command(["selfplay"]);
    spec.inputs = vec![JobInput::of("games", [mid_name.clone()])];
    cluster
        .store
        .create(&Object::new("roomy", spec))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "roomy placed on the hollow node",
        || async {
            cluster
                .job("roomy")
                .await
                .and_then(|j| j.status)
                .filter(|s| s.node.as_deref() == Some(rift::sim::node_name("h", 0).as_str()))
        },
    )
    .await;
    eventually(Duration::from_secs(30), "fits placed on w1", || async {
        cluster
            .job("fits")
            .await
            .and_then(|j| j.status)
            .filter(|s| s.node.as_deref() == Some("w1"))
    })
    .await;
    let out = rift_stdin(&ep, &["describe", "job", "too-big"], "");
    assert!(
        out.stdout.contains("insufficient disk for inputs"),
        "{}",
        out.stdout
    );
}
