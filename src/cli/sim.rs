//! `rift sim`: hollow nodes against a real etcd, for scale tests (see [`crate::sim`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::agent::jobs::simulated::SimBehaviour;
use crate::sim::{default_state_root, Cluster, HollowSettings};

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// How many hollow nodes to run.
    #[arg(long)]
    pub nodes: usize,
    /// GPUs each hollow node declares.
    #[arg(long, default_value_t = 8)]
    pub gpus_per_node: u32,
    /// How long a simulated job runs (`0s`: until stopped); a Job's RIFT_SIM_DURATION wins.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub job_duration: Duration,
    /// Exit code of a simulated job; a Job's RIFT_SIM_EXIT_CODE wins.
    #[arg(long, default_value_t = 0)]
    pub exit_code: i32,
    /// How often a simulated job writes a progress line (`0s`: never).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub progress_every: Duration,
    /// TTL in seconds of each hollow node's lease.
    #[arg(long, default_value_t = 5)]
    pub node_lease_ttl: u64,
    /// Node names are PREFIX-00000, PREFIX-00001, ...
    #[arg(long, default_value = "hollow")]
    pub prefix: String,
    /// Where the hollow nodes keep their job state [default: /dev/shm/rift-sim-PID].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl SimArgs {
    pub fn settings(&self) -> HollowSettings {
        HollowSettings {
            gpus: self.gpus_per_node,
            behaviour: SimBehaviour {
                duration: self.job_duration,
                exit_code: self.exit_code,
                progress_every: self.progress_every,
                ..SimBehaviour::default()
            },
            node_lease_ttl: Duration::from_secs(self.node_lease_ttl.max(1)),
            ..HollowSettings::default()
        }
    }
}

/// Runs the hollow nodes until SIGTERM or SIGINT, then stops them gracefully.
pub async fn run(args: SimArgs, access: &crate::store::Access) -> Result<(), CliError> {
    if args.nodes == 0 {
        return Err(CliError::Usage("--nodes must be at least 1".into()));
    }
    crate::api::validation::dns1123_problem(&crate::sim::node_name(&args.prefix, 0))
        .map_or(Ok(()), |p| {
            Err(CliError::Usage(format!("--prefix {}: {p}", args.prefix)))
        })?;
    let root = args.state_dir.clone().unwrap_or_else(default_state_root);
    let shutdown = crate::tasks::shutdown_on_signals();
    let cluster = Cluster::start(access, &args.prefix, args.nodes, args.settings(), root).await?;
    let started = std::time::Instant::now();
    let mut announced = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => break,
        }
        if !announced && cluster.alive().await.unwrap_or(0) == cluster.len() {
            println!(
                "{} hollow nodes registered and alive in {:.1} s",
                cluster.len(),
                started.elapsed().as_secs_f64()
            );
            announced = true;
        }
    }
    println!("stopping {} hollow nodes", cluster.len());
    cluster.stop().await;
    Ok(())
}
