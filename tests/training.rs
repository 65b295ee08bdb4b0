//! The training loop end to end with real etcd and agents: selfplay games → one training run
//! → evaluation → promotion → the Pool's rollout; a failing training run waits out its
//! cooldown.
//!
//! Artifacts go through the real data plane: a local `file://` ArtifactStore, training jobs
//! that write `$RIFT_OUTPUTS/model/model.pt` (their job name, so the model's name is known),
//! the agent's upload and the leader's artifacts controller; game shards are pushed with
//! `rift artifact push`, as labelled selfplay output.

mod support;

use std::time::Duration;

use rift::api::labels::POOL;
use rift::api::pool::PoolSpec;
use rift::api::selector::LabelSelector;
use rift::api::training_target::TrainingTargetStatus;
use rift::api::{JobPhase, JobSpec, TrainingTargetSpec};
use rift::store::Store;
use support::agent::{eventually, TestAgent};
use support::cli::{rift, rift_stdin};
use support::etcd::EtcdCluster;

/// A local store for the cluster's artifacts, with watermarks no shared disk crosses.
fn local_store(dir: &std::path::Path) -> String {
    format!(
        "apiVersion: rift/v1\nkind: ArtifactStore\nmetadata: {{name: default}}\nspec:\n  url: file://{}\n  cache: {{highPercent: 99, lowPercent: 98}}\n---\n",
        dir.display()
    )
}

/// The name of the Artifact holding `bytes`.
fn artifact_name(bytes: &str) -> String {
    use sha2::Digest as _;
    rift::api::Digest::from_bytes(sha2::Sha256::digest(bytes.as_bytes()).into()).artifact_name()
}

/// A training step that writes its job's name as the model.
const WRITE_MODEL: &str = r#"printf %s "$RIFT_JOB_NAME" > "$RIFT_OUTPUTS/model/model.pt""#;

const SELFPLAY: &str = r#"apiVersion: rift/v1
kind: Pool
metadata: {name: selfplay}
spec:
  replicas: 2
  template:
    metadata:
      labels: {board: hex8, players: "2"}
    spec:
      type: selfplay
      command: [sh, -c, 'i=0; while true; do i=$((i+25)); echo "{\"games\": $i}" >> "$RIFT_PROGRESS_FILE"; sleep 0.2; done']
"#;

fn target(name: &str, train_script: &str, cooldown: u64) -> String {
    format!(
        r#"apiVersion: rift/v1
kind: TrainingTarget
metadata: {{name: {name}}}
spec:
  board: hex8
  players: 2
  selfplaySelector: {{board: hex8, players: "2"}}
  firstTrainingGames: 200
  retrainGames: 100000
  cooldownSeconds: {cooldown}
  training:
    spec:
      type: training
      command: [sh, -c, '{train_script}']
  evaluation:
    promoteWinRate: 0.55
    template:
      spec:
        type: evaluation
        command: [sh, -c, 'test -n "$RIFT_CANDIDATE_MODEL" && echo "{{\"winRate\": 0.61}}" > "$RIFT_RESULT_FILE"']
"#
    )
}

async fn status(store: &Store, name: &str) -> Option<TrainingTargetStatus> {
    store.get::<TrainingTargetSpec>(name).await.ok()??.status
}

