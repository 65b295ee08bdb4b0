//! etcd cluster membership: the member list with each member's health, and the three changes
//! the voters controller makes (add a learner, promote it, remove a member).
//!
//! Membership changes are not key-value transactions, so the leader fence cannot guard them;
//! callers check their leadership right before each change, and every change is one idempotent
//! step that the next pass re-derives from the real member list.

use std::time::Duration;

use etcd_client::{ConnectOptions, MemberAddOptions};

use super::access::Access;
use super::{Store, StoreError};

/// How long a member has to answer a status request on its own client URL to count as healthy.
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(1500);

/// One etcd member, with its health as seen from here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    /// Empty until the member has started once.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
    /// It answered a status request on one of its client URLs within [`HEALTH_TIMEOUT`].
    pub healthy: bool,
}

impl MemberInfo {
    /// The id as etcdctl prints it.
    pub fn hex_id(&self) -> String {
        format!("{:x}", self.id)
    }
}

/// One member as the member list names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Empty until the member has started once.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

impl Member {
    fn from_etcd(m: &etcd_client::Member) -> Member {
        Member {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            learner: m.is_learner(),
        }
    }
}

/// The member list as one member answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberList {
    /// The cluster of the member that answered (`None` when the answer had no header).
    pub cluster_id: Option<u64>,
    pub members: Vec<Member>,
}

/// The member list, without health probes, if a member answers within `timeout` (a short
/// one of its own, for a loop that asks every pass).
pub async fn list_within(store: &Store, timeout: Duration) -> Option<MemberList> {
    let mut client = store.client();
    let resp = tokio::time::timeout(timeout, client.member_list())
        .await
        .ok()?
        .ok()?;
    Some(MemberList {
        cluster_id: resp.header().map(|h| h.cluster_id()),
        members: resp.members().iter().map(Member::from_etcd).collect(),
    })
}

/// Sets member `id`'s peer URLs, if etcd answers within `timeout`.
pub async fn update_peer_urls(
    store: &Store,
    id: u64,
    peer_urls: Vec<String>,
    timeout: Duration,
) -> Result<(), StoreError> {
    let mut client = store.client();
    match tokio::time::timeout(timeout, client.member_update(id, peer_urls)).await {
        Ok(r) => r
            .map(|_| ())
            .map_err(|e| StoreError::from_etcd(e, store.endpoints())),
        Err(_) => Err(StoreError::Timeout {
            endpoints: store.endpoints().to_string(),
            seconds: timeout.as_secs(),
        }),
    }
}

/// The member list, each member probed for health concurrently.
pub async fn list(store: &Store) -> Result<Vec<MemberInfo>, StoreError> {
    let mut client = store.client();
    let resp = store.call(client.member_list()).await?;
    let access = store.access();
    let probes = resp.members().iter().map(|m| {
        let (urls, id) = (m.client_urls().to_vec(), m.id());
        async move { healthy(access, &urls, id).await }
    });
    let health = futures::future::join_all(probes).await;
    Ok(resp
        .members()
        .iter()
        .zip(health)
        .map(|(m, healthy)| MemberInfo {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            learner: m.is_learner(),
            healthy,
        })
        .collect())
}

/// True when any of `client_urls` answers a status request within [`HEALTH_TIMEOUT`] as member
/// `id` (not some other member or cluster now at that URL) and knows a raft leader. Asked with
/// `access`'s identity (URLs of the other scheme are skipped).
pub async fn healthy(access: &Access, client_urls: &[String], id: u64) -> bool {
    let scheme = if access.is_tls() {
        "https://"
    } else {
        "http://"
    };
    for url in client_urls.iter().filter(|u| u.starts_with(scheme)) {
        let check = async {
            let options = access
                .options(ConnectOptions::new().with_connect_timeout(Duration::from_millis(500)));
            let mut c = etcd_client::Client::connect([url.as_str()], Some(options))
                .await
                .ok()?;
            c.status().await.ok()
        };
        if let Ok(Some(status)) = tokio::time::timeout(HEALTH_TIMEOUT, check).await {
            let answered_as = status.header().map(|h| h.member_id());
            if answered_as == Some(id) && status.leader() != 0 {
                return true;
            }
        }
    }
    false
}

/// Adds a learner with `peer_urls`; returns its id.
pub async fn add_learner(store: &Store, peer_urls: &[String]) -> Result<u64, StoreError> {
    let mut client = store.client();
    let options = MemberAddOptions::new().with_is_learner();
    let resp = store
        .call(client.member_add(peer_urls.to_vec(), Some(options)))
        .await?;
    Ok(resp.member().map(|m| m.id()).unwrap_or_default())
}

/// What promoting a learner did.
#[derive(Debug, PartialEq, Eq)]
pub enum Promotion {
    Promoted,
    /// etcd refused because the learner has not caught up with the leader's log yet.
    NotCaughtUp,
}

/// Promotes learner `id` to a voting member, if it has caught up.
pub async fn promote(store: &Store, id: u64) -> Result<Promotion, StoreError> {
    let mut client = store.client();
    match store.call(client.member_promote(id)).await {
        Ok(_) => Ok(Promotion::Promoted),
        Err(StoreError::LearnerNotCaughtUp(_)) => Ok(Promotion::NotCaughtUp),
        Err(e) => Err(e),
    }
}

/// Removes member `id`.
pub async fn remove(store: &Store, id: u64) -> Result<(), StoreError> {
    let mut client = store.client();
    store.call(client.member_remove(id)).await.map(|_| ())
}
