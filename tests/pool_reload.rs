//! A Pool with `model.update: Reload` through real agents, a real S3-compatible store (s3s-fs)
//! and a real job process that traps SIGHUP: a promoted model is prefetched, swapped under the
//! running process (same pid, no restart) and counted by the rollout; with the store frozen or
//! the model's stored bytes damaged the member keeps its old model, sees no partial file and the
//! rollout does not complete, until the fault is gone. The member's shards carry the model label.

mod support;

use std::path::Path;
use std::time::Duration;

use rift::api::pool::{PoolSpec, PoolStatus};
use rift::api::training_target::TrainingTargetStatus;
use rift::api::{Job, JobPhase, Object, TrainingTargetSpec};
use support::agent::eventually;
use support::agent::LogOnPanic;
use support::cli::rift;
use support::cluster::{artifact_name, Cluster};
use support::s3::S3Server;

/// The member: records `<pid> <model bytes>` when it starts and on every SIGHUP, and seals a
/// shard (`<model bytes>-<n>`) each time.
const MEMBER: &str = r#"seen="$SEEN/$RIFT_JOB_NAME"; n=0
look() {
  n=$((n+1)); m=$(cat "$RIFT_INPUTS/model/current" 2>/dev/null || echo none)
  echo "$$ $m" >> "$seen"
  printf '%s-%s' "$m" "$n" > "$RIFT_OUTPUTS/games/.s.tmp"
  mv "$RIFT_OUTPUTS/games/.s.tmp" "$RIFT_OUTPUTS/games/shard-$n.npz"
}
trap look HUP
look
while true; do sleep 0.2; done"#;

/// Promotes `model` on TrainingTarget `loop` (its status written as the training controller
/// would; written again should a controller pass race it).
async fn promote(cluster: &Cluster, model: &str) {
    eventually(Duration::from_secs(20), "the model promoted", || async {
        let t = cluster
            .store
            .get::<TrainingTargetSpec>("loop")
            .await
            .ok()??;
        let mut st: TrainingTargetStatus = t.status.unwrap_or_default();
        if st.current_model.as_deref() == Some(model) {
            let pool = pool_status(cluster).await?;
            return (pool.rollout?.artifact == model).then_some(());
        }
        st.current_model = Some(model.to_string());
        let _ = cluster
            .store
            .put_status::<TrainingTargetSpec>("loop", &st)
            .await;
        None
    })
    .await;
}

async fn pool_status(cluster: &Cluster) -> Option<PoolStatus> {
    cluster.store.get::<PoolSpec>("sp").await.ok()??.status
}

async fn completed(cluster: &Cluster, model: &str, within: u64) -> PoolStatus {
    eventually(
        Duration::from_secs(within),
        "the rollout complete",
        || async {
            pool_status(cluster).await.filter(|s| {
                s.rollout
                    .as_ref()
                    .is_some_and(|r| r.artifact == model && r.completed_at.is_some())
            })
        },
    )
    .await
}

/// The `<pid> <model>` lines the member recorded.
fn seen(dir: &Path) -> Vec<(u32, String)> {
    std::fs::read_to_string(dir.join("sp-0"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, m) = l.split_once(' ')?;
            Some((pid.parse().ok()?, m.to_string()))
        })
        .collect()
}

async fn member(cluster: &Cluster) -> Job {
    cluster.job("sp-0").await.expect("the member exists")
}

