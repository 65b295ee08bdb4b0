//! `rift bench rollout --agents N`: the rollout of [`super::rollout`] on real `rift agent`
//! processes moving real bytes.
//!
//! The chaos bed ([`super::chaos::bed`]) starts etcd (TLS, auth), one controller agent (the
//! leader; cordoned) and N worker agents of one declared GPU each. An ArtifactStore `default`
//! on a local `file://` directory receives two model files of `--input-mib` MiB of fresh
//! pseudo-random bytes, uploaded and recorded as `rift artifact push` does. A TrainingTarget
//! that never trains names the first; a Pool of N one-GPU members (one per agent) takes
//! `model: {fromTrainingTarget, update: RollingRestart | Reload, maxUnavailable}`. Once every
//! member is on the first model the bench promotes the second and the shared watch stamps each
//! member on it (Reload: its node reports the model held; RollingRestart: Running on a spec
//! naming it), the moment all are, and the Pool's `status.rollout.completedAt`. At the end
//! etcd is checked: every member on the new model.
//!
//! Caveats: every agent downloads from the same local directory through loopback, so the
//! transfer is disk- and CPU-bound on this machine, not network-bound; each agent keeps a
//! cached copy of each model (N x 2 x `--input-mib` on disk while the bench runs).

use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use serde_json::json;

use super::chaos::bed::{AgentPlan, Bed, Link, REAL_LABEL};
use super::chaos::etcd::Advertise;
use super::env;
use super::report::{round, Report};
use super::rollout::{promote, spec, wait_until, watch, POOL, TARGET};
use super::{BenchError, Common};
use crate::api::artifact::ArtifactSpec;
use crate::api::artifact_store::{ArtifactStoreSpec, DEFAULT_STORE};
use crate::api::job::JobPhase;
use crate::api::pool::{PoolSpec, MODEL_INPUT};
use crate::api::training_target::TrainingTargetSpec;
use crate::api::{JobSpec, Object};

/// What to run.
#[derive(Clone, Debug)]
pub struct RealRolloutArgs {
    pub agents: usize,
    /// Each model file's size, MiB.
    pub input_mib: u64,
    /// `update: Reload` (swap under the running process) instead of RollingRestart.
    pub reload: bool,
    pub max_unavailable: String,
}

/// The member: survives SIGHUP (a Reload's signal) and sleeps.
const MEMBER: &str = "trap 'echo reloaded' HUP; while true; do sleep 1; done";

/// Writes `mib` MiB of pseudo-random bytes seeded by `seed` (xorshift: cheap, incompressible
/// enough for a file store, different per model).
fn write_model(path: &Path, mib: u64, seed: u64) -> Result<(), BenchError> {
    let mut f = std::fs::File::create(path).map_err(|e| BenchError::io(path, e))?;
    let mut x = seed | 1;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib.max(1) {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk).map_err(|e| BenchError::io(path, e))?;
    }
    f.sync_all().map_err(|e| BenchError::io(path, e))
}

/// Uploads `path` to the store and records its Artifact (labelled `type=model`), as `rift
/// artifact push` does; returns the Artifact's name.
async fn push(
    bed: &Bed,
    objects: &crate::artifacts::Store,
    path: &Path,
) -> Result<String, BenchError> {
    let up = crate::artifacts::upload(objects, path, &|_: u64, _: u64| {})
        .await
        .map_err(|e| BenchError::Setup(format!("pushing {}: {e}", path.display())))?;
    let name = up.digest.artifact_name();
    let mut obj = Object::new(
        name.clone(),
        ArtifactSpec {
            digest: up.digest.to_string(),
            size: up.size,
            format: Some("pt".into()),
            producer: None,
            parents: Vec::new(),
            counts: Default::default(),
        },
    );
    obj.metadata.labels.insert("type".into(), "model".into());
    bed.store.create(&obj).await?;
    Ok(name)
}

