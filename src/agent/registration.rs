//! Registration and liveness: the agent keeps `/rift/v1/agents/<node>/alive` attached to its
//! own lease (one [`LeaseKeeper`]), publishes every confirmed renewal in memory ([`LastRenewal`],
//! for the job runner) and in the heartbeat file (for the shims, on the machine-wide clock).
//!
//! The Node object: a worker may write only under its own `/rift/v1/agents/<node>/`, so it
//! announces the Node it wants (`/rift/v1/agents/<node>/node`, on the same lease: it vanishes
//! when the agent does) and the Node is created by whoever may: the controller that admitted it
//! (the join), or the leader ([`adopt_announced`]) for a node admitted otherwise. A controller
//! (or an agent of a plaintext cluster) creates its own ([`ensure_node`]). An operator's Node
//! always wins: nothing here changes an existing one.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use super::jobs::layout::{write_json_volatile, Heartbeat, StateDir};
use super::metrics::Metrics;
use crate::api::{NodeSpec, Object};
use crate::store::lease::{self, Grant, LastRenewal, LeaseKeeper, LeaseStatus, RenewalSender};
use crate::store::Op;
use crate::store::{keys, Store, StoreError};
use crate::tasks::CancellationToken;

/// [`ensure_node`], retried every second until it is done.
pub async fn register_node(
    store: &Store,
    name: &str,
    spec: &NodeSpec,
    labels: &std::collections::BTreeMap<String, String>,
) {
    loop {
        match ensure_node(store, name, spec, labels).await {
            Ok(created) => {
                tracing::info!(created, "node registered");
                return;
            }
            Err(e) => {
                tracing::debug!(%e, "cannot register the node yet");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Creates the Node from the agent's config unless it exists; an existing Node (applied by an
/// operator, or registered before) is adopted as it is: the operator's spec wins.
pub async fn ensure_node(
    store: &Store,
    name: &str,
    spec: &NodeSpec,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<bool, StoreError> {
    let mut node = Object::new(name, spec.clone());
    node.metadata.labels = labels.clone();
    match store.create(&node).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What a node's agent says its Node should be, when none exists.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeAnnouncement {
    pub spec: NodeSpec,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// How often a refused announcement is tried before the lease keeper takes over.
const ANNOUNCE_TRIES: u32 = 50;

/// Puts this node's announcement on its lease.
async fn announce(
    store: &Store,
    node: &str,
    lease: i64,
    what: &NodeAnnouncement,
) -> Result<(), StoreError> {
    let body = serde_json::to_vec(what).expect("an announcement serializes");
    store
        .txn(
            vec![],
            vec![Op::put_on_lease(keys::agent_node(node), body, lease)],
            vec![],
        )
        .await
        .map(|_| ())
}

/// Creates the Node of every node whose agent is alive and announced one, where none exists
/// (the leader's pass; the store should carry the leader fence). Returns the names created.
pub async fn adopt_announced(store: &Store) -> Result<Vec<String>, StoreError> {
    let announced: Vec<String> = store
        .list_keys(keys::AGENTS_PREFIX)
        .await?
        .iter()
        .filter_map(|key| {
            let rest = key.strip_prefix(keys::AGENTS_PREFIX)?;
            rest.strip_suffix("/node").map(str::to_string)
        })
        .collect();
    if announced.is_empty() {
        return Ok(Vec::new());
    }
    let existing: std::collections::HashSet<String> = store
        .list_keys(&keys::objects_prefix("nodes"))
        .await?
        .iter()
        .map(|key| keys::name_of(key).to_string())
        .collect();
    let mut created = Vec::new();
    for name in announced.into_iter().filter(|n| !existing.contains(n)) {
        let Some(raw) = store.get_raw(&keys::agent_node(&name)).await? else {
            continue;
        };
        let Ok(a) = serde_json::from_slice::<NodeAnnouncement>(&raw.value) else {
            tracing::warn!(node = %name, "cannot read the node's announcement; not creating it");
            continue;
        };
        if crate::api::validation::dns1123_problem(&name).is_some() {
            continue;
        }
        if ensure_node(store, &name, &a.spec, &a.labels).await? {
            created.push(name);
        }
    }
    Ok(created)
}

/// Keeps this node alive in etcd until `shutdown`: registers (a lease and the alive key under
/// it), keeps the lease with a [`LeaseKeeper`], and registers again whenever it is lost. Every
/// confirmed renewal goes to `renewals` (the job runner and the heartbeat file follow it). On
/// shutdown the lease is revoked, so the node shows NotReady at once.
pub async fn keep_alive(
    store: Store,
    node: String,
    ttl: Duration,
    renewals: RenewalSender,
    announcement: NodeAnnouncement,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut was_down = false;
    loop {
        let grant = tokio::select! {
            r = register(&store, &node, ttl, false) => r,
            _ = shutdown.cancelled() => return,
        };
        let grant = match grant {
            Ok(g) => g,
            Err(e) => {
                if !was_down {
                    tracing::warn!(%e, "cannot register with etcd; retrying");
                }
                was_down = true;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        // Without its announcement the leader never makes this node's Node, so a refused
        // put (etcd refuses requests racing an auth change, e.g. another node joining) is
        // tried again; after ANNOUNCE_TRIES the lease keeper decides (a lost lease means a
        // new registration, which announces again).
        for attempt in 1..=ANNOUNCE_TRIES {
            match announce(&store, &node, grant.id, &announcement).await {
                Ok(()) => break,
                Err(e) if attempt == ANNOUNCE_TRIES => {
                    tracing::warn!(%e, "cannot announce the Node; going on without it")
                }
                Err(e) => {
                    tracing::debug!(%e, attempt, "cannot announce the Node yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
        if std::mem::take(&mut was_down) {
            metrics.etcd_reconnects.inc();
            tracing::info!("registered with etcd again");
        }
        let keeper = LeaseKeeper::keep(store.clone(), grant);
        let follow = follow_lease(keeper.watch(), &renewals, |s| {
            metrics.lease_renewed(s.round_trip);
        });
        tokio::select! {
            _ = follow => {
                tracing::warn!("lost the node lease; registering again");
                was_down = true;
            }
            _ = shutdown.cancelled() => {
                if let Err(e) = keeper.revoke().await {
                    tracing::debug!(%e, "could not revoke the node lease; it expires on its own");
                }
                return;
            }
        }
    }
}

/// Passes every renewal of one lease on to `renewals` (calling `on_renewal` for each) until the
/// lease is lost. Shared by the agent and hollow nodes.
///
/// # Cancel safety
/// Cancel-safe: it only waits on a watch channel; renewals seen before cancellation were passed on.
pub async fn follow_lease(
    mut status: watch::Receiver<LeaseStatus>,
    renewals: &RenewalSender,
    mut on_renewal: impl FnMut(&LeaseStatus),
) {
    let mut seen: Option<u64> = None;
    loop {
        let s = *status.borrow_and_update();
        if seen != Some(s.renewals) {
            renewals.renewed(s.renewed, s.id);
            if s.renewals > seen.unwrap_or(0) {
                on_renewal(&s);
            }
            seen = Some(s.renewals);
        }
        if s.lost.is_some() || status.changed().await.is_err() {
            return;
        }
    }
}

/// Writes the heartbeat file ([`Heartbeat`]) at every renewal, off the async workers, until
/// `shutdown`: the shims' evidence of when the node's lease was last renewed.
pub async fn write_heartbeats(
    state: StateDir,
    mut renewals: LastRenewal,
    shutdown: CancellationToken,
) {
    let mut beats = 0u64;
    loop {
        if let Some(renewed) = renewals.last() {
            beats += 1;
            let dir = state.clone();
            let beat = Heartbeat::now(beats, renewed);
            let written = tokio::task::spawn_blocking(move || write_heartbeat(&dir, &beat)).await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::warn!(path = %state.heartbeat().display(), "cannot write the heartbeat file");
            }
        }
        tokio::select! {
            alive = renewals.changed() => if !alive { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Replaces the heartbeat file atomically (temporary file, then rename).
fn write_heartbeat(state: &StateDir, beat: &Heartbeat) -> std::io::Result<()> {
    std::fs::create_dir_all(state.root())?;
    write_json_volatile(&state.heartbeat(), beat)
}

/// Grants a lease and puts the alive key under it; `hollow` marks a simulated node's key.
pub async fn register(
    store: &Store,
    node: &str,
    ttl: Duration,
    hollow: bool,
) -> Result<Grant, StoreError> {
    let grant = lease::grant(store, ttl).await?;
    let mut body = serde_json::json!({"since": Utc::now(), "version": env!("CARGO_PKG_VERSION")});
    if hollow {
        body["hollow"] = true.into();
    }
    let body = body.to_string();
    store
        .txn(
            vec![],
            vec![Op::put_on_lease(keys::agent_alive(node), body, grant.id)],
            vec![],
        )
        .await?;
    Ok(grant)
}
