//! The notifier controller against a real etcd and real HTTP receivers on 127.0.0.1: filters,
//! formats, HMAC signatures, retries, failures in status, isolation of a dead endpoint, and
//! throttling.

mod support;

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use rift::api::event::Reason;
use rift::api::notifier::{NotifierFormat, NotifierSpec, NotifierStatus, SecretRef};
use rift::api::Object;
use rift::controllers::notifier::{signature, NotifierConfig, NotifierController};
use rift::store::events::EventRecorder;
use rift::store::Store;
use serde_json::Value;
use support::etcd::EtcdCluster;
use tokio::sync::mpsc;

/// One request a receiver got.
#[derive(Debug)]
struct Hit {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone)]
struct Receiver {
    hits: mpsc::UnboundedSender<Hit>,
    status: Arc<AtomicU16>,
}

async fn hook(State(r): State<Receiver>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let _ = r.hits.send(Hit {
        path: uri.path().to_string(),
        headers,
        body,
    });
    StatusCode::from_u16(r.status.load(Ordering::Relaxed)).unwrap()
}

/// A live HTTP receiver answering every POST with `status`; returns its base URL.
async fn receiver(status: u16) -> (String, mpsc::UnboundedReceiver<Hit>, Arc<AtomicU16>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let status = Arc::new(AtomicU16::new(status));
    let app = axum::Router::new().fallback(hook).with_state(Receiver {
        hits: tx,
        status: status.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx, status)
}

/// An endpoint that accepts connections and never answers; counts connections.
async fn hung() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::Relaxed);
            held.push(sock);
        }
    });
    (url, count)
}

fn config() -> NotifierConfig {
    NotifierConfig {
        attempts: 3,
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        status_interval: Duration::from_millis(200),
        ..NotifierConfig::default()
    }
}

fn spec(url: &str, events: &[&str], format: NotifierFormat) -> NotifierSpec {
    NotifierSpec {
        url: url.to_string(),
        events: events.iter().map(|e| e.to_string()).collect(),
        format,
        secret: None,
        throttle_seconds: 60,
    }
}

/// The notifier runs until this is dropped.
struct Running {
    _stop: tokio_util::sync::DropGuard,
}

fn start(store: &Store, config: NotifierConfig) -> Running {
    let stop = rift::tasks::CancellationToken::new();
    let controller = NotifierController::with_config(store.clone(), config);
    tokio::spawn(controller.run(stop.clone()));
    Running {
        _stop: stop.drop_guard(),
    }
}

async fn next_hit(rx: &mut mpsc::UnboundedReceiver<Hit>, within: Duration) -> Hit {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("a delivery in time")
        .unwrap()
}

async fn no_hit(rx: &mut mpsc::UnboundedReceiver<Hit>, within: Duration) {
    if let Ok(Some(hit)) = tokio::time::timeout(within, rx.recv()).await {
        panic!(
            "unexpected delivery: {}",
            String::from_utf8_lossy(&hit.body)
        );
    }
}

