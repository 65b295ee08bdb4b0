//! `rift bench chaos leader-kills`: the leader is killed `--faults` times (100 by default),
//! SIGKILL or SIGSTOP at random, during a run of `--jobs` jobs (1,000 by default) that run to
//! completion.
//!
//! Cluster: one etcd member; `--nodes` hollow nodes (50 by default, 8 GPUs each, in this
//! process) and three real agents `real-0`..`real-2`, each a leader candidate and a worker.
//! Every tenth job is real (an instance-logged process on a real agent), the others run on
//! hollow nodes (1 GPU each); each runs 3–15 s and exits 0. Jobs are created in batches: one
//! before the first kill and one right after each signal, so the scheduler always has work
//! while leadership changes hands.
//!
//! A SIGKILLed leader is started again a second later (as systemd would); a SIGSTOPped one is
//! continued after a random 0.5 s to 2 × TTL (long enough for a standby to take over, after
//! which it must find itself deposed). Recovery: the signal → every job of the batch created
//! after it bound.
//!
//! Promise: 0 lost, 0 duplicated (the instance log for real jobs; for hollow ones, no two nodes
//! reporting one job Running at once), 0 stuck (every job Succeeded within the bound).

use std::time::{Duration, Instant};

use serde_json::json;

use super::bed::{AgentPlan, Bed, Link};
use super::etcd::Advertise;
use super::{ms, ChaosArgs, ChaosScenario, Outcome};
use crate::api::JobSpec;
use crate::bench::env::TempDir;
use crate::bench::observe::{self, Observed};
use crate::bench::report::Spread;
use crate::bench::schedule::{hollow, quiet_settings};
use crate::bench::{BenchError, Common};
use crate::faults::invariants::{Tracked, Violation};
use crate::faults::ReportWatch;
use crate::sim::hollow::HOLLOW_LABEL;

const CANDIDATES: usize = 3;
/// Every this-many-th job runs on a real agent.
const REAL_EVERY: usize = 10;
const SHORTEST_S: u64 = 3;
const LONGEST_S: u64 = 15;

