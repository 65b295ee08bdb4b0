//! `rift up`: a whole cluster on this machine, in the foreground.
//!
//! It runs an agent with the controllers that bootstraps a one-member etcd cluster (the agent
//! starts and supervises that member like any voter's), makes this node the VoterSet's only
//! voter, applies the given manifests and prints how to reach the cluster. Ctrl-C stops the
//! agent, its etcd member and the jobs it ran ([`jobs`]: this is a development cluster, unlike
//! a real node's agent, whose jobs outlive it); running `rift up` again on the same state
//! directory resumes the same cluster from its data. One `rift up` per state directory
//! ([`lock`]): a second one says which process holds it.
//!
//! Trust: the first `rift up` creates the cluster CA and this node's certificates under
//! `<state>/pki/`, and the operator's credentials `<state>/admin.conf` (it prints the
//! `export RIFT_CONFIG=...` line); etcd runs with TLS on both ports, client certificates and
//! authentication. On a state directory of a plaintext cluster (made before TLS) it does the
//! same and restarts the member with TLS from its data: every object is kept, running jobs
//! keep running.

mod jobs;
pub(crate) mod lock;
mod webhook;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::agent::config::{ConfigFile, Overrides};
use crate::agent::jobs::layout::StateDir;
use crate::agent::{self, identity, AgentConfig};
use crate::api::manifest;
use crate::api::voter_set::{VoterSet, VOTER_SET_NAME};
use crate::api::VoterSetSpec;
use crate::pki::credentials::Credentials;
use crate::pki::{inspect, PkiDir, RENEW_BEFORE};
use crate::store::{Access, Store, StoreError};
use crate::tasks::{CancellationToken, Tasks};

