//! The node agent: runs on every node, serves HTTP, and on controller-eligible nodes campaigns
//! for leadership and runs the controllers while it leads.
//!
//! Pieces: [`registration`] (the Node and its liveness lease), [`jobs`] (the job runner and its
//! shims), [`etcd_member`] (the local etcd member and the agent's endpoints), [`tunnels`]
//! (reverse SSH tunnels of a NAT-blocked node), peer probes, HTTP (`/healthz`, `/readyz`,
//! `/status`, `/metrics`), and the leader loop.

pub mod config;
pub mod disk_pressure;
pub mod etcd_member;
mod http;
pub mod http_server;
pub mod https;
pub mod identity;
pub mod jobio;
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

pub use config::AgentConfig;

use crate::store;
use crate::store::leader::current_leader;
use crate::store::{Store, StoreError};
use crate::tasks::{CancellationToken, Tasks};

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
    /// One permit per followed log being streamed ([`http_server::HttpLimits::max_follow_streams`]).
    pub follow_streams: Arc<tokio::sync::Semaphore>,
    pub max_follow_streams: usize,
    /// Fires when the agent stops: followed logs end then (graceful HTTP shutdown waits for
    /// every response).
    pub shutdown: CancellationToken,
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
    #[error(transparent)]
    RunAs(#[from] jobs::run_as::RunAsError),
}

/// Runs the agent until `shutdown` fires; then stops the controllers, resigns leadership (so a
/// standby takes over at once), waits for every task it started and returns.
///
/// Every task is spawned through one [`Tasks`]: whether the agent returns after `shutdown` or
/// early, on an error while starting, it returns only once each of them has ended. The local
/// etcd member has tasks of its own, stopped last: the leader's resignation and the node's
/// lease revocation may need it.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let tasks = Tasks::new(shutdown.child_token());
    let member = Tasks::default();
    let result = start_and_serve(&config, &tasks, &member).await;
    if let Err(e) = &result {
        tracing::error!(%e, "the agent cannot run; stopping what it started");
    }
    tasks.stop().await;
    member.stop().await;
    result
}

