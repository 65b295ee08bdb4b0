//! Safety on one node, with real etcd, real agents, real shims and real job processes: what a
//! node cut off from etcd may start, when a shim stops its job, what a node does when it comes
//! back, and what hostile binding keys do (issue 14, items 1 and 6 and the hostile-input probe).
//!
//! The "ran twice" oracle is [`InstanceLog`]: every instance holds a kernel lock while alive, so
//! a second concurrent instance of a job is detected exactly.

mod support;

use std::time::Duration;

use chrono::Utc;
use rift::api::duration::HumanDuration;
use rift::api::job::{OnNodeLost, RestartPolicy};
use rift::api::JobPhase;
use rift::faults::{InstanceLog, LinkFault};
use support::agent::{eventually, process_alive, TestAgent};
use support::cluster::{attempt_starts, create_job, Cluster};

#[tokio::test]
async fn a_cut_off_node_starts_nothing_once_its_lease_went_unrenewed_for_lost_after() {
    let c = Cluster::start_unadvertised().await;
    let proxy = support::relay::relay_to(c.etcd.client_addr(0)).await;
    let mut w1 = c.worker_at("w1", &c.etcd.url_via(proxy.listen_addr()), &[]);
    let log = InstanceLog::new(c.dir.path().join("instances")).unwrap();
    let lost_after = Duration::from_secs(3);
    // Each instance runs 1 s and exits 0; `Always` starts the next: a node that keeps going
    // while cut off starts one every ~2 s, each with a fresh shim.
    let command = log.command("solo", Some(Duration::from_secs(1)));
    create_job(&c.store, "solo", command, |s| {
        s.restart_policy = RestartPolicy::Always;
        s.on_node_lost = OnNodeLost::Reschedule;
        s.lost_after = HumanDuration(lost_after);
        s.termination_grace_period = HumanDuration::from_secs(1);
    })
    .await;
    c.wait_running_on("solo", "w1", 30).await;
    let _w2 = c.worker("w2", &[]);

    proxy.set(LinkFault::Cut);
    let cut = Utc::now();
    // Restarted while cut off: it has read no binding list and renewed no lease.
    tokio::time::sleep(Duration::from_secs(1)).await;
    w1.restart();
    c.wait_running_on("solo", "w2", 60).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let starts = attempt_starts(&w1, "solo");
    let (n, last) = *starts.last().expect("w1 ran the job");
    let limit = cut + chrono::Duration::from_std(lost_after + Duration::from_secs(1)).unwrap();
    assert!(
        last <= limit,
        "w1 started attempt {n} at {last}, {} ms after the cut (lostAfter {lost_after:?}): {starts:?}",
        (last - cut).num_milliseconds()
    );
    log.report().unwrap().assert_no_overlap();

    // Back on the network: the job has moved, so w1 stops and forgets it.
    proxy.set(LinkFault::None);
    eventually(Duration::from_secs(30), "w1 forgets solo", || async {
        (!w1.job_dir("solo").exists()).then_some(())
    })
    .await;
    let report = log.report().unwrap();
    report.assert_no_overlap();
    assert!(report.starts("solo") >= 2, "{report:?}");
}

#[tokio::test]
async fn a_node_lost_stop_runs_again_when_the_node_returns_before_the_hand_over() {
    let c = Cluster::start_unadvertised().await;
    let proxy = support::relay::relay_to(c.etcd.client_addr(0)).await;
    let w1 = c.worker_at("w1", &c.etcd.url_via(proxy.listen_addr()), &[]);
    let log = InstanceLog::new(c.dir.path().join("instances")).unwrap();
    create_job(&c.store, "selfplay", log.command("selfplay", None), |s| {
        s.restart_policy = RestartPolicy::Never;
        s.on_node_lost = OnNodeLost::Reschedule;
        s.lost_after = HumanDuration::from_secs(2);
        // The leader hands over only after 2 + 30 + 2 s: the node is back long before.
        s.termination_grace_period = HumanDuration::from_secs(30);
    })
    .await;
    let first = c
        .wait_running_on("selfplay", "w1", 30)
        .await
        .status
        .unwrap();

    proxy.set(LinkFault::Cut);
    eventually(
        Duration::from_secs(20),
        "the shim stops selfplay",
        || async { (!process_alive(first.pid.unwrap())).then_some(()) },
    )
    .await;
    proxy.set(LinkFault::None);

    let again = eventually(
        Duration::from_secs(30),
        "selfplay running again",
        || async {
            c.job("selfplay").await.and_then(|j| j.status).filter(|s| {
                s.phase == JobPhase::Running && s.attempts == 2 && s.node.as_deref() == Some("w1")
            })
        },
    )
    .await;
    assert_ne!(again.pid, first.pid);
    assert_eq!(again.epoch, first.epoch, "it never left w1");
    let report = log.report().unwrap();
    report.assert_no_overlap();
    assert_eq!(report.of("selfplay")[0].stop.as_deref(), Some("term"));
    drop(w1);
}

