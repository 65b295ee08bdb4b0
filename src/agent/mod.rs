//! The node agent: runs on every node, serves HTTP, and on controller-eligible nodes campaigns
//! for leadership and runs the controllers while it leads.
//!
//! Pieces: [`registration`] (the Node and its liveness lease), [`jobs`] (the job runner and its
//! shims), [`etcd_member`] (the local etcd member and the agent's endpoints), [`tunnels`]
//! (reverse SSH tunnels of a NAT-blocked node), peer probes, HTTP (`/healthz`, `/readyz`,
//! `/status`, `/metrics`), and the leader loop.

pub mod config;
pub mod etcd_member;
mod http;
pub mod https;
pub mod identity;
pub mod jobs;
mod leader_loop;
mod logs;
pub mod metrics;
pub mod node_status;
mod peers;
pub mod registration;
mod renewal;
pub mod resources;
pub mod tunnels;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

pub use config::AgentConfig;

use crate::store::leader::current_leader;
use crate::store::{Store, StoreError};

/// What the HTTP handlers read about this agent.
pub struct AgentState {
    pub node: String,
    pub state_dir: jobs::layout::StateDir,
    pub metrics: Arc<metrics::Metrics>,
    pub controllers: bool,
    pub is_leader: AtomicBool,
    pub leader: RwLock<Option<String>>,
    pub etcd_ready: AtomicBool,
    /// Peers (by the old orchestrator's meaning): other nodes whose alive key exists.
    pub alive_peers: RwLock<Vec<String>>,
    /// Voters named by the VoterSet whose agents are alive.
    pub voters_alive: RwLock<Vec<String>>,
    /// Peers whose agent answered, and the address it answered at.
    pub reachable_peers: RwLock<std::collections::BTreeMap<String, String>>,
    /// The cluster CA (served to joining nodes by controllers).
    pub ca_pem: Option<String>,
    /// Joins and renewals: on controllers of a TLS cluster.
    pub join: Option<crate::join::server::JoinService>,
    /// A bearer token Prometheus may present for `/metrics`.
    pub scrape_token: Option<String>,
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read this machine's resources: {0}")]
    Resources(String),
    #[error("cannot use the state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Identity(String),
}