/// Starts every part of the agent under `tasks` (the etcd member under `member`) and, once
/// started, serves until `tasks` is stopped.
async fn start_and_serve(
    config: &AgentConfig,
    tasks: &Tasks,
    member: &Tasks,
) -> Result<(), AgentError> {
    let switches_user = check_run_as(config)?;
    private_state_dir(&config.state_dir, switches_user)?;
    let me = identity::establish(config).await?;
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
    let metrics = Arc::new(metrics::Metrics::new(&config.name));
    let state = agent_state(config, &me, &store, &metrics, tasks.token().clone())?;
    serve_http(config, &me, &state, tasks).await?;
    if let (Some(ca), Some(role)) = (me.local_ca.clone(), me.role) {
        let store = store.clone();
        let node = config.name.clone();
        tasks.spawn_until_stopped(keep_trust(store, node, role, ca));
    }
    tasks.spawn_until_stopped(renewal::run(config.clone(), me.clone(), store.clone()));
    tasks.spawn_until_stopped(probe_etcd(store.clone(), state.clone()));
    let supervisor = etcd_member::Supervisor::new(config, store.clone(), configured);
    member.spawn(supervisor.run(member.token().clone()));
    let (renewals, last_renewal) = store::lease::LastRenewal::channel();
    tasks.spawn(registration::write_heartbeats(
        state_dir.clone(),
        renewals.subscribe(),
        tasks.token().clone(),
    ));
    tasks.spawn(registration::keep_alive(
        store.clone(),
        config.name.clone(),
        config.node_lease_ttl,
        renewals,
        registration::NodeAnnouncement {
            spec: config.node_spec(),
            labels: config.labels.clone(),
        },
        metrics.clone(),
        tasks.token().clone(),
    ));
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
    let gpu_count = start_status_writer(config, status_writer, tasks).await?;
    tasks.spawn(tunnels.run(tasks.token().clone()));
    let agent_tls = crate::net::AgentTls::for_identity(me.identity())
        .map_err(|e| AgentError::Identity(e.to_string()))?;
    tasks.spawn_until_stopped(peers::run(store.clone(), state.clone(), agent_tls));
    // A worker's Node is created when it joins (it may write only its own keys); a
    // controller, or an agent of a plaintext cluster, creates its own.
    if me.may_write_cluster_objects() {
        let (store, name) = (store.clone(), config.name.clone());
        let (spec, labels) = (config.node_spec(), config.labels.clone());
        tasks.spawn_until_stopped(async move {
            registration::register_node(&store, &name, &spec, &labels).await
        });
    }
    let shims = jobs::process::ShimProcesses::new(state_dir.heartbeat()).with_options(
        jobs::shim::ShimOptions {
            run_as: config.run_as.clone(),
            secrets_dir: config.secrets_dir.clone(),
        },
    );
    let access = jobio::StoreAccess {
        etcd: store.clone(),
        secrets_dir: config.secrets_dir.clone(),
        node: config.name.clone(),
        limits: Default::default(),
    };
    let cache = jobio::cache::NodeCache::new(&state_dir);
    let stager = jobio::staging::Stager::new(access.clone(), cache.clone(), metrics.cache.clone());
    let uploader = jobio::outputs::Uploader {
        node: config.name.clone(),
        access: access.clone(),
        uploads: state_dir.uploads(),
        cache: Some(cache.clone()),
    };
    tasks.spawn(uploader.run(tasks.token().clone()));
    let models = jobio::models::Models::new(access.clone(), cache.clone(), stager.downloads());
    tasks.spawn(jobio::keep_cache_in_bounds(
        cache,
        stager.clone(),
        models.clone(),
        access,
        tasks.token().clone(),
    ));
    let data = jobio::DataPlane {
        stager,
        models,
        uploads: state_dir.uploads(),
    };
    let runner = jobs::runner::Runner::with_processes(
        config.name.clone(),
        store.clone(),
        state_dir,
        gpu_count,
        metrics,
        last_renewal,
        shims,
    )
    .with_data_plane(data);
    tasks.spawn(runner.run(tasks.token().clone()));

    if config.controllers {
        leader_loop::run(&store, config, &state, tasks).await;
    } else {
        tasks.token().cancelled().await;
    }
    Ok(())
}

/// Refuses at once a runAs no job could start with, rather than failing every job later.
/// True when jobs run as a user other than the agent's.
fn check_run_as(config: &AgentConfig) -> Result<bool, AgentError> {
    let run_as = config
        .run_as
        .as_deref()
        .map(jobs::run_as::RunAs::resolve_usable)
        .transpose()?;
    match &run_as {
        Some(user) => tracing::info!(user = %user.name, uid = user.uid.as_raw(), "jobs run as"),
        None if nix::unistd::Uid::effective().is_root() => tracing::warn!(
            "jobs run as root and can read this node's state: set runAs in the node config \
             (config/install-node.sh creates the user rift-job and sets it)"
        ),
        None => {}
    }
    Ok(run_as.is_some_and(|u| !u.is_current()))
}

/// What the HTTP handlers will read; `shutdown` ends followed logs.
fn agent_state(
    config: &AgentConfig,
    me: &identity::AgentIdentity,
    store: &Store,
    metrics: &Arc<metrics::Metrics>,
    shutdown: CancellationToken,
) -> Result<Arc<AgentState>, AgentError> {
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
    Ok(Arc::new(AgentState {
        node: config.name.clone(),
        state_dir: jobs::layout::StateDir::new(&config.state_dir),
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
        follow_streams: Arc::new(tokio::sync::Semaphore::new(config.http.max_follow_streams)),
        max_follow_streams: config.http.max_follow_streams,
        shutdown,
    }))
}

