//! Leases and election under a lossy link, with real etcd and a fault proxy (issue 14, item 2,
//! and the one lease keeper of issue 17): a campaign whose winning reply was lost leads; a lease
//! keeper survives replies lost for less than its TTL (an h2 protocol error included) and never
//! believes in its lease longer than etcd does.

mod support;

use std::time::Duration;

use rift::faults::LinkFault;
use rift::store::leader::{campaign_with, current_leader, ElectionConfig};
use rift::store::lease::LeaseKeeper;
use rift::store::{Op, Store};
use support::agent::eventually;
use support::etcd::EtcdCluster;
use tokio::time::Instant;

#[tokio::test]
async fn a_campaign_whose_winning_reply_was_lost_leads_once_the_link_heals() {
    let etcd = EtcdCluster::single();
    let direct = etcd.store().await;
    let proxy = support::relay::relay_to(etcd.client_addr(0)).await;
    let lossy = Store::connect_lazy(&etcd.access_to(&[etcd.url_via(proxy.listen_addr())]))
        .await
        .unwrap();
    // The lease is kept over a healthy link; only the campaign's replies are lost.
    let keeper = LeaseKeeper::grant(&direct, Duration::from_secs(5))
        .await
        .unwrap();
    let lease = keeper.id();
    proxy.set(LinkFault::BlackholeReplies);
    let healed_at = Instant::now() + Duration::from_secs(12);
    let healer = tokio::spawn(async move {
        tokio::time::sleep_until(healed_at).await;
        proxy.set(LinkFault::None);
        proxy
    });
    let config = ElectionConfig::new("a", Duration::from_secs(5));
    let led = tokio::time::timeout(
        Duration::from_secs(45),
        campaign_with(
            &lossy,
            keeper,
            &config,
            &rift::tasks::CancellationToken::new(),
        ),
    )
    .await
    .expect("leads within 45 s (it must not wait for its own record to go away)")
    .unwrap()
    .expect("no shutdown was asked");
    let proxy = healer.await.unwrap();
    assert!(
        proxy
            .stats()
            .bytes_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "replies were really lost"
    );
    let current = current_leader(&direct).await.unwrap().unwrap();
    assert_eq!(current.record.lease, lease, "its first attempt committed");
    assert_eq!(led.fence().create_revision, current.revision);
    led.store()
        .txn(
            vec![],
            vec![Op::put("/rift/v1/controllers/probe", "led")],
            vec![],
        )
        .await
        .expect("a fenced write of the leader goes through");
}

#[tokio::test]
async fn a_lease_keeper_outlives_replies_lost_for_less_than_its_ttl_and_never_outlives_etcd() {
    let etcd = EtcdCluster::single();
    let mut direct = etcd.client().await;
    let proxy = support::relay::relay_to(etcd.client_addr(0)).await;
    let lossy = Store::connect_lazy(&etcd.access_to(&[etcd.url_via(proxy.listen_addr())]))
        .await
        .unwrap();
    let keeper = LeaseKeeper::grant(&lossy, Duration::from_secs(5))
        .await
        .unwrap();
    let id = keeper.id();
    eventually(Duration::from_secs(10), "a first renewal", || async {
        (keeper.status().renewals >= 1).then_some(())
    })
    .await;

    // Replies lost for 1.5 s: the stream breaks (an h2 protocol error, or silence); the keeper
    // reopens it and goes on.
    proxy.set(LinkFault::BlackholeReplies);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set(LinkFault::None);
    let before = keeper.status().renewals;
    eventually(
        Duration::from_secs(10),
        "renewals after the loss",
        || async { (keeper.status().renewals > before).then_some(()) },
    )
    .await;
    assert!(!keeper.is_lost(), "{:?}", keeper.status());

    // A partition: nothing reaches etcd any more. The keeper must give the lease up no later
    // than etcd expires it.
    proxy.set(LinkFault::Partition);
    let mut keeper_lost = None;
    let mut etcd_expired = None;
    let start = Instant::now();
    while etcd_expired.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "etcd never expired the lease"
        );
        if keeper_lost.is_none() && keeper.is_lost() {
            keeper_lost = Some(Instant::now());
        }
        let ttl = direct
            .lease_time_to_live(id, None)
            .await
            .expect("etcd answers directly")
            .ttl();
        // -1 once expired (0 means less than a second left).
        if ttl < 0 {
            etcd_expired = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let keeper_lost = keeper_lost.unwrap_or_else(|| {
        panic!(
            "etcd expired the lease {:?} after the partition while the keeper still held it: {:?}",
            etcd_expired.unwrap() - start,
            keeper.status()
        )
    });
    assert!(keeper_lost <= etcd_expired.unwrap());
    drop(proxy);
}

/// A node whose leadership was lost while its lease could not be revoked (etcd without quorum)
/// finds the key of its own earlier term when it campaigns again: it revokes that term's lease
/// and leads at once, instead of waiting out the old lease's TTL with no leader.
#[tokio::test]
async fn a_campaign_that_finds_its_own_earlier_term_leads_without_waiting_out_its_lease() {
    let etcd = EtcdCluster::single();
    let store = etcd.store().await;
    let config = ElectionConfig::new("a", Duration::from_secs(30));
    let never = tokio_util::sync::CancellationToken::new();
    let first = LeaseKeeper::grant(&store, Duration::from_secs(30))
        .await
        .unwrap();
    let old_lease = first.id();
    let earlier = campaign_with(&store, first, &config, &never)
        .await
        .unwrap()
        .expect("leads");
    // The term is over without a resignation: its keeper stops renewing, the lease stays.
    drop(earlier);
    let second = LeaseKeeper::grant(&store, Duration::from_secs(30))
        .await
        .unwrap();
    let started = Instant::now();
    let led = tokio::time::timeout(
        Duration::from_secs(10),
        campaign_with(&store, second, &config, &never),
    )
    .await
    .expect("leads well within the old lease's 30 s TTL")
    .unwrap()
    .expect("no shutdown was asked");
    let current = current_leader(&store).await.unwrap().unwrap();
    assert_ne!(current.record.lease, old_lease, "a new term");
    assert_eq!(led.fence().create_revision, current.revision);
    assert!(started.elapsed() < Duration::from_secs(10));
}
