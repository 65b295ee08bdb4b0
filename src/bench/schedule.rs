//! `rift bench schedule`: jobs applied onto hollow nodes, through a real leader process.
//!
//! Starts etcd, measures its own limit, starts `--nodes` hollow nodes in this process and one
//! `rift agent --controllers` process (the leader; its Node is unschedulable), then applies
//! `--jobs` Jobs (`--concurrency` creates in flight) and stamps, from a watch, when each
//! job's binding appears and when its node reports it Running. With `--preload` the jobs are
//! created before the leader starts, so the figure is the scheduler's own throughput
//! (kube-scheduler's scheduler_perf measures this way), not bounded by the apply rate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::env::{self, LocalEtcd, TempDir};
use super::hollow_procs::{cpu_seconds_of, rss_mib_of, HollowNodes};
use super::observe::{self, Observed};
use super::report::{round, Report, Spread};
use super::{etcd_limit, BenchError, Common};
use crate::api::Spec;
use crate::api::{JobSpec, Object};
use crate::sim::{Cluster, HollowSettings};
use crate::store::{ApplyItem, Store};

/// What to run.
#[derive(Clone, Debug)]
pub struct ScheduleArgs {
    pub nodes: usize,
    pub jobs: usize,
    pub gpus_per_job: u32,
    pub cpus_per_job: f64,
    pub concurrency: usize,
    /// Jobs per apply transaction (1: one create each).
    pub apply_group: usize,
    pub preload: bool,
    /// Run the hollow nodes in this many `rift sim` processes (0: in the bench process).
    pub hollow_processes: usize,
}

/// Creates jobs `bench-00000`.. with `concurrency` requests in flight, one job a request or,
/// with `apply_group` > 1, that many in one all-or-nothing transaction as `rift apply -f` writes
/// a file of them ([`Store::apply`]); returns when each job's request was sent.
async fn apply_jobs(store: &Store, args: &ScheduleArgs) -> Result<Vec<Instant>, BenchError> {
    let (jobs, group) = (args.jobs, args.apply_group.max(1));
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(Mutex::new(vec![None; jobs]));
    let tasks: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (store, next, sent, args) =
                (store.clone(), next.clone(), sent.clone(), args.clone());
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(group, Ordering::Relaxed);
                    if first >= jobs {
                        return Ok::<(), BenchError>(());
                    }
                    let range = first..(first + group).min(jobs);
                    let at = Instant::now();
                    if group == 1 {
                        // A create that timed out may have been written: found again, it counts.
                        let job = bench_job(first, &args);
                        match env::patient(|| store.create(&job)).await {
                            Ok(_) | Err(crate::store::StoreError::AlreadyExists { .. }) => {}
                            Err(e) => return Err(e.into()),
                        }
                    } else {
                        let kind = crate::api::kinds::by_kind(JobSpec::KIND).expect("registered");
                        let items: Vec<ApplyItem> = range
                            .clone()
                            .map(|i| ApplyItem {
                                kind,
                                name: job_name(i),
                                object: serde_json::to_value(bench_job(i, &args))
                                    .expect("resource types serialize"),
                            })
                            .collect();
                        // Applied again after a timeout that was written, it is unchanged.
                        env::patient(|| store.apply(&items, false)).await?;
                    }
                    let mut sent = sent.lock().expect("lock");
                    for i in range {
                        sent[i] = Some(at);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| BenchError::Setup(e.to_string()))??;
    }
    let sent = sent.lock().expect("lock");
    Ok(sent
        .iter()
        .map(|t| t.expect("every job was created"))
        .collect())
}

/// Job `i` of the bench: `selfplay`, asking for the run's GPUs and CPUs.
fn bench_job(i: usize, args: &ScheduleArgs) -> Object<JobSpec> {
    let mut spec = JobSpec::with_command(["selfplay"]);
    spec.resources.gpus = args.gpus_per_job;
    spec.resources.cpus = (args.cpus_per_job > 0.0).then_some(args.cpus_per_job);
    Object::new(job_name(i), spec)
}