#[tokio::test]
async fn games_trigger_one_training_run_then_evaluation_then_promotion() {
    let etcd = EtcdCluster::single();
    let ep = etcd.endpoints_csv();
    let store = etcd.store().await;
    let _leader = TestAgent::start("ctl", &ep, &["--controllers", "--lease-ttl", "2"]);
    let _worker = TestAgent::start("w1", &ep, &[]);
    let objects = tempfile::tempdir().unwrap();
    let train =
        format!(r#"sleep 1; echo "{{\"loss\": 0.4}}" > "$RIFT_RESULT_FILE"; {WRITE_MODEL}"#);
    let out = rift_stdin(
        &ep,
        &["apply", "-f", "-"],
        &format!(
            "{}{SELFPLAY}---\n{}",
            local_store(objects.path()),
            target("hex8-2p", &train, 3600)
        ),
    );
    assert!(out.ok, "{}", out.stderr);

    let st = eventually(Duration::from_secs(60), "a promoted model", || async {
        status(&store, "hex8-2p")
            .await
            .filter(|s| s.current_model.is_some())
    })
    .await;
    let model = artifact_name("hex8-2p-train-1");
    assert_eq!(st.current_model.as_deref(), Some(model.as_str()));
    assert_eq!(st.training_generation, 1);
    let run = &st.history[0];
    assert_eq!((run.promoted, run.win_rate), (true, Some(0.61)));
    assert_eq!(run.candidate.as_deref(), Some(model.as_str()));
    // The training Job declared the model output it was not given; evaluation got the
    // candidate as an input.
    let train = store
        .get::<JobSpec>("hex8-2p-train-1")
        .await
        .unwrap()
        .unwrap();
    assert!(
        train.spec.outputs.iter().any(|o| o.name == "model"),
        "{:?}",
        train.spec.outputs
    );
    let eval = store
        .get::<JobSpec>("hex8-2p-eval-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(eval.spec.inputs[0].name, "candidate");
    assert_eq!(eval.spec.inputs[0].artifacts, std::slice::from_ref(&model));
    assert!(st.total_games >= 200, "{st:?}");
    assert!(st.last_trained_at.is_some());

    // Games keep coming, but the cooldown (1 h) holds: no second run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = status(&store, "hex8-2p").await.unwrap();
    assert_eq!(later.training_generation, 1, "trained once, not twice");
    assert!(
        later.total_games > st.total_games,
        "selfplay games still counted"
    );
    assert!(later.active_job.is_none());
}

#[tokio::test]
async fn a_failing_training_run_is_recorded_and_not_retried_before_its_cooldown() {
    let etcd = EtcdCluster::single();
    let ep = etcd.endpoints_csv();
    let store = etcd.store().await;
    let _leader = TestAgent::start("ctl", &ep, &["--controllers", "--lease-ttl", "2"]);
    let _worker = TestAgent::start("w1", &ep, &[]);
    let out = rift_stdin(
        &ep,
        &["apply", "-f", "-"],
        &format!("{SELFPLAY}---\n{}", target("broken", "exit 7", 3600)),
    );
    assert!(out.ok, "{}", out.stderr);
    let st = eventually(Duration::from_secs(60), "a failed run", || async {
        status(&store, "broken")
            .await
            .filter(|s| s.history.first().is_some_and(|r| r.finished_at.is_some()))
    })
    .await;
    assert!(
        st.history[0].outcome.contains("training failed"),
        "{:?}",
        st.history[0]
    );
    assert!(!st.history[0].promoted);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = status(&store, "broken").await.unwrap();
    assert_eq!(
        later.training_generation, 1,
        "no hot loop: waits for the cooldown"
    );
    assert!(later.message.contains("cooling down"), "{}", later.message);
    assert!(later.current_model.is_none());
}

/// A webhook receiver on loopback that records every request's signature header and body.
async fn receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>,
) {
    use axum::{body::Bytes, http::HeaderMap, routing::post, Router};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                let sig = headers
                    .get("x-rift-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                store.lock().unwrap().push((sig, body.to_vec()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

#[tokio::test]
async fn a_promotion_reaches_a_signed_webhook() {
    use hmac::{Hmac, Mac};
    let etcd = EtcdCluster::single();
    let ep = etcd.endpoints_csv();
    let (url, seen) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, "s3cret\n").unwrap();
    let _leader = TestAgent::start("ctl", &ep, &["--controllers", "--lease-ttl", "2"]);
    let _worker = TestAgent::start("w1", &ep, &[]);
    let notifier = format!(
        "apiVersion: rift/v1\nkind: Notifier\nmetadata: {{name: hook}}\nspec:\n  url: {url}\n  events: [model_promoted]\n  secret: {{file: {}}}\n",
        secret_file.display()
    );
    let out = rift_stdin(
        &ep,
        &["apply", "-f", "-"],
        &format!(
            "{}{SELFPLAY}---\n{}---\n{notifier}",
            local_store(dir.path()),
            target("hex8-2p", WRITE_MODEL, 3600)
        ),
    );
    assert!(out.ok, "{}", out.stderr);
    let (sig, body) = eventually(
        Duration::from_secs(60),
        "a model_promoted webhook",
        || async { seen.lock().unwrap().first().cloned() },
    )
    .await;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(&body);
    assert_eq!(
        sig,
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["spec"]["reason"], "model_promoted", "{event}");
    assert_eq!(event["spec"]["involvedObject"]["name"], "hex8-2p");
    assert!(
        !String::from_utf8_lossy(&body).contains("s3cret"),
        "the secret is never sent"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "only the subscribed event");
}

#[tokio::test]
async fn a_restarted_selfplay_job_counts_each_attempt_once() {
    let etcd = EtcdCluster::single();
    let ep = etcd.endpoints_csv();
    let store = etcd.store().await;
    let _leader = TestAgent::start("ctl", &ep, &["--controllers", "--lease-ttl", "2"]);
    let _worker = TestAgent::start("w1", &ep, &[]);
    // Each attempt reports 150 games, then fails: three attempts in all (backoffLimit 2).
    let flaky = r#"apiVersion: rift/v1
kind: Job
metadata:
  name: flaky-selfplay
  labels: {board: hex8, players: "2"}
spec:
  type: selfplay
  command: [sh, -c, 'echo "{\"games\": 150}" >> "$RIFT_PROGRESS_FILE"; sleep 1; exit 1']
  restartPolicy: OnFailure
  backoffLimit: 2
"#;
    let out = rift_stdin(
        &ep,
        &["apply", "-f", "-"],
        &format!(
            "{flaky}---\n{}",
            target("counter", "true", 3600)
                .replace("firstTrainingGames: 200", "firstTrainingGames: 100000")
        ),
    );
    assert!(out.ok, "{}", out.stderr);
    let job_done = || async {
        let j = store
            .get::<rift::api::JobSpec>("flaky-selfplay")
            .await
            .ok()??;
        j.status.filter(|s| s.phase == rift::api::JobPhase::Failed)
    };
    let failed = eventually(Duration::from_secs(60), "three failed attempts", job_done).await;
    assert_eq!(failed.attempts, 3);
    let st = eventually(Duration::from_secs(10), "all games counted", || async {
        status(&store, "counter")
            .await
            .filter(|s| s.total_games >= 450)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st2 = status(&store, "counter").await.unwrap();
    assert_eq!(
        (st.total_games, st2.total_games),
        (450, 450),
        "each attempt's games once, never twice"
    );
    assert_eq!(
        st2.ledger.len(),
        3,
        "one ledger entry per attempt: {:?}",
        st2.ledger
    );
}

/// Selfplay that writes shards (`games` output), a model rolled out to it.
const SHARD_POOL: &str = r#"apiVersion: rift/v1
kind: Pool
metadata: {name: shards}
spec:
  replicas: 2
  model: {fromTrainingTarget: loop, maxUnavailable: "1"}
  template:
    metadata:
      labels: {board: hex8, players: "2"}
    spec:
      type: selfplay
      command: [sleep, "3600"]
      outputs:
        - {name: games, labels: {type: games}, format: npz}
"#;

#[tokio::test]
async fn game_shards_train_once_each_and_the_promoted_model_rolls_out_to_the_pool() {
    let etcd = EtcdCluster::single();
    let ep = etcd.endpoints_csv();
    let store = etcd.store().await;
    let mut leader = TestAgent::start("ctl", &ep, &["--controllers", "--lease-ttl", "2"]);
    let _worker = TestAgent::start("w1", &ep, &[]);
    let objects = tempfile::tempdir().unwrap();
    let out = rift_stdin(
        &ep,
        &["apply", "-f", "-"],
        &format!(
            "{}{SHARD_POOL}---\n{}",
            local_store(objects.path()),
            target("loop", WRITE_MODEL, 3600)
                .replace("firstTrainingGames: 200", "firstTrainingGames: 300")
        ),
    );
    assert!(out.ok, "{}", out.stderr);
    let members = eventually(Duration::from_secs(30), "two running members", || async {
        let (jobs, _) = store
            .list::<JobSpec>(&LabelSelector::default())
            .await
            .ok()?;
        let running: Vec<_> = jobs
            .into_iter()
            .filter(|j| j.metadata.labels.get(POOL).map(String::as_str) == Some("shards"))
            .filter(|j| {
                j.status
                    .as_ref()
                    .is_some_and(|s| s.phase == JobPhase::Running)
            })
            .collect();
        (running.len() == 2).then_some(running)
    })
    .await;
    assert!(
        members.iter().all(|m| m.spec.inputs.is_empty()),
        "no model promoted yet: members start cold"
    );
    // Each member's outputs carry the template's labels, so the target's selector picks them.
    assert_eq!(members[0].spec.outputs[0].labels["board"], "hex8");

    // Two shards of 150 games each, one of them pushed twice (identical bytes: one artifact),
    // and a shard of another board.
    let shard = |bytes: &str, board: &str| {
        let file = objects.path().join(format!("{bytes}.npz"));
        std::fs::write(&file, bytes).unwrap();
        let file = file.to_str().unwrap().to_string();
        let board = format!("board={board}");
        let pushed = rift(
            &ep,
            &[
                "artifact",
                "push",
                &file,
                "-l",
                &board,
                "-l",
                "players=2",
                "-l",
                "type=games",
                "--count",
                "games=150",
            ],
        );
        assert!(pushed.ok, "{}", pushed.stderr);
        artifact_name(bytes)
    };
    let (a, b) = (shard("shard-a", "hex8"), shard("shard-b", "hex8"));
    shard("shard-a", "hex8");
    shard("shard-c", "square8");

    let st = eventually(Duration::from_secs(60), "a promoted model", || async {
        status(&store, "loop")
            .await
            .filter(|s| s.current_model.is_some())
    })
    .await;
    let model = artifact_name("loop-train-1");
    assert_eq!(st.current_model.as_deref(), Some(model.as_str()));
    assert_eq!(
        st.total_games, 300,
        "each shard once, the other board's not at all"
    );
    let train = store.get::<JobSpec>("loop-train-1").await.unwrap().unwrap();
    let mut games = train.spec.inputs[0].artifacts.clone();
    games.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!((train.spec.inputs[0].name.as_str(), games), ("games", want));

    // The leader is SIGKILLed and comes back: nothing is counted again.
    leader.kill();
    leader.restart();
    shard("shard-d", "hex8");
    eventually(Duration::from_secs(30), "the new shard counted", || async {
        status(&store, "loop")
            .await
            .filter(|s| s.total_games == 450)
    })
    .await;

    // The Pool rolls the promoted model out, one member at a time (maxUnavailable 1).
    let pool = eventually(Duration::from_secs(60), "the rollout complete", || async {
        let p = store.get::<PoolSpec>("shards").await.ok()??;
        p.status
            .filter(|s| s.rollout.as_ref().is_some_and(|r| r.completed_at.is_some()))
    })
    .await;
    let rollout = pool.rollout.unwrap();
    assert_eq!(
        (rollout.artifact.as_str(), rollout.updated, rollout.total),
        (model.as_str(), 2, 2)
    );
    assert_eq!(pool.current_model.as_deref(), Some(model.as_str()));
    let (jobs, _) = store
        .list::<JobSpec>(&LabelSelector::default())
        .await
        .unwrap();
    for m in jobs
        .iter()
        .filter(|j| j.metadata.labels.get(POOL).map(String::as_str) == Some("shards"))
    {
        assert_eq!(
            m.spec.inputs[0].artifacts,
            std::slice::from_ref(&model),
            "{}",
            m.name()
        );
    }
    let table = support::cli::rift(&ep, &["get", "pools"]);
    assert!(table.stdout.contains("UPDATED"), "{}", table.stdout);
    assert!(table.stdout.contains(&model[..19]), "{}", table.stdout);
    assert!(table.stdout.contains("2/2"), "{}", table.stdout);
    assert_eq!(status(&store, "loop").await.unwrap().total_games, 450);
}