#[tokio::test]
async fn a_shim_started_after_the_lease_lapsed_stops_its_job_at_once() {
    // A shim is started (as by an agent restarted while cut off) whose node lease was last
    // renewed 10 s ago: with lostAfter 4 s it must not grant the job 4 s of its own.
    let dir = tempfile::tempdir().unwrap();
    let state = rift::agent::jobs::layout::StateDir::new(dir.path());
    let job = state.job("late").unwrap();
    let log = InstanceLog::new(dir.path().join("instances")).unwrap();
    let spec = rift::agent::jobs::layout::RunSpec {
        job: "late".into(),
        uid: String::new(),
        epoch: 1,
        command: log.command("late", None),
        env: Default::default(),
        env_from: Vec::new(),
        workdir: None,
        gpus: vec![],
        restart_policy: RestartPolicy::Never,
        backoff_limit: 0,
        active_deadline_seconds: None,
        on_node_lost: OnNodeLost::Reschedule,
        lost_after_secs: 4,
        grace_secs: 1,
        inputs: Vec::new(),
        outputs: Vec::new(),
        labels: Default::default(),
    };
    rift::agent::jobs::layout::write_json(&job.run_spec(), &spec).unwrap();
    let renewed = rift::clock::BootTime::from_nanos(
        rift::clock::BootTime::now()
            .as_nanos()
            .saturating_sub(10_000_000_000),
    );
    let beat = rift::agent::jobs::layout::Heartbeat::now(7, renewed);
    rift::agent::jobs::layout::write_json(&state.heartbeat(), &beat).unwrap();
    std::fs::create_dir_all(job.attempt(1)).unwrap();

    let started = std::time::Instant::now();
    let status = std::process::Command::new(support::cli::rift_bin())
        .arg("shim")
        .arg("--dir")
        .arg(job.path())
        .arg("--attempt")
        .arg("1")
        .arg("--heartbeat")
        .arg(state.heartbeat())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the shim gave the job {:?}",
        started.elapsed()
    );
    let exit: rift::agent::jobs::layout::ExitRecord =
        rift::agent::jobs::layout::read_json(&job.exit_record(1))
            .unwrap()
            .unwrap();
    assert_eq!(
        exit.reason,
        rift::agent::jobs::layout::EndReason::NodeLost,
        "{exit:?}"
    );
}