/// Binds the agent's port and serves HTTP (TLS on a TLS cluster) under `tasks`.
async fn serve_http(
    config: &AgentConfig,
    me: &identity::AgentIdentity,
    state: &Arc<AgentState>,
    tasks: &Tasks,
) -> Result<(), AgentError> {
    let tls = match me.identity() {
        Some(id) => Some(
            crate::pki::tls::server_config(id).map_err(|e| AgentError::Identity(e.to_string()))?,
        ),
        None => None,
    };
    let addr = format!("{}:{}", config.listen, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| AgentError::Listen {
            addr: addr.clone(),
            source,
        })?;
    tracing::info!(node = %config.name, %addr, "agent listening");
    let router = http::router(state.clone());
    let (limits, metrics, stop) = (config.http, state.metrics.clone(), tasks.token().clone());
    match tls {
        Some(tls) => tasks.spawn(http_server::serve(
            listener,
            router,
            limits,
            https::Tls::new(tls),
            metrics,
            stop,
        )),
        None => tasks.spawn(http_server::serve(
            listener,
            router,
            limits,
            http_server::Plain,
            metrics,
            stop,
        )),
    };
    Ok(())
}

/// Starts the Node status writer under `tasks` and says how many GPUs the runner may bind.
///
/// The first resource probe (NVML may hang in a broken driver) is waited for only so long:
/// the runner should know which GPU indices exist, but a Ready node must never run nothing
/// because a probe does not return.
async fn start_status_writer(
    config: &AgentConfig,
    writer: node_status::StatusWriter,
    tasks: &Tasks,
) -> Result<Option<usize>, AgentError> {
    let probe = tasks.spawn(first_probe(config.gpus.clone(), config.state_dir.clone()));
    let stop = tasks.token().clone();
    match wait_first_probe(probe).await {
        FirstProbe::Done(done) => {
            let (probe, observed) = (*done).map_err(AgentError::Resources)?;
            tracing::info!(
                cpus = observed.capacity.cpus,
                gpus = observed.capacity.gpus.len(),
                "resources"
            );
            tasks.spawn(writer.run(probe, stop));
            Ok(Some(observed.capacity.gpus.len()))
        }
        FirstProbe::Late(mut pending) => {
            let declared: u32 = config.gpus.iter().map(|g| g.count).sum();
            tracing::warn!(
                waited = ?FIRST_PROBE_WAIT,
                "the resource probe (NVML) has not answered: jobs run without it, the node \
                 status waits for it"
            );
            tasks.spawn(async move {
                let probe = tokio::select! {
                    r = &mut pending => r,
                    _ = stop.cancelled() => return pending.abort(),
                };
                match probe {
                    Ok(Ok((probe, _))) => writer.run(probe, stop).await,
                    Ok(Err(e)) => tracing::error!(%e, "the resource probe failed"),
                    Err(e) => tracing::error!(%e, "the resource probe panicked"),
                }
            });
            Ok((declared > 0).then_some(declared as usize))
        }
    }
}

/// How long the agent waits for its first resource probe before it runs jobs without it.
const FIRST_PROBE_WAIT: Duration = Duration::from_secs(10);

type ProbeResult = Result<(resources::ResourceProbe, resources::Observed), String>;

/// Opens the resource probe (NVML) and probes once, off the async workers.
async fn first_probe(
    declared: Vec<crate::api::node::GpuDeclaration>,
    disk: std::path::PathBuf,
) -> ProbeResult {
    let probe = tokio::task::spawn_blocking(resources::ResourceProbe::new)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(node_status::probe_once(probe, declared, disk).await)
}

enum FirstProbe {
    Done(Box<ProbeResult>),
    Late(tokio::task::JoinHandle<ProbeResult>),
}

