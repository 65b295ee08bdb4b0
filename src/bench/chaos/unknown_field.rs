//! `rift bench chaos unknown-field`: running Jobs are rewritten in etcd with a field this
//! version does not know (`spec.gpuSharing`), as a newer `rift apply` would write them during a
//! rolling upgrade, and a new Job with such a field is created; for `--seconds` (20 by
//! default) nothing may be stopped or restarted. Then the old objects are written back.
//!
//! Cluster: one etcd member; a controller agent (`ctl`, cordoned) and one worker `w1` running
//! `--jobs` jobs (4 by default, all rewritten: `--faults` of them, when fewer).
//!
//! Figures: while the undecodable objects are there, a probe Job created the usual way must
//! still be scheduled (the scheduler is not wedged by them). Recovery: the objects written
//! back → every job converged.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::bed::Bed;
use super::{ms, ChaosArgs, ChaosScenario, Outcome};
use crate::bench::{BenchError, Common};
use crate::faults::invariants::{self, Tracked, Violation};
use crate::store::keys;
use crate::store::Op;

/// What a newer version might have added.
const NEW_FIELD: &str = "gpuSharing";

pub async fn run(args: &ChaosArgs, common: &Common) -> Result<Outcome, BenchError> {
    let jobs = args.jobs.unwrap_or(4).max(1);
    let rewrite = args.faults.unwrap_or(jobs).clamp(1, jobs);
    let watch = Duration::from_secs(args.seconds.unwrap_or(20).max(1));
    let ttl = common.lease_ttl;
    let mut bed = Bed::controller_and_worker("unknown-field", ttl, common.timeout).await?;
    for i in 0..jobs {
        let name = format!("job-{i}");
        let spec = bed.real_job(&name, None);
        bed.create(&name, spec, &[], Tracked::steady()).await?;
    }
    let bound = Duration::from_secs(30 + 2 * ttl);
    bed.settle(bound).await?;

    let mut out = Outcome::new(ChaosScenario::UnknownField, bound);
    out.setup = format!(
        "etcd x1; ctl (controllers) + worker w1 running {jobs} jobs; {rewrite} of them rewritten with `spec.{NEW_FIELD}` and a new Job with it created, watched for {} s; lease TTL {ttl} s",
        watch.as_secs()
    );
    out.setup_json =
        json!({"jobs": jobs, "rewritten": rewrite, "watch_s": watch.as_secs(), "ttl_s": ttl});
    out.recovery = "objects written back -> every job Running with one live instance".into();

    let mut originals = Vec::new();
    for i in 0..rewrite {
        let key = keys::object("jobs", &format!("job-{i}"));
        let kv = bed
            .store
            .get_raw(&key)
            .await?
            .ok_or_else(|| BenchError::Setup(format!("{key} is gone before the fault")))?;
        let mut newer: Value = serde_json::from_slice(&kv.value)
            .map_err(|e| BenchError::Setup(format!("{key}: {e}")))?;
        newer["spec"][NEW_FIELD] = json!({"mode": "mps", "slices": 2});
        put(&bed, &key, &newer).await?;
        bed.operations += 1;
        out.fault("job-rewritten");
        originals.push((key, kv.value));
    }
    // A Job only a newer version can read, created directly.
    let mut fresh = serde_json::to_value(crate::api::Object::new(
        "from-newer-cli",
        bed.real_job("from-newer-cli", None),
    ))
    .expect("objects serialize");
    fresh["spec"][NEW_FIELD] = json!({"mode": "mps", "slices": 2});
    fresh["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
    put(&bed, &keys::object("jobs", "from-newer-cli"), &fresh).await?;
    bed.operations += 1;
    out.fault("job-created-undecodable");

    let since = Instant::now();
    let probe = "probe";
    let spec = bed.real_job(probe, None);
    bed.create(probe, spec, &[], Tracked::steady()).await?;
    let mut probe_running = None;
    let mut first_kill: Option<Duration> = None;
    while since.elapsed() < watch {
        if probe_running.is_none() {
            let phase = bed.job_phase(probe).await;
            if phase == Some(crate::api::JobPhase::Running) {
                probe_running = Some(since.elapsed());
            }
        }
        if first_kill.is_none() {
            let snap = invariants::snapshot(&bed.store, Some(&bed.log)).await;
            let killed = snap.is_ok_and(|s| {
                s.instances
                    .iter()
                    .any(|i| i.job != "from-newer-cli" && !i.alive)
            });
            if killed {
                first_kill = Some(since.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match probe_running {
        Some(d) => out.row(
            "probe_running",
            format!(
                "a Job created beside the undecodable ones Running after {:.0} ms",
                ms(d)
            ),
            json!(ms(d).round()),
        ),
        None => out.violations.push(Violation::Stuck {
            job: probe.into(),
            detail: format!(
                "not Running within {} s while undecodable Jobs exist",
                watch.as_secs()
            ),
        }),
    }
    out.row(
        "first_kill",
        match first_kill {
            Some(d) => format!(
                "the first instance died {:.1} s after the rewrite",
                d.as_secs_f64()
            ),
            None => format!("no instance died in {} s", watch.as_secs()),
        },
        json!(first_kill.map(|d| ms(d).round())),
    );
    let restored = Instant::now();
    for (key, value) in &originals {
        let v: Value = serde_json::from_slice(value).expect("read as JSON above");
        put(&bed, key, &v).await?;
        bed.operations += 1;
    }
    let checking_from = restored.elapsed();
    if let Some(d) = bed.checkpoint("the objects were written back", bound).await {
        out.recovery_ms.push(ms(checking_from + d));
    }
    out.violations.extend(bed.violations(bound).await);
    out.operations = bed.operations;
    if args.keep {
        out.kept = Some(bed.keep());
    }
    Ok(out)
}

/// Writes `value` at `key` as it is, as another version's client would.
async fn put(bed: &Bed, key: &str, value: &Value) -> Result<(), BenchError> {
    let body = serde_json::to_vec(value).expect("JSON serializes");
    bed.store
        .txn(vec![], vec![Op::put(key, body)], vec![])
        .await?;
    Ok(())
}
