//! `rift bench chaos quorum-loss`: etcd loses quorum — two of its three members go down, one
//! SIGKILLed (a crashed host), one SIGSTOPped (a hung VM) — for `--seconds` (60 by default),
//! then both come back; `--faults` outages (1 by default), one after another.
//!
//! Cluster: three etcd members on 127.0.0.1; a controller agent (`ctl`, cordoned) and two
//! workers, every agent configured with all three members. Jobs (`--jobs` of each kind, 2 by
//! default), running until stopped:
//! - `wait-N` (`onNodeLost: wait`) and `long-N` (`reschedule` with a `lostAfter` longer than
//!   the outage): never stopped, never restarted;
//! - `short-N` (`reschedule`, `lostAfter: 3s`): every node is cut off from etcd for longer
//!   than that, so rift may stop them, but they must run again once quorum is back.
//!
//! After each outage a probe Job is created as soon as etcd answers; figures: quorum back →
//! probe bound (the "scheduling resumes within 5 s of quorum") and → probe Running.
//! Recovery: quorum back → every job converged.

use std::time::{Duration, Instant};

use serde_json::json;

use super::bed::{AgentPlan, Bed, Link};
use super::etcd::Advertise;
use super::{ms, ChaosArgs, ChaosScenario, Outcome};
use crate::api::JobSpec;
use crate::bench::report::Spread;
use crate::bench::{BenchError, Common};
use crate::faults::invariants::Tracked;
use crate::store::keys;

const SHORT_LOST_AFTER: Duration = Duration::from_secs(3);
const MARGIN: u64 = 2;

pub async fn run(args: &ChaosArgs, common: &Common) -> Result<Outcome, BenchError> {
    let outage = Duration::from_secs(args.seconds.unwrap_or(60).max(1));
    let outages = args.faults.unwrap_or(1).max(1);
    let per_kind = args.jobs.unwrap_or(2).max(1);
    let ttl = common.lease_ttl;
    let mut bed = Bed::start("quorum-loss", 3, Advertise::Listen, &[], ttl).await?;
    bed.add_agent(AgentPlan::controller("ctl"), None, MARGIN)
        .await?;
    bed.add_agent(AgentPlan::worker("w1", Link::Direct), None, MARGIN)
        .await?;
    bed.add_agent(AgentPlan::worker("w2", Link::Direct), None, MARGIN)
        .await?;
    bed.wait_leader(common.timeout).await?;
    let long = outage + Duration::from_secs(30 + 2 * ttl);
    for i in 0..per_kind {
        let wait = bed.real_job(&format!("wait-{i}"), None);
        bed.create(&format!("wait-{i}"), wait, &[], Tracked::steady())
            .await?;
        let mut l = bed.real_job(&format!("long-{i}"), None);
        Bed::reschedule(&mut l, long);
        bed.create(&format!("long-{i}"), l, &[], Tracked::steady())
            .await?;
        let mut s = bed.real_job(&format!("short-{i}"), None);
        Bed::reschedule(&mut s, SHORT_LOST_AFTER);
        bed.create(&format!("short-{i}"), s, &[], Tracked::movable())
            .await?;
    }
    let bound = Duration::from_secs(30 + SHORT_LOST_AFTER.as_secs() + MARGIN + 2 * ttl);
    bed.settle(bound).await?;

    let mut out = Outcome::new(ChaosScenario::QuorumLoss, bound);
    out.setup = format!(
        "etcd x3; ctl (controllers) + workers w1, w2, all direct; {per_kind} wait + {per_kind} reschedule (lostAfter {} s, longer than the outage) + {per_kind} reschedule (lostAfter {} s) jobs; {outages} outage(s) of {} s with 2 of 3 members down (SIGKILL + SIGSTOP), lease TTL {ttl} s",
        long.as_secs(),
        SHORT_LOST_AFTER.as_secs(),
        outage.as_secs()
    );
    out.setup_json = json!({"members": 3, "outage_s": outage.as_secs(), "outages": outages, "jobs_per_kind": per_kind, "ttl_s": ttl});
    out.recovery = "quorum back -> every job Running with one live instance".into();

    let (mut to_bound, mut to_running) = (Vec::new(), Vec::new());
    for k in 0..outages {
        bed.etcd.kill(1);
        let paused = bed.etcd.pause(2)?;
        out.fault("member-sigkill");
        out.fault("member-sigstop");
        tokio::time::sleep(outage).await;
        bed.etcd.restart(1)?;
        drop(paused);
        bed.etcd.wait_healthy(common.timeout).await?;
        let quorum = Instant::now();
        // The probe is created the moment etcd takes writes again.
        let probe = format!("probe-{k}");
        let spec = bed.real_job(&probe, None);
        create_retrying(&mut bed, &probe, spec).await?;
        let (bound_at, running_at) = watch_probe(&bed, &probe, quorum, bound).await;
        match bound_at {
            Some(d) => to_bound.push(ms(d)),
            None => out.violations.push(crate::faults::Violation::Stuck {
                job: probe.clone(),
                detail: format!("not bound within {} s of quorum", bound.as_secs()),
            }),
        }
        if let Some(d) = running_at {
            to_running.push(ms(d));
        }
        let checking_from = quorum.elapsed();
        let what = format!("outage {} of {} s", k + 1, outage.as_secs());
        if let Some(d) = bed.checkpoint(&what, bound).await {
            out.recovery_ms.push(ms(checking_from + d));
        }
    }
    let (b, r) = (Spread::of(to_bound), Spread::of(to_running));
    out.row(
        "scheduling_resumed",
        format!(
            "quorum back -> probe Job bound: {} (target <= 5000 ms{})",
            b.show(),
            if b.max > 5000.0 { ": MISSED" } else { "" }
        ),
        b.json(),
    );
    out.row(
        "probe_running",
        format!("quorum back -> probe Job Running: {}", r.show()),
        r.json(),
    );
    out.violations.extend(bed.violations(bound).await);
    out.operations = bed.operations;
    if args.keep {
        out.kept = Some(bed.keep());
    }
    Ok(out)
}

/// Creates a job, retrying while etcd is still electing (the first writes after quorum can
/// fail).
async fn create_retrying(bed: &mut Bed, name: &str, spec: JobSpec) -> Result<(), BenchError> {
    let start = Instant::now();
    loop {
        match bed.create(name, spec.clone(), &[], Tracked::steady()).await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// From `since`: how long until the probe's placement names a node, and until it is Running.
async fn watch_probe(
    bed: &Bed,
    probe: &str,
    since: Instant,
    within: Duration,
) -> (Option<Duration>, Option<Duration>) {
    let (mut bound, mut running) = (None, None);
    while since.elapsed() < within && running.is_none() {
        if bound.is_none() {
            let placed = bed
                .store
                .get_raw(&keys::placement(probe))
                .await
                .ok()
                .flatten()
                .and_then(|kv| {
                    serde_json::from_slice::<crate::api::placement::Placement>(&kv.value).ok()
                })
                .is_some_and(|p| p.node.is_some());
            if placed {
                bound = Some(since.elapsed());
            }
        }
        let phase = bed.job_phase(probe).await;
        if phase == Some(crate::api::JobPhase::Running) {
            running = Some(since.elapsed());
            bound = bound.or(running);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (bound, running)
}