/// `e` with the end of the controller's and the first worker's logs (what to read when the
/// rollout did not get there).
async fn with_logs(e: BenchError, bed: &Bed) -> BenchError {
    let tail = |name: &str| {
        let log = bed.path().join("agents").join(name).join("agent.log");
        format!(
            "\n-- the end of {name}'s log:\n{}",
            env::log_tail(&log, 2000)
        )
    };
    let jobs = match bed.store.list::<JobSpec>(&Default::default()).await {
        Ok((jobs, _)) => jobs
            .iter()
            .map(|j| {
                let status = j.status.as_ref();
                format!(
                    "\n{}: {:?} model {:?}",
                    j.name(),
                    status.map(|s| s.phase),
                    status.and_then(|s| s.model.as_ref())
                )
            })
            .collect::<String>(),
        Err(e) => format!("\n(etcd unreadable: {e})"),
    };
    BenchError::Setup(format!(
        "{e}\n-- members in etcd:{jobs}{}{}",
        tail("ctl"),
        tail("w0")
    ))
}

pub async fn run(args: &RealRolloutArgs, common: &Common) -> Result<Report, BenchError> {
    let load_at_start = env::load_average().unwrap_or(0.0);
    let n = args.agents;
    let mut bed = Bed::start("rollout", 1, Advertise::Listen, &[], common.lease_ttl).await?;
    let store = bed.store.clone();

    // The store and the two models, before any agent looks.
    let objects_dir = bed.path().join("objects");
    std::fs::create_dir_all(&objects_dir).map_err(|e| BenchError::io(&objects_dir, e))?;
    let store_spec: ArtifactStoreSpec = spec(json!({
        "url": format!("file://{}", objects_dir.display()),
        // The host's disk is shared: never evict for the bench's sake.
        "cache": {"highPercent": 99, "lowPercent": 98},
    }));
    let objects = crate::artifacts::open(&store_spec, bed.path())
        .map_err(|e| BenchError::Setup(format!("opening the file store: {e}")))?;
    store
        .create(&Object::new(DEFAULT_STORE, store_spec))
        .await?;
    let mut models = Vec::new();
    for seed in [0x5eed_0001_u64, 0x5eed_0002] {
        let path = bed.path().join(format!("model-{seed:x}.pt"));
        write_model(&path, args.input_mib, seed)?;
        models.push(push(&bed, &objects, &path).await?);
        std::fs::remove_file(&path).map_err(|e| BenchError::io(&path, e))?;
    }
    let (m0, m1) = (models[0].clone(), models[1].clone());

    // The cluster: a controller (the leader) and N one-GPU workers.
    let started = Instant::now();
    for i in 0..n {
        let mut plan = AgentPlan::worker(&format!("w{i}"), Link::Direct);
        plan.gpus = Some("H100x1".into());
        bed.add_agent(plan, None, 2).await?;
    }
    for i in 0..n {
        bed.wait_alive(&format!("w{i}"), common.timeout).await?;
    }
    let alive_s = started.elapsed().as_secs_f64();

    let target: TrainingTargetSpec = spec(json!({
        "board": "hex8",
        "players": 2,
        // Never trains: the bench promotes by hand.
        "firstTrainingGames": u64::MAX / 2,
        "retrainGames": u64::MAX / 2,
        "training": {"spec": {"command": ["train"]}},
    }));
    store.create(&Object::new(TARGET, target)).await?;
    promote(&store, &m0).await?;
    let update = if args.reload {
        "Reload"
    } else {
        "RollingRestart"
    };
    let pool: PoolSpec = spec(json!({
        "replicas": n,
        "template": {"spec": {
            "command": ["sh", "-c", MEMBER],
            "resources": {"gpus": 1, "cpus": 1},
            "nodeSelector": {REAL_LABEL.0: REAL_LABEL.1},
            "terminationGracePeriod": "2s",
        }},
        "model": {
            "fromTrainingTarget": TARGET,
            "update": update,
            "maxUnavailable": args.max_unavailable,
        },
    }));
    let from = store.revision().await? + 1;
    let seen = watch(&store, from, n, args.reload);
    store.create(&Object::new(POOL, pool)).await?;
    // The leader starts once the target's model and the Pool are stored. Started before, a
    // leader could make members before it sees the target's currentModel, and such a member
    // never reached the first model (Reload: its node is never told to swap one in; seen
    // twice in 6 smoke runs on a loaded machine: Running members with no model).
    bed.add_agent(AgentPlan::controller("ctl"), None, 2).await?;
    bed.wait_leader(common.timeout).await?;

    let cold = Instant::now();
    let waited = wait_until(&seen, common.timeout, "members on the first model", |s| {
        let c = s.running_on(&m0);
        (c == n && s.member_count() == n, c)
    })
    .await;
    if let Err(e) = waited {
        return Err(with_logs(e, &bed).await);
    }
    let cold_s = cold.elapsed().as_secs_f64();

    let ctl_pid = bed.agent("ctl").pid();
    let leader_cpu_before = ctl_pid.and_then(env::cpu_seconds).unwrap_or(0.0);
    seen.lock().expect("lock").promoted = Some(m1.clone());
    let t0 = Instant::now();
    promote(&store, &m1).await?;
    let waited = wait_until(
        &seen,
        common.timeout,
        "members on the promoted model",
        |s| {
            (
                s.all_on_new.is_some() && s.completed.is_some(),
                s.running_on(&m1),
            )
        },
    )
    .await;
    if let Err(e) = waited {
        return Err(with_logs(e, &bed).await);
    }
    let wall = t0.elapsed().as_secs_f64();
    let leader_cpu =
        100.0 * (ctl_pid.and_then(env::cpu_seconds).unwrap_or(0.0) - leader_cpu_before) / wall;

    // What the watch saw, checked against what etcd holds now.
    let (jobs, _) = store.list::<JobSpec>(&Default::default()).await?;
    let members: Vec<_> = jobs
        .iter()
        .filter(|j| {
            j.metadata
                .labels
                .get(crate::api::labels::POOL)
                .map(String::as_str)
                == Some(POOL)
        })
        .collect();
    let on_new = members
        .iter()
        .filter(|j| {
            let Some(status) = j.status.as_ref().filter(|s| s.phase == JobPhase::Running) else {
                return false;
            };
            if args.reload {
                status
                    .model
                    .as_ref()
                    .and_then(|m| m.held.as_deref())
                    .is_some_and(|h| h == m1)
            } else {
                j.spec
                    .inputs
                    .iter()
                    .any(|i| i.name == MODEL_INPUT && i.artifacts == [m1.clone()])
            }
        })
        .count();
    if on_new != n || members.len() != n {
        return Err(BenchError::Setup(format!(
            "the watch saw the rollout complete, but etcd holds {} members of which {on_new} are on the promoted model",
            members.len()
        )));
    }

    let (all_ms, completed_ms, spread) = seen.lock().expect("lock").timings(t0);
    let on = if args.reload { "holding" } else { "Running on" };

    let mut r = Report::new("rollout");
    r.add(
        "setup",
        format!(
            "{n} real agents x 1 GPU (alive in {alive_s:.1} s) and a controller agent, a Pool of {n} members, {update}, maxUnavailable {}; each model {} MiB of real bytes in a file:// ArtifactStore, downloaded by every agent",
            args.max_unavailable, args.input_mib,
        ),
        json!({"agents": n, "update": update, "max_unavailable": args.max_unavailable, "input_mib": args.input_mib}),
    );
    r.add(
        "cold_start_s",
        format!("leader named -> every member {on} the first model: {cold_s:.1} s"),
        json!(round(cold_s)),
    );
    r.add(
        "promotion_to_member_on_new",
        format!(
            "promotion -> a member {on} the new model: {}",
            spread.show()
        ),
        spread.json(),
    );
    r.add(
        "promotion_to_all_on_new_ms",
        format!("promotion -> every member {on} the new model (p100): {all_ms:.0} ms"),
        json!(round(all_ms)),
    );
    r.add(
        "promotion_to_completed_ms",
        format!("promotion -> the Pool's status.rollout.completedAt seen: {completed_ms:.0} ms"),
        json!(round(completed_ms)),
    );
    r.add(
        "leader",
        format!("CPU {leader_cpu:.0} % of one core during the rollout (the controller agent)"),
        json!({"cpu_percent": round(leader_cpu)}),
    );
    r.add_load(load_at_start);
    drop(seen);
    // Dropping the bed ends the agents, their shims and members, etcd, and the directory
    // (store objects and node caches with it).
    drop(bed);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_files_of_different_seeds_differ_and_have_the_asked_size() {
        let dir = env::TempDir::new("rollout-model").unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_model(&a, 1, 1).unwrap();
        write_model(&b, 1, 2).unwrap();
        let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
        assert_eq!(a.len(), 1 << 20);
        assert_ne!(a, b);
    }
}