use super::apply::apply_docs;
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where etcd's data, job state and logs live; reused by the next `rift up`.
    #[arg(long, default_value = ".rift")]
    pub state_dir: PathBuf,
    /// Manifests (files or directories) applied once the cluster is up. Repeatable.
    #[arg(long = "manifests", short = 'f', value_name = "PATH")]
    pub manifests: Vec<PathBuf>,
    /// This node's name.
    #[arg(long, default_value = "local")]
    pub name: String,
    /// The address etcd and the agent listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: String,
    /// etcd's client port.
    #[arg(long, default_value_t = 2379, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// etcd's peer port.
    #[arg(long, default_value_t = 2380, value_parser = clap::value_parser!(u16).range(1..))]
    pub peer_port: u16,
    /// Where the demo Notifier posts: `rift up` appends what arrives to
    /// `<state-dir>/notifications.log` (0: no receiver).
    #[arg(long, default_value_t = 8771)]
    pub webhook_port: u16,
    /// The agent's HTTP port.
    #[arg(long, default_value_t = crate::api::node::DEFAULT_AGENT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub agent_port: u16,
    /// Declare GPUs (as `rift agent --gpus`), e.g. `H100x2` so a laptop runs the GPU demo.
    #[arg(long = "gpus", value_name = "MODELxN", value_parser = crate::agent::resources::parse_gpu_declaration)]
    pub gpus: Vec<crate::api::node::GpuDeclaration>,
    /// Where to serve the dashboard (`rift dashboard` in the same process).
    #[arg(long, value_name = "ADDR", default_value = super::dashboard::DEFAULT_LISTEN)]
    pub dashboard: std::net::SocketAddr,
    /// Do not serve the dashboard.
    #[arg(long)]
    pub no_dashboard: bool,
    /// A label for this node, KEY=VALUE. Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = super::agent::parse_label)]
    pub labels: Vec<(String, String)>,
    /// An agent config file for anything else (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// How long etcd has to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(args: UpArgs) -> Result<(), CliError> {
    // Bad manifests are refused before anything starts.
    let docs = if args.manifests.is_empty() {
        Vec::new()
    } else {
        manifest::load_paths(&args.manifests)?
    };
    let config = config(&args)?;
    // Held until this process ends; taken before anything else looks at the state directory.
    let _lock = lock::take(&config.state_dir)?;
    let endpoint = format!("https://{}:{}", host_for_url(&args.listen), args.port);
    let member_dir = agent::etcd_member::process::MemberDir::new(&config.state_dir);
    let address = format!("{}:{}", host_for_url(&args.listen), args.port);
    let port_taken = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(address.as_str()),
    )
    .await
    .is_ok_and(|c| c.is_ok());
    let running_here = agent::etcd_member::process::MemberProcess::adopt(&member_dir).is_some();
    if port_taken && !running_here {
        return Err(CliError::Usage(format!(
            "something already answers at {address} and it is not this state directory's etcd \
             ({}): stop it, or pick other ports with --port and --peer-port",
            config.state_dir.display()
        )));
    }
    let admin = trust(&config)?;
    if let Err(why) = agent::etcd_member::member_spec(&config) {
        return Err(CliError::Usage(format!("cannot run etcd here: {why}")));
    }
    let resuming = member_dir.has_data();
    eprintln!(
        "{} etcd at {endpoint} (data in {})",
        if resuming { "resuming" } else { "starting" },
        member_dir.data().display()
    );
    // The agent and the webhook receiver stop on the first signal, or when setting up fails.
    let tasks = Tasks::new(crate::tasks::shutdown_on_signals());
    let agent_task = tasks.spawn(agent::run(config.clone(), tasks.token().clone()));
    if args.webhook_port != 0 {
        let addr = format!("{}:{}", host_for_url(&args.listen), args.webhook_port);
        match webhook::serve(&addr, &config.state_dir, &tasks).await {
            Ok(_) => eprintln!(
                "webhooks posted to http://{addr}/ are appended to {}",
                webhook::log_path(&config.state_dir).display()
            ),
            Err(e) => eprintln!(
                "warning: cannot receive webhooks on {addr}: {e}; the demo Notifier's \
                 deliveries will fail (pick another port with --webhook-port)"
            ),
        }
    }
    let access = Access::tls(&[endpoint.as_str()], admin.identity());
    let result = serve(
        &args,
        docs,
        &config,
        (&endpoint, &access),
        &member_dir,
        agent_task,
        tasks.token(),
    )
    .await;
    tasks.stop().await;
    let state = StateDir::new(&config.state_dir);
    let _ = tokio::task::spawn_blocking(move || jobs::stop_all(&state)).await;
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "stopped; `rift up --state-dir {}` resumes this cluster",
        config.state_dir.display()
    );
    result
}

/// Brings the cluster up, then waits for the agent to end (Ctrl-C). On an error the agent is
/// told to stop and awaited, so the caller can stop the jobs after it.
async fn serve(
    args: &UpArgs,
    docs: Vec<manifest::Document>,
    config: &AgentConfig,
    (endpoint, access): (&str, &Access),
    member_dir: &agent::etcd_member::process::MemberDir,
    mut agent_task: tokio::task::JoinHandle<Result<(), agent::AgentError>>,
    stop: &CancellationToken,
) -> Result<(), CliError> {
    let setup = async {
        let store = tokio::select! {
            s = wait_for_etcd(access) => s.map_err(|e| with_log_tail(e, member_dir))?,
            r = &mut agent_task => return Err(agent_ended(r, member_dir)),
        };
        ensure_voter_set(&store, &args.name).await?;
        ensure_artifact_store(&store, &config.state_dir).await?;
        if !docs.is_empty() {
            eprintln!("applying {}", join_paths(&args.manifests));
            apply_docs(&store, docs, false).await?;
        }
        Ok(store)
    };
    let store = match setup.await {
        Ok(store) => store,
        Err(e) => {
            // Interrupted (Ctrl-C) while starting: a clean stop, not a failure to start.
            let interrupted = stop.is_cancelled();
            stop.cancel();
            if !agent_task.is_finished() {
                let _ = agent_task.await;
            }
            return if interrupted { Ok(()) } else { Err(e) };
        }
    };
    let dashboard = if args.no_dashboard {
        None
    } else {
        serve_dashboard(args.dashboard, &store, stop.clone()).await
    };
    print_how_to_reach(endpoint, config, dashboard.as_deref());
    match agent_task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(source) => Err(CliError::Crashed {
            what: "the agent",
            source,
        }),
    }
}

