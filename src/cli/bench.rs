//! `rift bench SCENARIO`: see [`crate::bench`].

use std::time::Duration;

use crate::bench::chaos::{ChaosArgs, ChaosScenario, Link};
use crate::bench::{self, schedule::ScheduleArgs, Common};

use super::CliError;

/// A Pool's `model.update` (`rift bench rollout --update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Update {
    RollingRestart,
    Reload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Jobs applied onto hollow nodes: jobs/s bound and Running, apply -> Running latency.
    Schedule,
    /// A promoted model rolled out to a Pool with one member per hollow node: promotion ->
    /// every member Running on it (p100) and -> the rollout's completedAt.
    Rollout,
    /// Leader SIGKILL / SIGTERM with hollow nodes present: takeover p50/p99.
    Failover,
    /// Hollow nodes crash: NotReady observed p50/p99.
    Detect,
    /// Idle real agents (leader and plain): CPU and RSS.
    Idle,
    /// etcd's own transaction rate on this machine.
    EtcdLimit,
    /// The fault campaign: `rift bench chaos SCENARIO` injects one kind of fault over and over
    /// and checks rift's promises (exits 1 when one was broken).
    Chaos,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The scenario to run (figures in BENCHMARKS.md).
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// The chaos scenario (with `chaos`).
    #[arg(value_enum, required_if_eq("scenario", "chaos"))]
    pub chaos: Option<ChaosScenario>,
    /// Hollow nodes; comma-separated for several runs (schedule). [default: schedule 1000,
    /// failover 1000, detect 5000, chaos leader-kills 50]
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<usize>,
    /// Jobs to apply (schedule; comma-separated for several runs), or a chaos scenario's jobs.
    /// [default: schedule 1000; chaos: per scenario]
    #[arg(long, value_delimiter = ',')]
    pub jobs: Vec<usize>,
    /// GPUs each job asks for (schedule; hollow nodes have 8). The scheduler bin-packs, so
    /// this decides how many jobs share a node.
    #[arg(long, default_value_t = 1)]
    pub gpus_per_job: u32,
    /// CPUs each job asks for (schedule; hollow nodes have 64).
    #[arg(long, default_value_t = 1.0)]
    pub cpus_per_job: f64,
    /// Requests in flight while applying jobs and measuring etcd (1..=4096). The default is
    /// enough for one create per job to outrun the scheduler on a small machine: at 64, etcd's
    /// latency under the run's load held the applier near 2,000 creates/s.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub concurrency: u16,
    /// Jobs written per transaction while applying (schedule): 1 creates each job on its own;
    /// N > 1 applies them N at a time, all or nothing, as `rift apply -f` writes a file of N
    /// Jobs (at most 128, etcd's default `--max-txn-ops`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=128))]
    pub apply_group: u16,
    /// Create the jobs before the leader starts (schedule: the scheduler's own throughput).
    #[arg(long)]
    pub preload: bool,
    /// Run the hollow nodes in this many `rift sim` processes instead of in the bench process
    /// (schedule, rollout), so their CPU is reported apart from the bench's applier; they end with the
    /// bench. 0: in the bench process.
    #[arg(long, default_value_t = 0)]
    pub hollow_processes: usize,
    /// Real `rift agent` processes instead of hollow nodes (rollout): each downloads both
    /// models from a local file:// ArtifactStore. 0: hollow nodes (`--nodes`).
    #[arg(long, default_value_t = 0)]
    pub agents: usize,
    /// How Pool members take the promoted model (rollout): RollingRestart replaces them,
    /// Reload swaps it under the running process (with --agents only).
    #[arg(long, value_enum, default_value = "rolling-restart")]
    pub update: Update,
    /// The model's size in MiB (rollout): hollow nodes stage it in the time a download at
    /// `--download-mib-per-s` takes, once per node; with --agents, real bytes every agent
    /// downloads and caches (agents x 2 x this on disk). [default: 100; with --agents 16]
    #[arg(long)]
    pub input_mib: Option<u64>,
    /// The simulated download rate in MiB/s (rollout).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub download_mib_per_s: u64,
    /// The Pool's maxUnavailable (rollout): a count (`10`) or a share (`25%`).
    #[arg(long, default_value = "25%")]
    pub max_unavailable: String,
    /// Trials per signal (failover).
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// Hollow nodes to crash (detect).
    #[arg(long, default_value_t = 100)]
    pub kill: usize,
    /// How long to measure (idle), or how long a chaos fault lasts, goes on or is watched.
    /// [default: 60; chaos unknown-field 20]
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Faults a chaos scenario injects (leader kills, cuts, outages, upgrade rounds, rewritten
    /// jobs). [default: per scenario, the scale]
    #[arg(long)]
    pub faults: Option<usize>,
    /// How the faulted worker reaches etcd (chaos node-cut).
    #[arg(long, value_enum, default_value = "proxy")]
    pub link: Link,
    /// Seeds a chaos scenario's fault schedule (the same seed, the same faults).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep a chaos run's directory (agent logs, the instance log) and print where it is.
    #[arg(long)]
    pub keep: bool,
    /// Leader and node lease TTL in seconds.
    #[arg(long, default_value_t = 5)]
    pub lease_ttl: u64,
    /// How long each etcd-limit measurement runs, in seconds.
    #[arg(long, default_value_t = 5)]
    pub limit_seconds: u64,
    /// The most any wait may take, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Runs of each setting; with more than one, a summary follows: the median and min-max
    /// of every figure.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// GOGC (Go's garbage collector target) for the etcd member the bench starts; when not
    /// given, what rift's own etcd members run with (400; 100 is Go's default). 25..=10000,
    /// as the node config's `etcd.gogc`.
    #[arg(long, value_parser = clap::value_parser!(u32).range(25..=10_000))]
    pub etcd_gogc: Option<u32>,
    /// etcd and agents with TLS, client certificates and authentication (what a rift cluster
    /// runs), plaintext (the old setup), or both in one run (plaintext first, as the baseline).
    #[arg(long, value_enum, default_value = "tls")]
    pub transport: Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Tls,
    Plaintext,
    Both,
}

pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    if args.repeat == 0 {
        return Err(CliError::Usage(
            "rift bench: --repeat must be at least 1 (the number of runs of each setting)".into(),
        ));
    }
    let transports: &[bool] = match args.transport {
        Transport::Tls => &[true],
        Transport::Plaintext => &[false],
        Transport::Both => &[false, true],
    };
    let nodes = |default: usize| {
        if args.nodes.is_empty() {
            vec![default]
        } else {
            args.nodes.clone()
        }
    };
    // On SIGINT / SIGTERM the scenario is dropped, so what it started (etcd, agents, hollow
    // nodes, temporary directories) is stopped and removed on the way out.
    let interrupted = crate::tasks::shutdown_on_signals();
    for &tls in transports {
        let common = Common {
            lease_ttl: args.lease_ttl.max(1),
            concurrency: usize::from(args.concurrency),
            limit_for: Duration::from_secs(args.limit_seconds.max(1)),
            timeout: Duration::from_secs(args.timeout.max(1)),
            tls,
            etcd_gogc: args.etcd_gogc,
        };
        tokio::select! {
            r = scenario(&args, &common, &nodes) => r?,
            _ = interrupted.cancelled() => {
                return Err(CliError::Usage(
                    "rift bench: interrupted; what it started was stopped".into(),
                ))
            }
        }
    }
    Ok(())
}

