//! Leader election: one leader at a time, chosen through an etcd lease, whose every write is
//! fenced so that a deposed leader can never write.
//!
//! A candidate grants a lease (kept alive from the first moment, while it campaigns and while
//! it leads) and creates `/rift/v1/leader` under it only if the key is absent. The key's create
//! revision is the leader's [`Fence`]: every write of a [`Store::with_fence`] store carries
//! `CreateRevision(leader) == fence` in its transaction. Leadership ends when the lease is lost
//! (keep-alives fail for a full TTL, or etcd says it expired), when a fenced write is refused,
//! or on [`Leadership::resign`], which revokes the lease so a standby takes over at once.
//!
//! Standbys wait for the key to be deleted. As a shortcut for crashed leaders, a standby also
//! probes the leader's advertised agent address: three refused connections in a row (the
//! process is gone, the host is up) and it revokes the dead leader's lease. This is safe because
//! of the fence: even if the leader were alive, its writes would be refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use etcd_client::{Compare, CompareOp, EventType, PutOptions, TxnOp, TxnOpResponse, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::client::{Fence, Store};
use super::error::{Result, StoreError};
use super::keys;

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
    /// How often a standby probes the leader's endpoint.
    pub probe_interval: Duration,
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
            probe_failures: 3,
        }
    }
}

/// Held while this process leads. Dropping it without [`Leadership::resign`] leaves the lease
/// to expire on its own.
pub struct Leadership {
    store: Store,
    lease: i64,
    fence: Fence,
    lost: watch::Receiver<bool>,
    lost_tx: Arc<watch::Sender<bool>>,
    keeper: tokio::task::JoinHandle<()>,
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
        *self.lost.borrow()
    }

    /// Resolves once leadership is lost (lease expired or unrenewable, or [`Self::step_down`]).
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Marks leadership lost from the outside, e.g. after a fenced write was refused.
    pub fn step_down(&self) {
        let _ = self.lost_tx.send(true);
    }

    /// Gives leadership up now: revokes the lease (deleting the leader key with it) so a
    /// standby takes over immediately.
    pub async fn resign(self) {
        self.keeper.abort();
        let _ = self.lost_tx.send(true);
        let mut client = self.store.client();
        if let Err(e) = self.store.call(client.lease_revoke(self.lease)).await {
            tracing::warn!(%e, "could not revoke the leader lease; it will expire on its own");
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Keeps `lease` alive every ttl/3 and sets `lost` once it cannot be renewed for a whole TTL
/// or etcd reports it gone.
///
/// Every wait is bounded by `last renewal sent + ttl`, and etcd counts its TTL from when a
/// renewal arrives (never earlier than it was sent), so this process stops believing it leads
/// no later than the lease can expire on the server: a standby never takes over while this
/// side still thinks it leads (for longer than the scheduling of one task).
async fn keep_alive(store: Store, lease: i64, ttl: Duration, lost: Arc<watch::Sender<bool>>) {
    let interval = ttl / 3;
    let mut last_renewed = Instant::now();
    let mut channel = None;
    loop {
        let deadline = last_renewed + ttl;
        let sent_at = Instant::now();
        let attempt = async {
            if channel.is_none() {
                let mut client = store.client();
                channel = Some(client.lease_keep_alive(lease).await.ok()?);
            }
            let (keeper, stream) = channel.as_mut()?;
            keeper.keep_alive().await.ok()?;
            Some(stream.message().await.ok()??.ttl())
        };
        let limit = deadline.min(sent_at + interval.max(Duration::from_millis(200)));
        match tokio::time::timeout_at(limit, attempt).await {
            Ok(Some(left)) if left > 0 => last_renewed = sent_at,
            Ok(Some(_)) => {
                tracing::warn!(lease, "the lease expired");
                let _ = lost.send(true);
                return;
            }
            _ => channel = None,
        }
        if Instant::now() >= last_renewed + ttl {
            tracing::warn!(lease, "the lease could not be renewed for a whole TTL");
            let _ = lost.send(true);
            return;
        }
        let next = if channel.is_some() {
            sent_at + interval
        } else {
            Instant::now() + Duration::from_millis(100)
        };
        tokio::time::sleep_until(next.min(last_renewed + ttl)).await;
    }
}

/// Campaigns until this process leads, or until `shutdown` resolves (then `Ok(None)`).
///
/// The lease is granted and kept alive before the first attempt, so a candidate that wins is
/// never holding a lease that already lapsed while it waited.
pub async fn campaign(
    store: &Store,
    config: &ElectionConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Option<Leadership>> {
    tokio::pin!(shutdown);
    let ttl_secs = config.ttl.as_secs().max(1) as i64;
    let mut client = store.client();
    let lease = store.call(client.lease_grant(ttl_secs, None)).await?.id();
    let (lost_tx, lost) = watch::channel(false);
    let lost_tx = Arc::new(lost_tx);
    let keeper = tokio::spawn(keep_alive(
        store.clone(),
        lease,
        config.ttl,
        lost_tx.clone(),
    ));
    let revoke = |store: Store| async move {
        let mut c = store.client();
        let _ = store.call(c.lease_revoke(lease)).await;
    };
    loop {
        if *lost.borrow() {
            keeper.abort();
            return Err(StoreError::Etcd("the campaign lease was lost".into()));
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
                vec![Compare::create_revision(keys::LEADER, CompareOp::Equal, 0)],
                vec![TxnOp::put(
                    keys::LEADER,
                    body,
                    Some(PutOptions::new().with_lease(lease)),
                )],
                vec![TxnOp::get(keys::LEADER, None)],
            )
            .await;
        let outcome = match attempt {
            Ok(o) => o,
            Err(e) if e.is_transient() => {
                tracing::debug!(%e, "campaign attempt failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = &mut shutdown => { keeper.abort(); revoke(store.clone()).await; return Ok(None) }
                }
            }
            Err(e) => {
                keeper.abort();
                return Err(e);
            }
        };
        if outcome.succeeded {
            tracing::info!(node = %config.node, revision = outcome.revision, "became leader");
            return Ok(Some(Leadership {
                store: store.clone(),
                lease,
                fence: Fence {
                    key: keys::LEADER.into(),
                    create_revision: outcome.revision,
                },
                lost,
                lost_tx,
                keeper,
            }));
        }
        let holder = outcome.responses.into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                (
                    kv.mod_revision(),
                    serde_json::from_slice::<LeaderRecord>(kv.value()).ok(),
                )
            }),
            _ => None,
        });
        let Some((seen_at, record)) = holder else {
            continue; // deleted between the compare and the read: try again at once
        };
        tokio::select! {
            r = wait_for_vacancy(store, seen_at, record, config) => {
                if let Err(e) = r {
                    tracing::debug!(%e, "waiting for the leader key failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            _ = &mut shutdown => {
                keeper.abort();
                revoke(store.clone()).await;
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
    let mut probe = tokio::time::interval(config.probe_interval);
    loop {
        tokio::select! {
            msg = stream.message() => {
                let resp = msg.map_err(|e| StoreError::from_etcd(e, store.endpoints()))?
                    .ok_or_else(|| StoreError::Etcd("leader watch closed".into()))?;
                if resp.canceled() || resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                    return Ok(());
                }
            }
            _ = probe.tick(), if probe_target.is_some() => {
                let addr = probe_target.expect("guarded");
                match tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await {
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                    _ => refused = 0,
                }
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