fn config(args: &UpArgs) -> Result<AgentConfig, CliError> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let endpoint = format!("https://{}:{}", host_for_url(&args.listen), args.port);
    let own_thresholds = args.config.is_some();
    let mut config = AgentConfig::resolve(
        file,
        Overrides {
            name: Some(args.name.clone()),
            endpoints: Some(vec![endpoint]),
            state_dir: Some(args.state_dir.clone()),
            port: Some(args.agent_port),
            listen: Some(args.listen.clone()),
            lease_ttl_secs: Some(2),
            node_lease_ttl_secs: Some(2),
            controllers: true,
            gpus: args.gpus.clone(),
            addresses: vec![args.listen.clone()],
            labels: args.labels.clone(),
            etcd_client_port: Some(args.port),
            etcd_peer_port: Some(args.peer_port),
            etcd_stop_with_agent: true,
            bootstrap: true,
            ..Overrides::default()
        },
    )?;
    if config.run_as.is_none() && nix::unistd::Uid::effective().is_root() {
        // `sudo rift up`: jobs run as the person who invoked it, not as root.
        config.run_as = std::env::var("SUDO_USER")
            .ok()
            .filter(|u| !u.is_empty() && u != "root");
    }
    if !own_thresholds {
        // One machine that is also someone's workstation: a busy CPU (a build) must not stop
        // the demo from scheduling. Memory, GPU memory and disk thresholds still apply.
        config.thresholds.cpu = 100.0;
    }
    Ok(config)
}

fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// This node's certificates and the operator's credentials: made on the first run (and on a
/// state directory of a plaintext cluster); the credentials are made again when missing or
/// within 90 days of expiry.
fn trust(config: &AgentConfig) -> Result<Credentials, CliError> {
    let pki = PkiDir::new(&config.state_dir);
    let ca = match pki.ca()? {
        Some(ca) if pki.has_identity() => ca,
        _ => {
            if agent::etcd_member::process::MemberDir::new(&config.state_dir).has_data() {
                eprintln!(
                    "moving this plaintext cluster to TLS: creating its CA and certificates in {}",
                    pki.root().display()
                );
            }
            identity::bootstrap(config, &pki)?
        }
    };
    let path = identity::admin_conf(&config.state_dir);
    let fresh = Credentials::load(&path).ok().filter(|c| {
        inspect::inspect(&c.cert).is_ok_and(|i| !i.renewal_due(chrono::Utc::now(), RENEW_BEFORE))
            && c.ca.trim() == ca.cert_pem().trim()
    });
    match fresh {
        Some(c) => Ok(c),
        None => {
            identity::write_admin_conf(config, &ca)?;
            Ok(Credentials::load(&path)?)
        }
    }
}

