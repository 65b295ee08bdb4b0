//! `rift logs` and the agent's `/v1/jobs/{name}/logs`, with real etcd, a real agent and real
//! job processes.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use etcd_client::Client;
use rift::api::job::RestartPolicy;
use rift::api::{JobPhase, JobSpec, NodeSpec};
use rift::store::Store;
use support::agent::{eventually, TestAgent};
use support::cli::{rift, rift_command, KillOnDrop};
use support::etcd::EtcdCluster;
use support::jobs::{bind, create_job};

async fn setup() -> (EtcdCluster, Store, Client) {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let client = cluster.client().await;
    (cluster, store, client)
}

/// Waits until the Job's composed status shows `phase`.
async fn wait_phase(store: &Store, job: &str, phase: JobPhase, within: u64) {
    eventually(
        Duration::from_secs(within),
        &format!("{job} {phase:?}"),
        || async move {
            let j = store.get::<JobSpec>(job).await.ok()??;
            (j.status?.phase == phase).then_some(())
        },
    )
    .await;
}

fn numbered(word: &str, from: u32, to: u32) -> String {
    (from..=to).map(|i| format!("{word} {i}\n")).collect()
}

#[tokio::test]
async fn prints_a_jobs_output_and_its_last_lines() {
    let (cluster, store, mut client) = setup().await;
    let eps = cluster.endpoints_csv();
    let agent = TestAgent::start("n1", &eps, &[]);
    create_job(
        &store,
        "count",
        "for i in $(seq 1 20); do echo line $i; done",
        |_| {},
    )
    .await;
    bind(&mut client, "count", "n1").await;
    wait_phase(&store, "count", JobPhase::Succeeded, 20).await;

    let r = rift(&eps, &["logs", "count"]);
    assert!(r.ok, "{}\nagent log:\n{}", r.stderr, agent.log());
    assert_eq!(r.stdout, numbered("line", 1, 20));

    let r = rift(&eps, &["logs", "count", "--tail", "3"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, numbered("line", 18, 20));

    // Following a job that is over prints everything and ends by itself.
    let started = Instant::now();
    let r = rift(&eps, &["logs", "count", "-f", "--tail", "1"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, "line 20\n");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn attempts_are_shown_one_at_a_time_and_followed_in_order() {
    let (cluster, store, mut client) = setup().await;
    let eps = cluster.endpoints_csv();
    let _agent = TestAgent::start("n1", &eps, &[]);
    create_job(
        &store,
        "retry",
        "echo \"attempt $RIFT_ATTEMPT\"; printf 'no newline'; exit 1",
        |s| {
            s.restart_policy = RestartPolicy::OnFailure;
            s.backoff_limit = 1;
        },
    )
    .await;
    bind(&mut client, "retry", "n1").await;
    wait_phase(&store, "retry", JobPhase::Failed, 30).await;

    let r = rift(&eps, &["logs", "retry"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, "attempt 2\nno newline");
    let r = rift(&eps, &["logs", "retry", "--attempt", "1"]);
    assert_eq!(r.stdout, "attempt 1\nno newline");
    let r = rift(&eps, &["logs", "retry", "--attempt", "1", "-f"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "attempt 1\nno newline\n--- attempt 2 ---\nattempt 2\nno newline"
    );
    let r = rift(&eps, &["logs", "retry", "--attempt", "5"]);
    assert!(!r.ok);
    assert!(r.stderr.contains("no attempt 5"), "{}", r.stderr);
}

#[tokio::test]
async fn follow_streams_lines_as_they_are_written_and_ends_with_the_job() {
    let (cluster, store, mut client) = setup().await;
    let eps = cluster.endpoints_csv();
    let _agent = TestAgent::start("n1", &eps, &[]);
    create_job(
        &store,
        "ticker",
        "for i in $(seq 1 25); do echo tick $i; sleep 0.2; done",
        |_| {},
    )
    .await;
    bind(&mut client, "ticker", "n1").await;
    wait_phase(&store, "ticker", JobPhase::Running, 20).await;

    let mut child = KillOnDrop(
        rift_command(&eps, &["logs", "ticker", "-f"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map(|l| (l.unwrap(), Instant::now()))
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "rift logs -f did not end with the job"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let ended = Instant::now();
    assert!(status.success());
    let lines = reader.join().unwrap();
    let text: String = lines.iter().map(|(l, _)| format!("{l}\n")).collect();
    assert_eq!(text, numbered("tick", 1, 25));
    // Streamed as written (25 lines over ~5 s), not in one piece at the end.
    let spread = lines.last().unwrap().1 - lines.first().unwrap().1;
    assert!(
        spread >= Duration::from_secs(2),
        "lines arrived within {spread:?}"
    );
    // And it ended soon after the job did.
    let after_last = ended - lines.last().unwrap().1;
    assert!(
        after_last < Duration::from_secs(5),
        "ended {after_last:?} after the last line"
    );
    wait_phase(&store, "ticker", JobPhase::Succeeded, 10).await;
}

#[tokio::test]
async fn unknown_pending_and_invalid_jobs_are_clear_errors() {
    let (cluster, store, mut client) = setup().await;
    let eps = cluster.endpoints_csv();

    let r = rift(&eps, &["logs", "nope"]);
    assert!(!r.ok);
    assert!(r.stderr.contains("job/nope not found"), "{}", r.stderr);

    create_job(&store, "fresh", "true", |_| {}).await;
    let r = rift(&eps, &["logs", "fresh"]);
    assert!(!r.ok);
    assert!(r.stderr.contains("job fresh is Pending"), "{}", r.stderr);

    create_job(&store, "big", "true", |_| {}).await;
    let why = serde_json::json!({"pending": "0/1 nodes: 1 insufficient GPUs"}).to_string();
    client
        .put("/rift/v1/placements/big", why, None)
        .await
        .unwrap();
    let r = rift(&eps, &["logs", "big"]);
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("job big is Pending: 0/1 nodes: 1 insufficient GPUs"),
        "{}",
        r.stderr
    );

    // With -f, a job that is not placed is waited for, saying why.
    let mut follow = rift_command(&eps, &["logs", "-f", "big"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        follow.try_wait().unwrap().is_none(),
        "-f waits for a Pending job"
    );
    follow.kill().unwrap();
    let out = follow.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("waiting for job big to be placed: Pending: 0/1 nodes: 1 insufficient GPUs"),
        "{err}"
    );

    let r = rift(&eps, &["logs", "../x"]);
    assert!(!r.ok);
    assert!(r.stderr.contains("invalid job name"), "{}", r.stderr);
}

#[tokio::test]
async fn addresses_are_tried_in_order_until_one_answers() {
    let (cluster, store, mut client) = setup().await;
    let eps = cluster.endpoints_csv();
    // The reported endpoint refuses connections, and so does the first address (the agent
    // listens on 127.0.0.1 only).
    let agent = TestAgent::start("n1", &eps, &["--advertise", "127.0.0.3:1"]);
    let mut node = eventually(Duration::from_secs(20), "node n1 registered", || async {
        store.get::<NodeSpec>("n1").await.ok()?
    })
    .await;
    assert_eq!(node.spec.agent_port, agent.port);
    node.spec.addresses = vec!["127.0.0.2".into(), "127.0.0.1".into()];
    let node = store.update(&node).await.unwrap();

    create_job(&store, "hello", "echo hello from n1", |_| {}).await;
    bind(&mut client, "hello", "n1").await;
    wait_phase(&store, "hello", JobPhase::Succeeded, 20).await;

    let r = rift(&eps, &["logs", "hello"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, "hello from n1\n");

    // When none answers, the error names every address tried.
    let mut node = node;
    node.spec.addresses = vec!["127.0.0.2".into()];
    store.update(&node).await.unwrap();
    let r = rift(&eps, &["logs", "hello"]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("no address of node n1 answered"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("127.0.0.2:{}", agent.port)),
        "{}",
        r.stderr
    );
    let reported = store.get::<NodeSpec>("n1").await.unwrap().unwrap().status;
    if let Some(endpoint) = reported.and_then(|s| s.endpoint) {
        assert!(r.stderr.contains(&endpoint), "{}", r.stderr);
    }
}

#[tokio::test]
async fn the_agent_refuses_names_that_could_leave_the_state_directory() {
    let (cluster, store, mut client) = setup().await;
    let eps = cluster.endpoints_csv();
    let agent = TestAgent::start("n1", &eps, &[]);
    let addr = agent.addr();
    let get = |path: &str| support::http::get(&addr, path, Duration::from_secs(5));
    eventually(Duration::from_secs(20), "the agent's HTTP", || async {
        get("/healthz")
    })
    .await;

    // A job's state next to the one asked for, which `../` would reach.
    create_job(&store, "x", "echo secret", |_| {}).await;
    bind(&mut client, "x", "n1").await;
    wait_phase(&store, "x", JobPhase::Succeeded, 20).await;

    for path in [
        "/v1/jobs/..%2Fx/logs",
        "/v1/jobs/../logs",
        "/v1/jobs/%2E%2E/logs",
        "/v1/jobs/X/logs",
    ] {
        let (code, body) = get(path).unwrap();
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.starts_with("invalid job name"), "{path}: {body}");
        assert_eq!(body.trim_end().lines().count(), 1, "{body}");
    }
    let (code, body) = get("/v1/jobs/nope/logs").unwrap();
    assert_eq!(code, 404, "{body}");
    assert_eq!(body.trim_end().lines().count(), 1, "{body}");
    assert!(body.contains("nope"), "{body}");
    // HTTP/1.0: an unchunked body that ends when the agent closes the connection.
    let raw = support::http::exchange(
        &addr,
        "GET /v1/jobs/x/logs?tail=1 HTTP/1.0\r\n\r\n",
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(raw.starts_with("HTTP/1.0 200"), "{raw}");
    assert!(raw.ends_with("\r\n\r\nsecret\n"), "{raw}");
}
