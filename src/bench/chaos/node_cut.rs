//! `rift bench chaos node-cut`: a worker is cut off from etcd and restored, over and over,
//! while it runs `wait` and `reschedule` jobs.
//!
//! Cluster: one etcd member; a controller agent (`ctl`, direct link, cordoned); two workers
//! `w1` and `w2`, each reaching etcd only through a link of its own (`--link proxy`: a
//! [`crate::faults::FaultProxy`], etcd advertising a refused URL so nothing routes around
//! it; `--link netns`: a network namespace). Jobs (`--jobs` of each kind, 2 by default), all
//! running until stopped, started on `w1` before `w2` exists:
//! - `wait-N`: `onNodeLost: wait`: never moved, never stopped, never restarted;
//! - `move-N`: `reschedule`, `lostAfter: 3s`, stopping at once on SIGTERM;
//! - `slow-N`: `reschedule`, `lostAfter: 3s`, taking 8 s to stop after SIGTERM (a job saving
//!   a checkpoint; `terminationGracePeriod: 15s`).
//!
//! Each of `--faults` cycles (20 by default) cuts the worker running the most jobs — a cut
//! (connections reset), a partition (nothing passes, nothing is refused) or blackholed
//! replies (requests reach etcd, answers never come back; the netns link only cuts) — for a
//! random 1 s to `lostAfter + margin + 2 × TTL + 6 s`, restores it, and waits for every job to
//! converge again (Running, one live instance). Recovery: restore → converged. A `reschedule`
//! job found lost after a cut is reported and replaced by a fresh one (`move-0-c3`), so that
//! every cut has moves to get wrong.
//!
//! Promise: at most one instance of every job at every instant (the instance log's lock and
//! lifetimes), `wait` jobs never stopped or restarted, nothing lost, nothing stuck.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::bed::{AgentPlan, Bed, Link};
use super::etcd::Advertise;
use super::{ms, ChaosArgs, ChaosScenario, Outcome};
use crate::api::duration::HumanDuration;
use crate::api::JobPhase;
use crate::bench::{BenchError, Common};
use crate::faults::invariants::{self, Tracked};
use crate::faults::netns::{self, NetNs};
use crate::faults::LinkFault;

const LOST_AFTER: Duration = Duration::from_secs(3);
const MARGIN: u64 = 2;
const SLOW_STOP: Duration = Duration::from_secs(8);

