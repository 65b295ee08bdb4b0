//! `rift bench chaos rolling-upgrade`: every agent is stopped (SIGTERM, as `systemctl stop`
//! during an upgrade: it resigns leadership and revokes its node lease) and started again on
//! the same state, one at a time, waiting for the cluster to converge before the next;
//! `--faults` rounds over all agents (1 by default).
//!
//! Cluster: one etcd member; three agents `a0`..`a2`, each a leader candidate and a worker with
//! 2 declared GPUs (the leader is upgraded like the rest). Jobs, running until stopped: a
//! per-GPU Pool `sp` (one member per GPU: 6), `--jobs` `wait` and `--jobs` `reschedule`
//! (`lostAfter: 10s`) jobs (2 each by default). A restarted agent re-adopts its shims, so no
//! job — Pool members included — may ever be stopped or started again.
//!
//! The new binary is this one (the same build): what is exercised is the stop/start cycle,
//! not a change of version. Recovery: stop → every job converged again.

use std::time::{Duration, Instant};

use serde_json::json;

use super::bed::{AgentPlan, Bed, Link, REAL_LABEL};
use super::etcd::Advertise;
use super::{ms, ChaosArgs, ChaosScenario, Outcome};
use crate::api::job::JobTemplate;
use crate::api::meta::TemplateMeta;
use crate::api::pool::PoolSpec;
use crate::api::{JobSpec, Object};
use crate::bench::report::Spread;
use crate::bench::{BenchError, Common};
use crate::controllers::pools::member_name;
use crate::faults::invariants::Tracked;

const AGENTS: usize = 3;
const GPUS: u32 = 2;
const POOL: &str = "sp";
const LOST_AFTER: Duration = Duration::from_secs(10);

pub async fn run(args: &ChaosArgs, common: &Common) -> Result<Outcome, BenchError> {
    let rounds = args.faults.unwrap_or(1).max(1);
    let per_kind = args.jobs.unwrap_or(2);
    let ttl = common.lease_ttl;
    let mut bed = Bed::start("rolling-upgrade", 1, Advertise::Listen, &[], ttl).await?;
    let names: Vec<String> = (0..AGENTS).map(|i| format!("a{i}")).collect();
    for n in &names {
        let plan = AgentPlan {
            controllers: true,
            gpus: Some(format!("H100x{GPUS}")),
            ..AgentPlan::worker(n, Link::Direct)
        };
        bed.add_agent(plan, None, 2).await?;
    }
    bed.wait_leader(common.timeout).await?;
    for i in 0..per_kind {
        let wait = bed.real_job(&format!("wait-{i}"), None);
        bed.create(&format!("wait-{i}"), wait, &[], Tracked::steady())
            .await?;
        let mut mover = bed.real_job(&format!("move-{i}"), None);
        Bed::reschedule(&mut mover, LOST_AFTER);
        bed.create(&format!("move-{i}"), mover, &[], Tracked::steady())
            .await?;
    }
    let mut template = JobSpec {
        command: bed.log.command_named_by_env(None),
        ..bed.real_job("-", None)
    };
    template.resources.gpus = 1;
    let pool = PoolSpec {
        template: JobTemplate {
            metadata: TemplateMeta::default(),
            spec: template,
        },
        replicas: None,
        per_gpu: true,
        node_selector: [(REAL_LABEL.0.to_string(), REAL_LABEL.1.to_string())].into(),
        model: None,
    };
    bed.store.create(&Object::new(POOL, pool)).await?;
    bed.operations += 1;
    for n in &names {
        for g in 0..GPUS {
            bed.tracked
                .insert(member_name(&[POOL, n, &g.to_string()]), Tracked::steady());
        }
    }
    let bound = Duration::from_secs(30 + LOST_AFTER.as_secs() + 2 * ttl);
    bed.settle(bound).await?;

    let mut out = Outcome::new(ChaosScenario::RollingUpgrade, bound);
    out.setup = format!(
        "etcd x1; agents a0..a2, each a leader candidate and a worker with {GPUS} GPUs, all direct; a per-GPU Pool ({} members) + {per_kind} wait + {per_kind} reschedule (lostAfter {} s) jobs; {rounds} round(s) of SIGTERM + start of every agent, one at a time; lease TTL {ttl} s",
        AGENTS as u32 * GPUS,
        LOST_AFTER.as_secs()
    );
    out.setup_json = json!({"agents": AGENTS, "gpus_per_agent": GPUS, "pool_members": AGENTS as u32 * GPUS, "jobs_per_kind": per_kind, "rounds": rounds, "ttl_s": ttl});
    out.recovery = "agent stopped -> every job Running with one live instance".into();

    let mut stop_ms = Vec::new();
    for round in 0..rounds {
        for n in &names {
            let start = Instant::now();
            let a = bed.agent(n);
            let took = a.terminate(Duration::from_secs(30)).await;
            stop_ms.push(ms(took));
            a.start()?;
            out.fault("agent-sigterm-restart");
            // As an operator would: the next agent only once this one is back.
            bed.wait_alive(n, bound).await?;
            let checking_from = start.elapsed();
            let what = format!("upgrading {n} (round {})", round + 1);
            if let Some(d) = bed.checkpoint(&what, bound).await {
                out.recovery_ms.push(ms(checking_from + d));
            }
        }
    }
    let s = Spread::of(stop_ms);
    out.row(
        "graceful_stop",
        format!("SIGTERM -> agent exited: {}", s.show()),
        s.json(),
    );
    out.violations = bed.violations(bound).await;
    out.operations = bed.operations;
    if args.keep {
        out.kept = Some(bed.keep());
    }
    Ok(out)
}
