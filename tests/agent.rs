//! The node agent with real etcd, real shims and real job processes.

mod support;

use std::time::Duration;

use etcd_client::Client;
use rift::api::job::{OnNodeLost, RestartPolicy};
use rift::api::{JobPhase, JobSpec, Object};
use rift::store::Store;
use support::agent::{eventually, process_alive, TestAgent};
use support::etcd::EtcdCluster;
use support::jobs::{bind_at, create_job, report, unbind, wait_phase};

/// How long a job on the test agent gets to reach a phase.
const WAIT: Duration = Duration::from_secs(20);
/// The same for a job that backs off between attempts or waits out an etcd outage.
const LONG_WAIT: Duration = Duration::from_secs(30);

async fn setup() -> (EtcdCluster, Store, Client) {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let client = cluster.client().await;
    (cluster, store, client)
}

#[tokio::test]
async fn bound_job_runs_to_success_with_progress_and_its_exit_code() {
    let (cluster, store, mut client) = setup().await;
    let _agent = TestAgent::start("n1", &cluster.endpoints_csv(), &[]);
    create_job(
        &store,
        "ok",
        "echo '{\"games\": 7}' >> \"$RIFT_PROGRESS_FILE\"; sleep 1; exit 0",
        |_| {},
    )
    .await;
    bind_at(&mut client, "ok", "n1", 1, &[]).await;
    let r = wait_phase(&client, "n1", "ok", JobPhase::Succeeded, WAIT).await;
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.progress.get("games"), Some(&7.0));
    assert_eq!(r.attempts, 1);
    // The composed Job status people see agrees.
    let job = store.get::<JobSpec>("ok").await.unwrap().unwrap();
    let status = job.status.unwrap();
    assert_eq!(
        (status.phase, status.node.as_deref()),
        (JobPhase::Succeeded, Some("n1"))
    );
}

#[tokio::test]
async fn failing_job_is_retried_per_policy_then_failed() {
    let (cluster, store, mut client) = setup().await;
    let _agent = TestAgent::start("n1", &cluster.endpoints_csv(), &[]);
    create_job(&store, "flaky", "exit 3", |s| {
        s.restart_policy = RestartPolicy::OnFailure;
        s.backoff_limit = 2;
    })
    .await;
    bind_at(&mut client, "flaky", "n1", 1, &[]).await;
    // Backoff 1 s then 2 s: three attempts, then Failed.
    let r = wait_phase(&client, "n1", "flaky", JobPhase::Failed, LONG_WAIT).await;
    assert_eq!(r.attempts, 3, "{r:?}");
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.reason, "BackoffLimitExceeded");
}

#[tokio::test]
async fn cuda_visible_devices_comes_from_the_binding() {
    let (cluster, store, mut client) = setup().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "gpus:\n- {model: H100, count: 4}\n").unwrap();
    let agent = TestAgent::start(
        "n1",
        &cluster.endpoints_csv(),
        &["--config", config.path().to_str().unwrap()],
    );
    create_job(
        &store,
        "gpu",
        "echo \"$CUDA_VISIBLE_DEVICES\" > devices",
        |s| {
            s.workdir = Some(agent.state.to_string_lossy().into());
        },
    )
    .await;
    bind_at(&mut client, "gpu", "n1", 1, &[1, 3]).await;
    wait_phase(&client, "n1", "gpu", JobPhase::Succeeded, WAIT).await;
    let seen = std::fs::read_to_string(agent.state.join("devices")).unwrap();
    assert_eq!(seen.trim(), "1,3");

    // A GPU index the node does not have fails the job with a clear message.
    create_job(&store, "bad-gpu", "true", |_| {}).await;
    bind_at(&mut client, "bad-gpu", "n1", 1, &[7]).await;
    let r = wait_phase(&client, "n1", "bad-gpu", JobPhase::Failed, WAIT).await;
    assert!(
        r.message.contains("GPU index 7 is not present"),
        "{}",
        r.message
    );
}

