//! The typed store against a real etcd: round trips, compare-and-swap, generations, apply.

mod support;

use rift::api::kinds;
use rift::api::selector::LabelSelector;
use rift::api::{JobSpec, Object, PoolSpec};
use rift::store::{ApplyItem, ApplyOutcome, Store, StoreError};
use support::etcd::EtcdCluster;

fn job(name: &str, cmd: &str) -> Object<JobSpec> {
    Object::new(name, JobSpec::with_command([cmd]))
}

async fn store(cluster: &EtcdCluster) -> Store {
    cluster.store().await
}

#[tokio::test]
async fn create_get_list_round_trip_with_selector() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    let mut a = job("a", "true");
    a.metadata.labels.insert("board".into(), "hex8".into());
    let created = store.create(&a).await.unwrap();
    store.create(&job("b", "true")).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());

    let got = store.get::<JobSpec>("a").await.unwrap().unwrap();
    assert_eq!(got.spec, a.spec);
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );

    let (all, _) = store
        .list::<JobSpec>(&LabelSelector::everything())
        .await
        .unwrap();
    assert_eq!(all.iter().map(|j| j.name()).collect::<Vec<_>>(), ["a", "b"]);
    let (hex, _) = store
        .list::<JobSpec>(&"board=hex8".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(hex.len(), 1);
    assert!(store.get::<PoolSpec>("a").await.unwrap().is_none());
}

#[tokio::test]
async fn create_if_absent_refuses_an_existing_name() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    store.create(&job("a", "true")).await.unwrap();
    let err = store.create(&job("a", "false")).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    let kept = store.get::<JobSpec>("a").await.unwrap().unwrap();
    assert_eq!(kept.spec.command, ["true"]);
}

#[tokio::test]
async fn two_concurrent_updates_one_conflicts_and_no_update_is_lost() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    store.create(&job("a", "v0")).await.unwrap();
    let read = store.get::<JobSpec>("a").await.unwrap().unwrap();

    let mut first = read.clone();
    first.spec.command = vec!["v1".into()];
    let mut second = read.clone();
    second.spec.command = vec!["v2".into()];
    let (r1, r2) = tokio::join!(store.update(&first), store.update(&second));
    let results = [r1, r2];
    let wins = results.iter().filter(|r| r.is_ok()).count();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict { .. })))
        .count();
    assert_eq!((wins, conflicts), (1, 1), "{results:?}");

    // The loser retries from a fresh read: both updates end up applied, in order.
    let winner = results.iter().find_map(|r| r.as_ref().ok()).unwrap();
    let mut retry = store.get::<JobSpec>("a").await.unwrap().unwrap();
    assert_eq!(retry.spec, winner.spec);
    retry.spec.env.insert("LOSER".into(), "retried".into());
    store.update(&retry).await.unwrap();
    let last = store.get::<JobSpec>("a").await.unwrap().unwrap();
    assert_eq!(last.spec.command, winner.spec.command);
    assert_eq!(last.spec.env["LOSER"], "retried");
    assert_eq!(last.metadata.generation, Some(3));
}

#[tokio::test]
async fn spec_change_bumps_generation_and_status_change_does_not() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    let spec: PoolSpec = serde_json::from_value(serde_json::json!({
        "replicas": 1, "template": {"spec": {"command": ["true"]}}
    }))
    .unwrap();
    let created = store.create(&Object::new("p", spec)).await.unwrap();

    let status = rift::api::pool::PoolStatus {
        running: 1,
        ..Default::default()
    };
    store.put_status::<PoolSpec>("p", &status).await.unwrap();
    let after_status = store.get::<PoolSpec>("p").await.unwrap().unwrap();
    assert_eq!(after_status.metadata.generation, Some(1));
    assert_eq!(
        after_status.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(after_status.status.unwrap().running, 1);

    let mut labelled = store.get::<PoolSpec>("p").await.unwrap().unwrap();
    labelled.metadata.labels.insert("x".into(), "y".into());
    let labelled = store.update(&labelled).await.unwrap();
    assert_eq!(labelled.metadata.generation, Some(1), "labels are not spec");

    let mut changed = labelled.clone();
    changed.spec.replicas = Some(5);
    let changed = store.update(&changed).await.unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
}

fn item(kind: &str, value: serde_json::Value) -> ApplyItem {
    ApplyItem {
        kind: kinds::by_kind(kind).unwrap(),
        name: value["metadata"]["name"].as_str().unwrap().to_string(),
        object: value,
    }
}

fn job_value(name: &str, cmd: &str) -> serde_json::Value {
    let j = job(name, cmd);
    serde_json::to_value(j).unwrap()
}