pub async fn run(args: &ChaosArgs, common: &Common) -> Result<Outcome, BenchError> {
    let cycles = args.faults.unwrap_or(20);
    let per_kind = args.jobs.unwrap_or(2).max(1);
    let ttl = common.lease_ttl;
    let link = match args.link {
        Link::Direct => Link::Proxy,
        other => other,
    };
    let namespaces = match link {
        Link::Netns => {
            netns::available()
                .map_err(|e| BenchError::Setup(format!("{e}; run with --link proxy instead")))?;
            let make = || NetNs::create().map_err(|e| BenchError::Setup(e.to_string()));
            Some((make()?, make()?))
        }
        _ => None,
    };
    let hosts: Vec<std::net::Ipv4Addr> = namespaces
        .iter()
        .flat_map(|(a, b)| [a.host_ip(), b.host_ip()])
        .collect();
    let advertise = match link {
        Link::Proxy => Advertise::Refused,
        _ => Advertise::Listen,
    };
    let mut bed = Bed::start("node-cut", 1, advertise, &hosts, ttl).await?;
    let (ns1, ns2) = match namespaces {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    };
    bed.add_agent(AgentPlan::controller("ctl"), None, MARGIN)
        .await?;
    bed.add_agent(AgentPlan::worker("w1", link), ns1, MARGIN)
        .await?;
    bed.wait_leader(common.timeout).await?;
    for i in 0..per_kind {
        let wait = bed.real_job(&format!("wait-{i}"), None);
        bed.create(&format!("wait-{i}"), wait, &[], Tracked::steady())
            .await?;
        create_movable(&mut bed, &format!("move-{i}")).await?;
        create_movable(&mut bed, &format!("slow-{i}")).await?;
    }
    let bound = Duration::from_secs(30 + LOST_AFTER.as_secs() + MARGIN + 2 * ttl);
    bed.settle(bound).await?;
    bed.add_agent(AgentPlan::worker("w2", link), ns2, MARGIN)
        .await?;

    let mut out = Outcome::new(ChaosScenario::NodeCut, bound);
    out.setup = format!(
        "etcd x1; ctl (controllers) + workers w1, w2 each behind its own {link:?} link; {per_kind} wait + {per_kind} reschedule + {per_kind} slow-to-stop (8 s) reschedule jobs, lostAfter {} s, reschedule margin {MARGIN} s, lease TTL {ttl} s; {cycles} cut/restore cycles, seed {}",
        LOST_AFTER.as_secs(),
        args.seed
    );
    out.setup_json = json!({"link": format!("{link:?}").to_lowercase(), "jobs_per_kind": per_kind, "lost_after_s": LOST_AFTER.as_secs(), "margin_s": MARGIN, "ttl_s": ttl, "cycles": cycles, "seed": args.seed});
    out.recovery = "link restored -> every job Running with one live instance".into();

    let mut rng = fastrand::Rng::with_seed(args.seed);
    let longest = LOST_AFTER.as_secs_f64() + MARGIN as f64 + 2.0 * ttl as f64 + 6.0;
    let mut cut_s = Vec::new();
    let mut live: Vec<String> = (0..per_kind)
        .flat_map(|i| [format!("move-{i}"), format!("slow-{i}")])
        .collect();
    let mut replaced = 0;
    for cycle in 0..cycles {
        let target = busiest_worker(&bed).await;
        let fault = match (link, rng.u8(0..3)) {
            (Link::Netns, _) | (_, 0) => LinkFault::Cut,
            (_, 1) => LinkFault::Partition,
            _ => LinkFault::BlackholeReplies,
        };
        let hold = Duration::from_secs_f64(1.0 + rng.f64() * (longest - 1.0));
        bed.agent(&target).set_link(fault)?;
        tokio::time::sleep(hold).await;
        bed.agent(&target).set_link(LinkFault::None)?;
        out.fault(&format!("{fault:?}").to_lowercase());
        cut_s.push(hold.as_secs_f64());
        let what = format!(
            "cycle {} ({target} {fault:?} for {:.1} s)",
            cycle + 1,
            hold.as_secs_f64()
        );
        if let Some(d) = bed.checkpoint(&what, bound).await {
            out.recovery_ms.push(ms(d));
        }
        // A reschedule job lost to this cut is reported; a fresh one takes its place, so that
        // later cuts still have moves to get wrong.
        for job in live.clone() {
            if bed.is_given_up(&job) {
                let fresh = format!("{}-c{}", base(&job), cycle + 1);
                create_movable(&mut bed, &fresh).await?;
                live.retain(|j| *j != job);
                live.push(fresh);
                replaced += 1;
            }
        }
    }
    out.row(
        "replaced",
        format!("{replaced} reschedule jobs lost to a cut were replaced by fresh ones"),
        json!(replaced),
    );
    out.violations = bed.violations(bound).await;
    out.operations = bed.operations;
    let (lo, hi) = cut_s
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
    if !cut_s.is_empty() {
        out.row(
            "cut_durations",
            format!("each fault held {lo:.1} s to {hi:.1} s"),
            json!({"min_s": lo, "max_s": hi}),
        );
    }
    if args.keep {
        out.kept = Some(bed.keep());
    }
    Ok(out)
}

/// The worker with the most jobs Running now (`w1` on a tie).
async fn busiest_worker(bed: &Bed) -> String {
    let mut on: BTreeMap<String, usize> = [("w1".to_string(), 0), ("w2".to_string(), 0)].into();
    if let Ok(snap) = invariants::snapshot(&bed.store, None).await {
        let running = snap.jobs.values().filter(|v| v.phase == JobPhase::Running);
        for view in running {
            if let Some(n) = view.node.as_ref().and_then(|n| on.get_mut(n)) {
                *n += 1;
            }
        }
    }
    let w2_more = on["w2"] > on["w1"];
    if w2_more { "w2" } else { "w1" }.to_string()
}

/// Creates a `reschedule` job: `slow-*` ones take [`SLOW_STOP`] to stop (grace 15 s).
async fn create_movable(bed: &mut Bed, name: &str) -> Result<(), BenchError> {
    let mut spec = bed.real_job(name, None);
    if name.starts_with("slow-") {
        spec.command = bed.log.lingering_command(name, None, SLOW_STOP);
        spec.termination_grace_period = HumanDuration::from_secs(15);
    }
    Bed::reschedule(&mut spec, LOST_AFTER);
    bed.create(name, spec, &[], Tracked::movable()).await
}

/// `move-0` of `move-0-c3`.
fn base(job: &str) -> &str {
    match job.rsplit_once("-c") {
        Some((b, n)) if n.chars().all(|c| c.is_ascii_digit()) => b,
        _ => job,
    }
}