/// Polls the Notifier's status until `ok` holds (10 s at most).
async fn status_until(
    store: &Store,
    name: &str,
    ok: impl Fn(&NotifierStatus) -> bool,
) -> NotifierStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = store.get::<NotifierSpec>(name).await.unwrap().unwrap();
        let status = n.status.unwrap_or_default();
        if ok(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status never matched: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn matching_events_are_delivered_signed_and_others_skipped() {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let secret = "hunter2-not-in-etcd";
    std::env::set_var("RIFT_TEST_NOTIFIER_SECRET_A", secret);
    let (url, mut hits, _) = receiver(200).await;
    let mut s = spec(
        &format!("{url}/hook"),
        &["job_failed", "node_not_ready"],
        NotifierFormat::Json,
    );
    s.secret = Some(SecretRef {
        env: Some("RIFT_TEST_NOTIFIER_SECRET_A".into()),
        file: None,
    });
    store.create(&Object::new("ops", s)).await.unwrap();
    let _running = start(&store, config());

    let controller = EventRecorder::controller(store.clone(), "training");
    let agent = EventRecorder::agent(store.clone(), "n1");
    controller
        .record_now("TrainingTarget", "hex8", Reason::TrainingStarted, "")
        .await
        .unwrap();
    agent
        .record_now("Job", "train-1", Reason::JobFailed, "exit code 1")
        .await
        .unwrap();

    let hit = next_hit(&mut hits, Duration::from_secs(5)).await;
    assert_eq!(hit.path, "/hook");
    let sig = hit.headers["x-rift-signature"].to_str().unwrap();
    assert_eq!(sig, signature(secret.as_bytes(), &hit.body), "valid HMAC");
    assert_eq!(
        hit.headers["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(
        hit.headers["x-rift-event"].to_str().unwrap(),
        "job.train-1.job_failed"
    );
    let body = hit.json();
    assert_eq!(body["kind"], "Event");
    assert_eq!(body["spec"]["reason"], "job_failed");
    assert_eq!(body["spec"]["source"], "agent/n1");
    assert!(body["text"].as_str().unwrap().contains("job/train-1"));
    no_hit(&mut hits, Duration::from_millis(700)).await;

    let status = status_until(&store, "ops", |s| s.delivered == 1).await;
    assert_eq!(status.failures, 0);
    assert!(status.last_delivery.is_some());
    assert!(status.last_error.is_empty());
    let (everything, _) = store.list_raw("/", None).await.unwrap();
    assert!(everything
        .iter()
        .all(|kv| !String::from_utf8_lossy(&kv.value).contains(secret)));
}

#[tokio::test]
async fn slack_and_discord_get_their_own_shapes() {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let (url, mut hits, _) = receiver(204).await;
    let slack = spec(&format!("{url}/slack"), &[], NotifierFormat::Slack);
    let discord = spec(&format!("{url}/discord"), &[], NotifierFormat::Discord);
    store.create(&Object::new("slack", slack)).await.unwrap();
    store
        .create(&Object::new("discord", discord))
        .await
        .unwrap();
    let _running = start(&store, config());
    EventRecorder::controller(store.clone(), "training")
        .record_now("TrainingTarget", "hex8", Reason::ModelPromoted, "elo +40")
        .await
        .unwrap();
    let mut bodies = [
        next_hit(&mut hits, Duration::from_secs(5)).await,
        next_hit(&mut hits, Duration::from_secs(5)).await,
    ];
    bodies.sort_by(|a, b| a.path.cmp(&b.path));
    let text = "Normal model_promoted trainingtarget/hex8: elo +40 (controller/training)";
    assert_eq!(bodies[0].path, "/discord");
    assert_eq!(bodies[0].json(), serde_json::json!({ "content": text }));
    assert_eq!(bodies[1].path, "/slack");
    assert_eq!(bodies[1].json(), serde_json::json!({ "text": text }));
    assert!(!bodies[0].headers.contains_key("x-rift-signature"));
    status_until(&store, "slack", |s| s.delivered == 1).await;
}

#[tokio::test]
async fn a_missing_secret_is_a_failure_that_says_why() {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let (url, mut hits, _) = receiver(200).await;
    let mut s = spec(&url, &[], NotifierFormat::Json);
    s.secret = Some(SecretRef {
        env: Some("RIFT_TEST_NOTIFIER_SECRET_UNSET".into()),
        file: None,
    });
    store.create(&Object::new("unsigned", s)).await.unwrap();
    let _running = start(&store, config());
    EventRecorder::controller(store.clone(), "x")
        .record_now("Job", "j", Reason::JobFailed, "")
        .await
        .unwrap();
    let status = status_until(&store, "unsigned", |s| s.failures == 1).await;
    assert!(
        status
            .last_error
            .contains("RIFT_TEST_NOTIFIER_SECRET_UNSET"),
        "{}",
        status.last_error
    );
    assert_eq!(status.delivered, 0);
    no_hit(&mut hits, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_hung_endpoint_is_retried_reported_and_delays_no_one() {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let (dead_url, connections) = hung().await;
    let (live_url, mut hits, _) = receiver(200).await;
    store
        .create(&Object::new(
            "dead",
            spec(&dead_url, &[], NotifierFormat::Json),
        ))
        .await
        .unwrap();
    store
        .create(&Object::new(
            "live",
            spec(&live_url, &[], NotifierFormat::Slack),
        ))
        .await
        .unwrap();
    let _running = start(&store, config());
    let rec = EventRecorder::controller(store.clone(), "voters");

    let started = Instant::now();
    for name in ["m1", "m2", "m3"] {
        rec.record_now("VoterSet", name, Reason::VoterPromoted, "")
            .await
            .unwrap();
    }
    for _ in 0..3 {
        next_hit(&mut hits, Duration::from_secs(3)).await;
    }
    // Three events, each one delivery the hung endpoint holds for 3 attempts x 1 s.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the live notifier waited: {:?}",
        started.elapsed()
    );

    let status = status_until(&store, "dead", |s| s.failures >= 1).await;
    assert!(
        status.last_error.contains("timed out"),
        "{}",
        status.last_error
    );
    assert!(
        !status.last_error.contains("http://"),
        "{}",
        status.last_error
    );
    assert_eq!(status.delivered, 0);
    assert!(
        connections.load(Ordering::Relaxed) >= 3,
        "retried: {} connections",
        connections.load(Ordering::Relaxed)
    );
    let live = status_until(&store, "live", |s| s.delivered == 3).await;
    assert_eq!(live.failures, 0);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_until_they_pass() {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let (url, mut hits, status) = receiver(503).await;
    // A refused port: nothing listens there.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    store
        .create(&Object::new("flaky", spec(&url, &[], NotifierFormat::Json)))
        .await
        .unwrap();
    store
        .create(&Object::new(
            "down",
            spec(&refused, &[], NotifierFormat::Json),
        ))
        .await
        .unwrap();
    let _running = start(&store, config());
    let rec = EventRecorder::controller(store.clone(), "x");
    rec.record_now("Node", "n1", Reason::NodeNotReady, "")
        .await
        .unwrap();
    for _ in 0..3 {
        next_hit(&mut hits, Duration::from_secs(3)).await;
    }
    let flaky = status_until(&store, "flaky", |s| s.failures == 1).await;
    assert!(flaky.last_error.contains("503"), "{}", flaky.last_error);
    let down = status_until(&store, "down", |s| s.failures == 1).await;
    assert!(
        down.last_error.contains("could not connect"),
        "{}",
        down.last_error
    );

    // The endpoint recovers: the next event goes through, and the error is cleared.
    status.store(200, Ordering::Relaxed);
    rec.record_now("Node", "n2", Reason::NodeNotReady, "")
        .await
        .unwrap();
    next_hit(&mut hits, Duration::from_secs(3)).await;
    let flaky = status_until(&store, "flaky", |s| s.delivered == 1).await;
    assert_eq!(flaky.failures, 1);
    assert!(flaky.last_error.is_empty());
}

#[tokio::test]
async fn a_burst_of_identical_events_is_sent_once() {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let (url, mut hits, _) = receiver(200).await;
    store
        .create(&Object::new("ops", spec(&url, &[], NotifierFormat::Json)))
        .await
        .unwrap();
    let _running = start(&store, config());
    let rec = EventRecorder::agent(store.clone(), "n1");
    for _ in 0..5 {
        rec.record_now("Job", "j1", Reason::JobFailed, "boom")
            .await
            .unwrap();
    }
    rec.record_now("Job", "j2", Reason::JobFailed, "boom")
        .await
        .unwrap();
    let a = next_hit(&mut hits, Duration::from_secs(5)).await;
    let b = next_hit(&mut hits, Duration::from_secs(5)).await;
    let mut names = [
        a.json()["spec"]["involvedObject"]["name"].clone(),
        b.json()["spec"]["involvedObject"]["name"].clone(),
    ];
    names.sort_by_key(|v| v.to_string());
    assert_eq!(names, [Value::from("j1"), Value::from("j2")]);
    no_hit(&mut hits, Duration::from_millis(700)).await;
}

#[tokio::test]
async fn stored_events_are_not_sent_again_by_a_new_leader() {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let (url, mut hits, _) = receiver(200).await;
    let mut s = spec(&url, &[], NotifierFormat::Json);
    s.throttle_seconds = 0;
    store.create(&Object::new("ops", s)).await.unwrap();
    let rec = EventRecorder::controller(store.clone(), "x");
    rec.record_now("Job", "j1", Reason::JobFailed, "")
        .await
        .unwrap();
    let running = start(
        &store,
        NotifierConfig {
            replay_window: Duration::ZERO,
            ..config()
        },
    );
    no_hit(&mut hits, Duration::from_millis(700)).await;
    rec.record_now("Job", "j1", Reason::JobFailed, "")
        .await
        .unwrap();
    let hit = next_hit(&mut hits, Duration::from_secs(5)).await;
    assert_eq!(hit.json()["spec"]["count"], 2);

    // With the default window, what happened just before the start is still sent.
    drop(running);
    let _again = start(&store, config());
    let hit = next_hit(&mut hits, Duration::from_secs(5)).await;
    assert_eq!(hit.json()["spec"]["count"], 2);
}
