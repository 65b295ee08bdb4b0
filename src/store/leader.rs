//! Leader election: one leader at a time, chosen through an etcd lease, whose every write is
//! fenced so that a deposed leader can never write.
//!
//! A candidate grants a lease (kept alive from the first moment, while it campaigns and while
//! it leads) and creates `/rift/v1/leader` under it only if the key is absent. The key's create
//! revision is the leader's [`Fence`]: every write of a [`Store::with_fence`] store carries
//! `CreateRevision(leader) == fence` in its transaction. Leadership ends when the lease is lost
//! (its [`LeaseKeeper`] says so: no renewal confirmed for a whole TTL, or etcd says it
//! expired), when a fenced write is refused,
//! or on [`Leadership::resign`], which revokes the lease so a standby takes over at once.
//!
//! Standbys wait for the key to be deleted. As a shortcut for crashed leaders, a standby also
//! probes the leader's advertised agent address: three refused connections in a row (the
//! process is gone, the host is up; probed every 150 ms, a refusal confirmed 25 ms later) and
//! it revokes the dead leader's lease. This is safe because
//! of the fence: even if the leader were alive, its writes would be refused.
//!
//! A campaign whose winning transaction's reply was lost recognises its own record by its lease
//! and leads (see [`campaign`]); it never waits for its own record to go away.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use etcd_client::{EventType, TxnOpResponse, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::client::{Fence, Store, TxnOutcome};
use super::error::{Result, StoreError};
use super::keys;
use super::lease::{LeaseKeeper, LeaseStatus};
use super::txn::{Guard, Op};
use crate::tasks::CancellationToken;

/// What the leader key holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderRecord {
    pub node: String,
    pub since: DateTime<Utc>,
    /// The leader's lease, so a standby can revoke it when the leader is provably gone.
    pub lease: i64,
    /// `host:port` of the leader's agent, probed by standbys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// The current leader as read from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentLeader {
    pub record: LeaderRecord,
    /// The create revision of the leader key: the leader's fence.
    pub revision: i64,
}

/// Reads the leader key.
pub async fn current_leader(store: &Store) -> Result<Option<CurrentLeader>> {
    let Some(kv) = store.get_raw(keys::LEADER).await? else {
        return Ok(None);
    };
    let record = serde_json::from_slice(&kv.value).map_err(|e| StoreError::Decode {
        key: kv.key.clone(),
        reason: e.to_string(),
    })?;
    Ok(Some(CurrentLeader {
        record,
        revision: kv.create_revision,
    }))
}

/// Settings of one candidate.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// This node's name, written into the leader record.
    pub node: String,
    /// Lease TTL: a crashed leader is replaced within about this long.
    pub ttl: Duration,
    /// This node's agent address, advertised for standbys to probe.
    pub endpoint: Option<String>,
    /// How often a standby probes the leader's endpoint while it answers.
    pub probe_interval: Duration,
    /// How soon a refused probe is confirmed by the next one: a crash is seen within about
    /// `probe_interval + (probe_failures - 1) × probe_confirm_interval`, while a live leader
    /// costs one connection per `probe_interval`.
    pub probe_confirm_interval: Duration,
    /// Consecutive refused probes before a standby revokes the leader's lease.
    pub probe_failures: u32,
}

impl ElectionConfig {
    pub fn new(node: impl Into<String>, ttl: Duration) -> Self {
        Self {
            node: node.into(),
            ttl,
            endpoint: None,
            probe_interval: Duration::from_millis(150),
            probe_confirm_interval: Duration::from_millis(25),
            probe_failures: 3,
        }
    }
}

/// Held while this process leads. Dropping it without [`Leadership::resign`] stops the
/// renewals and leaves the lease to expire on its own.
pub struct Leadership {
    store: Store,
    keeper: LeaseKeeper,
    fence: Fence,
}

impl Leadership {
    /// The fence every leader write must carry.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// A store whose every write is fenced by this leadership.
    pub fn store(&self) -> Store {
        self.store.with_fence(self.fence.clone())
    }

    pub fn is_lost(&self) -> bool {
        self.fence.refused().is_cancelled() || self.keeper.is_lost()
    }

    /// The leader lease as its keeper sees it now: how much longer this leadership is surely
    /// valid, for actions no transaction can fence (membership changes).
    pub fn lease(&self) -> LeaseStatus {
        self.keeper.status()
    }

    /// A receiver of the leader lease's status (each renewal, and its loss).
    pub fn lease_watch(&self) -> watch::Receiver<LeaseStatus> {
        self.keeper.watch()
    }

    /// Resolves once leadership is lost: the lease expired or is unrenewable, a write of
    /// [`Self::store`] was refused by the fence, or [`Self::step_down`].
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits on a watch channel and a token.
    pub async fn lost(&self) {
        tokio::select! {
            _ = self.keeper.lost() => {}
            _ = self.fence.refused().cancelled() => {}
        }
    }

    /// Marks leadership lost from the outside, e.g. when a controller ended on its own.
    pub fn step_down(&self) {
        self.fence.refused().cancel();
    }

    /// Gives leadership up now: revokes the lease (deleting the leader key with it) so a
    /// standby takes over immediately.
    pub async fn resign(self) {
        self.fence.refused().cancel();
        if let Err(e) = self.keeper.revoke().await {
            tracing::warn!(%e, "could not revoke the leader lease; it will expire on its own");
        }
    }
}

/// What the leader key held when a campaign's create-if-absent did not apply.
struct Holder {
    create_revision: i64,
    mod_revision: i64,
    record: Option<LeaderRecord>,
}