#[tokio::test]
async fn apply_is_all_or_nothing_when_etcd_refuses_part_of_it() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    // etcd's default --max-txn-ops is 128: one apply of 200 objects must fail whole.
    let items: Vec<ApplyItem> = (0..200)
        .map(|i| item("Job", job_value(&format!("j{i}"), "true")))
        .collect();
    let before = store.revision().await.unwrap();
    let err = store.apply(&items, false).await.unwrap_err();
    assert!(
        matches!(err, StoreError::TooManyOps { count: 200 }),
        "{err}"
    );
    assert!(err.to_string().contains("--max-txn-ops"), "{err}");
    assert_eq!(
        store.revision().await.unwrap(),
        before,
        "nothing was written"
    );
}

#[tokio::test]
async fn apply_reports_created_configured_unchanged_and_dry_run_writes_nothing() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    let items = vec![
        item("Job", job_value("a", "v0")),
        item("Job", job_value("b", "v0")),
    ];
    let before = store.revision().await.unwrap();
    let dry = store.apply(&items, true).await.unwrap();
    assert_eq!(dry, [ApplyOutcome::Created, ApplyOutcome::Created]);
    assert_eq!(store.revision().await.unwrap(), before);

    store.apply(&items, false).await.unwrap();
    let after_create = store.revision().await.unwrap();
    assert_eq!(after_create, before + 1, "one transaction, one revision");

    let again = store.apply(&items, false).await.unwrap();
    assert_eq!(again, [ApplyOutcome::Unchanged, ApplyOutcome::Unchanged]);
    assert_eq!(store.revision().await.unwrap(), after_create);

    let changed = vec![
        item("Job", job_value("a", "v1")),
        item("Job", job_value("b", "v0")),
    ];
    let out = store.apply(&changed, false).await.unwrap();
    assert_eq!(out, [ApplyOutcome::Configured, ApplyOutcome::Unchanged]);
    let a = store.get::<JobSpec>("a").await.unwrap().unwrap();
    assert_eq!(a.metadata.generation, Some(2));
}

#[tokio::test]
async fn fenced_store_refuses_writes_once_the_fence_key_is_gone() {
    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    let mut client = store.client();
    client
        .put(rift::store::keys::LEADER, "me", None)
        .await
        .unwrap();
    let kv = store
        .get_raw(rift::store::keys::LEADER)
        .await
        .unwrap()
        .unwrap();
    let fenced = store.with_fence(rift::store::Fence::new(
        rift::store::keys::LEADER,
        kv.create_revision,
    ));
    fenced.create(&job("ok", "true")).await.unwrap();

    client
        .delete(rift::store::keys::LEADER, None)
        .await
        .unwrap();
    client
        .put(rift::store::keys::LEADER, "someone else", None)
        .await
        .unwrap();
    let err = fenced.create(&job("late", "true")).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced), "{err}");
    assert!(store.get::<JobSpec>("late").await.unwrap().is_none());
}

#[tokio::test]
async fn unreachable_etcd_is_one_clear_error_within_five_seconds() {
    let start = std::time::Instant::now();
    let access = rift::store::Access::insecure(&["127.0.0.1:1", "127.0.0.1:2"]);
    let err = match Store::connect(&access).await {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e,
    };
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    let msg = err.to_string();
    assert!(
        msg.contains("http://127.0.0.1:1,http://127.0.0.1:2"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

/// `rift delete node` of a node whose agent just died: its announcement outlives the agent
/// until the lease expires, and the leader must not adopt the Node back from it.
#[tokio::test]
async fn a_deleted_node_is_not_adopted_back_from_its_dead_agents_announcement() {
    use rift::agent::registration::{adopt_announced, NodeAnnouncement};
    use rift::api::NodeSpec;
    use rift::store::{keys, Op};

    let cluster = EtcdCluster::single();
    let store = store(&cluster).await;
    let announcement = serde_json::to_vec(&NodeAnnouncement::default()).unwrap();
    store
        .txn(
            vec![],
            vec![Op::put(keys::agent_node("w1"), announcement)],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        adopt_announced(&store).await.unwrap(),
        ["w1"],
        "adopted once"
    );
    assert!(store.get::<NodeSpec>("w1").await.unwrap().is_some());

    store
        .delete_object(kinds::by_kind("Node").unwrap(), "w1")
        .await
        .unwrap();
    assert!(adopt_announced(&store).await.unwrap().is_empty());
    assert!(store.get::<NodeSpec>("w1").await.unwrap().is_none());
}