async fn wait_first_probe(mut task: tokio::task::JoinHandle<ProbeResult>) -> FirstProbe {
    match tokio::time::timeout(FIRST_PROBE_WAIT, &mut task).await {
        Ok(Ok(r)) => FirstProbe::Done(Box::new(r)),
        Ok(Err(e)) => FirstProbe::Done(Box::new(Err(format!("the resource probe panicked: {e}")))),
        Err(_) => FirstProbe::Late(task),
    }
}

/// On the machine that created the cluster (it holds the CA's key): makes sure this node's
/// etcd user exists, authentication is on and the trust record (the CA, for joins on any
/// controller) is in etcd; retried until done. Before authentication is on, any client of the
/// CA may do this; after, only a root identity, which this node's is.
async fn keep_trust(store: Store, node: String, role: crate::pki::NodeRole, ca: crate::pki::Ca) {
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
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Creates the state directory, or makes an existing one private (0700): jobs, logs, etcd's
/// data and keys live there, and jobs run as another user must not read them. (Files inside
/// are created 0600 under the agent's umask 077; older ones are unreachable through the
/// directory.) A shared directory — `/`, one with the sticky bit like `/tmp`, or one owned by
/// someone else — is refused rather than changed.
///
/// When jobs run as another user (`switches_user`) the directory is 0711 instead: others may
/// pass through it (to the job data directories opened to the job's user,
/// [`jobs::job_data`]) but not list it, and everything else in it stays 0700 and 0600.
fn private_state_dir(path: &std::path::Path, switches_user: bool) -> Result<(), AgentError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let err = |source| AgentError::StateDir {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    let meta = std::fs::metadata(path).map_err(err)?;
    let mode = meta.permissions().mode() & 0o7777;
    let shared = path.canonicalize().is_ok_and(|p| p.parent().is_none())
        || mode & 0o1000 != 0
        || meta.uid() != nix::unistd::Uid::effective().as_raw();
    if shared {
        return Err(err(std::io::Error::other(
            "it is shared (the root, a sticky directory such as /tmp, or owned by another \
             user); give the agent a directory of its own, e.g. /var/lib/rift",
        )));
    }
    let want = if switches_user {
        jobs::job_data::TRAVERSE_ONLY
    } else {
        0o700
    };
    if mode != want {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(want)).map_err(err)?;
        tracing::info!(path = %path.display(), from = format!("{mode:o}"), to = format!("{want:o}"), "state directory mode set");
    }
    Ok(())
}

/// Keeps readiness, the known leader, and the peers and voters alive current.
async fn probe_etcd(store: Store, state: Arc<AgentState>) {
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
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Nodes whose alive key exists (one keys-only read), and the VoterSet's voters.
async fn peers_and_voters(store: &Store) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let alive = crate::store::compose::alive_nodes(store).await?;
    let voters = store
        .get::<crate::api::VoterSetSpec>(crate::api::voter_set::VOTER_SET_NAME)
        .await?
        .map(|v| v.spec.voters)
        .unwrap_or_default();
    Ok((alive, voters))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_state_directory_is_made_private_and_a_shared_one_is_refused_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_state_dir(&state, false).unwrap();
        assert_eq!(mode(&state), 0o700);
        private_state_dir(&state, true).unwrap();
        assert_eq!(
            mode(&state),
            0o711,
            "traversable when jobs run as another user"
        );
        private_state_dir(&state, false).unwrap();
        assert_eq!(mode(&state), 0o700, "closed again without runAs");
        private_state_dir(&dir.path().join("new/state"), false).unwrap();
        assert_eq!(mode(&dir.path().join("new/state")), 0o700);

        let sticky = dir.path().join("tmp");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = private_state_dir(&sticky, false).unwrap_err().to_string();
        assert!(err.contains("shared"), "{err}");
        assert_eq!(mode(&sticky), 0o1777, "left as it was");
        assert!(private_state_dir(std::path::Path::new("/"), false).is_err());
    }
}