#[tokio::test]
async fn missing_binary_and_bad_workdir_fail_with_a_message_and_the_agent_carries_on() {
    let (cluster, store, mut client) = setup().await;
    let _agent = TestAgent::start("n1", &cluster.endpoints_csv(), &[]);
    store
        .create(&Object::new(
            "nobin",
            JobSpec::with_command(["/nonexistent/trainer"]),
        ))
        .await
        .unwrap();
    create_job(&store, "nodir", "true", |s| {
        s.workdir = Some("/nonexistent/dir".into())
    })
    .await;
    bind_at(&mut client, "nobin", "n1", 1, &[]).await;
    bind_at(&mut client, "nodir", "n1", 1, &[]).await;
    let r = wait_phase(&client, "n1", "nobin", JobPhase::Failed, WAIT).await;
    assert!(
        r.message.contains("cannot start `/nonexistent/trainer`"),
        "{}",
        r.message
    );
    let r = wait_phase(&client, "n1", "nodir", JobPhase::Failed, WAIT).await;
    assert!(
        r.message
            .contains("workdir `/nonexistent/dir` does not exist"),
        "{}",
        r.message
    );
    create_job(&store, "after", "true", |_| {}).await;
    bind_at(&mut client, "after", "n1", 1, &[]).await;
    wait_phase(&client, "n1", "after", JobPhase::Succeeded, WAIT).await;
}

#[tokio::test]
async fn agent_restart_keeps_the_running_job_and_learns_exits_that_happened_while_down() {
    let (cluster, store, mut client) = setup().await;
    let mut agent = TestAgent::start("n1", &cluster.endpoints_csv(), &[]);
    create_job(&store, "long", "sleep 30", |_| {}).await;
    create_job(&store, "short", "sleep 3; exit 5", |_| {}).await;
    bind_at(&mut client, "long", "n1", 1, &[]).await;
    bind_at(&mut client, "short", "n1", 1, &[]).await;
    let before = wait_phase(&client, "n1", "long", JobPhase::Running, WAIT).await;
    wait_phase(&client, "n1", "short", JobPhase::Running, WAIT).await;

    agent.kill();
    tokio::time::sleep(Duration::from_secs(4)).await; // `short` exits while the agent is down
    agent.restart();

    let r = wait_phase(&client, "n1", "short", JobPhase::Failed, WAIT).await;
    assert_eq!(
        r.exit_code,
        Some(5),
        "the true exit code, learned after the restart"
    );
    let after = report(&mut client, "n1", "long").await.unwrap();
    assert_eq!(after.phase, JobPhase::Running);
    assert_eq!(after.pid, before.pid, "same process: not restarted");
    assert_eq!(after.attempts, 1);
    assert!(process_alive(before.pid.unwrap()));
}

#[tokio::test]
async fn deleting_the_binding_stops_the_process_group_within_the_grace_period() {
    let (cluster, store, mut client) = setup().await;
    let agent = TestAgent::start("n1", &cluster.endpoints_csv(), &[]);
    // A job that ignores SIGTERM and has a child: both must go, by SIGKILL after the grace.
    create_job(
        &store,
        "stubborn",
        "trap '' TERM; sleep 60 & sleep 60",
        |_| {},
    )
    .await;
    bind_at(&mut client, "stubborn", "n1", 1, &[]).await;
    let r = wait_phase(&client, "n1", "stubborn", JobPhase::Running, WAIT).await;
    let pid = r.pid.unwrap();
    unbind(&mut client, "stubborn", "n1").await;
    let stopped_at = std::time::Instant::now();
    eventually(
        Duration::from_secs(15),
        "the job's process group to be gone",
        || async { (!process_alive(pid)).then_some(()) },
    )
    .await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(3 + 5),
        "grace is 3 s"
    );
    let pgid_members = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    let fields: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
                    // Zombies (state Z) are dead; only their reaping by PID 1 is left.
                    Some(fields[0] != "Z" && fields[2] == pid.to_string())
                })
                .unwrap_or(false)
        })
        .count();
    assert_eq!(pgid_members, 0, "every process of the job's group is gone");
    eventually(Duration::from_secs(10), "the report to be deleted", || {
        let mut c = client.clone();
        async move {
            report(&mut c, "n1", "stubborn")
                .await
                .is_none()
                .then_some(())
        }
    })
    .await;
    assert!(!agent.job_dir("stubborn").exists());
}