pub async fn run(args: &ChaosArgs, common: &Common) -> Result<Outcome, BenchError> {
    let kills = args.faults.unwrap_or(100);
    let jobs = args.jobs.unwrap_or(1000).max(kills + 1);
    let nodes = args.nodes.unwrap_or(50).max(1);
    let ttl = common.lease_ttl;
    let mut bed = Bed::start("leader-kills", 1, Advertise::Listen, &[], ttl).await?;
    let hollow_dir = TempDir::new("chaos-hollow")?;
    let (cluster, register_s) = hollow(
        &bed.etcd.access(),
        nodes,
        quiet_settings(8, ttl),
        hollow_dir.path(),
        common.timeout,
    )
    .await?;
    let names: Vec<String> = (0..CANDIDATES).map(|i| format!("real-{i}")).collect();
    for n in &names {
        let plan = AgentPlan {
            controllers: true,
            ..AgentPlan::worker(n, Link::Direct)
        };
        bed.add_agent(plan, None, 2).await?;
    }
    bed.wait_leader(common.timeout).await?;
    let reports = ReportWatch::start(&bed.store).await;
    let observed = observe::start(&bed.store).await?;
    let bound = Duration::from_secs(LONGEST_S + 30 + 3 * ttl);

    let mut out = Outcome::new(ChaosScenario::LeaderKills, bound);
    out.setup = format!(
        "etcd x1; {nodes} hollow nodes x 8 GPUs (alive in {register_s:.1} s) + 3 real agents (leader candidates and workers), all direct; {jobs} jobs of {SHORTEST_S}-{LONGEST_S} s (every {REAL_EVERY}th a real process), created in {} batches; {kills} leader kills (SIGKILL or SIGSTOP at random), lease TTL {ttl} s, seed {}",
        kills + 1,
        args.seed
    );
    out.setup_json = json!({"hollow_nodes": nodes, "real_agents": CANDIDATES, "jobs": jobs, "kills": kills, "ttl_s": ttl, "seed": args.seed});
    out.recovery = "leader signalled -> every job created after the signal bound".into();

    let mut rng = fastrand::Rng::with_seed(args.seed);
    let batch = |b: usize| {
        let (per, extra) = (jobs / (kills + 1), jobs % (kills + 1));
        let start = b * per + b.min(extra);
        start..start + per + usize::from(b < extra)
    };
    create_batch(&mut bed, batch(0), &mut rng).await?;
    let (mut takeover_ms, mut held_s) = (Vec::new(), Vec::new());
    for k in 0..kills {
        let leader = loop {
            let l = bed.wait_leader(common.timeout).await?;
            if names.contains(&l) {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        tokio::time::sleep(Duration::from_millis(200 + rng.u64(0..800))).await;
        let sigkill = rng.bool();
        let term = leader_term(&bed).await;
        let signalled = Instant::now();
        let paused = if sigkill {
            bed.agent(&leader).kill();
            out.fault("leader-sigkill");
            None
        } else {
            out.fault("leader-sigstop");
            Some(bed.agent(&leader).pause()?)
        };
        let range = batch(k + 1);
        create_batch(&mut bed, range.clone(), &mut rng).await?;
        match paused {
            None => {
                tokio::time::sleep(Duration::from_secs(1).saturating_sub(signalled.elapsed()))
                    .await;
                bed.agent(&leader).start()?;
                if new_term(&bed, term, signalled, bound).await {
                    takeover_ms.push(ms(signalled.elapsed()));
                }
            }
            Some(p) => {
                let hold = Duration::from_secs_f64(0.5 + rng.f64() * (2.0 * ttl as f64 - 0.5));
                if new_term(&bed, term, signalled, hold).await {
                    takeover_ms.push(ms(signalled.elapsed()));
                }
                tokio::time::sleep(hold.saturating_sub(signalled.elapsed())).await;
                held_s.push(hold.as_secs_f64());
                drop(p);
            }
        }
        match all_bound(&observed, range.clone(), signalled, bound).await {
            Some(d) => out.recovery_ms.push(ms(d)),
            None => {
                for i in range.filter(|i| Observed::get(&observed.bound, &job_name(*i)).is_none()) {
                    out.violations.push(Violation::Stuck {
                        job: job_name(i),
                        detail: format!(
                            "not bound within {} s of leader kill {} ({})",
                            bound.as_secs(),
                            k + 1,
                            if sigkill { "SIGKILL" } else { "SIGSTOP" }
                        ),
                    });
                }
            }
        }
    }
    let t = Spread::of(takeover_ms);
    out.row(
        "takeover",
        format!(
            "signal -> a new leader term (for SIGSTOP: when one began before the leader was continued): {}",
            t.show()
        ),
        t.json(),
    );
    if !held_s.is_empty() {
        let longest = held_s.iter().copied().fold(0.0, f64::max);
        out.row(
            "sigstop_held",
            format!("SIGSTOPped leaders held 0.5 s to {longest:.1} s"),
            json!({"max_s": longest}),
        );
    }
    bed.checkpoint("the last leader kill", bound).await;
    let mut violations = bed.violations(bound).await;
    violations.extend(reports.overlaps().into_iter().map(|o| Violation::Overlap {
        job: o.job,
        detail: format!(
            "nodes {} reported it Running at once (revision {})",
            o.nodes.join(" and "),
            o.revision
        ),
    }));
    // A stuck-in-a-batch job that converged by the end is no longer stuck.
    out.violations.retain(|v| {
        violations
            .iter()
            .any(|w| w.job() == v.job() && w.is_state())
    });
    out.violations.extend(violations);
    out.operations = bed.operations;
    if args.keep {
        out.kept = Some(bed.keep());
    }
    drop(bed);
    cluster.crash().await;
    Ok(out)
}

/// The create revision of the leader key (the leader's term), 0 when there is none.
async fn leader_term(bed: &Bed) -> i64 {
    crate::store::leader::current_leader(&bed.store)
        .await
        .ok()
        .flatten()
        .map_or(0, |l| l.revision)
}

/// Whether a leader term other than `term` began within `within` of `since`.
async fn new_term(bed: &Bed, term: i64, since: Instant, within: Duration) -> bool {
    while since.elapsed() < within {
        let now = leader_term(bed).await;
        if now != 0 && now != term {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn job_name(i: usize) -> String {
    format!("lk-{i:05}")
}

/// Creates jobs `range`: every [`REAL_EVERY`]th real, the rest hollow, each running 3–15 s.
async fn create_batch(
    bed: &mut Bed,
    range: std::ops::Range<usize>,
    rng: &mut fastrand::Rng,
) -> Result<(), BenchError> {
    for i in range {
        let name = job_name(i);
        let secs = rng.u64(SHORTEST_S..=LONGEST_S);
        if i % REAL_EVERY == 0 {
            let spec = bed.real_job(&name, Some(Duration::from_secs(secs)));
            bed.create(&name, spec, &[], Tracked::finishing(true))
                .await?;
        } else {
            let mut spec = JobSpec::with_command(["selfplay"]);
            spec.resources.gpus = 1;
            spec.node_selector
                .insert(HOLLOW_LABEL.into(), "true".into());
            spec.env.insert(
                crate::agent::jobs::simulated::ENV_DURATION.into(),
                format!("{secs}s"),
            );
            bed.create(&name, spec, &[], Tracked::finishing(false))
                .await?;
        }
    }
    Ok(())
}

/// How long after `since` the last job of `range` was bound; `None` if one was not within
/// `bound`.
async fn all_bound(
    observed: &Observed,
    range: std::ops::Range<usize>,
    since: Instant,
    bound: Duration,
) -> Option<Duration> {
    loop {
        let stamps: Option<Vec<Instant>> = range
            .clone()
            .map(|i| Observed::get(&observed.bound, &job_name(i)))
            .collect();
        if let Some(stamps) = stamps {
            let last = stamps.into_iter().max().unwrap_or(since);
            return Some(last.saturating_duration_since(since));
        }
        if since.elapsed() > bound {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