pub fn job_name(i: usize) -> String {
    format!("bench-{i:05}")
}

/// Hollow nodes started at once; the next wave starts when these are alive.
pub const WAVE: usize = 500;

/// Starts hollow nodes in waves of [`WAVE`] ([`Cluster::grow`]) and waits until every one is
/// alive.
pub async fn hollow(
    access: &crate::store::Access,
    nodes: usize,
    settings: HollowSettings,
    state: &std::path::Path,
    limit: Duration,
) -> Result<(Cluster, f64), BenchError> {
    let started = Instant::now();
    let root = state.join("hollow");
    let mut cluster = Cluster::start(access, "hollow", 0, settings.clone(), root).await?;
    let mut seen = 0;
    let grown = tokio::time::timeout(
        limit,
        cluster.grow("hollow", 0..nodes, settings, WAVE, |alive, _| seen = alive),
    )
    .await;
    match grown {
        Ok(r) => r?,
        Err(_) => {
            return Err(BenchError::Timeout(format!(
                "{seen} of {nodes} hollow nodes alive after {} s",
                limit.as_secs()
            )))
        }
    }
    Ok((cluster, started.elapsed().as_secs_f64()))
}

/// What `detect` and `failover` start from: an etcd of their own, `nodes` quiet hollow nodes
/// alive on it, and a watch observing it.
pub struct HollowBed {
    pub etcd: LocalEtcd,
    pub store: Store,
    pub dir: TempDir,
    pub cluster: Cluster,
    /// Seconds until every hollow node was alive.
    pub register_s: f64,
    pub observed: Observed,
}

pub async fn hollow_bed(
    name: &str,
    nodes: usize,
    common: &Common,
) -> Result<HollowBed, BenchError> {
    let etcd = LocalEtcd::start(common.tls, common.etcd_gogc).await?;
    let store = etcd.store().await?;
    let dir = TempDir::new(name)?;
    let settings = quiet_settings(8, common.lease_ttl);
    let (cluster, register_s) =
        hollow(&etcd.access, nodes, settings, dir.path(), common.timeout).await?;
    let observed = observe::start(&store).await?;
    Ok(HollowBed {
        etcd,
        store,
        dir,
        cluster,
        register_s,
        observed,
    })
}

/// Settings for hollow nodes whose jobs run until stopped and report no progress.
pub fn quiet_settings(gpus: u32, ttl: u64) -> HollowSettings {
    let mut s = HollowSettings {
        gpus,
        node_lease_ttl: Duration::from_secs(ttl),
        ..HollowSettings::default()
    };
    s.behaviour.duration = Duration::ZERO;
    s.behaviour.progress_every = Duration::ZERO;
    s
}

