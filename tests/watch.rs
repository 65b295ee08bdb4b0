//! The watcher against real etcd: ordering, resuming across a member restart, relisting after
//! compaction.

mod support;

use std::time::Duration;

use rift::store::watcher::{WatchConfig, WatchEvent, Watcher};
use rift::store::Store;
use support::etcd::EtcdCluster;

const PREFIX: &str = "/rift/v1/test/";

fn quick() -> WatchConfig {
    WatchConfig {
        idle_timeout: Duration::from_secs(2),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        reset_after: Duration::from_secs(5),
    }
}

/// The next event that is not an error, within a generous bound.
async fn next_event(w: &mut Watcher) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match w.next().await {
                Ok(e) => return e,
                Err(e) => eprintln!("watch error (retrying): {e}"),
            }
        }
    })
    .await
    .expect("an event within 30 s")
}

fn describe(e: &WatchEvent) -> String {
    match e {
        WatchEvent::Put(kv) => format!("put {} {}", kv.key, String::from_utf8_lossy(&kv.value)),
        WatchEvent::Delete { key, .. } => format!("delete {key}"),
        WatchEvent::Restarted { items, .. } => format!("restarted with {}", items.len()),
    }
}

#[tokio::test]
async fn sees_create_update_delete_in_order() {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let mut client = cluster.client().await;
    client
        .put(format!("{PREFIX}before"), "0", None)
        .await
        .unwrap();

    let mut w = Watcher::new(store, PREFIX, quick());
    match next_event(&mut w).await {
        WatchEvent::Restarted { items, .. } => assert_eq!(items.len(), 1),
        other => panic!("expected the initial list, got {}", describe(&other)),
    }
    client.put(format!("{PREFIX}a"), "1", None).await.unwrap();
    client.put(format!("{PREFIX}a"), "2", None).await.unwrap();
    client.delete(format!("{PREFIX}a"), None).await.unwrap();
    client.put("/rift/v1/elsewhere", "x", None).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(describe(&next_event(&mut w).await));
    }
    assert_eq!(
        seen,
        [
            format!("put {PREFIX}a 1"),
            format!("put {PREFIX}a 2"),
            format!("delete {PREFIX}a"),
        ]
    );
}

/// A watcher past its initial list that talks only to member 0, and a client writing through
/// member 1, so member 0 can be stopped while writes go on.
async fn watcher_on_member_0(cluster: &EtcdCluster) -> (Watcher, etcd_client::Client) {
    let store = Store::connect(&cluster.access_to(&[cluster.client_url(0)]))
        .await
        .unwrap();
    let writer = cluster.client_at(&[cluster.client_url(1)]).await;
    let mut w = Watcher::new(store, PREFIX, quick());
    assert!(matches!(
        next_event(&mut w).await,
        WatchEvent::Restarted { .. }
    ));
    (w, writer)
}

#[tokio::test]
async fn resumes_without_missing_events_when_its_member_restarts() {
    let mut cluster = EtcdCluster::three();
    let (mut w, mut writer) = watcher_on_member_0(&cluster).await;
    writer.put(format!("{PREFIX}k0"), "0", None).await.unwrap();
    assert_eq!(
        describe(&next_event(&mut w).await),
        format!("put {PREFIX}k0 0")
    );

    cluster.stop(0);
    for i in 1..=10 {
        writer
            .put(format!("{PREFIX}k{i}"), i.to_string(), None)
            .await
            .unwrap();
    }
    cluster.start(0);

    for i in 1..=10 {
        let e = next_event(&mut w).await;
        assert_eq!(describe(&e), format!("put {PREFIX}k{i} {i}"), "event {i}");
    }
}

#[tokio::test]
async fn relists_when_the_revision_it_needs_was_compacted() {
    let mut cluster = EtcdCluster::three();
    let (mut w, mut writer) = watcher_on_member_0(&cluster).await;

    cluster.stop(0);
    for i in 0..5 {
        writer
            .put(format!("{PREFIX}k{i}"), "v", None)
            .await
            .unwrap();
    }
    writer.delete(format!("{PREFIX}k0"), None).await.unwrap();
    cluster.compact().await;
    cluster.start(0);

    // The history it missed is gone: it must start over from a fresh list.
    match next_event(&mut w).await {
        WatchEvent::Restarted { items, revision } => {
            assert_eq!(items.len(), 4, "k1..k4 survive");
            assert!(revision >= w.revision());
        }
        other => panic!("expected a relist, got {}", describe(&other)),
    }
    writer
        .put(format!("{PREFIX}after"), "v", None)
        .await
        .unwrap();
    assert_eq!(
        describe(&next_event(&mut w).await),
        format!("put {PREFIX}after v")
    );
}

#[tokio::test]
async fn idle_stream_is_kept_alive_by_progress_requests() {
    let cluster = EtcdCluster::single();
    let store = cluster.store().await;
    let mut client = cluster.client().await;
    let config = WatchConfig {
        idle_timeout: Duration::from_millis(300),
        ..quick()
    };
    let mut w = Watcher::new(store, PREFIX, config);
    assert!(matches!(
        next_event(&mut w).await,
        WatchEvent::Restarted { .. }
    ));
    // Several idle periods pass with no event; a healthy stream reports no error.
    let idle = tokio::time::timeout(Duration::from_secs(2), w.next()).await;
    assert!(idle.is_err(), "no event and no error while idle: {idle:?}");
    client
        .put(format!("{PREFIX}late"), "v", None)
        .await
        .unwrap();
    assert_eq!(
        describe(&next_event(&mut w).await),
        format!("put {PREFIX}late v")
    );
}