fn holder_of(outcome: TxnOutcome) -> Option<Holder> {
    outcome.responses.into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| Holder {
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            record: serde_json::from_slice::<LeaderRecord>(kv.value()).ok(),
        }),
        _ => None,
    })
}

/// Campaigns until this process leads, or until `shutdown` fires (then `Ok(None)`).
///
/// The lease is granted and kept alive before the first attempt, so a candidate that wins is
/// never holding a lease that already lapsed while it waited.
///
/// A campaign transaction can commit and still fail for the caller (its reply lost on the
/// way). Every failed attempt is therefore simply retried: the retry's create-if-absent does
/// not apply, and the record it finds carries this campaign's own lease, which means this
/// campaign won (leases are unique in a cluster), at that record's create revision.
pub async fn campaign(
    store: &Store,
    config: &ElectionConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Leadership>> {
    let keeper = LeaseKeeper::grant(store, config.ttl).await?;
    campaign_with(store, keeper, config, shutdown).await
}

/// [`campaign`] under a lease the caller already keeps.
pub async fn campaign_with(
    store: &Store,
    keeper: LeaseKeeper,
    config: &ElectionConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Leadership>> {
    let lease = keeper.id();
    let won = |create_revision: i64, keeper: LeaseKeeper| {
        tracing::info!(node = %config.node, revision = create_revision, "became leader");
        Ok(Some(Leadership {
            store: store.clone(),
            keeper,
            fence: Fence::new(keys::LEADER, create_revision),
        }))
    };
    loop {
        if keeper.is_lost() {
            return Err(StoreError::LeaseLost { lease });
        }
        let record = LeaderRecord {
            node: config.node.clone(),
            since: Utc::now(),
            lease,
            endpoint: config.endpoint.clone(),
        };
        let body = serde_json::to_vec(&record).expect("records serialize");
        let attempt = store
            .txn(
                vec![Guard::created_at(keys::LEADER, 0)],
                vec![Op::put_on_lease(keys::LEADER, body, lease)],
                vec![Op::get(keys::LEADER)],
            )
            .await;
        let outcome = match attempt {
            Ok(o) => o,
            Err(e) => {
                // It may have committed: the next attempt finds out.
                if e.is_transient() {
                    tracing::debug!(%e, "campaign attempt failed; retrying");
                } else {
                    tracing::warn!(%e, "campaign attempt refused; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = shutdown.cancelled() => {
                        let _ = keeper.revoke().await;
                        return Ok(None);
                    }
                }
            }
        };
        if outcome.succeeded {
            return won(outcome.revision, keeper);
        }
        let Some(holder) = holder_of(outcome) else {
            continue; // deleted between the compare and the read: try again at once
        };
        if holder.record.as_ref().is_some_and(|r| r.lease == lease) {
            // An earlier attempt of this campaign committed; its reply was lost.
            return won(holder.create_revision, keeper);
        }
        if let Some(old) = holder
            .record
            .as_ref()
            .filter(|r| r.node == config.node && r.lease != lease)
        {
            // The key of an earlier term of this very node: that term ended (its controllers
            // stopped when leadership was lost), but its lease could not be revoked then (etcd
            // without quorum, say) and would hold the key for a whole TTL. Revoke it now.
            tracing::info!(
                lease = old.lease,
                "the leader key is from an earlier term of this node; revoking its lease"
            );
            let mut c = store.client();
            if let Err(e) = store.call(c.lease_revoke(old.lease)).await {
                tracing::debug!(%e, "revoking the earlier term's lease failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        }
        tokio::select! {
            r = wait_for_vacancy(store, holder.mod_revision, holder.record, config) => {
                if let Err(e) = r {
                    tracing::debug!(%e, "waiting for the leader key failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            _ = keeper.lost() => {}
            _ = shutdown.cancelled() => {
                let _ = keeper.revoke().await;
                return Ok(None);
            }
        }
    }
}

/// Returns once the leader key was deleted after `seen_at`, or once the leader's agent has
/// refused connections `probe_failures` times in a row and its lease was revoked.
async fn wait_for_vacancy(
    store: &Store,
    seen_at: i64,
    record: Option<LeaderRecord>,
    config: &ElectionConfig,
) -> Result<()> {
    let mut client = store.client();
    let opts = WatchOptions::new().with_start_revision(seen_at + 1);
    let mut stream = store.call(client.watch(keys::LEADER, Some(opts))).await?;
    let probe_target: Option<SocketAddr> = record
        .as_ref()
        .filter(|r| r.node != config.node)
        .and_then(|r| r.endpoint.as_deref())
        .and_then(|e| e.parse().ok());
    let mut refused = 0;
    let mut next_probe = tokio::time::Instant::now();
    loop {
        tokio::select! {
            msg = stream.message() => {
                let resp = msg.map_err(|e| StoreError::from_etcd(e, store.endpoints()))?
                    .ok_or(StoreError::StreamEnded {
                        what: "leader",
                    })?;
                if resp.canceled() || resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep_until(next_probe), if probe_target.is_some() => {
                let addr = probe_target.expect("guarded");
                match tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await {
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                    _ => refused = 0,
                }
                let wait = if refused > 0 { config.probe_confirm_interval } else { config.probe_interval };
                next_probe = tokio::time::Instant::now() + wait;
                if refused >= config.probe_failures {
                    let lease = record.as_ref().expect("probe needs a record").lease;
                    tracing::warn!(leader = %record.as_ref().map(|r| r.node.as_str()).unwrap_or("?"),
                        "the leader's agent refuses connections; revoking its lease");
                    let mut c = store.client();
                    let _ = store.call(c.lease_revoke(lease)).await;
                    return Ok(());
                }
            }
        }
    }
}