pub async fn run(args: &ScheduleArgs, common: &Common) -> Result<Report, BenchError> {
    let load_at_start = env::load_average().unwrap_or(0.0);
    let etcd = LocalEtcd::start(common.tls, common.etcd_gogc).await?;
    let store = etcd.store().await?;
    let limit = etcd_limit::measure(&store, common.concurrency, common.limit_for).await?;
    let dir = TempDir::new("schedule")?;
    let (hollow_nodes, register_s) = HollowNodes::start(
        &etcd,
        &store,
        args.nodes,
        args.hollow_processes,
        quiet_settings(8, common.lease_ttl),
        dir.path(),
        common.timeout,
    )
    .await?;
    let hollow_pids = hollow_nodes.pids();
    let observed = observe::start(&store).await?;

    let mut leader = None;
    let mut etcd_before = None;
    let mut bench_cpu_before = 0.0;
    let mut hollow_cpu_before = 0.0;
    if !args.preload {
        leader = Some(start_leader(&etcd, &store, &dir, common).await?);
        etcd_before = Some(etcd.usage().await);
        bench_cpu_before = env::cpu_seconds(std::process::id()).unwrap_or(0.0);
        hollow_cpu_before = cpu_seconds_of(&hollow_pids);
    }
    let apply_start = Instant::now();
    let sent = apply_jobs(&store, args).await?;
    let apply_s = apply_start.elapsed().as_secs_f64();
    let t0 = match leader {
        Some(_) => apply_start,
        None => {
            leader = Some(start_leader(&etcd, &store, &dir, common).await?);
            etcd_before = Some(etcd.usage().await);
            bench_cpu_before = env::cpu_seconds(std::process::id()).unwrap_or(0.0);
            hollow_cpu_before = cpu_seconds_of(&hollow_pids);
            Instant::now()
        }
    };
    let leader = leader.expect("started");
    let etcd_before = etcd_before.expect("sampled with the leader's start");
    let cpu_before = env::cpu_seconds(leader.pid()).unwrap_or(0.0);
    let mut leader_rss: f64 = 0.0;
    let deadline = Instant::now() + common.timeout;
    while Observed::count(&observed.running) < args.jobs {
        leader_rss = leader_rss.max(env::rss_mib(leader.pid()).unwrap_or(0.0));
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "{} of {} jobs bound, {} running after {} s",
                Observed::count(&observed.bound),
                args.jobs,
                Observed::count(&observed.running),
                common.timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let leader_cpu = 100.0 * (env::cpu_seconds(leader.pid()).unwrap_or(0.0) - cpu_before) / wall;
    let bench_cpu =
        100.0 * (env::cpu_seconds(std::process::id()).unwrap_or(0.0) - bench_cpu_before) / wall;
    let hollow_cpu = 100.0 * (cpu_seconds_of(&hollow_pids) - hollow_cpu_before) / wall;
    let etcd_used = etcd_before.until(&etcd.usage().await);
    leader_rss = leader_rss.max(env::rss_mib(leader.pid()).unwrap_or(0.0));

    let (mut to_bound, mut to_running) = (Vec::new(), Vec::new());
    let (mut last_bound, mut last_running) = (t0, t0);
    for (i, at) in sent.iter().enumerate() {
        let name = job_name(i);
        let start = if args.preload { t0 } else { *at };
        if let Some(b) = Observed::get(&observed.bound, &name) {
            to_bound.push((b.saturating_duration_since(start)).as_secs_f64() * 1000.0);
            last_bound = last_bound.max(b);
        }
        if let Some(r) = Observed::get(&observed.running, &name) {
            to_running.push((r.saturating_duration_since(start)).as_secs_f64() * 1000.0);
            last_running = last_running.max(r);
        }
    }
    let bound_rate = args.jobs as f64 / (last_bound - t0).as_secs_f64();
    let running_rate = args.jobs as f64 / (last_running - t0).as_secs_f64();
    let apply_rate = args.jobs as f64 / apply_s;

    let mut r = Report::new("schedule");
    r.add(
        "setup",
        format!(
            "{} hollow nodes x 8 GPUs, 64 CPUs ({}; alive in {register_s:.1} s), {} jobs of {} GPU(s) and {} CPU(s), {}",
            args.nodes,
            match args.hollow_processes {
                0 => "in the bench process".to_string(),
                k => format!("in {k} rift sim processes"),
            },
            args.jobs,
            args.gpus_per_job,
            args.cpus_per_job,
            if args.preload { "preloaded before the leader started" } else { "applied while the leader runs" }
        ),
        json!({"nodes": args.nodes, "jobs": args.jobs, "gpus_per_job": args.gpus_per_job, "cpus_per_job": args.cpus_per_job, "preload": args.preload, "concurrency": args.concurrency, "apply_group": args.apply_group, "hollow_processes": args.hollow_processes}),
    );
    limit.add_to(&mut r);
    r.add(
        "apply_per_s",
        format!(
            "{apply_rate:.0} jobs/s created ({} requests in flight, {} job(s) a transaction), {:.3} of etcd's txn rate",
            args.concurrency,
            args.apply_group,
            limit.fraction(apply_rate)
        ),
        json!(round(apply_rate)),
    );
    r.add(
        "bound_per_s",
        format!("{bound_rate:.0} jobs/s bound (placement + binding committed), {:.3} of etcd's txn rate", limit.fraction(bound_rate)),
        json!(round(bound_rate)),
    );
    r.add(
        "running_per_s",
        format!(
            "{running_rate:.0} jobs/s reported Running, {:.3} of etcd's txn rate",
            limit.fraction(running_rate)
        ),
        json!(round(running_rate)),
    );
    let what = if args.preload {
        "leader start"
    } else {
        "apply"
    };
    let b = Spread::of(to_bound);
    let run = Spread::of(to_running);
    r.add(
        &format!("{}_to_bound", if args.preload { "start" } else { "apply" }),
        format!("{what} -> bound: {}", b.show()),
        b.json(),
    );
    r.add(
        &format!(
            "{}_to_running",
            if args.preload { "start" } else { "apply" }
        ),
        format!("{what} -> Running: {}", run.show()),
        run.json(),
    );
    r.field("bound_fraction_of_etcd", json!(limit.fraction(bound_rate)));
    r.field(
        "running_fraction_of_etcd",
        json!(limit.fraction(running_rate)),
    );
    let db = env::etcd_db_mib(&store).await.unwrap_or(0.0);
    let etcd_rss = env::rss_mib(etcd.proc.pid()).unwrap_or(0.0);
    let bench_rss = env::rss_mib(std::process::id()).unwrap_or(0.0);
    r.add(
        "leader",
        format!("RSS {leader_rss:.0} MiB (peak), CPU {leader_cpu:.0} % of one core over the run"),
        json!({"rss_mib": round(leader_rss), "cpu_percent": round(leader_cpu)}),
    );
    r.add(
        "etcd",
        format!("db {db:.1} MiB of the 2048 MiB quota, RSS {etcd_rss:.0} MiB"),
        json!({"db_mib": round(db), "rss_mib": round(etcd_rss)}),
    );
    etcd_used.add_to(&mut r);
    if hollow_pids.is_empty() {
        r.add(
            "hollow_process",
            format!(
                "RSS {bench_rss:.0} MiB, CPU {bench_cpu:.0} % of one core over the run, for {} hollow nodes, the applier and this bench's watch",
                args.nodes
            ),
            json!({"rss_mib": round(bench_rss), "cpu_percent": round(bench_cpu)}),
        );
    } else {
        let hollow_rss = rss_mib_of(&hollow_pids);
        r.add(
            "hollow_processes",
            format!(
                "RSS {hollow_rss:.0} MiB, CPU {hollow_cpu:.0} % of one core over the run, summed over {} `rift sim` processes running the {} hollow nodes",
                hollow_pids.len(),
                args.nodes
            ),
            json!({"processes": hollow_pids.len(), "rss_mib": round(hollow_rss), "cpu_percent": round(hollow_cpu)}),
        );
        r.add(
            "bench_process",
            format!(
                "RSS {bench_rss:.0} MiB, CPU {bench_cpu:.0} % of one core over the run, for the applier and this bench's watch"
            ),
            json!({"rss_mib": round(bench_rss), "cpu_percent": round(bench_cpu)}),
        );
    }
    r.add_load(load_at_start);
    drop(leader);
    hollow_nodes.crash().await;
    Ok(r)
}

/// Starts the leader agent and waits until it leads (up to the bench's timeout, with progress
/// every 5 s: at thousands of nodes its start takes longer).
pub async fn start_leader(
    etcd: &LocalEtcd,
    store: &Store,
    dir: &TempDir,
    common: &Common,
) -> Result<env::Proc, BenchError> {
    let p = env::spawn_agent(etcd, store, "leader-0", dir.path(), true, common.lease_ttl).await?;
    let started = Instant::now();
    loop {
        if env::wait_for_leader(store, None, Duration::from_secs(5))
            .await
            .is_some()
        {
            return Ok(p);
        }
        if started.elapsed() > common.timeout {
            let log = dir.path().join("leader-0").join("agent.log");
            return Err(BenchError::Timeout(format!(
                "no leader within {} s; the end of its log:\n{}",
                common.timeout.as_secs(),
                env::log_tail(&log, 3000)
            )));
        }
        eprintln!(
            "rift bench: waiting for the leader ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
}
