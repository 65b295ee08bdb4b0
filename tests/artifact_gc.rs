//! Artifact garbage collection against real etcd, a real leader agent and real stores (s3s-fs,
//! a local directory): nothing referenced or pinned is ever deleted, the unreferenced is
//! deleted record and bytes after `gcAfter`, a reference created between the collector's
//! decision and its write cancels the deletion, and a deletion cut off half-way is finished by
//! the next collector.

mod support;

use std::path::Path;
use std::time::Duration;

use rift::api::{ArtifactSpec, Digest, JobInput, JobSpec, Object, TrainingTargetSpec};
use rift::controllers::artifact_gc::{decide::Step, ArtifactGc};
use rift::store::Store;
use sha2::Digest as _;
use support::agent::eventually;
use support::cli::{rift, rift_stdin};
use support::cluster::Cluster;
use support::etcd::EtcdCluster;
use support::s3::{S3Server, BUCKET, SECRET_KEY};

/// `rift artifact push FILE` of `bytes` (written under `dir`), with `labels`; the artifact name.
fn push(ep: &str, dir: &Path, file: &str, bytes: &[u8], labels: &[&str]) -> String {
    let path = dir.join(file);
    std::fs::write(&path, bytes).unwrap();
    let mut args = vec![
        "artifact",
        "--secrets-dir",
        dir.to_str().unwrap(),
        "push",
        path.to_str().unwrap(),
    ];
    for l in labels {
        args.extend(["-l", l]);
    }
    let r = rift(ep, &args);
    assert!(r.ok, "{}", r.stderr);
    let digest: [u8; 32] = sha2::Sha256::digest(bytes).into();
    Digest::from_bytes(digest).artifact_name()
}

async fn exists(store: &Store, name: &str) -> bool {
    store.get::<ArtifactSpec>(name).await.unwrap().is_some()
}

fn apply(ep: &str, yaml: &str) {
    let r = rift_stdin(ep, &["apply", "-f", "-"], yaml);
    assert!(r.ok, "{}", r.stderr);
}

fn cas_key(name: &str) -> String {
    Digest::parse(name).unwrap().cas_key()
}

/// A Job (Pending for good: no node matches its selector) reading `inputs`.
async fn reader(store: &Store, job: &str, inputs: &[String]) {
    let mut spec = JobSpec::with_command(["true"]);
    spec.node_selector.insert("nowhere".into(), "yes".into());
    spec.inputs = vec![JobInput::of("in", inputs.iter().cloned())];
    store.create(&Object::new(job, spec)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_deletes_only_what_nothing_needs_record_and_bytes() {
    let cluster = Cluster::start().await;
    let ep = cluster.etcd.endpoints_csv();
    let store = &cluster.store;
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An absolute credentials path: the leader agent's secrets directory is its default.
    let creds = S3Server::write_credentials(d, "s3.env", SECRET_KEY);
    let store_yaml = |gc_after: &str| {
        format!(
            "apiVersion: rift/v1\nkind: ArtifactStore\nmetadata: {{name: default}}\nspec:\n  url: s3://{BUCKET}\n  endpoint: {}\n  credentialsFile: {}\n  gcAfter: {gc_after}\n  cache: {{highPercent: 99, lowPercent: 98}}\n",
            server.endpoint(),
            creds.display()
        )
    };
    apply(&ep, &store_yaml("1h"));

    let input = push(&ep, d, "input", b"games read by a pending job", &[]);
    let model = push(&ep, d, "model", b"the promoted model", &[]);
    let kept = push(&ep, d, "kept", b"pushed by hand", &["rift.dev/keep=true"]);
    let doomed = push(&ep, d, "doomed", b"nobody wants this", &[]);
    let done_input = push(&ep, d, "done", b"read by a job that finished", &[]);

    reader(store, "reader", std::slice::from_ref(&input)).await;
    reader(store, "finished-reader", std::slice::from_ref(&done_input)).await;
    // A TrainingTarget whose current model is `model`: its status as the training controller
    // writes it after a promotion (written here once the controller wrote its first status).
    apply(
        &ep,
        "apiVersion: rift/v1\nkind: TrainingTarget\nmetadata: {name: hex8}\nspec:\n  board: hex8\n  players: 2\n  selfplaySelector: {board: hex8}\n  training: {spec: {command: [train]}}\n",
    );
    let mut status = eventually(
        Duration::from_secs(20),
        "the target's first status",
        || async {
            store
                .get::<TrainingTargetSpec>("hex8")
                .await
                .unwrap()
                .and_then(|t| t.status)
        },
    )
    .await;
    status.current_model = Some(model.clone());
    store
        .put_status::<TrainingTargetSpec>("hex8", &status)
        .await
        .unwrap();
    // The finished job's input stops being referenced when the job is gone.
    store
        .delete_object(rift::api::kinds::by_kind("Job").unwrap(), "finished-reader")
        .await
        .unwrap();

    apply(&ep, &store_yaml("2s"));
    eventually(
        Duration::from_secs(30),
        "the unreferenced artifacts deleted",
        || async {
            (!exists(store, &doomed).await && !exists(store, &done_input).await).then_some(())
        },
    )
    .await;
    for gone in [&doomed, &done_input] {
        assert!(
            !server.object_path(&cas_key(gone)).exists(),
            "{gone}: bytes left in the store"
        );
    }
    // Several more passes, well past gcAfter: what is needed stays, bytes and record.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for needed in [&input, &model, &kept] {
        assert!(exists(store, needed).await, "{needed} was deleted");
        assert!(
            server.object_path(&cas_key(needed)).exists(),
            "{needed}: bytes deleted"
        );
    }
    let target = store
        .get::<TrainingTargetSpec>("hex8")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        target.status.unwrap().current_model.as_deref(),
        Some(model.as_str()),
        "the status naming the model was kept while the collector ran"
    );
    // The Job goes: its input is no longer needed and goes too.
    store
        .delete_object(rift::api::kinds::by_kind("Job").unwrap(), "reader")
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the reader's input deleted",
        || async { (!exists(store, &input).await).then_some(()) },
    )
    .await;
    assert!(!server.object_path(&cas_key(&input)).exists());
}

