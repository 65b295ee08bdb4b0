//! Hollow nodes (`rift sim`): many node agents in one process against real etcd, in the manner
//! of Kubernetes' kubemark. Each hollow node has its own lease and alive key, registers its
//! Node, writes its status, watches only its own bindings prefix and runs the real job
//! [`Runner`](crate::agent::jobs::runner::Runner) over simulated processes; see [`hollow`].
//!
//! What does not scale when thousands of agents share one process, and what is done about it:
//! - **lease keep-alive streams**: shared, one stream for all ([`leases`]);
//! - **state directories**: one per node under one root, best on tmpfs (`/dev/shm` is used
//!   when present);
//! - **watch streams**: one per node, all on the process's one etcd connection, as a real
//!   fleet has one per agent; etcd serves them from one watchable store, and each node's
//!   watch covers only its own prefix, so no node reads another node's events;
//! - **tasks**: a few tokio tasks per node (runner, status, registration, events), which
//!   tokio handles by the hundred thousand.

pub mod hollow;
pub mod leases;
pub mod staging;

use std::path::{Path, PathBuf};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use hollow::{HollowSettings, Life};
use leases::SharedLeases;

use crate::agent::jobs::layout::StateDir;
use crate::store::{Store, StoreError};

/// The name of hollow node `i` with `prefix`.
pub fn node_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:05}")
}

/// A default root for hollow state: tmpfs when the machine has it.
pub fn default_state_root() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("rift-sim-{}", std::process::id()))
}

/// Hollow nodes per etcd connection (see [`Cluster::start`]).
pub const NODES_PER_CONNECTION: usize = 50;

struct Member {
    name: String,
    life: watch::Sender<Life>,
    task: JoinHandle<()>,
}

/// A running set of hollow nodes. Dropping it crashes every node still running (each stops
/// its tasks; their leases expire) without waiting; [`Cluster::stop`] ends them gracefully and
/// [`Cluster::crash`] as crashes, both waiting and removing the state.
pub struct Cluster {
    store: Store,
    /// Extra connections, one per [`NODES_PER_CONNECTION`] nodes.
    connections: Vec<Store>,
    access: crate::store::Access,
    members: Vec<Member>,
    state_root: PathBuf,
    leases: SharedLeases,
}

impl Cluster {
    /// Starts `count` hollow nodes named `<prefix>-00000`.. with state under `state_root`.
    ///
    /// Every [`NODES_PER_CONNECTION`] nodes share one etcd connection (a real fleet has one
    /// per agent; no difference was measured against one connection for all at 1,000 nodes).
    pub async fn start(
        access: &crate::store::Access,
        prefix: &str,
        count: usize,
        settings: HollowSettings,
        state_root: PathBuf,
    ) -> Result<Cluster, StoreError> {
        let store = Store::connect_lazy(access).await?;
        let leases = SharedLeases::start(store.clone());
        let mut cluster = Cluster {
            store,
            connections: Vec::new(),
            access: access.clone(),
            members: Vec::with_capacity(count),
            state_root,
            leases,
        };
        cluster.add(prefix, 0..count, settings).await?;
        Ok(cluster)
    }

    /// Starts more hollow nodes, numbered `range`.
    pub async fn add(
        &mut self,
        prefix: &str,
        range: std::ops::Range<usize>,
        settings: HollowSettings,
    ) -> Result<(), StoreError> {
        for i in range {
            if self.members.len() / NODES_PER_CONNECTION >= self.connections.len() {
                self.connections
                    .push(Store::connect_lazy(&self.access).await?);
            }
            let store = self.connections.last().expect("one connection").clone();
            let name = node_name(prefix, i);
            let (life, rx) = watch::channel(Life::Running);
            let node = hollow::HollowNode {
                name: name.clone(),
                store,
                leases: self.leases.clone(),
                state: StateDir::new(self.state_root.join(&name)),
                settings: settings.clone(),
            };
            let task = tokio::spawn(node.run(rx));
            self.members.push(Member { name, life, task });
        }
        Ok(())
    }

    /// Starts nodes `range` in waves of `wave` (thousands registering at once only queue
    /// behind each other, and past etcd's request timeouts they retry and queue more): the
    /// next wave starts once every node started so far is alive. Calls `progress(alive,
    /// started)` after each look (every 200 ms). Returns when all are alive; a slow or failed
    /// look is asked again, so callers bound the wait.
    pub async fn grow(
        &mut self,
        prefix: &str,
        range: std::ops::Range<usize>,
        settings: HollowSettings,
        wave: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(), StoreError> {
        let (first, want) = (self.len(), self.len() + range.len());
        let mut alive = 0;
        while alive < want {
            let target = (self.len() + wave.max(1)).min(want);
            if self.len() < target && alive >= self.len() {
                let from = range.start + (self.len() - first);
                let to = range.start + (target - first);
                self.add(prefix, from..to, settings.clone()).await?;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            alive = self.alive().await.unwrap_or(alive);
            progress(alive, self.len());
        }
        Ok(())
    }

    /// The names of the nodes, in start order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|m| m.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Ends node `i` as a crash (its lease expires) or gracefully; returns its name.
    pub fn end(&self, i: usize, how: Life) -> &str {
        let _ = self.members[i].life.send(how);
        &self.members[i].name
    }

    /// How many of this cluster's nodes have an alive key in etcd now.
    pub async fn alive(&self) -> Result<usize, StoreError> {
        let names: std::collections::HashSet<&str> = self.names().collect();
        Ok(crate::store::compose::alive_nodes(&self.store)
            .await?
            .iter()
            .filter(|n| names.contains(n.as_str()))
            .count())
    }

    /// Stops every node gracefully (leases revoked), waits for them, and removes the state.
    pub async fn stop(self) {
        self.end_all(Life::Stop).await
    }

    /// Ends every node as a crash (leases left to expire), waits, and removes the state.
    pub async fn crash(self) {
        self.end_all(Life::Crash).await
    }

    async fn end_all(mut self, how: Life) {
        for m in &self.members {
            let _ = m.life.send(how);
        }
        for m in std::mem::take(&mut self.members) {
            let _ = m.task.await;
        }
        let _ = std::fs::remove_dir_all(&self.state_root);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &self.members {
            let _ = m.life.send(Life::Crash);
        }
    }
}
