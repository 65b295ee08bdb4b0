//! Tunnels: reverse SSH tunnels from this (NAT-blocked) node to a relay, so peers and operators
//! can reach it. The reconciler watches `Tunnel` objects, keeps one [`supervisor::Supervisor`]
//! (one `ssh -N -R` process) per Tunnel whose `spec.node` is this node, and stops it when the
//! Tunnel is deleted, moves to another node, or the agent stops.
//!
//! Who writes what (docs/architecture.md, "Keys in etcd"): the tunnel's status goes to this
//! node's own `/rift/v1/agents/<node>/tunnels/<name>`, composed into the Tunnel's status on
//! read; the endpoint a connected tunnel gives the agent (`relay-host:remote-port`) goes into
//! the Node status this agent writes, through [`Endpoint`].
//!
//! Pieces: [`select`] (which relay and address, pure), [`ssh`] (the ssh command line, pinned
//! known_hosts, stderr meanings), [`supervisor`] (one tunnel's restart loop).

pub mod select;
pub mod ssh;
pub mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use tokio::sync::watch;

use crate::api::validation::dns1123_problem;
use crate::api::{Tunnel, TunnelSpec};
use crate::store::cache::{self, Cached, Keyed};
use crate::store::compose::direct_child;
use crate::store::events::EventRecorder;
use crate::store::watcher::{WatchConfig, WatchEvent, Watcher};
use crate::store::Op;
use crate::store::{keys, Store};
use crate::tasks::CancellationToken;
use supervisor::{Endpoints, Supervisor};

/// The endpoint this agent advertises in its Node status: a connected tunnel's
/// `relay-host:remote-port` for the agent port when there is one, else the configured one.
#[derive(Clone, Debug)]
pub struct Endpoint {
    tunnels: watch::Receiver<BTreeMap<String, String>>,
    fallback: Option<String>,
}

impl Endpoint {
    /// An endpoint that is always `fallback` (no tunnels).
    pub fn fixed(fallback: Option<String>) -> Self {
        let (_, rx) = watch::channel(BTreeMap::new());
        Self {
            tunnels: rx,
            fallback,
        }
    }

    /// The endpoint now: the first connected tunnel's (by name), else the fallback.
    pub fn current(&self) -> Option<String> {
        self.tunnels
            .borrow()
            .values()
            .next()
            .cloned()
            .or_else(|| self.fallback.clone())
    }

    /// Resolves when the endpoint may have changed (never, once the tunnels are gone).
    pub async fn changed(&mut self) {
        if self.tunnels.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The Tunnel reconciler of one agent.
pub struct Tunnels {
    node: String,
    agent_port: u16,
    store: Store,
    /// `<state>/tunnels/`
    dir: PathBuf,
    endpoints: Endpoints,
    fallback: Option<String>,
}

/// One supervised tunnel.
/// What a stored Tunnel is to this node.
enum Mine {
    /// It runs here, with this spec.
    Runs(TunnelSpec),
    /// Not this node's (gone, another node's, or invalid).
    NotOurs,
    /// It does not decode: whatever runs for it runs on untouched.
    Unreadable,
}

/// A Tunnel's key names a directory, so it must be one valid name: anything else under the
/// prefix is logged and ignored.
fn tunnel_name(rest: &str) -> Option<&str> {
    let name = crate::store::cache::direct_child(rest)?;
    match dns1123_problem(name) {
        None => Some(name),
        Some(problem) => {
            tracing::warn!(
                name,
                problem,
                "ignoring a Tunnel whose key is no valid name"
            );
            None
        }
    }
}

struct Running {
    spec: TunnelSpec,
    tasks: crate::tasks::Tasks,
}

impl Tunnels {
    /// `state_root` is the agent's state directory; `advertise` the endpoint to show while no
    /// tunnel is connected.
    pub fn new(
        node: String,
        agent_port: u16,
        store: Store,
        state_root: &std::path::Path,
        advertise: Option<String>,
    ) -> Self {
        let (endpoints, _) = watch::channel(BTreeMap::new());
        Self {
            node,
            agent_port,
            store,
            dir: state_root.join("tunnels"),
            endpoints,
            fallback: advertise,
        }
    }

    /// The endpoint handle for the Node status writer.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            tunnels: self.endpoints.subscribe(),
            fallback: self.fallback.clone(),
        }
    }

