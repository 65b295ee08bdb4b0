//! etcd's users and roles for rift, and the cluster's trust record.
//!
//! Users are named by certificate common names ([`crate::pki::names`]): `root` for
//! operators, `controller-<n>` (granted etcd's `root` role: in 3.4 member changes need it) and
//! `node-<n>`, whose role `node-<n>` may read and write only `/rift/v1/agents/<n>/` and read
//! `/rift/v1/` — Kubernetes' NodeRestriction, without an API server.
//!
//! What etcd 3.4 still lets any authenticated user do, and so any node: grant leases and keep
//! *any* lease alive by its id (a node could keep a dead node's alive key from expiring if
//! it learned its lease id, which it can: keys carry their lease), compact the keyspace, read
//! the member list and status. Revoking a lease needs write access to every key attached to
//! it, so a node cannot revoke another node's lease.
//!
//! The trust record ([`keys::TRUST`]) holds the CA's key and the key join tokens are HMAC'd
//! with; it lives outside `/rift/v1/`, so only `root` (operators, controllers) can read it.

use etcd_client::{Permission, UserAddOptions};
use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::txn::{Guard, Op};
use super::{keys, Store};
use crate::pki::names::{node_user, ROOT_USER};
use crate::pki::{Ca, NodeRole};

/// etcd's built-in superuser role.
const ROOT_ROLE: &str = "root";

fn exists(e: &StoreError) -> bool {
    matches!(e, StoreError::EtcdAlreadyExists(_))
}

fn not_found(e: &StoreError) -> bool {
    matches!(e, StoreError::EtcdNotFound(_) | StoreError::UnknownUser(_))
}

async fn add_user(store: &Store, name: &str) -> Result<()> {
    let mut c = store.client();
    let opts = UserAddOptions::new().with_no_pwd();
    match store.call(c.user_add(name, "", Some(opts))).await {
        Err(e) if exists(&e) => Ok(()),
        other => other.map(|_| ()),
    }
}

async fn grant(store: &Store, user: &str, role: &str) -> Result<()> {
    let mut c = store.client();
    store.call(c.user_grant_role(user, role)).await.map(|_| ())
}

/// Creates `root` (with etcd's root role) and turns authentication on. Idempotent; needs an
/// identity allowed to do it (any, before auth is on; `root`'s role after).
pub async fn enable(store: &Store) -> Result<()> {
    add_user(store, ROOT_USER).await?;
    grant(store, ROOT_USER, ROOT_ROLE).await?;
    let mut c = store.client();
    store.call(c.auth_enable()).await.map(|_| ())
}

/// The role `node` has been admitted with, if any.
pub async fn admitted(store: &Store, node: &str) -> Result<Option<NodeRole>> {
    for role in [NodeRole::Controller, NodeRole::Worker] {
        let mut c = store.client();
        match store.call(c.user_get(node_user(role, node))).await {
            Ok(_) => return Ok(Some(role)),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Creates node `node`'s etcd user (and, for a worker, its role). Refused with
/// [`StoreError::AlreadyExists`] when the node already has an identity: a token holder must
/// not be able to take over a node's name. The user is created last, so a failure half-way
/// leaves nothing usable and the next attempt completes it.
pub async fn admit(store: &Store, node: &str, role: NodeRole) -> Result<()> {
    if admitted(store, node).await?.is_some() {
        return Err(StoreError::AlreadyExists {
            kind: "identity of node".into(),
            name: node.into(),
        });
    }
    let user = node_user(role, node);
    match role {
        NodeRole::Controller => {
            add_user(store, &user).await?;
            grant(store, &user, ROOT_ROLE).await
        }
        NodeRole::Worker => {
            let mut c = store.client();
            match store.call(c.role_add(user.as_str())).await {
                Err(e) if exists(&e) => {}
                other => {
                    other?;
                }
            }
            for perm in [
                Permission::read_write(keys::agent_prefix(node)).with_prefix(),
                Permission::read(keys::ROOT).with_prefix(),
            ] {
                let mut c = store.client();
                store
                    .call(c.role_grant_permission(user.as_str(), perm))
                    .await?;
            }
            add_user(store, &user).await?;
            grant(store, &user, &user).await
        }
    }
}

/// As [`admit`], but accepting a node already admitted with `role` (for the machine that
/// creates the cluster, and test fixtures). Admitted with the other role: refused.
pub async fn ensure_admitted(store: &Store, node: &str, role: NodeRole) -> Result<()> {
    match admitted(store, node).await? {
        Some(r) if r == role => Ok(()),
        Some(_) => Err(StoreError::AlreadyExists {
            kind: "identity of node".into(),
            name: node.into(),
        }),
        None => admit(store, node, role).await,
    }
}

/// Removes node `node`'s etcd users and role: its certificate opens nothing in etcd any more.
pub async fn forget(store: &Store, node: &str) -> Result<()> {
    for role in [NodeRole::Controller, NodeRole::Worker] {
        let user = node_user(role, node);
        let mut c = store.client();
        match store.call(c.user_delete(user.as_str())).await {
            Err(e) if !not_found(&e) => return Err(e),
            _ => {}
        }
    }
    let mut c = store.client();
    match store
        .call(c.role_delete(node_user(NodeRole::Worker, node)))
        .await
    {
        Err(e) if !not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

/// The cluster's secrets, readable only by `root`: the CA (to sign joining nodes' requests and
/// renewals on any controller) and the key join tokens are HMAC'd with.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustRecord {
    pub ca_cert: String,
    pub ca_key: String,
    /// Hex.
    pub token_key: String,
}

impl std::fmt::Debug for TrustRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustRecord").finish_non_exhaustive()
    }
}

impl TrustRecord {
    pub fn ca(&self) -> std::result::Result<Ca, crate::pki::PkiError> {
        Ca::from_pem(&self.ca_cert, &self.ca_key)
    }

    pub fn token_key(&self) -> Vec<u8> {
        hex::decode(&self.token_key).unwrap_or_default()
    }
}

/// Stores `ca` as the cluster's trust record unless one exists; returns the record in etcd.
/// A record for another CA is an error: one cluster, one CA.
pub async fn publish_trust(store: &Store, ca: &Ca) -> Result<TrustRecord> {
    let mut token_key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut token_key).map_err(
        |_| StoreError::NoRandomness {
            what: "the join-token key",
        },
    )?;
    let record = TrustRecord {
        ca_cert: ca.cert_pem().into(),
        ca_key: ca.key_pem().into(),
        token_key: hex::encode(token_key),
    };
    let body = serde_json::to_vec(&record).expect("a trust record serializes");
    let outcome = store
        .txn(
            vec![Guard::created_at(keys::TRUST, 0)],
            vec![Op::put(keys::TRUST, body)],
            vec![],
        )
        .await?;
    if outcome.succeeded {
        return Ok(record);
    }
    let existing = read_trust(store)
        .await?
        .ok_or_else(|| StoreError::Conflict {
            key: keys::TRUST.into(),
        })?;
    if existing.ca_cert.trim() != ca.cert_pem().trim() {
        return Err(StoreError::Credentials(format!(
            "etcd already holds another cluster CA at {}: this machine's pki/ca.crt belongs to \
             another cluster",
            keys::TRUST
        )));
    }
    Ok(existing)
}

/// The trust record, if published (needs `root`).
pub async fn read_trust(store: &Store) -> Result<Option<TrustRecord>> {
    let Some(kv) = store.get_raw(keys::TRUST).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&kv.value)
        .map(Some)
        .map_err(|e| StoreError::Decode {
            key: keys::TRUST.into(),
            reason: e.to_string(),
        })
}