/// A local store and a collector driven by hand (no leader agent runs here).
struct Bench {
    etcd: EtcdCluster,
    store: Store,
    dir: tempfile::TempDir,
}

impl Bench {
    async fn start() -> Bench {
        let etcd = EtcdCluster::single();
        let store = etcd.store().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("objects")).unwrap();
        apply(
            &etcd.endpoints_csv(),
            &format!(
                "apiVersion: rift/v1\nkind: ArtifactStore\nmetadata: {{name: default}}\nspec:\n  url: file://{}/objects\n  gcAfter: 1s\n  cache: {{highPercent: 99, lowPercent: 98}}\n",
                dir.path().display()
            ),
        );
        Bench { etcd, store, dir }
    }

    fn push(&self, file: &str, bytes: &[u8]) -> String {
        push(
            &self.etcd.endpoints_csv(),
            self.dir.path(),
            file,
            bytes,
            &[],
        )
    }

    fn bytes_exist(&self, name: &str) -> bool {
        self.dir.path().join("objects").join(cas_key(name)).exists()
    }

    fn gc(&self) -> ArtifactGc {
        ArtifactGc::new(self.store.clone(), self.dir.path().to_path_buf())
    }
}

/// Plans until the collector decides to mark `name` (its clock must first run for gcAfter).
async fn plan_marking(gc: &mut ArtifactGc, name: &str) -> rift::controllers::artifact_gc::Plan {
    for _ in 0..40 {
        let plan = gc.plan().await.unwrap().expect("a store exists");
        if plan
            .steps()
            .iter()
            .any(|s| matches!(s, Step::Mark { name: n, .. } if n == name))
        {
            return plan;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the collector never decided to delete {name}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reference_made_between_the_decision_and_the_write_cancels_the_deletion() {
    let bench = Bench::start().await;
    let store = &bench.store;
    let raced = bench.push("raced", b"named by a job created mid-pass");
    let mut gc = bench.gc();

    // A Job naming the artifact is created after the collector decided, before it wrote.
    let plan = plan_marking(&mut gc, &raced).await;
    reader(store, "late-reader", std::slice::from_ref(&raced)).await;
    let (stats, _) = gc.apply(plan).await.unwrap();
    assert_eq!((stats.marked, stats.conflicts), (0, 1), "{stats:?}");
    // Later passes see the reference and keep it.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        gc.pass().await.unwrap();
    }
    let record = store.get::<ArtifactSpec>(&raced).await.unwrap().unwrap();
    assert!(record.metadata.deletion_timestamp.is_none());
    assert!(bench.bytes_exist(&raced));

    // A keep label put on the record after the decision cancels it as well.
    let labelled = bench.push("labelled", b"labelled keep mid-pass");
    let plan = plan_marking(&mut gc, &labelled).await;
    let r = rift(
        &bench.etcd.endpoints_csv(),
        &["label", "artifact", &labelled, "rift.dev/keep=true"],
    );
    assert!(r.ok, "{}", r.stderr);
    let (stats, _) = gc.apply(plan).await.unwrap();
    assert_eq!(stats.marked, 0, "{stats:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gc.pass().await.unwrap();
    assert!(exists(store, &labelled).await && bench.bytes_exist(&labelled));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deletion_cut_off_after_the_mark_is_finished_by_the_next_collector() {
    let bench = Bench::start().await;
    let store = &bench.store;
    let doomed = bench.push("doomed", b"marked, then the leader died");
    let mut first = bench.gc();
    let plan = plan_marking(&mut first, &doomed).await;
    let (stats, _) = first.apply(plan).await.unwrap();
    assert_eq!(stats.marked, 1, "{stats:?}");
    drop(first); // the leader dies between the mark and the bytes
    let marked = store.get::<ArtifactSpec>(&doomed).await.unwrap().unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(
        bench.bytes_exist(&doomed),
        "nothing but the mark happened yet"
    );

    // A new leader's collector: its clocks start over, but the mark is the commit point.
    let (stats, _) = bench.gc().pass().await.unwrap();
    assert_eq!(stats.deleted, 1, "{stats:?}");
    assert!(!exists(store, &doomed).await);
    assert!(!bench.bytes_exist(&doomed));
}
