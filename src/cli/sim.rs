//! `rift sim`: hollow nodes against a real etcd, for scale tests (see [`crate::sim`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::agent::jobs::simulated::SimBehaviour;
use crate::sim::staging::TransferModel;
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
    /// Number the nodes from this index (PREFIX-<FIRST>..), so several `rift sim` processes
    /// can share one prefix without overlapping names.
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// End when standard input closes (as crashes: leases left to expire), besides on SIGTERM
    /// or SIGINT. A parent that starts `rift sim` keeps its stdin open, so the hollow nodes end
    /// with the parent however it ends, SIGKILL included (`rift bench --hollow-processes`).
    #[arg(long)]
    pub exit_with_stdin: bool,
    /// Nodes registering at once: the next wave starts when these are alive.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..100_001))]
    pub wave: u64,
    /// Simulated staging: every input artifact counts as this many MiB, downloaded at
    /// `--download-mib-per-s` (a node caches what it staged). 0: inputs are staged at once.
    #[arg(long, default_value_t = 0)]
    pub input_mib: u64,
    /// The simulated download rate, in MiB/s (with `--input-mib`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub download_mib_per_s: u64,
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
            staging: (self.input_mib > 0).then(|| TransferModel {
                artifact_bytes: self.input_mib.saturating_mul(1 << 20),
                bytes_per_second: self.download_mib_per_s.saturating_mul(1 << 20),
            }),
            ..HollowSettings::default()
        }
    }
}

/// Runs the hollow nodes until SIGTERM or SIGINT, then stops them gracefully; with
/// `--exit-with-stdin`, also until stdin closes, then ends them as crashes.
pub async fn run(args: SimArgs, access: &crate::store::Access) -> Result<(), CliError> {
    if args.nodes == 0 {
        return Err(CliError::Usage("--nodes must be at least 1".into()));
    }
    let last = args
        .first
        .checked_add(args.nodes)
        .filter(|end| *end <= 100_000)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--first {} --nodes {}: node numbers must stay below 100000",
                args.first, args.nodes
            ))
        })?;
    crate::api::validation::dns1123_problem(&crate::sim::node_name(&args.prefix, last - 1))
        .map_or(Ok(()), |p| {
            Err(CliError::Usage(format!("--prefix {}: {p}", args.prefix)))
        })?;
    let root = args.state_dir.clone().unwrap_or_else(default_state_root);
    let shutdown = crate::tasks::shutdown_on_signals();
    let orphaned = crate::tasks::CancellationToken::new();
    if args.exit_with_stdin {
        let orphaned = orphaned.clone();
        // A plain thread, not tokio's stdin: a blocking read on the runtime's blocking pool
        // would hold the runtime's shutdown (after SIGTERM) until stdin closes.
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            // Anything read is ignored; end of file or an error means the parent is gone.
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            orphaned.cancel();
        });
    }
    let started = std::time::Instant::now();
    let mut cluster = Cluster::start(access, &args.prefix, 0, args.settings(), root).await?;
    let mut shown = std::time::Instant::now();
    let growing = cluster.grow(
        &args.prefix,
        args.first..last,
        args.settings(),
        args.wave as usize,
        |alive, started_so_far| {
            if shown.elapsed() >= Duration::from_secs(5) {
                eprintln!(
                    "{alive} of {} hollow nodes alive ({started_so_far} started)",
                    args.nodes
                );
                shown = std::time::Instant::now();
            }
        },
    );
    let grown = tokio::select! {
        r = growing => Some(r),
        _ = shutdown.cancelled() => None,
        _ = orphaned.cancelled() => None,
    };
    match grown {
        Some(r) => r?,
        None => {
            cluster.crash().await;
            return Ok(());
        }
    }
    let mut announced = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => break,
            _ = orphaned.cancelled() => {
                cluster.crash().await;
                return Ok(());
            }
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