#[tokio::test]
async fn a_binding_at_a_new_epoch_replaces_the_old_instance() {
    let (cluster, store, mut client) = setup().await;
    let _agent = TestAgent::start("n1", &cluster.endpoints_csv(), &[]);
    create_job(&store, "moved", "sleep 60", |_| {}).await;
    bind_at(&mut client, "moved", "n1", 1, &[]).await;
    let old = wait_phase(&client, "n1", "moved", JobPhase::Running, WAIT).await;
    bind_at(&mut client, "moved", "n1", 2, &[]).await;
    let new = eventually(Duration::from_secs(20), "epoch 2 running", || {
        let mut c = client.clone();
        async move {
            report(&mut c, "n1", "moved")
                .await
                .filter(|r| r.epoch == 2 && r.phase == JobPhase::Running)
        }
    })
    .await;
    assert_ne!(new.pid, old.pid);
    assert!(
        !process_alive(old.pid.unwrap()),
        "the old instance is stopped"
    );
}

#[tokio::test]
async fn a_reused_pid_is_never_adopted() {
    let (cluster, store, mut client) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    // A state directory claiming attempt 1 runs as a live, unrelated process (this test) but
    // with another start time: the agent must see through it.
    let job_dir = dir.path().join("jobs/ghost");
    let me = std::process::id();
    let run = serde_json::json!({"job": "ghost", "epoch": 1, "command": ["sleep", "60"], "restartPolicy": "Never",
        "backoffLimit": 0, "onNodeLost": "wait", "lostAfterSecs": 60, "graceSecs": 1});
    std::fs::create_dir_all(job_dir.join("attempts/1")).unwrap();
    std::fs::write(job_dir.join("run.json"), run.to_string()).unwrap();
    let fake = serde_json::json!({"pid": me, "startTicks": 1});
    std::fs::write(job_dir.join("attempts/1/shim.json"), fake.to_string()).unwrap();
    std::fs::write(job_dir.join("attempts/1/job.json"), fake.to_string()).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    let f = std::fs::File::open(job_dir.join("attempts/1")).unwrap();
    f.set_modified(old).unwrap();
    create_job(&store, "ghost", "sleep 60", |_| {}).await;
    bind_at(&mut client, "ghost", "n1", 1, &[]).await;
    let mut agent = TestAgent::start_in(
        "n1",
        &cluster.endpoints_csv(),
        dir.path().to_path_buf(),
        &[],
    );
    let r = wait_phase(&client, "n1", "ghost", JobPhase::Failed, WAIT).await;
    assert!(
        r.message.contains("without recording an exit"),
        "{}",
        r.message
    );
    assert!(process_alive(me), "the unrelated process was not signalled");
    agent.kill();
}

