//! Renewing this node's certificates before they expire: checked at start and every
//! [`CHECK_EVERY`]; when any of `node.crt`, `etcd-server.crt`, `etcd-peer.crt` is within
//! [`RENEW_BEFORE`] of its expiry, all of them are made again with new keys — signed here on a
//! controller (which can read the CA), else by the leader's agent over this node's current
//! certificate (`POST /v1/renew`).
//!
//! Caveats: etcd reads its certificate files on every new connection, so the member uses the
//! new ones at once; the agent's own connections keep the certificate they started with until
//! the agent restarts (it is still valid for up to [`RENEW_BEFORE`]). Renewal never touches the
//! CA.

use std::time::Duration;

use chrono::Utc;

use super::config::AgentConfig;
use super::identity::AgentIdentity;
use crate::join::client::ControllerUrl;
use crate::pki::dir::LeafFile;
use crate::pki::{inspect, Ca, Leaf, NodeRole, PkiDir, LEAF_VALIDITY, RENEW_BEFORE};
use crate::store::Store;

/// How often the certificates are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
/// How soon a failed renewal is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(300);

/// Whether any of this node's certificates is due for renewal.
pub fn due(pki: &PkiDir) -> bool {
    LeafFile::ALL.iter().any(|leaf| {
        std::fs::read_to_string(pki.cert(*leaf))
            .ok()
            .and_then(|pem| inspect::inspect(&pem).ok())
            .is_some_and(|info| info.renewal_due(Utc::now(), RENEW_BEFORE))
    })
}

/// Makes every certificate this node has again, signed by `ca`.
fn renew_locally(
    ca: &Ca,
    config: &AgentConfig,
    role: NodeRole,
    pki: &PkiDir,
) -> Result<(), String> {
    let hosts = super::etcd_member::hosts(config);
    for file in LeafFile::ALL {
        if !pki.cert(file).exists() {
            continue;
        }
        let leaf = match file {
            LeafFile::Node => Leaf::Node {
                name: config.name.clone(),
                role,
            },
            LeafFile::EtcdServer => Leaf::EtcdServer {
                hosts: hosts.clone(),
            },
            LeafFile::EtcdPeer => Leaf::EtcdPeer {
                hosts: hosts.clone(),
            },
        };
        let (cert, key) = ca.issue(&leaf, LEAF_VALIDITY).map_err(|e| e.to_string())?;
        pki.write_leaf(file, &cert, &key)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Asks the leader's agent (a controller) to renew, over the current identity.
async fn renew_remotely(
    store: &Store,
    config: &AgentConfig,
    identity: &AgentIdentity,
    pki: &PkiDir,
) -> Result<(), String> {
    let leader = crate::store::leader::current_leader(store)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no leader to renew through")?
        .record
        .node;
    let node = store
        .get::<crate::api::NodeSpec>(&leader)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no Node {leader}"))?;
    let id = identity.identity().ok_or("no identity")?;
    let hosts = super::etcd_member::hosts(config);
    let mut last = format!("node {leader} has no address");
    for addr in crate::net::agent_addresses(&node) {
        let url = ControllerUrl::parse(&addr).map_err(|e| e.to_string())?;
        match crate::join::client::renew(&url, id, &hosts, pki).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Renews when due, for good: run it under [`crate::tasks::Tasks::spawn_until_stopped`].
pub async fn run(config: AgentConfig, identity: AgentIdentity, store: Store) {
    let Some(role) = identity.role else { return };
    let pki = PkiDir::new(&config.state_dir);
    loop {
        let mut wait = CHECK_EVERY;
        if due(&pki) {
            let ca = match &identity.local_ca {
                Some(ca) => Some(ca.clone()),
                None if role == NodeRole::Controller => crate::store::auth::read_trust(&store)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|t| t.ca().ok()),
                None => None,
            };
            let outcome = match ca {
                Some(ca) => renew_locally(&ca, &config, role, &pki),
                None => renew_remotely(&store, &config, &identity, &pki).await,
            };
            match outcome {
                Ok(()) => tracing::info!(
                    dir = %pki.root().display(),
                    "certificates renewed; the agent uses them from its next start, etcd at once"
                ),
                Err(e) => {
                    tracing::warn!(%e, "certificate renewal failed; retrying in 5 minutes");
                    wait = RETRY_AFTER;
                }
            }
        }
        tokio::time::sleep(wait).await;
    }
}
