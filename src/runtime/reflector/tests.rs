use std::time::Duration;

use futures::FutureExt;

use super::*;
use crate::runtime::testing::{widget, WidgetSpec};

fn kv(name: &str, size: u32, rev: i64) -> KeyValue {
    KeyValue {
        key: keys::object("widgets", name),
        value: serde_json::to_vec(&widget(name, size)).unwrap(),
        create_revision: rev,
        mod_revision: rev,
        lease: 0,
    }
}

fn restarted(items: Vec<KeyValue>) -> WatchEvent {
    let revision = items.iter().map(|kv| kv.mod_revision).max().unwrap_or(1);
    WatchEvent::Restarted { items, revision }
}

fn size(cache: &Cache<WidgetSpec>, name: &str) -> Option<u32> {
    cache.get(name).map(|w| w.spec.size)
}

/// Every change announced so far, as `name: old size -> new size`.
fn drain(rx: &mut broadcast::Receiver<Change<WidgetSpec>>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(c) = rx.try_recv() {
        let s = |o: &Option<Arc<Object<WidgetSpec>>>| o.as_ref().map(|w| w.spec.size);
        out.push(format!("{}: {:?} -> {:?}", c.name(), s(&c.old), s(&c.new)));
    }
    out.sort();
    out
}

#[tokio::test]
async fn ready_resolves_only_after_the_first_list() {
    let writer = Writer::<WidgetSpec>::default();
    let cache = writer.cache();
    writer.apply(&WatchEvent::Put(kv("a", 1, 5)));
    assert!(!cache.is_ready(), "a single put is not a complete list");
    assert!(cache.ready().now_or_never().is_none());
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move { cache.ready().await }
    });
    writer.apply(&restarted(vec![kv("a", 1, 5)]));
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("ready after the list")
        .unwrap();
    assert!(cache.is_ready());
}

#[tokio::test]
async fn the_first_list_makes_the_cache_ready_without_announcing_each_object() {
    let writer = Writer::<WidgetSpec>::default();
    let cache = writer.cache();
    let mut rx = cache.subscribe();
    writer.apply(&restarted(vec![kv("a", 1, 2), kv("b", 1, 3)]));
    assert!(cache.is_ready());
    assert_eq!(cache.len(), 2);
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn a_restart_replaces_the_whole_map_and_announces_only_differences() {
    let writer = Writer::<WidgetSpec>::default();
    let cache = writer.cache();
    writer.apply(&restarted(vec![
        kv("a", 1, 2),
        kv("b", 1, 3),
        kv("c", 1, 4),
    ]));
    let mut rx = cache.subscribe();
    writer.apply(&restarted(vec![
        kv("a", 1, 2),
        kv("b", 2, 9),
        kv("d", 1, 9),
    ]));
    let mut names = cache.names();
    names.sort();
    assert_eq!(names, ["a", "b", "d"]);
    assert_eq!(
        drain(&mut rx),
        [
            "b: Some(1) -> Some(2)",
            "c: Some(1) -> None",
            "d: None -> Some(1)"
        ]
    );
}

#[tokio::test]
async fn put_decodes_and_records_the_mod_revision() {
    let writer = Writer::<WidgetSpec>::default();
    let cache = writer.cache();
    writer.apply(&restarted(vec![]));
    writer.apply(&WatchEvent::Put(kv("a", 7, 42)));
    let a = cache.get("a").unwrap();
    assert_eq!(a.spec.size, 7);
    assert_eq!(a.metadata.resource_version.as_deref(), Some("42"));
    assert_eq!(a.metadata.revision(), Some(42));
    assert!(a.status.is_none(), "status is not part of the cache");
}

#[tokio::test]
async fn delete_removes_and_announces_the_last_version() {
    let writer = Writer::<WidgetSpec>::default();
    let cache = writer.cache();
    writer.apply(&restarted(vec![kv("a", 3, 2)]));
    let mut rx = cache.subscribe();
    writer.apply(&WatchEvent::Delete {
        key: keys::object("widgets", "a"),
        mod_revision: 3,
        prev: None,
    });
    writer.apply(&WatchEvent::Delete {
        key: keys::object("widgets", "never-seen"),
        mod_revision: 4,
        prev: None,
    });
    assert!(cache.get("a").is_none());
    assert_eq!(drain(&mut rx), ["a: Some(3) -> None"]);
}

#[tokio::test]
async fn an_undecodable_value_is_skipped_and_the_previous_version_kept() {
    let writer = Writer::<WidgetSpec>::default();
    let cache = writer.cache();
    let mut broken = kv("a", 0, 9);
    broken.value = br#"{"not": "a widget"}"#.to_vec();
    writer.apply(&restarted(vec![kv("b", 1, 2), broken.clone()]));
    assert!(cache.is_ready());
    assert_eq!(cache.names(), ["b"], "skipped in a list");
    writer.apply(&WatchEvent::Put(kv("a", 1, 10)));
    let mut rx = cache.subscribe();
    broken.mod_revision = 11;
    writer.apply(&WatchEvent::Put(broken));
    assert_eq!(size(&cache, "a"), Some(1), "the last good version stays");
    assert!(drain(&mut rx).is_empty(), "and nothing is announced");
}

#[tokio::test]
async fn a_change_is_in_the_cache_before_it_is_announced() {
    let writer = Writer::<WidgetSpec>::default();
    let cache = writer.cache();
    writer.apply(&restarted(vec![]));
    let mut rx = cache.subscribe();
    let reader = tokio::spawn({
        let cache = cache.clone();
        async move {
            let change = rx.recv().await.unwrap();
            size(&cache, change.name())
        }
    });
    writer.apply(&WatchEvent::Put(kv("a", 5, 3)));
    assert_eq!(reader.await.unwrap(), Some(5));
}

#[tokio::test]
async fn list_is_in_name_order() {
    let writer = Writer::<WidgetSpec>::default();
    writer.replace([widget("c", 1), widget("a", 1), widget("b", 1)]);
    let names: Vec<_> = writer
        .cache()
        .list()
        .iter()
        .map(|w| w.name().to_string())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[tokio::test]
async fn a_slow_subscriber_is_told_it_lagged() {
    let writer = Writer::<WidgetSpec>::new(2);
    let mut rx = writer.cache().subscribe();
    for i in 0..5 {
        writer.put(widget("a", i));
    }
    assert!(matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Lagged(3))
    ));
}
