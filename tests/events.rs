//! The event recorder against a real etcd: dedupe by object and reason, the 1 h lease, the
//! agent scope, the non-blocking queue, and `rift get events` / `rift describe` showing them.

mod support;

use std::time::{Duration, Instant};

use rift::api::event::{Event, EventType, Reason};
use rift::api::{JobSpec, Object};
use rift::store::events::{event_id, EventRecorder, EventScope, EVENT_TTL};
use rift::store::Store;
use support::cli::rift;
use support::etcd::EtcdCluster;

async fn store(cluster: &EtcdCluster) -> Store {
    cluster.store().await
}

async fn stored(store: &Store, key: &str) -> (Event, i64) {
    let kv = store
        .get_raw(key)
        .await
        .unwrap()
        .expect("the event is stored");
    (serde_json::from_slice(&kv.value).unwrap(), kv.lease)
}

#[tokio::test]
async fn a_repeat_bumps_the_count_and_keeps_first_seen() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    let rec = EventRecorder::controller(store.clone(), "scheduler");
    let first = rec
        .record_now("Job", "train-1", Reason::JobFailed, "exit code 1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = rec
        .record_now("Job", "train-1", Reason::JobFailed, "exit code 2")
        .await
        .unwrap();
    assert_eq!(second.spec.count, 2);

    let key = "/rift/v1/events/job.train-1.job_failed";
    assert_eq!(rec.key_for("Job", "train-1", Reason::JobFailed), key);
    let (kvs, _) = store.list_raw("/rift/v1/events/", None).await.unwrap();
    assert_eq!(kvs.len(), 1, "one key per object and reason");
    let (ev, lease) = stored(&store, key).await;
    assert_eq!(ev.metadata.name, "job.train-1.job_failed");
    assert_eq!(ev.spec.count, 2);
    assert_eq!(ev.spec.first_seen, first.spec.first_seen);
    assert!(ev.spec.last_seen > first.spec.last_seen);
    assert_eq!(ev.spec.message, "exit code 2");
    assert_eq!(ev.spec.involved_object.kind, "Job");
    assert_eq!(ev.spec.involved_object.name, "train-1");
    assert_eq!(ev.spec.event_type, EventType::Warning);
    assert_eq!(ev.spec.source, "controller/scheduler");

    assert_ne!(lease, 0, "events are stored under a lease");
    let ttl = store
        .client()
        .lease_time_to_live(lease, None)
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), EVENT_TTL.as_secs() as i64);
    assert!(ttl.ttl() > 3500 && ttl.ttl() <= 3600, "ttl {}", ttl.ttl());

    // Another object or reason is another event, under the same lease.
    rec.record_now("Job", "train-1", Reason::JobSucceeded, "")
        .await
        .unwrap();
    let (_, lease2) = stored(&store, "/rift/v1/events/job.train-1.job_succeeded").await;
    assert_eq!(lease2, lease, "one lease per recorder");
}

#[tokio::test]
async fn agent_events_live_under_the_agents_prefix() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    let rec = EventRecorder::agent(store.clone(), "n1");
    assert_eq!(rec.scope(), &EventScope::Agent("n1".into()));
    rec.record_now("Job", "selfplay-3", Reason::JobSucceeded, "pid 42")
        .await
        .unwrap();
    let (ev, lease) = stored(
        &store,
        "/rift/v1/agents/n1/events/job.selfplay-3.job_succeeded",
    )
    .await;
    assert_eq!(ev.spec.source, "agent/n1");
    assert_ne!(lease, 0);
    let (controller, _) = store.list_raw("/rift/v1/events/", None).await.unwrap();
    assert!(controller.is_empty());
}

#[tokio::test]
async fn concurrent_recorders_lose_no_occurrence() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    let a = EventRecorder::controller(store.clone(), "a");
    let b = EventRecorder::controller(store.clone(), "b");
    let hit = |rec: EventRecorder| async move {
        for _ in 0..10 {
            rec.record_now("Node", "n1", Reason::NodeNotReady, "")
                .await
                .unwrap();
        }
    };
    tokio::join!(hit(a), hit(b));
    let (ev, _) = stored(&store, "/rift/v1/events/node.n1.node_not_ready").await;
    assert_eq!(ev.spec.count, 20);
}

#[tokio::test]
async fn a_revoked_lease_is_replaced() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    let rec = EventRecorder::controller(store.clone(), "scheduler");
    let key = rec.key_for("Job", "selfplay", Reason::JobUnschedulable);
    rec.record_now("Job", "selfplay", Reason::JobUnschedulable, "")
        .await
        .unwrap();
    let (_, lease) = stored(&store, &key).await;
    store.client().lease_revoke(lease).await.unwrap();
    assert!(store.get_raw(&key).await.unwrap().is_none());

    let ev = rec
        .record_now("Job", "selfplay", Reason::JobUnschedulable, "again")
        .await
        .unwrap();
    assert_eq!(ev.spec.count, 1, "the expired event starts over");
    let (_, fresh) = stored(&store, &key).await;
    assert_ne!(fresh, 0);
    assert_ne!(fresh, lease);
}