async fn scenario(
    args: &BenchArgs,
    common: &Common,
    nodes: &impl Fn(usize) -> Vec<usize>,
) -> Result<(), CliError> {
    let common = common.clone();
    let fail = |e: bench::BenchError| CliError::Usage(format!("rift bench: {e}"));
    if let (Some(c), false) = (args.chaos, args.scenario == Scenario::Chaos) {
        return Err(CliError::Usage(format!(
            "rift bench: `{}` is a chaos scenario; run `rift bench chaos {}`",
            c.label(),
            c.label()
        )));
    }
    match args.scenario {
        Scenario::Schedule => {
            let jobs = if args.jobs.is_empty() {
                vec![1000]
            } else {
                args.jobs.clone()
            };
            for &n in &nodes(1000) {
                for &jobs in &jobs {
                    let a = ScheduleArgs {
                        nodes: n,
                        jobs,
                        gpus_per_job: args.gpus_per_job,
                        cpus_per_job: args.cpus_per_job,
                        concurrency: common.concurrency,
                        apply_group: args.apply_group.into(),
                        preload: args.preload,
                        hollow_processes: args.hollow_processes,
                    };
                    if args.hollow_processes > n {
                        return Err(CliError::Usage(format!(
                            "--hollow-processes {} is more than the {n} hollow nodes: each process runs at least one",
                            args.hollow_processes
                        )));
                    }
                    if args.gpus_per_job as usize * jobs > 8 * n
                        || args.cpus_per_job * jobs as f64 > 64.0 * n as f64
                    {
                        return Err(CliError::Usage(format!(
                            "{jobs} jobs of {} GPU(s) and {} CPU(s) do not fit on {n} hollow nodes of 8 GPUs and 64 CPUs; use more --nodes or smaller --gpus-per-job / --cpus-per-job",
                            args.gpus_per_job, args.cpus_per_job
                        )));
                    }
                    repeated(args.repeat, common.tls, || {
                        bench::schedule::run(&a, &common)
                    })
                    .await?;
                }
            }
        }
        Scenario::Rollout if args.agents > 0 => {
            let n = args.agents;
            if crate::api::pool::parse_max_unavailable(&args.max_unavailable, n as u32).is_none() {
                return Err(CliError::Usage(format!(
                    "rift bench rollout: --max-unavailable {:?}: give a count of at least 1 (`10`) or a share from 1% to 100% (`25%`)",
                    args.max_unavailable
                )));
            }
            let input_mib = args.input_mib.unwrap_or(16);
            if input_mib == 0 || input_mib > 4096 {
                return Err(CliError::Usage(format!(
                    "rift bench rollout --agents: --input-mib {input_mib}: give 1 to 4096 (every agent caches both models: {n} x 2 x this on disk)"
                )));
            }
            let a = bench::rollout_real::RealRolloutArgs {
                agents: n,
                input_mib,
                reload: args.update == Update::Reload,
                max_unavailable: args.max_unavailable.clone(),
            };
            repeated(args.repeat, true, || bench::rollout_real::run(&a, &common)).await?;
        }
        Scenario::Rollout => {
            if args.update == Update::Reload {
                return Err(CliError::Usage(
                    "rift bench rollout: --update reload needs real agents (--agents N): hollow nodes only restart members".into(),
                ));
            }
            for &n in &nodes(1000) {
                if n == 0 || args.hollow_processes > n {
                    return Err(CliError::Usage(format!(
                        "rift bench rollout: --nodes {n} --hollow-processes {}: at least one node, and no more processes than nodes",
                        args.hollow_processes
                    )));
                }
                if crate::api::pool::parse_max_unavailable(&args.max_unavailable, n as u32)
                    .is_none()
                {
                    return Err(CliError::Usage(format!(
                        "rift bench rollout: --max-unavailable {:?}: give a count of at least 1 (`10`) or a share from 1% to 100% (`25%`)",
                        args.max_unavailable
                    )));
                }
                let a = bench::rollout::RolloutArgs {
                    nodes: n,
                    hollow_processes: args.hollow_processes,
                    input_mib: args.input_mib.unwrap_or(100),
                    download_mib_per_s: args.download_mib_per_s,
                    max_unavailable: args.max_unavailable.clone(),
                };
                repeated(args.repeat, common.tls, || bench::rollout::run(&a, &common)).await?;
            }
        }
        Scenario::Failover => {
            for &n in &nodes(1000) {
                repeated(args.repeat, common.tls, || {
                    bench::failover::run(n, args.trials.max(1), &common)
                })
                .await?;
            }
        }
        Scenario::Detect => {
            for &n in &nodes(5000) {
                repeated(args.repeat, common.tls, || {
                    bench::detect::run(n, args.kill, &common)
                })
                .await?;
            }
        }
        Scenario::Idle => {
            repeated(args.repeat, common.tls, || {
                bench::idle::run(args.seconds.unwrap_or(60), &common)
            })
            .await?
        }
        Scenario::EtcdLimit => {
            repeated(args.repeat, common.tls, || bench::etcd_limit::run(&common)).await?
        }
        Scenario::Chaos => {
            let scenario = args.chaos.ok_or_else(|| {
                CliError::Usage(
                    "rift bench chaos: name a scenario, e.g. `rift bench chaos node-cut`".into(),
                )
            })?;
            let chaos = ChaosArgs {
                scenario,
                faults: args.faults,
                jobs: args.jobs.first().copied(),
                nodes: args.nodes.first().copied(),
                seconds: args.seconds,
                link: args.link,
                seed: args.seed,
                keep: args.keep,
            };
            chaos
                .validate()
                .map_err(|e| CliError::Usage(format!("rift bench chaos: {e}")))?;
            let outcome = bench::chaos::run(&chaos, &common).await.map_err(fail)?;
            outcome.report().print();
            if !outcome.violations.is_empty() {
                return Err(CliError::Usage(format!(
                    "rift bench chaos {}: {} violation(s) of rift's promises (listed above){}",
                    scenario.label(),
                    outcome.violations.len(),
                    if outcome.kept.is_none() {
                        "; rerun with --keep to keep the agents' logs"
                    } else {
                        ""
                    }
                )));
            }
        }
    }
    Ok(())
}

/// Runs one setting `times` times, printing each run's report and then, for more than one,
/// the median and min-max of every figure.
async fn repeated<F, Fut>(times: usize, tls: bool, mut one: F) -> Result<(), CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bench::report::Report, bench::BenchError>>,
{
    let mut reports = Vec::with_capacity(times);
    for i in 0..times {
        if times > 1 {
            eprintln!("rift bench: run {} of {times}", i + 1);
        }
        let report = one()
            .await
            .map_err(|e| CliError::Usage(format!("rift bench: {e}")))?
            .tagged(tls);
        report.print();
        reports.push(report);
    }
    if times > 1 {
        bench::report::summary(&reports).print();
    }
    Ok(())
}