/// Waits until the member's last record is process `pid` reading `model`.
async fn saw(dir: &Path, pid: u32, model: &str) {
    let want = (pid, model.to_string());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen(dir).last() != Some(&want) {
        assert!(
            std::time::Instant::now() < deadline,
            "the member never read {model}: {:?}",
            seen(dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_model_under_the_running_member_and_waits_out_store_faults() {
    let cluster = Cluster::start().await;
    let server = S3Server::start();
    cluster.use_s3(&server, "");
    let worker = cluster.worker("w1", &[]);
    let _log = LogOnPanic(worker.state.join("agent.log"));
    let seen_dir = tempfile::tempdir().unwrap();
    let models: Vec<String> = ["model-one", "model-two", "model-three", "model-four"]
        .iter()
        .map(|m| cluster.push(m.as_bytes(), &format!("{m}.bin"), "type=model"))
        .collect();

    let target: TrainingTargetSpec = serde_json::from_value(serde_json::json!({
        "board": "hex8", "players": 2, "selfplaySelector": {"board": "none"},
        "firstTrainingGames": 1_000_000_000u64,
        "training": {"spec": {"command": ["true"]}}
    }))
    .unwrap();
    cluster
        .store
        .create(&Object::new("loop", target))
        .await
        .unwrap();
    promote_target_only(&cluster, &models[0]).await;
    let pool: PoolSpec = serde_json::from_value(serde_json::json!({
        "replicas": 1,
        "nodeSelector": {"worker": "yes"},
        "model": {"fromTrainingTarget": "loop", "update": "Reload"},
        "template": {
            "metadata": {"labels": {"board": "hex8"}},
            "spec": {
                "command": ["sh", "-c", MEMBER],
                "env": {"SEEN": seen_dir.path()},
                "outputs": [{"name": "games", "labels": {"type": "games"}}]
            }
        }
    }))
    .unwrap();
    cluster
        .store
        .create(&Object::new("sp", pool))
        .await
        .unwrap();
    completed(&cluster, &models[0], 60).await;
    let pid = eventually(Duration::from_secs(30), "the member started", || async {
        seen(seen_dir.path()).first().cloned()
    })
    .await;
    assert_eq!(pid.1, "model-one");
    let pid = pid.0;

    // 1. A promotion: the same process reads the new bytes; nothing restarted.
    promote(&cluster, &models[1]).await;
    let st = completed(&cluster, &models[1], 60).await;
    let r = st.rollout.unwrap();
    assert_eq!((r.updated, r.total), (1, 1));
    assert_eq!(st.previous_model.as_deref(), Some(models[0].as_str()));
    // Held means signalled: the handler runs a moment later.
    saw(seen_dir.path(), pid, "model-two").await;
    let m = member(&cluster).await;
    let s = m.status.unwrap();
    assert_eq!(
        (s.phase, s.pid, s.attempts),
        (JobPhase::Running, Some(pid), 1)
    );
    assert_eq!(
        m.spec.inputs[0].artifacts,
        [models[0].clone()],
        "the member was not replaced"
    );
    assert_eq!(s.model.unwrap().held.as_deref(), Some(models[1].as_str()));

    // Its shards carry the model they were played with: the short digest as a label, the
    // full name among the parents.
    let short = &models[1][..23];
    let shard = artifact_name(b"model-two-2");
    let listed = eventually(Duration::from_secs(30), "the shard labelled", || async {
        let r = rift(
            &cluster.etcd.endpoints_csv(),
            &[
                "get",
                "artifacts",
                "-l",
                &format!("model={short}"),
                "-o",
                "name",
            ],
        );
        r.stdout.contains(&shard).then_some(r.stdout)
    })
    .await;
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let art = cluster
        .store
        .get::<rift::api::artifact::ArtifactSpec>(&shard)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(art.spec.parents, [models[1].clone()]);

    // 2. The store frozen: the member keeps model two, whole, and the rollout waits.
    server.pause();
    promote(&cluster, &models[2]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let st = pool_status(&cluster).await.unwrap();
    let r = st.rollout.unwrap();
    assert_eq!((r.artifact.as_str(), r.updated), (models[2].as_str(), 0));
    assert!(r.completed_at.is_none());
    let lines = seen(seen_dir.path());
    assert_eq!(lines.last().unwrap(), &(pid, "model-two".to_string()));
    server.resume();
    completed(&cluster, &models[2], 60).await;
    saw(seen_dir.path(), pid, "model-three").await;

    // 3. The model's stored bytes damaged: detected, never swapped in, reported.
    let object = server.cas_path(&models[3]);
    let good = std::fs::read(&object).unwrap();
    std::fs::write(&object, b"model-f0ur").unwrap();
    promote(&cluster, &models[3]).await;
    let problem = eventually(Duration::from_secs(30), "the damage reported", || async {
        let s = member(&cluster).await.status?;
        let p = s.model?.problem;
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert!(problem.contains(&models[3]), "{problem}");
    let st = pool_status(&cluster).await.unwrap();
    assert!(st.rollout.unwrap().completed_at.is_none());
    assert_eq!(
        seen(seen_dir.path()).last().unwrap(),
        &(pid, "model-three".to_string()),
        "damaged bytes are never run on"
    );
    let current = worker.state.join("jobs/sp-0/inputs/model/current");
    assert_eq!(std::fs::read(&current).unwrap(), b"model-three");
    std::fs::write(&object, good).unwrap();
    completed(&cluster, &models[3], 60).await;
    saw(seen_dir.path(), pid, "model-four").await;
    let lines = seen(seen_dir.path());
    assert!(
        lines.iter().all(|(p, _)| *p == pid),
        "one process throughout: {lines:?}"
    );
    assert_eq!(member(&cluster).await.status.unwrap().attempts, 1);
}

/// Sets the target's current model before any Pool exists.
async fn promote_target_only(cluster: &Cluster, model: &str) {
    eventually(
        Duration::from_secs(20),
        "the first model promoted",
        || async {
            let t = cluster
                .store
                .get::<TrainingTargetSpec>("loop")
                .await
                .ok()??;
            let mut st: TrainingTargetStatus = t.status.unwrap_or_default();
            if st.current_model.as_deref() == Some(model) {
                return Some(());
            }
            st.current_model = Some(model.to_string());
            let _ = cluster
                .store
                .put_status::<TrainingTargetSpec>("loop", &st)
                .await;
            None
        },
    )
    .await;
}
