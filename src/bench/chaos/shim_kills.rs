//! `rift bench chaos shim-kills`: the per-job `rift shim` processes of a worker are SIGKILLed,
//! one at a time (`--faults` of them, at most one per job, 4 by default, 2 s apart), as the
//! OOM killer or an operator's `kill -9` might, while their jobs run on; then the worker's
//! agent is restarted, one job whose shim was killed ends on its own, and another is deleted.
//!
//! Cluster: one etcd member; a controller agent (`ctl`, cordoned) and one worker `w1` running
//! `--jobs` jobs (4 by default, all `restartPolicy: Always`, running until stopped). A killed
//! shim leaves its job process running without the parent that records its exit and stops it;
//! whatever rift does about it — adopt it, stop it, start it again — the job must never run
//! twice at once and must end up running (the one that ended: again), and the deleted one must
//! stop. Recovery: each fault
//! → every job converged again.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use super::bed::Bed;
use super::{ms, ChaosArgs, ChaosScenario, Outcome};
use crate::bench::{BenchError, Common};
use crate::faults::invariants::{Expect, Tracked};
use crate::faults::procs;

const GAP: Duration = Duration::from_secs(2);

pub async fn run(args: &ChaosArgs, common: &Common) -> Result<Outcome, BenchError> {
    let kills = args.faults.unwrap_or(4).max(1);
    let jobs = args.jobs.unwrap_or(4).max(1);
    let ttl = common.lease_ttl;
    let mut bed = Bed::controller_and_worker("shim-kills", ttl, common.timeout).await?;
    for i in 0..jobs {
        let name = format!("job-{i}");
        let spec = bed.real_job(&name, None);
        bed.create(&name, spec, &[], Tracked::movable()).await?;
    }
    let bound = Duration::from_secs(30 + 2 * ttl);
    bed.settle(bound).await?;

    let mut out = Outcome::new(ChaosScenario::ShimKills, bound);
    out.setup = format!(
        "etcd x1; ctl (controllers) + worker w1 running {jobs} jobs (restartPolicy Always); {} shims SIGKILLed one at a time, {} s apart, then w1's agent restarted, one of those jobs ended on its own and one deleted; lease TTL {ttl} s, seed {}",
        kills.min(jobs),
        GAP.as_secs(),
        args.seed
    );
    out.setup_json = json!({"jobs": jobs, "kills": kills, "gap_s": GAP.as_secs(), "ttl_s": ttl, "seed": args.seed});
    out.recovery = "shim killed -> every job Running with one live instance".into();

    let state = bed.agent("w1").state.clone();
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let mut orphaned = Vec::new();
    for k in 0..kills.min(jobs) {
        let shims: Vec<(String, u32)> = procs::shims(&state)
            .into_iter()
            .filter(|(j, _)| !orphaned.contains(j))
            .collect();
        if shims.is_empty() {
            break;
        }
        let (job, pid) = shims[rng.usize(..shims.len())].clone();
        let killed = Instant::now();
        let _ = procs::signal(pid, Signal::SIGKILL);
        out.fault("shim-sigkill");
        orphaned.push(job.clone());
        tokio::time::sleep(GAP).await;
        let checking_from = killed.elapsed();
        let what = format!("kill {} (the shim of {job})", k + 1);
        if let Some(d) = bed.checkpoint(&what, bound).await {
            out.recovery_ms.push(ms(checking_from + d));
        }
    }
    // The agent restarted: it finds jobs whose shim is gone and whose process is not.
    let restarted = Instant::now();
    bed.agent("w1").kill();
    bed.agent("w1").start()?;
    out.fault("agent-sigkill-restart");
    let checking_from = restarted.elapsed();
    if let Some(d) = bed.checkpoint("the agent's restart", bound).await {
        out.recovery_ms.push(ms(checking_from + d));
    }
    // A job whose shim was killed ends on its own: nobody is left to record it, yet rift must
    // notice and, as its restart policy says, run it again.
    if let Some(job) = orphaned.get(1) {
        let ended = Instant::now();
        let report = bed
            .log
            .report()
            .map_err(|e| BenchError::io(&bed.log.path(), e))?;
        for i in report.alive(job) {
            let _ = procs::signal(i.pid, Signal::SIGTERM);
        }
        out.fault("orphaned-job-ended");
        let checking_from = ended.elapsed();
        if let Some(d) = bed
            .checkpoint(&format!("{job} ended with no shim"), bound)
            .await
        {
            out.recovery_ms.push(ms(checking_from + d));
        }
    }
    // A job whose shim was killed is deleted: its process must stop.
    if let Some(job) = orphaned.first() {
        let deleted = Instant::now();
        let kind = crate::api::kinds::by_kind("Job").expect("Job is a kind");
        bed.store.delete_object(kind, job).await?;
        bed.operations += 1;
        bed.tracked.insert(
            job.clone(),
            Tracked {
                expect: Expect::Deleted,
                ..Tracked::movable()
            },
        );
        out.fault("orphaned-job-deleted");
        let checking_from = deleted.elapsed();
        if let Some(d) = bed.checkpoint(&format!("deleting {job}"), bound).await {
            out.recovery_ms.push(ms(checking_from + d));
        }
    }
    out.violations = bed.violations(bound).await;
    out.operations = bed.operations;
    if args.keep {
        out.kept = Some(bed.keep());
    }
    Ok(out)
}