#[tokio::test]
async fn record_returns_at_once_and_writes_in_the_background() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    let rec = EventRecorder::controller(store.clone(), "scheduler");
    let started = Instant::now();
    for i in 0..50 {
        rec.record("Job", &format!("j{i}"), Reason::JobSucceeded, "started");
    }
    rec.record("Job", "j0", Reason::JobSucceeded, "started again");
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    rec.flush().await;
    let (kvs, _) = store.list_raw("/rift/v1/events/", None).await.unwrap();
    assert_eq!(kvs.len(), 50);
    let (ev, _) = stored(&store, &rec.key_for("Job", "j0", Reason::JobSucceeded)).await;
    assert_eq!(ev.spec.count, 2);
    assert_eq!(ev.spec.message, "started again");
    assert_eq!(ev.spec.event_type, EventType::Normal, "the reason's type");
    assert_eq!(rec.dropped(), 0);
}

#[tokio::test]
async fn recording_never_waits_for_a_dead_etcd() {
    let mut cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    let rec = EventRecorder::controller(store, "scheduler");
    cluster.kill(0);
    let started = Instant::now();
    for i in 0..3000 {
        rec.record("Job", &format!("j{i}"), Reason::JobSucceeded, "");
    }
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn get_and_describe_show_controller_and_agent_events() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    store
        .create(&Object::new("train-1", JobSpec::with_command(["true"])))
        .await
        .unwrap();
    let controller = EventRecorder::controller(store.clone(), "scheduler");
    let agent = EventRecorder::agent(store.clone(), "n1");
    for _ in 0..2 {
        controller
            .record_now("Job", "train-1", Reason::JobUnschedulable, "placed on n1")
            .await
            .unwrap();
    }
    agent
        .record_now("Job", "train-1", Reason::JobFailed, "exit code 3")
        .await
        .unwrap();

    let endpoints = cluster.endpoints_csv();
    let out = rift(&endpoints, &["get", "events"]);
    assert!(out.ok, "{}", out.stderr);
    let scheduled = out
        .stdout
        .lines()
        .find(|l| l.contains("job_unschedulable"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(scheduled.contains("job/train-1"), "{scheduled}");
    assert!(scheduled.contains(" 2 "), "{scheduled}");
    assert!(scheduled.contains("placed on n1"), "{scheduled}");
    let failed = out
        .stdout
        .lines()
        .find(|l| l.contains("job_failed"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(failed.contains("Warning") && failed.contains("exit code 3"));

    let wide = rift(&endpoints, &["get", "events", "-o", "wide"]);
    assert!(wide.stdout.contains("agent/n1"), "{}", wide.stdout);
    let one = rift(
        &endpoints,
        &[
            "get",
            "event",
            &event_id("Job", "train-1", "job_failed"),
            "-o",
            "json",
        ],
    );
    assert!(one.ok, "{}", one.stderr);
    assert!(one.stdout.contains("\"count\": 1"), "{}", one.stdout);

    let described = rift(&endpoints, &["describe", "job", "train-1"]);
    assert!(described.ok, "{}", described.stderr);
    assert!(
        described.stdout.contains("job_unschedulable") && described.stdout.contains("job_failed"),
        "{}",
        described.stdout
    );
}

/// A Job re-created under an old name starts its events afresh, and `describe` shows only the
/// events of the Job that exists now.
#[tokio::test]
async fn a_recreated_jobs_events_are_its_own() {
    use rift::api::event::ObjectRef;
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    let endpoints = cluster.endpoints_csv();
    let rec = EventRecorder::agent(store.clone(), "n1");
    let about = |uid: &str| ObjectRef {
        kind: "Job".into(),
        name: "train-1".into(),
        uid: uid.into(),
    };
    let first = store
        .create(&Object::new("train-1", JobSpec::with_command(["true"])))
        .await
        .unwrap();
    let old_uid = first.metadata.uid.clone().unwrap();
    for _ in 0..2 {
        rec.record_about(&about(&old_uid), Reason::JobFailed, "exit code 1");
    }
    rec.record("Job", "train-1", Reason::JobUnschedulable, "placed on n1");
    rec.flush().await;
    assert!(rift(&endpoints, &["delete", "job", "train-1"]).ok);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = store
        .create(&Object::new("train-1", JobSpec::with_command(["true"])))
        .await
        .unwrap();
    let new_uid = second.metadata.uid.clone().unwrap();
    assert_ne!(old_uid, new_uid);

    let described = rift(&endpoints, &["describe", "job", "train-1"]);
    assert!(described.ok, "{}", described.stderr);
    assert!(
        described.stdout.contains("Events:\n  <none>"),
        "the earlier job's events are not this one's:\n{}",
        described.stdout
    );

    rec.record_about(&about(&new_uid), Reason::JobFailed, "exit code 2");
    rec.flush().await;
    let key = rec.key_for("Job", "train-1", Reason::JobFailed);
    let (ev, _) = stored(&store, &key).await;
    assert_eq!(ev.spec.count, 1, "started over for the new uid");
    assert_eq!(ev.spec.involved_object.uid, new_uid);
    let described = rift(&endpoints, &["describe", "job", "train-1"]);
    assert!(
        described.stdout.contains("exit code 2"),
        "{}",
        described.stdout
    );
    assert!(
        !described.stdout.contains("job_unschedulable"),
        "{}",
        described.stdout
    );
}
