//! Registration and liveness: the agent keeps `/rift/v1/agents/<node>/alive` attached to its
//! own lease, and bumps the heartbeat file on every renewal (the shim's evidence that the agent
//! still holds its lease).
//!
//! The Node object: a worker may write only under its own `/rift/v1/agents/<node>/`, so it
//! announces the Node it wants (`/rift/v1/agents/<node>/node`, on the same lease: it vanishes
//! when the agent does) and the Node is created by whoever may: the controller that admitted it
//! (the join), or the leader ([`adopt_announced`]) for a node admitted otherwise. A controller
//! (or an agent of a plaintext cluster) creates its own ([`ensure_node`]). An operator's Node
//! always wins: nothing here changes an existing one.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use etcd_client::{PutOptions, TxnOp};
use tokio::sync::watch;
use tokio::time::Instant;

use super::jobs::layout::StateDir;
use super::metrics::Metrics;
use crate::api::{NodeSpec, Object};
use crate::store::{keys, Store, StoreError};

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
            vec![TxnOp::put(
                keys::agent_node(node),
                body,
                Some(PutOptions::new().with_lease(lease)),
            )],
            vec![],
        )
        .await
        .map(|_| ())
}

/// Creates the Node of every node whose agent is alive and announced one, where none exists
/// (the leader's pass; the store should carry the leader fence). Returns the names created.
pub async fn adopt_announced(store: &Store) -> Result<Vec<String>, StoreError> {
    let keys_only = etcd_client::GetOptions::new()
        .with_prefix()
        .with_keys_only();
    let mut kv = store.client().kv_client();
    let announced: Vec<String> = store
        .call(kv.get(keys::AGENTS_PREFIX, Some(keys_only.clone())))
        .await?
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = std::str::from_utf8(kv.key()).ok()?;
            let rest = key.strip_prefix(keys::AGENTS_PREFIX)?;
            rest.strip_suffix("/node").map(str::to_string)
        })
        .collect();
    if announced.is_empty() {
        return Ok(Vec::new());
    }
    let nodes_prefix = keys::objects_prefix("nodes");
    let existing: std::collections::HashSet<String> = store
        .call(kv.get(nodes_prefix.as_str(), Some(keys_only)))
        .await?
        .kvs()
        .iter()
        .filter_map(|kv| Some(keys::name_of(std::str::from_utf8(kv.key()).ok()?).to_string()))
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

/// Writes the heartbeat file: a counter and the time, replaced atomically.
fn beat(state: &StateDir, n: u64) {
    let path = state.heartbeat();
    let tmp = path.with_extension("tmp");
    let body = format!("{n} {}\n", Utc::now().to_rfc3339());
    if std::fs::create_dir_all(state.root())
        .and_then(|_| std::fs::write(&tmp, body))
        .and_then(|_| std::fs::rename(&tmp, &path))
        .is_err()
    {
        tracing::warn!(path = %path.display(), "cannot write the heartbeat file");
    }
}

/// Keeps this node alive in etcd until `shutdown`, registering again whenever the lease is
/// lost. On shutdown the lease is revoked, so the node shows NotReady at once.
pub async fn keep_alive(
    store: Store,
    node: String,
    ttl: Duration,
    announcement: NodeAnnouncement,
    state: StateDir,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut beats = 0u64;
    let mut was_down = false;
    loop {
        let lease = match register(&store, &node, ttl, false).await {
            Ok(l) => l,
            Err(e) => {
                if !was_down {
                    tracing::warn!(%e, "cannot register with etcd; retrying");
                }
                was_down = true;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = super::stopped(&mut shutdown) => return,
                }
            }
        };
        if let Err(e) = announce(&store, &node, lease, &announcement).await {
            tracing::debug!(%e, "cannot announce the Node yet");
        }
        if was_down {
            metrics.etcd_reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!("registered with etcd again");
        }
        was_down = false;
        beats += 1;
        beat(&state, beats);
        let mut last_renewed = Instant::now();
        let mut channel = None;
        loop {
            let sent = Instant::now();
            let attempt = async {
                if channel.is_none() {
                    let mut c = store.client();
                    channel = Some(c.lease_keep_alive(lease).await.ok()?);
                }
                let (k, s) = channel.as_mut()?;
                k.keep_alive().await.ok()?;
                Some(s.message().await.ok()??.ttl())
            };
            let limit = (last_renewed + ttl).min(sent + (ttl / 3).max(Duration::from_millis(200)));
            match tokio::time::timeout_at(limit, attempt).await {
                Ok(Some(left)) if left > 0 => {
                    last_renewed = sent;
                    beats += 1;
                    beat(&state, beats);
                    metrics.lease_renewals.fetch_add(1, Ordering::Relaxed);
                    metrics
                        .lease_renew_micros
                        .fetch_add(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                Ok(Some(_)) => break, // expired: register again
                _ => {
                    channel = None;
                }
            }
            if last_renewed.elapsed() >= ttl {
                tracing::warn!("lost the node lease; registering again");
                was_down = true;
                break;
            }
            let next = if channel.is_some() {
                sent + ttl / 3
            } else {
                Instant::now() + Duration::from_millis(200)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = super::stopped(&mut shutdown) => {
                    let mut c = store.client();
                    let _ = store.call(c.lease_revoke(lease)).await;
                    return;
                }
            }
        }
    }
}

/// Grants a lease and puts the alive key under it; `hollow` marks a simulated node's key.
pub async fn register(
    store: &Store,
    node: &str,
    ttl: Duration,
    hollow: bool,
) -> Result<i64, StoreError> {
    let mut c = store.client();
    let lease = store
        .call(c.lease_grant(ttl.as_secs().max(1) as i64, None))
        .await?
        .id();
    let mut body = serde_json::json!({"since": Utc::now(), "version": env!("CARGO_PKG_VERSION")});
    if hollow {
        body["hollow"] = true.into();
    }
    let body = body.to_string();
    store
        .txn(
            vec![],
            vec![TxnOp::put(
                keys::agent_alive(node),
                body,
                Some(PutOptions::new().with_lease(lease)),
            )],
            vec![],
        )
        .await?;
    Ok(lease)
}