async fn wait_for_etcd(access: &Access) -> Result<Store, CliError> {
    let started = Instant::now();
    loop {
        match Store::connect(access).await {
            Ok(store) => return Ok(store),
            Err(e) if started.elapsed() > START_TIMEOUT => {
                return Err(CliError::NotStarted(format!(
                    "etcd did not come up within {} s: {e}",
                    START_TIMEOUT.as_secs()
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `e` with the last lines of etcd's log, which say why it did not come up.
fn with_log_tail(e: CliError, dir: &agent::etcd_member::process::MemberDir) -> CliError {
    let log = std::fs::read_to_string(dir.log()).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    if tail.is_empty() {
        return e;
    }
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    CliError::NotStarted(format!(
        "{e}\nlast lines of {}:\n{}",
        dir.log().display(),
        tail.join("\n")
    ))
}

fn agent_ended(
    r: Result<Result<(), agent::AgentError>, tokio::task::JoinError>,
    dir: &agent::etcd_member::process::MemberDir,
) -> CliError {
    let why = match r {
        Ok(Ok(())) => "it stopped".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    CliError::NotStarted(format!(
        "the agent ended before etcd was up: {why} (etcd's log: {})",
        dir.log().display()
    ))
}

/// Creates the VoterSet with this node as its only voter, unless one exists.
async fn ensure_voter_set(store: &Store, node: &str) -> Result<(), CliError> {
    let voter_set = VoterSet::new(
        VOTER_SET_NAME,
        VoterSetSpec {
            voters: vec![node.to_string()],
        },
    );
    match store.create(&voter_set).await {
        Ok(_) => eprintln!("created VoterSet {VOTER_SET_NAME} with voter {node}"),
        Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The embedded default: artifacts in `<state-dir>/artifacts`, unless an ArtifactStore exists
/// (one applied by hand, or by an earlier `rift up`). Its disk watermarks are 98/95 % rather
/// than the fleet's 85/75: a development machine's disk is shared with everything else on it
/// (and the figure counts root's reserved blocks as used), so the demo stops placing jobs
/// (`DiskPressure`) only when the disk is really almost full.
async fn ensure_artifact_store(store: &Store, state_dir: &std::path::Path) -> Result<(), CliError> {
    use crate::api::artifact_store::{ArtifactStore, ArtifactStoreSpec, DEFAULT_STORE};
    let dir = std::path::absolute(state_dir.join("artifacts")).map_err(|e| CliError::Io {
        path: state_dir.display().to_string(),
        source: e,
    })?;
    let spec: ArtifactStoreSpec = serde_json::from_value(serde_json::json!({
        "url": format!("file://{}", dir.display()),
        "cache": {"highPercent": 98, "lowPercent": 95},
    }))
    .expect("a file URL with defaults is an ArtifactStore spec");
    match store.create(&ArtifactStore::new(DEFAULT_STORE, spec)).await {
        Ok(_) => eprintln!(
            "created ArtifactStore {DEFAULT_STORE}: artifacts in {}",
            dir.display()
        ),
        Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Serves the dashboard beside the cluster; a taken address is a warning, not a failure (the
/// cluster is what `rift up` is for). Returns its URL.
async fn serve_dashboard(
    addr: std::net::SocketAddr,
    store: &Store,
    shutdown: CancellationToken,
) -> Option<String> {
    match crate::dashboard::bind(addr).await {
        Ok(listener) => {
            let url = super::dashboard::url_of(listener.local_addr().unwrap_or(addr));
            tokio::spawn(crate::dashboard::serve(
                listener,
                store.clone(),
                crate::dashboard::Limits::default(),
                shutdown,
            ));
            Some(url)
        }
        Err(e) => {
            eprintln!("warning: no dashboard: {e} (or --no-dashboard)");
            None
        }
    }
}

fn print_how_to_reach(endpoint: &str, config: &AgentConfig, dashboard: Option<&str>) {
    let conf = identity::admin_conf(&config.state_dir);
    let conf = std::path::absolute(&conf).unwrap_or(conf);
    let dashboard = dashboard
        .map(|url| format!("Dashboard: {url} (live, read-only)\n"))
        .unwrap_or_default();
    println!(
        "\nrift is up: etcd at {endpoint} (TLS), node `{}` leads and runs jobs; state and logs \
         in {}.\n{dashboard}In another terminal:\n\n  \
         export RIFT_CONFIG={}\n  \
         export PATH=$PWD/target/debug:$PATH\n  \
         rift status -w                  # leader, voters and quorum, nodes, jobs by phase\n  \
         rift get jobs -w                # jobs as they are placed, run and finish\n  \
         rift get voterset -w            # etcd membership as it converges\n  \
         rift logs -f JOB                # a job's output\n\n\
         Ctrl-C stops it with its etcd and its jobs; `rift up` again resumes the same cluster.",
        config.name,
        config.state_dir.display(),
        conf.display()
    );
}