#[tokio::test]
async fn a_binding_key_that_is_no_job_name_is_only_logged() {
    let etcd = support::etcd::EtcdCluster::single();
    let store = etcd.store().await;
    let mut client = etcd.client().await;
    let agent = TestAgent::start("n1", &etcd.endpoints_csv(), &[]);
    let dir = tempfile::tempdir().unwrap();
    let log = InstanceLog::new(dir.path()).unwrap();
    store
        .create(&rift::api::Object::new(
            "steady",
            rift::api::JobSpec::with_command(log.command("steady", None)),
        ))
        .await
        .unwrap();
    let binding = serde_json::json!({"epoch": 1}).to_string();
    client
        .put(
            "/rift/v1/placements/steady",
            serde_json::json!({"node": "n1", "epoch": 1}).to_string(),
            None,
        )
        .await
        .unwrap();
    client
        .put("/rift/v1/bindings/n1/steady", binding.clone(), None)
        .await
        .unwrap();
    let running = eventually(Duration::from_secs(20), "steady running", || async {
        store
            .get::<rift::api::JobSpec>("steady")
            .await
            .ok()
            .flatten()
            .and_then(|j| j.status)
            .filter(|s| s.phase == JobPhase::Running)
    })
    .await;
    for key in ["..", ".", "a/b", "../../etc", "Bad"] {
        client
            .put(format!("/rift/v1/bindings/n1/{key}"), binding.clone(), None)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(process_alive(running.pid.unwrap()), "the job runs on");
    assert!(
        agent.state.join("agent.heartbeat").exists(),
        "the state directory is intact"
    );
    assert!(agent.job_dir("steady").join("run.json").exists());
    assert_eq!(
        std::fs::read_dir(agent.state.join("jobs")).unwrap().count(),
        1,
        "no directory for any of the bad names"
    );
    assert!(
        agent
            .log()
            .contains("ignoring a binding whose job name is not valid"),
        "{}",
        agent.log()
    );
    let r = log.report().unwrap();
    r.assert_no_overlap();
    assert_eq!(r.starts("steady"), 1);
}

#[tokio::test]
async fn numbers_beyond_any_clock_are_refused_at_apply_or_answered_never_a_panic() {
    let etcd = support::etcd::EtcdCluster::single();
    let agent = TestAgent::start("n1", &etcd.endpoints_csv(), &[]);
    let endpoints = etcd.endpoints_csv();
    let huge = u64::MAX;
    for (field, value) in [
        ("lostAfter", huge.to_string()),
        ("activeDeadlineSeconds", huge.to_string()),
        ("terminationGracePeriod", huge.to_string()),
        ("ttlAfterFinished", format!("{}", huge / 2)),
    ] {
        let yaml = format!(
            "apiVersion: rift/v1\nkind: Job\nmetadata: {{name: hostile}}\nspec: {{command: [\"true\"], {field}: {value}}}\n"
        );
        let out = support::cli::rift_stdin(&endpoints, &["apply", "-f", "-"], &yaml);
        assert!(!out.ok, "{field}: {value} was accepted");
        assert!(
            out.stderr.contains(&format!("spec.{field}")) && out.stderr.contains("10 years"),
            "{field}: {}",
            out.stderr
        );
    }
    let out = support::cli::rift(&endpoints, &["get", "jobs"]);
    assert!(!out.stdout.contains("hostile"), "nothing was written");

    // The log handler takes any tail.
    let mut client = etcd.client().await;
    let store = etcd.store().await;
    store
        .create(&rift::api::Object::new(
            "talker",
            rift::api::JobSpec::with_command(["sh", "-c", "echo one; echo two; sleep 60"]),
        ))
        .await
        .unwrap();
    client
        .put("/rift/v1/bindings/n1/talker", r#"{"epoch": 1}"#, None)
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "talker logged", || async {
        let log = agent.job_dir("talker").join("attempts/1/output.log");
        std::fs::read_to_string(log)
            .ok()
            .filter(|l| l.contains("two"))
    })
    .await;
    let path = format!("/v1/jobs/talker/logs?tail={}", u64::MAX);
    let (code, body) = support::http::get(&agent.addr(), &path, Duration::from_secs(5))
        .expect("the agent answers");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("one\ntwo\n"), "the whole log: {body:?}");
    assert!(
        support::http::get(&agent.addr(), "/healthz", Duration::from_secs(2)).is_some(),
        "the agent is alive"
    );
}

#[tokio::test]
async fn a_job_that_keeps_restarting_keeps_only_its_last_attempt_folders() {
    let etcd = support::etcd::EtcdCluster::single();
    let agent = TestAgent::start("n1", &etcd.endpoints_csv(), &[]);
    let store = etcd.store().await;
    let mut spec = rift::api::JobSpec::with_command(["true"]);
    spec.restart_policy = RestartPolicy::Always;
    store
        .create(&rift::api::Object::new("loop", spec))
        .await
        .unwrap();
    etcd.client()
        .await
        .put("/rift/v1/bindings/n1/loop", r#"{"epoch": 1}"#, None)
        .await
        .unwrap();
    let attempts = agent.job_dir("loop").join("attempts");
    let count = || std::fs::read_dir(&attempts).map_or(0, |d| d.count());
    let last = || {
        std::fs::read_dir(&attempts)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    eventually(Duration::from_secs(40), "eight attempts", || async {
        (last() >= 8).then_some(())
    })
    .await;
    assert!(count() <= 5, "{} attempt folders kept", count());
    let book: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.job_dir("loop").join("book.json")).unwrap())
            .unwrap();
    assert_eq!(book["failures"], 0, "successes are no failures: {book}");
    assert!(book["through"].as_u64().unwrap() >= 7, "{book}");
}
