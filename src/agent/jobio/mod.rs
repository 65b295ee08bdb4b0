//! A job's data on its node: inputs staged from the artifact store before the process starts,
//! sealed outputs uploaded after (the contract is in [`crate::api::job_io`]).
//!
//! - [`cache`]: the node cache of verified, read-only artifacts that outlives jobs.
//! - [`staging`]: inputs into the cache and linked into the job, one download at a time.
//! - [`outputs`]: sealed files journaled, uploaded one at a time, reported for the leader to
//!   record as Artifacts; resumed after an agent restart.
//! - [`evict`]: which cache entries to delete when the disk passes its high watermark.
//! - [`models`]: a Pool member's newly promoted model prefetched and, for Reload, swapped in.
//!
//! The runner ([`crate::agent::jobs::runner`]) drives them: it holds an attempt until its
//! inputs are staged and a finished job until its outputs are recorded.

pub mod cache;
pub mod evict;
pub mod models;
pub mod outputs;
pub mod staging;

use std::path::PathBuf;

use crate::api::artifact_store::{ArtifactStoreSpec, DEFAULT_STORE};
use crate::api::node::NodeSpec;
use crate::artifacts;
use crate::store::Store;

/// What the runner needs for inputs and outputs.
#[derive(Clone)]
pub struct DataPlane {
    pub stager: staging::Stager,
    pub models: models::Models,
    /// The upload journal's directory (`<state>/uploads`).
    pub uploads: PathBuf,
}

/// How the agent reaches the artifact store: the `ArtifactStore` `default` read from etcd,
/// opened with credentials from the node's secrets directory, its bandwidth limits applied
/// for this node.
#[derive(Clone)]
pub struct StoreAccess {
    pub etcd: Store,
    pub secrets_dir: PathBuf,
    /// This node's name: its Node's labels choose the `bandwidth` entry that applies.
    pub node: String,
    /// The node's buckets, shared by every transfer of this agent (one per direction).
    pub limits: artifacts::bandwidth::Limits,
}

/// Why the store cannot be opened now.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// etcd unreachable: wait and try again.
    #[error("{0}")]
    Transient(String),
    /// No ArtifactStore, or one that cannot be opened (bad URL, credentials file): a person
    /// must act.
    #[error("{0}")]
    Permanent(String),
}

impl StoreAccess {
    /// Opens the cluster's store (read afresh each time, so an edited ArtifactStore is used).
    pub async fn open(&self) -> Result<artifacts::Store, AccessError> {
        let spec = self
            .etcd
            .get::<ArtifactStoreSpec>(DEFAULT_STORE)
            .await
            .map_err(|e| AccessError::Transient(format!("cannot read ArtifactStore {DEFAULT_STORE}: {e}")))?
            .ok_or_else(|| {
                AccessError::Permanent(format!(
                    "this cluster has no ArtifactStore `{DEFAULT_STORE}`: apply one (rift explain artifactstore)"
                ))
            })?;
        let mut store = artifacts::open(&spec.spec, &self.secrets_dir)
            .map_err(|e| AccessError::Permanent(e.to_string()))?;
        if !spec.spec.bandwidth.is_empty() {
            let node = self.etcd.get::<NodeSpec>(&self.node).await.map_err(|e| {
                AccessError::Transient(format!("cannot read Node {}: {e}", self.node))
            })?;
            let labels = node.map(|n| n.metadata.labels).unwrap_or_default();
            self.limits.apply(&spec.spec.bandwidth, &labels);
        } else {
            self.limits.apply(&[], &Default::default());
        }
        store.limits = self.limits.clone();
        Ok(store)
    }
}

/// How often the cache is checked against the watermarks.
pub const EVICT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Every [`EVICT_EVERY`], evicts least-recently-used unpinned cache entries while the disk
/// holding the cache is above the `ArtifactStore`'s high watermark ([`evict`]); the inputs of
/// every job the stager knows are pinned, and so are the models its Pool members hold or are
/// ordered to get (the current and previous model of the node's Pools). Runs until `shutdown`.
pub async fn keep_cache_in_bounds(
    cache: cache::NodeCache,
    stager: staging::Stager,
    models: models::Models,
    access: StoreAccess,
    shutdown: crate::tasks::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVICT_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        let marks = match access.etcd.get::<ArtifactStoreSpec>(DEFAULT_STORE).await {
            Ok(Some(s)) => s.spec.cache,
            Ok(None) => Default::default(),
            Err(_) => continue,
        };
        let mut pinned = stager.pinned();
        pinned.extend(models.pinned());
        let c = cache.clone();
        let evicted = tokio::task::spawn_blocking(move || {
            let dir = c.dir().to_path_buf();
            let Ok(usage) = evict::usage_of(dir.parent().unwrap_or(&dir)) else {
                return Vec::new();
            };
            let gone = evict::evict(&c.entries(), &pinned, usage, &marks);
            for d in &gone {
                if let Err(e) = c.remove(d) {
                    tracing::warn!(digest = %d, %e, "cannot evict a cache entry");
                }
            }
            gone
        })
        .await
        .unwrap_or_default();
        if !evicted.is_empty() {
            tracing::info!(
                count = evicted.len(),
                "evicted least recently used cache entries: the disk is above its high watermark"
            );
        }
    }
}