/// Runs the agent until `shutdown` turns true; then stops the controllers, resigns
/// leadership (so a standby takes over at once) and returns.
pub async fn run(config: AgentConfig, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    let me = identity::establish(&config).await?;
    // Endpoints learned by an earlier run (every voter's client URLs) come after the
    // configured ones: the cluster is found even after the configured voters were retired.
    let configured = me.access.endpoints().to_vec();
    let mut endpoints = configured.clone();
    for e in etcd_member::saved_endpoints(&config.state_dir, &configured) {
        if !endpoints.contains(&e) {
            endpoints.push(e);
        }
    }
    let store = Store::connect_lazy(&me.access.with_endpoints(&endpoints)).await?;
    let state_dir = jobs::layout::StateDir::new(&config.state_dir);
    let metrics = Arc::new(metrics::Metrics::default());
    let tls = match me.identity() {
        Some(id) => Some(
            crate::pki::tls::server_config(id).map_err(|e| AgentError::Identity(e.to_string()))?,
        ),
        None => None,
    };
    let scrape_token = match &config.scrape_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| AgentError::StateDir {
                    path: path.display().to_string(),
                    source,
                })?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let serves_joins = me.role == Some(crate::pki::NodeRole::Controller);
    let state = Arc::new(AgentState {
        node: config.name.clone(),
        state_dir: state_dir.clone(),
        metrics: metrics.clone(),
        controllers: config.controllers,
        is_leader: AtomicBool::new(false),
        leader: RwLock::new(None),
        etcd_ready: AtomicBool::new(false),
        alive_peers: RwLock::new(Vec::new()),
        voters_alive: RwLock::new(Vec::new()),
        reachable_peers: RwLock::default(),
        ca_pem: me.identity().map(|i| i.ca_pem.clone()),
        join: serves_joins.then(|| crate::join::server::JoinService::new(store.clone())),
        scrape_token,
    });
    let addr = format!("{}:{}", config.listen, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| AgentError::Listen {
            addr: addr.clone(),
            source,
        })?;
    tracing::info!(node = %config.name, %addr, "agent listening");

    let server = tokio::spawn(https::serve(
        listener,
        http::router(state.clone()),
        tls,
        shutdown.clone(),
    ));
    if let (Some(ca), Some(role)) = (me.local_ca.clone(), me.role) {
        tokio::spawn(keep_trust(
            store.clone(),
            config.name.clone(),
            role,
            ca,
            shutdown.clone(),
        ));
    }
    let renewal = tokio::spawn(renewal::run(
        config.clone(),
        me.clone(),
        store.clone(),
        shutdown.clone(),
    ));
    let probe = tokio::spawn(probe_etcd(store.clone(), state.clone(), shutdown.clone()));
    std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::StateDir {
        path: config.state_dir.display().to_string(),
        source,
    })?;
    // The member stops (if it stops with the agent) only after everything else is done: the
    // leader's resignation and the node's lease revocation may need it.
    let (member_stop, member_stopped) = watch::channel(false);
    let member = etcd_member::Supervisor::new(&config, store.clone(), configured);
    let member = tokio::spawn(member.run(member_stopped));
    let registration = tokio::spawn(registration::keep_alive(
        store.clone(),
        config.name.clone(),
        config.node_lease_ttl,
        registration::NodeAnnouncement {
            spec: config.node_spec(),
            labels: config.labels.clone(),
        },
        state_dir.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let node_spec = config.node_spec();
    // One probe before anything runs: the runner must know which GPU indices exist.
    let resource_probe =
        resources::ResourceProbe::new().map_err(|e| AgentError::Resources(e.to_string()))?;
    let (resource_probe, observed) = node_status::probe_once(
        resource_probe,
        config.gpus.clone(),
        config.state_dir.clone(),
    )
    .await;
    let gpu_count = Some(observed.capacity.gpus.len());
    tracing::info!(
        cpus = observed.capacity.cpus,
        gpus = observed.capacity.gpus.len(),
        "resources"
    );
    let tunnels = tunnels::Tunnels::new(
        config.name.clone(),
        config.port,
        store.clone(),
        &config.state_dir,
        config.advertise.clone(),
    );
    let status_writer = node_status::StatusWriter {
        node: config.name.clone(),
        store: store.clone(),
        state: state_dir.clone(),
        declared: config.gpus.clone(),
        thresholds: config.thresholds,
        endpoint: tunnels.endpoint(),
        metrics: metrics.clone(),
    };
    let status_writer = tokio::spawn(status_writer.run(resource_probe, shutdown.clone()));
    let tunnels = tokio::spawn(tunnels.run(shutdown.clone()));
    let agent_tls = crate::net::AgentTls::for_identity(me.identity())
        .map_err(|e| AgentError::Identity(e.to_string()))?;
    let peers = tokio::spawn(peers::run(
        store.clone(),
        state.clone(),
        agent_tls,
        shutdown.clone(),
    ));
    // A worker's Node is created when it joins (it may write only its own keys); a
    // controller, or an agent of a plaintext cluster, creates its own.
    if me.may_write_cluster_objects() {
        let store = store.clone();
        let name = config.name.clone();
        let labels = config.labels.clone();
        tokio::spawn(async move {
            loop {
                match registration::ensure_node(&store, &name, &node_spec, &labels).await {
                    Ok(created) => {
                        tracing::info!(created, "node registered");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(%e, "cannot register the node yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
    let runner = jobs::runner::Runner::new(
        config.name.clone(),
        store.clone(),
        state_dir,
        gpu_count,
        metrics,
    );
    let runner = tokio::spawn(runner.run(shutdown.clone()));

    if config.controllers {
        leader_loop::run(&store, &config, &state, shutdown.clone()).await;
    } else {
        let mut s = shutdown.clone();
        let _ = s.wait_for(|s| *s).await;
    }
    probe.abort();
    peers.abort();
    renewal.abort();
    let _ = tunnels.await;
    let _ = runner.await;
    let _ = status_writer.await;
    let _ = registration.await;
    let _ = server.await;
    let _ = member_stop.send(true);
    let _ = member.await;
    Ok(())
}

/// On the machine that created the cluster (it holds the CA's key): makes sure this node's
/// etcd user exists, authentication is on and the trust record (the CA, for joins on any
/// controller) is in etcd; retried until done. Before authentication is on, any client of the
/// CA may do this; after, only a root identity, which this node's is.
async fn keep_trust(
    store: Store,
    node: String,
    role: crate::pki::NodeRole,
    ca: crate::pki::Ca,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            crate::store::auth::ensure_admitted(&store, &node, role).await?;
            crate::store::auth::enable(&store).await?;
            crate::store::auth::publish_trust(&store, &ca).await?;
            Ok::<(), StoreError>(())
        };
        match attempt.await {
            Ok(()) => {
                tracing::info!("etcd authentication is on; the cluster CA is published");
                return;
            }
            Err(e) => tracing::debug!(%e, "cannot set up etcd authentication yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut shutdown) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Keeps readiness, the known leader, and the peers and voters alive current.
async fn probe_etcd(store: Store, state: Arc<AgentState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick: u64 = 0;
    loop {
        let ready = match current_leader(&store).await {
            Ok(leader) => {
                *state.leader.write().expect("lock") = leader.map(|l| l.record.node);
                true
            }
            Err(e) => {
                tracing::debug!(%e, "etcd probe failed");
                false
            }
        };
        if state.etcd_ready.swap(ready, Ordering::Relaxed) != ready {
            tracing::info!(ready, "etcd readiness changed");
        }
        if ready && tick % 2 == 0 {
            if let Ok((alive, voters)) = peers_and_voters(&store).await {
                *state.voters_alive.write().expect("lock") =
                    voters.into_iter().filter(|v| alive.contains(v)).collect();
                *state.alive_peers.write().expect("lock") =
                    alive.into_iter().filter(|n| *n != state.node).collect();
            }
        }
        tick += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Nodes whose alive key exists (one keys-only read), and the VoterSet's voters.
async fn peers_and_voters(store: &Store) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let mut kv = store.client().kv_client();
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_keys_only();
    let resp = store
        .call(kv.get(crate::store::keys::AGENTS_PREFIX, Some(opts)))
        .await?;
    let alive = resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = std::str::from_utf8(kv.key()).ok()?;
            let rest = key.strip_prefix(crate::store::keys::AGENTS_PREFIX)?;
            rest.strip_suffix("/alive").map(str::to_string)
        })
        .collect();
    let voters = store
        .get::<crate::api::VoterSetSpec>(crate::api::voter_set::VOTER_SET_NAME)
        .await?
        .map(|v| v.spec.voters)
        .unwrap_or_default();
    Ok((alive, voters))
}

/// A shutdown channel that turns true on SIGTERM or SIGINT; a second signal exits at once.
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = tx.send(true);
        // A second signal while shutting down means "now": exit without waiting (jobs keep
        // running under their shims either way).
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("second signal: exiting without a clean shutdown");
        std::process::exit(130);
    });
    rx
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