#[tokio::test]
async fn node_shows_not_ready_within_the_lease_ttl_after_the_agent_is_killed() {
    let (cluster, store, _client) = setup().await;
    let mut agent = TestAgent::start("n1", &cluster.endpoints_csv(), &[]);
    eventually(Duration::from_secs(20), "node ready", || async {
        let n = store.get::<rift::api::NodeSpec>("n1").await.ok()??;
        n.status?.is_ready().then_some(())
    })
    .await;
    agent.kill();
    let killed = std::time::Instant::now();
    eventually(Duration::from_secs(10), "node not ready", || async {
        let n = store.get::<rift::api::NodeSpec>("n1").await.ok()??;
        (!n.status?.is_ready()).then_some(())
    })
    .await;
    assert!(
        killed.elapsed() <= Duration::from_secs(2 + 1),
        "node lease TTL is 2 s: {:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn etcd_outage_keeps_jobs_running_and_a_node_lost_job_runs_again_after_it() {
    let (mut cluster, store, mut client) = setup().await;
    let agent = TestAgent::start("n1", &cluster.endpoints_csv(), &[]);
    create_job(&store, "steady", "sleep 60", |_| {}).await;
    create_job(&store, "finisher", "sleep 8; exit 0", |_| {}).await;
    create_job(&store, "mover", "sleep 60", |s| {
        s.on_node_lost = OnNodeLost::Reschedule;
        s.lost_after = rift::api::duration::HumanDuration::from_secs(5);
    })
    .await;
    create_job(&store, "waiter", "sleep 60", |s| {
        s.on_node_lost = OnNodeLost::Wait;
        s.lost_after = rift::api::duration::HumanDuration::from_secs(5);
    })
    .await;
    for j in ["steady", "finisher", "mover", "waiter"] {
        bind_at(&mut client, j, "n1", 1, &[]).await;
    }
    let steady = wait_phase(&client, "n1", "steady", JobPhase::Running, WAIT).await;
    let mover = wait_phase(&client, "n1", "mover", JobPhase::Running, WAIT).await;
    let waiter = wait_phase(&client, "n1", "waiter", JobPhase::Running, WAIT).await;
    wait_phase(&client, "n1", "finisher", JobPhase::Running, WAIT).await;

    cluster.stop(0);
    tokio::time::sleep(Duration::from_secs(20)).await;
    // Liveness never depends on etcd; readiness does.
    let probe = |path: &str| {
        support::http::get(&agent.addr(), path, Duration::from_secs(2)).map(|(code, _)| code)
    };
    assert_eq!(probe("/healthz"), Some(200));
    assert_eq!(probe("/readyz"), Some(503));
    assert!(
        process_alive(steady.pid.unwrap()),
        "a wait job survives a 20 s etcd outage"
    );
    assert!(
        process_alive(waiter.pid.unwrap()),
        "onNodeLost: wait is never stopped"
    );
    assert!(
        !process_alive(mover.pid.unwrap()),
        "onNodeLost: reschedule is stopped after lostAfter"
    );
    cluster.start(0);

    let mut client = cluster.client().await;
    let r = wait_phase(&client, "n1", "finisher", JobPhase::Succeeded, LONG_WAIT).await;
    assert_eq!(
        r.exit_code,
        Some(0),
        "the exit during the outage is published after it"
    );
    // A NodeLost stop is no failure: with the lease current again and the job still bound
    // here, it runs again (issue 14, item 6).
    let r = wait_phase(&client, "n1", "mover", JobPhase::Running, LONG_WAIT).await;
    assert_eq!(r.attempts, 2, "{r:?}");
    assert_ne!(r.pid, mover.pid);
    let r = report(&mut client, "n1", "steady").await.unwrap();
    assert_eq!(
        (r.phase, r.pid, r.attempts),
        (JobPhase::Running, steady.pid, 1)
    );
}

#[tokio::test]
async fn a_reschedule_job_is_stopped_by_its_shim_when_the_agent_dies_for_good() {
    let (cluster, store, mut client) = setup().await;
    let mut agent = TestAgent::start("n1", &cluster.endpoints_csv(), &[]);
    let lost_after = rift::api::duration::HumanDuration::from_secs(3);
    create_job(&store, "mover", "sleep 60", |s| {
        s.on_node_lost = OnNodeLost::Reschedule;
        s.lost_after = lost_after;
    })
    .await;
    create_job(&store, "waiter", "sleep 60", |s| s.lost_after = lost_after).await;
    bind_at(&mut client, "mover", "n1", 1, &[]).await;
    bind_at(&mut client, "waiter", "n1", 1, &[]).await;
    let mover = wait_phase(&client, "n1", "mover", JobPhase::Running, WAIT).await;
    let waiter = wait_phase(&client, "n1", "waiter", JobPhase::Running, WAIT).await;
    agent.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(process_alive(mover.pid.unwrap()), "not before lostAfter");
    eventually(
        Duration::from_secs(10),
        "the reschedule job to be stopped",
        || async { (!process_alive(mover.pid.unwrap())).then_some(()) },
    )
    .await;
    assert!(process_alive(waiter.pid.unwrap()), "a wait job runs on");
    let exit_path = agent.job_dir("mover").join("attempts/1/exit.json");
    let exit = eventually(Duration::from_secs(5), "the shim's exit record", || async {
        std::fs::read_to_string(&exit_path).ok()
    })
    .await;
    assert!(exit.contains("NodeLost"), "{exit}");
}

#[tokio::test]
async fn jobs_still_start_while_the_agent_binary_is_being_replaced() {
    let (cluster, store, mut client) = setup().await;
    // Run the agent from a copy of the binary, then remove the copy, as an upgrade that
    // replaces /usr/local/bin/rift does before the agent restarts.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("rift");
    std::fs::copy(support::cli::rift_bin(), &exe).unwrap();
    let state = dir.path().join("state");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep = cluster.endpoints_csv();
    cluster
        .trust()
        .unwrap()
        .admit(&ep, &state, "n1", rift::pki::NodeRole::Worker, "127.0.0.1");
    let mut agent = support::cli::KillOnDrop(
        std::process::Command::new(&exe)
            .args([
                "agent",
                "--name",
                "n1",
                "--listen",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .arg("--state-dir")
            .arg(&state)
            .env("RIFT_ENDPOINTS", cluster.endpoints_csv())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::remove_file(&exe).unwrap();
    create_job(&store, "upgrading", "exit 0", |_| {}).await;
    bind_at(&mut client, "upgrading", "n1", 1, &[]).await;
    let r = wait_phase(&client, "n1", "upgrading", JobPhase::Succeeded, WAIT).await;
    assert_eq!(r.exit_code, Some(0));
    let _ = agent.0.kill();
    support::agent::kill_processes_mentioning(&state);
}

/// Puts `job`'s placement and a binding at epoch 1 for `uid` that carries `embedded` (the
/// field the scheduler fills with the Job's stored form).
async fn bind_carrying(
    client: &mut Client,
    job: &str,
    node: &str,
    uid: &str,
    embedded: serde_json::Value,
) {
    let placement = serde_json::json!({"node": node, "epoch": 1, "uid": uid});
    let binding = serde_json::json!({"epoch": 1, "uid": uid, "job": embedded});
    client
        .put(
            format!("/rift/v1/placements/{job}"),
            placement.to_string(),
            None,
        )
        .await
        .unwrap();
    client
        .put(
            format!("/rift/v1/bindings/{node}/{job}"),
            binding.to_string(),
            None,
        )
        .await
        .unwrap();
}

fn stored_job(name: &str, uid: &str, script: &str) -> serde_json::Value {
    let mut job = Object::new(name, JobSpec::with_command(["sh", "-c", script]));
    job.metadata.uid = Some(uid.into());
    serde_json::to_value(job).unwrap()
}

#[tokio::test]
async fn a_binding_that_carries_its_job_starts_it_without_the_job_being_read() {
    let (cluster, _store, mut client) = setup().await;
    let _agent = TestAgent::start("n1", &cluster.endpoints_csv(), &[]);
    // No Job object exists at all: only the binding's copy can have started it.
    let embedded = stored_job(
        "carried",
        "uid-1",
        "echo started > \"$RIFT_PROGRESS_FILE\"; exit 4",
    );
    bind_carrying(&mut client, "carried", "n1", "uid-1", embedded).await;
    let r = wait_phase(&client, "n1", "carried", JobPhase::Failed, WAIT).await;
    assert_eq!(r.exit_code, Some(4), "{r:?}");
}

#[tokio::test]
async fn a_carried_job_of_another_uid_or_of_unknown_fields_is_ignored_and_the_job_is_read() {
    let (cluster, store, mut client) = setup().await;
    let _agent = TestAgent::start("n1", &cluster.endpoints_csv(), &[]);
    let mut newer = stored_job("newer", "uid-of-newer", "exit 5");
    newer["spec"]["aFieldFromANewerRift"] = serde_json::json!(true);
    let cases = [
        (
            "other-uid",
            stored_job("other-uid", "someone-else", "exit 5"),
        ),
        ("newer", newer),
    ];
    for (name, embedded) in cases {
        let real = "echo '{\"real\": 1}' >> \"$RIFT_PROGRESS_FILE\"; sleep 30";
        create_job(&store, name, real, |_| {}).await;
        let uid = store
            .get::<JobSpec>(name)
            .await
            .unwrap()
            .unwrap()
            .metadata
            .uid
            .unwrap();
        // For "newer" the binding's uid is the Job's, so only the unknown field rejects the
        // copy; for "other-uid" the copy names another Job.
        let mut embedded = embedded;
        if name == "newer" {
            embedded["metadata"]["uid"] = serde_json::json!(uid);
        }
        bind_carrying(&mut client, name, "n1", &uid, embedded).await;
        // The Job read from etcd runs, not the copy (`exit 5`).
        let c = client.clone();
        eventually(
            Duration::from_secs(20),
            &format!("{name} runs the real Job"),
            || {
                let mut c = c.clone();
                async move {
                    report(&mut c, "n1", name).await.filter(|r| {
                        r.phase == JobPhase::Running && r.progress.get("real") == Some(&1.0)
                    })
                }
            },
        )
        .await;
    }
}
