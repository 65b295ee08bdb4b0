//! The controller runtime against a real etcd: a reflector's cache follows the store, and a
//! controller driven by it reconciles what changes.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rift::api::{JobSpec, Object};
use rift::runtime::controller::{Action, Controller, ControllerConfig};
use rift::runtime::reflector::Reflector;
use rift::store::keys;
use rift::store::watcher::WatchConfig;
use support::etcd::EtcdCluster;
use tokio::sync::oneshot;

fn job(name: &str, cmd: &str) -> Object<JobSpec> {
    Object::new(name, JobSpec::with_command([cmd]))
}

fn quick() -> WatchConfig {
    WatchConfig {
        idle_timeout: Duration::from_secs(2),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        reset_after: Duration::from_secs(5),
    }
}

/// Polls `check` until it holds, for up to 20 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stop_signal() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

#[tokio::test]
async fn a_reflector_cache_follows_the_store() {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let a = store.create(&job("a", "true")).await.unwrap();
    let mut client = cluster.client().await;
    client
        .put(keys::object("jobs", "broken"), "{not json", None)
        .await
        .unwrap();

    let reflector = Reflector::<JobSpec>::new(store.clone(), quick());
    let cache = reflector.cache();
    let (stop, stopped) = stop_signal();
    let running = tokio::spawn(reflector.run(stopped));
    tokio::time::timeout(Duration::from_secs(20), cache.ready())
        .await
        .expect("ready after the first list");
    assert_eq!(cache.names(), ["a"], "the undecodable value is skipped");
    assert_eq!(
        cache.get("a").unwrap().metadata.resource_version,
        a.metadata.resource_version
    );

    let mut changes = cache.subscribe();
    let b = store.create(&job("b", "sleep")).await.unwrap();
    let change = tokio::time::timeout(Duration::from_secs(20), changes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.name(), "b");
    assert!(change.old.is_none());
    assert_eq!(cache.get("b").unwrap().spec, b.spec);
    assert_eq!(
        cache.get("b").unwrap().metadata.revision(),
        b.metadata.revision()
    );

    store
        .put_status::<JobSpec>("b", &Default::default())
        .await
        .unwrap();
    store
        .delete_object(rift::api::kinds::by_kind("Job").unwrap(), "a")
        .await
        .unwrap();
    eventually("a is gone", || cache.get("a").is_none()).await;
    assert!(
        cache.get("b").unwrap().status.is_none(),
        "status is not cached"
    );
    stop.send(()).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn a_controller_reconciles_what_changes_in_the_store() {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    store.create(&job("first", "true")).await.unwrap();

    let reflector = Reflector::<JobSpec>::new(store.clone(), quick());
    let cache = reflector.cache();
    let (stop_reflector, reflector_stopped) = stop_signal();
    tokio::spawn(reflector.run(reflector_stopped));

    // Each reconcile records the generation it saw.
    type Seen = Mutex<HashMap<String, Vec<i64>>>;
    let seen: Arc<Seen> = Arc::default();
    let (stop, stopped) = stop_signal();
    let controller = Controller::new(cache, ControllerConfig::default()).shutdown_on(stopped);
    let running = tokio::spawn(controller.run(
        |job: Arc<Object<JobSpec>>, seen: Arc<Seen>| async move {
            let generation = job.metadata.generation.unwrap_or_default();
            let mut seen = seen.lock().unwrap();
            seen.entry(job.name().to_string())
                .or_default()
                .push(generation);
            Ok::<_, std::io::Error>(Action::AwaitChange)
        },
        seen.clone(),
    ));
    let generations = |name: &str| seen.lock().unwrap().get(name).cloned().unwrap_or_default();

    eventually("the listed job is reconciled", || {
        generations("first") == [1]
    })
    .await;
    let second = store.create(&job("second", "true")).await.unwrap();
    eventually("a new job is reconciled", || generations("second") == [1]).await;
    let mut changed = second.clone();
    changed.spec = JobSpec::with_command(["false"]);
    store.update(&changed).await.unwrap();
    eventually("a changed job is reconciled again", || {
        generations("second") == [1, 2]
    })
    .await;
    assert_eq!(generations("first"), [1], "an unchanged job is left alone");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the controller stops")
        .unwrap();
    stop_reflector.send(()).unwrap();
}