    /// Watches Tunnels until `shutdown`, then stops every ssh process before returning.
    pub async fn run(self, shutdown: CancellationToken) {
        let events = EventRecorder::agent(self.store.clone(), &self.node);
        let prefix = keys::objects_prefix("tunnels");
        let mut watcher = Watcher::new(self.store.clone(), prefix.clone(), WatchConfig::default());
        let mut tunnels: Keyed<Tunnel> = Keyed::new(prefix, tunnel_name, cache::json);
        let mut running: HashMap<String, Running> = HashMap::new();
        loop {
            let ev = tokio::select! {
                ev = watcher.next() => ev,
                _ = shutdown.cancelled() => break,
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::debug!(%e, "tunnels watch: retrying");
                    continue;
                }
            };
            // Stops first, then starts: a Tunnel renamed onto the same ports needs the old
            // one's ssh gone.
            let (mut runs, mut stops) = (Vec::new(), Vec::new());
            for name in tunnels.apply(&ev) {
                match self.mine(&name, tunnels.get(&name)) {
                    Mine::Runs(spec) => runs.push((name, spec)),
                    // Gone, moved to another node, or invalid: not ours to run.
                    Mine::NotOurs => stops.push(name),
                    // What cannot be read is never acted on: it runs on as it was.
                    Mine::Unreadable => {}
                }
            }
            for name in stops {
                self.stop(&mut running, &name, true).await;
            }
            for (name, spec) in runs {
                self.ensure(&mut running, &events, name, spec).await;
            }
            if matches!(ev, WatchEvent::Restarted { .. }) {
                self.remove_orphan_statuses(&running).await;
            }
        }
        let names: Vec<String> = running.keys().cloned().collect();
        for name in names {
            self.stop(&mut running, &name, false).await;
        }
    }

    /// Whether the Tunnel `name`, as cached, runs on this node.
    fn mine(&self, name: &str, cached: Option<&Cached<Tunnel>>) -> Mine {
        let tunnel = match cached {
            None => return Mine::NotOurs,
            Some(Cached::Undecodable(_)) => return Mine::Unreadable,
            Some(Cached::Ready(t)) => t,
        };
        if tunnel.spec.node != self.node {
            return Mine::NotOurs;
        }
        let problems = tunnel.validate();
        if !problems.is_empty() {
            tracing::warn!(tunnel = name, %problems, "ignoring invalid Tunnel");
            return Mine::NotOurs;
        }
        Mine::Runs(tunnel.spec.clone())
    }

    /// Starts supervising `name`, or restarts it when its spec changed.
    async fn ensure(
        &self,
        running: &mut HashMap<String, Running>,
        events: &EventRecorder,
        name: String,
        spec: TunnelSpec,
    ) {
        if running.get(&name).is_some_and(|r| r.spec == spec) {
            return;
        }
        self.stop(running, &name, false).await;
        let tasks = crate::tasks::Tasks::default();
        let sup = Supervisor {
            node: self.node.clone(),
            name: name.clone(),
            spec: spec.clone(),
            store: self.store.clone(),
            dir: self.dir.join(&name),
            agent_port: self.agent_port,
            endpoints: self.endpoints.clone(),
            events: events.clone(),
        };
        tracing::info!(tunnel = %name, relay = %spec.relay, "supervising tunnel");
        tasks.spawn(sup.run(tasks.token().clone()));
        running.insert(name, Running { spec, tasks });
    }

    /// Stops `name`'s ssh (when running) and waits for it; with `forget`, also deletes its
    /// status key and state directory.
    async fn stop(&self, running: &mut HashMap<String, Running>, name: &str, forget: bool) {
        let Some(r) = running.remove(name) else {
            return;
        };
        r.tasks.stop().await;
        tracing::info!(tunnel = %name, "tunnel stopped");
        if forget {
            let key = keys::agent_tunnel(&self.node, name);
            if let Err(e) = self
                .store
                .txn(vec![], vec![Op::delete(key.as_str())], vec![])
                .await
            {
                tracing::debug!(%e, "tunnel status not deleted; the next full list retries");
            }
            if dns1123_problem(name).is_none() {
                let dir = self.dir.join(name);
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            }
        }
    }

    /// Deletes status keys this agent wrote for tunnels it no longer runs (deleted while it
    /// was down).
    async fn remove_orphan_statuses(&self, running: &HashMap<String, Running>) {
        let prefix = keys::agent_tunnel(&self.node, "");
        let Ok(keys) = self.store.list_keys(&prefix).await else {
            return;
        };
        for key in keys {
            if direct_child(&prefix, &key).is_some_and(|n| !running.contains_key(n)) {
                let _ = self
                    .store
                    .txn(vec![], vec![Op::delete(key.as_str())], vec![])
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_node_endpoint_is_a_connected_tunnels_and_falls_back_when_it_goes_down() {
        let (tx, _) = watch::channel(BTreeMap::new());
        let mut ep = Endpoint {
            tunnels: tx.subscribe(),
            fallback: Some("10.0.0.5:8770".into()),
        };
        assert_eq!(ep.current().as_deref(), Some("10.0.0.5:8770"));
        tx.send_modify(|m| {
            m.insert("t".to_string(), "relay.example:18770".to_string());
        });
        ep.changed().await;
        assert_eq!(ep.current().as_deref(), Some("relay.example:18770"));
        tx.send_modify(|m| {
            m.remove("t");
        });
        assert_eq!(ep.current().as_deref(), Some("10.0.0.5:8770"));
        assert_eq!(Endpoint::fixed(None).current(), None);
    }
}
