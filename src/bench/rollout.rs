//! `rift bench rollout`: a promoted model reaching every member of a Pool (issue 18's figure).
//!
//! Starts etcd, `--nodes` hollow nodes of one GPU each (in the bench, or in `rift sim`
//! children) whose inputs take a simulated download's time ([`crate::sim::staging`]: every
//! artifact `--input-mib` MiB at `--download-mib-per-s`, cached per node), a TrainingTarget that
//! never trains, two Artifacts (`m0`, `m1`, created by the bench; no bytes) and a Pool with one
//! member per node and `model: {fromTrainingTarget, update: RollingRestart, maxUnavailable}`;
//! then a real leader. Once every member runs `m0`, the bench promotes `m1` (writes the
//! target's `status.currentModel`, as the training controller does) and stamps, from a watch:
//! each member Running on `m1` (p50/p99/p100 from the promotion), the moment every member is,
//! and when the Pool's `status.rollout.completedAt` appears.
//!
//! Caveats: hollow nodes move no bytes (the transfer is a delay, not a download through the
//! object store); the members' Running moments are when the watch event arrives here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::env::{self, TempDir};
use super::hollow_procs::{cpu_seconds_of, HollowNodes};
use super::report::{round, Report, Spread};
use super::schedule::{quiet_settings, start_leader};
use super::{BenchError, Common};
use crate::api::artifact::ArtifactSpec;
use crate::api::job::JobPhase;
use crate::api::placement::RuntimeReport;
use crate::api::pool::{PoolSpec, PoolStatus, MODEL_INPUT};
use crate::api::training_target::TrainingTargetSpec;
use crate::api::{JobSpec, Object};
use crate::sim::staging::TransferModel;
use crate::store::{keys, Store, WatchConfig, Watcher};

/// The Pool and TrainingTarget the bench makes.
pub const POOL: &str = "rollout-bench";
pub(super) const TARGET: &str = "rollout-bench";

/// What to run.
#[derive(Clone, Debug)]
pub struct RolloutArgs {
    pub nodes: usize,
    pub hollow_processes: usize,
    /// The simulated size of the model artifact, MiB.
    pub input_mib: u64,
    /// The simulated download rate, MiB/s.
    pub download_mib_per_s: u64,
    /// The Pool's `maxUnavailable` (`25%`, `10`).
    pub max_unavailable: String,
}

/// One member as the watch last saw it.
#[derive(Clone, Debug)]
struct Member {
    model: Option<String>,
    /// The node it is bound to; reports from other nodes (an earlier member of the same
    /// name) are not its own.
    node: Option<String>,
    running: bool,
    /// The model its node reports the process holds (a Reload swaps it in place).
    held: Option<String>,
}

/// What the rollout watch has seen.
#[derive(Default)]
pub(super) struct Seen {
    /// `update: Reload`: a member is on a model once its node reports it held; otherwise once
    /// it runs a spec naming it.
    reload: bool,
    members: HashMap<String, Member>,
    /// The model whose rollout is timed, once promoted.
    pub(super) promoted: Option<String>,
    /// First time each member was seen Running on the promoted model.
    pub(super) on_new: HashMap<String, Instant>,
    /// First time every member was Running on the promoted model.
    pub(super) all_on_new: Option<Instant>,
    /// First time the Pool's status showed the promoted model's rollout completed.
    pub(super) completed: Option<Instant>,
}

impl Seen {
    /// Since `t0` (the promotion), in ms: every member on the new model, the rollout's
    /// `completedAt` seen, and each member's own time. Call once both were seen.
    pub(super) fn timings(&self, t0: Instant) -> (f64, f64, Spread) {
        let ms = |at: Instant| at.saturating_duration_since(t0).as_secs_f64() * 1000.0;
        let per: Vec<f64> = self.on_new.values().map(|at| ms(*at)).collect();
        (
            ms(self.all_on_new.expect("waited for")),
            ms(self.completed.expect("waited for")),
            Spread::of(per),
        )
    }

    /// How many members run `model`.
    pub(super) fn running_on(&self, model: &str) -> usize {
        self.members
            .values()
            .filter(|m| self.is_on(m, model))
            .count()
    }

    fn is_on(&self, m: &Member, model: &str) -> bool {
        let on = if self.reload { &m.held } else { &m.model };
        m.running && on.as_deref() == Some(model)
    }

    /// How many members the watch knows.
    pub(super) fn member_count(&self) -> usize {
        self.members.len()
    }
}

pub(super) type Shared = Arc<Mutex<Seen>>;

/// Watches members' specs, their Running reports (and the model held, with `reload`) and the
/// Pool's status from `from`.
pub(super) fn watch(store: &Store, from: i64, nodes: usize, reload: bool) -> Shared {
    let seen: Shared = Arc::new(Mutex::new(Seen {
        reload,
        ..Seen::default()
    }));
    let mut watcher =
        Watcher::from_revision(store.clone(), keys::ROOT, from, WatchConfig::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while Arc::strong_count(&s) > 1 {
            // `next` is cancel-safe: a tick that wins loses no event.
            let event = tokio::select! {
                event = watcher.next() => event,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            };
            let Ok(event) = event else { continue };
            let now = Instant::now();
            let Some((put, parts, value)) = super::observe::event_parts(&event) else {
                continue;
            };
            let mut seen = s.lock().expect("lock");
            match (put, parts.as_slice()) {
                (true, ["jobs", name]) => {
                    let Ok(job) = serde_json::from_slice::<Object<JobSpec>>(value) else {
                        continue;
                    };
                    if job
                        .metadata
                        .labels
                        .get(crate::api::labels::POOL)
                        .map(String::as_str)
                        != Some(POOL)
                    {
                        continue;
                    }
                    let model = job
                        .spec
                        .inputs
                        .iter()
                        .find(|i| i.name == MODEL_INPUT)
                        .and_then(|i| i.artifacts.first().cloned());
                    // A member made again under its name is a new member: not Running yet (a
                    // Reload keeps the member and its process).
                    let was = seen.members.insert(
                        name.to_string(),
                        Member {
                            model: model.clone(),
                            node: None,
                            running: false,
                            held: None,
                        },
                    );
                    let reload = seen.reload;
                    if let Some(was) = was.filter(|w| reload || w.model == model) {
                        seen.members
                            .insert(name.to_string(), Member { model, ..was });
                    }
                }
                (false, ["jobs", name]) => {
                    seen.members.remove(*name);
                }
                (true, ["bindings", node, job]) => {
                    if let Some(m) = seen.members.get_mut(*job) {
                        m.node = Some(node.to_string());
                    }
                }
                (true, ["agents", node, "jobs", job]) => {
                    let report = serde_json::from_slice::<RuntimeReport>(value).ok();
                    let running = report
                        .as_ref()
                        .is_some_and(|r| r.phase == JobPhase::Running);
                    let held = report.and_then(|r| r.model).and_then(|m| m.held);
                    let promoted = seen.promoted.clone();
                    let reload = seen.reload;
                    let Some(m) = seen
                        .members
                        .get_mut(*job)
                        .filter(|m| m.node.as_deref() == Some(*node))
                    else {
                        continue;
                    };
                    m.running = running;
                    m.held = held;
                    let on = if reload { &m.held } else { &m.model };
                    if running && on.is_some() && *on == promoted {
                        seen.on_new.entry(job.to_string()).or_insert(now);
                    }
                }
                (true, ["status", "pools", pool]) if *pool == POOL => {
                    let Ok(status) = serde_json::from_slice::<PoolStatus>(value) else {
                        continue;
                    };
                    let done = status.rollout.as_ref().is_some_and(|r| {
                        r.completed_at.is_some() && Some(&r.artifact) == seen.promoted.as_ref()
                    });
                    if done && seen.completed.is_none() {
                        seen.completed = Some(now);
                    }
                }
                _ => continue,
            }
            if let Some(model) = seen.promoted.clone() {
                if seen.all_on_new.is_none()
                    && seen.members.len() == nodes
                    && seen.running_on(&model) == nodes
                {
                    seen.all_on_new = Some(now);
                }
            }
        }
    });
    seen
}

/// An Artifact named after `seed`'s digest (no bytes are stored: hollow nodes fetch none).
async fn artifact(store: &Store, seed: &str, bytes: u64) -> Result<String, BenchError> {
    use sha2::Digest as _;
    let hex = format!("{:x}", sha2::Sha256::digest(seed.as_bytes()));
    let name = format!("sha256-{hex}");
    let spec = ArtifactSpec {
        digest: format!("sha256:{hex}"),
        size: bytes,
        format: Some("pt".into()),
        producer: None,
        parents: Vec::new(),
        counts: Default::default(),
    };
    let mut obj = Object::new(name.clone(), spec);
    obj.metadata.labels.insert("type".into(), "model".into());
    store.create(&obj).await?;
    Ok(name)
}

/// Sets the target's `status.currentModel` (what a promotion writes).
pub(super) async fn promote(store: &Store, model: &str) -> Result<(), BenchError> {
    let mut status = store
        .get::<TrainingTargetSpec>(TARGET)
        .await?
        .and_then(|t| t.status)
        .unwrap_or_default();
    status.current_model = Some(model.to_string());
    store
        .put_status::<TrainingTargetSpec>(TARGET, &status)
        .await?;
    Ok(())
}

pub(super) fn spec<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("the bench's own objects are valid")
}

/// Waits until `done` holds, printing `what` and the count every 5 s.
pub(super) async fn wait_until(
    seen: &Shared,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&Seen) -> (bool, usize),
) -> Result<(), BenchError> {
    let started = Instant::now();
    let mut shown = Instant::now();
    loop {
        let (ok, count) = done(&seen.lock().expect("lock"));
        if ok {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(BenchError::Timeout(format!(
                "{what}: {count} after {} s",
                limit.as_secs()
            )));
        }
        if shown.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "rift bench: {what}: {count} ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(args: &RolloutArgs, common: &Common) -> Result<Report, BenchError> {
    let load_at_start = env::load_average().unwrap_or(0.0);
    let etcd = env::LocalEtcd::start(common.tls, common.etcd_gogc).await?;
    let store = etcd.store().await?;
    let dir = TempDir::new("rollout")?;
    let transfer = TransferModel {
        artifact_bytes: args.input_mib.saturating_mul(1 << 20),
        bytes_per_second: args.download_mib_per_s.max(1).saturating_mul(1 << 20),
    };
    let mut settings = quiet_settings(1, common.lease_ttl);
    // As often as a real agent looks at its jobs (a finished staging is noticed on a tick).
    settings.tick = crate::agent::jobs::runner::TICK;
    settings.staging = (args.input_mib > 0).then_some(transfer);
    let (hollow, register_s) = HollowNodes::start(
        &etcd,
        &store,
        args.nodes,
        args.hollow_processes,
        settings,
        dir.path(),
        common.timeout,
    )
    .await?;
    let hollow_pids = hollow.pids();

    let bytes = transfer.artifact_bytes;
    let m0 = artifact(&store, "rift bench rollout: model 0", bytes).await?;
    let m1 = artifact(&store, "rift bench rollout: model 1", bytes).await?;
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
    let pool: PoolSpec = spec(json!({
        "replicas": args.nodes,
        "template": {"spec": {"command": ["selfplay"], "resources": {"gpus": 1, "cpus": 1}}},
        "model": {
            "fromTrainingTarget": TARGET,
            "update": "RollingRestart",
            "maxUnavailable": args.max_unavailable,
        },
    }));
    store.create(&Object::new(POOL, pool)).await?;
    let from = store.revision().await? + 1;
    let seen = watch(&store, from, args.nodes, false);

    let leader = start_leader(&etcd, &store, &dir, common).await?;
    let cold = Instant::now();
    let n = args.nodes;
    wait_until(
        &seen,
        common.timeout,
        "members Running on the first model",
        |s| {
            let c = s.running_on(&m0);
            (c == n && s.members.len() == n, c)
        },
    )
    .await?;
    let cold_s = cold.elapsed().as_secs_f64();

    let etcd_before = etcd.usage().await;
    let leader_cpu_before = env::cpu_seconds(leader.pid()).unwrap_or(0.0);
    let hollow_cpu_before = if hollow_pids.is_empty() {
        env::cpu_seconds(std::process::id()).unwrap_or(0.0)
    } else {
        cpu_seconds_of(&hollow_pids)
    };
    seen.lock().expect("lock").promoted = Some(m1.clone());
    let t0 = Instant::now();
    promote(&store, &m1).await?;
    wait_until(
        &seen,
        common.timeout,
        "members Running on the promoted model",
        |s| {
            (
                s.all_on_new.is_some() && s.completed.is_some(),
                s.running_on(&m1),
            )
        },
    )
    .await?;
    let wall = t0.elapsed().as_secs_f64();
    let etcd_used = etcd_before.until(&etcd.usage().await);
    let leader_cpu =
        100.0 * (env::cpu_seconds(leader.pid()).unwrap_or(0.0) - leader_cpu_before) / wall;
    let hollow_cpu = 100.0
        * (if hollow_pids.is_empty() {
            env::cpu_seconds(std::process::id()).unwrap_or(0.0)
        } else {
            cpu_seconds_of(&hollow_pids)
        } - hollow_cpu_before)
        / wall;

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
            j.spec
                .inputs
                .iter()
                .any(|i| i.name == MODEL_INPUT && i.artifacts == [m1.clone()])
                && j.status
                    .as_ref()
                    .is_some_and(|s| s.phase == JobPhase::Running)
        })
        .count();
    if on_new != n || members.len() != n {
        return Err(BenchError::Setup(format!(
            "the watch saw the rollout complete, but etcd holds {} members of which {on_new} run the promoted model",
            members.len()
        )));
    }

    let (all_ms, completed_ms, spread) = seen.lock().expect("lock").timings(t0);

    let mut r = Report::new("rollout");
    r.add(
        "setup",
        format!(
            "{n} hollow nodes x 1 GPU ({}; alive in {register_s:.1} s), a Pool of {n} members, RollingRestart, maxUnavailable {}; each model {} MiB staged at {} MiB/s (simulated, cached per node)",
            match args.hollow_processes {
                0 => "in the bench process".to_string(),
                k => format!("in {k} rift sim processes"),
            },
            args.max_unavailable,
            args.input_mib,
            args.download_mib_per_s,
        ),
        json!({"nodes": n, "hollow_processes": args.hollow_processes, "max_unavailable": args.max_unavailable, "input_mib": args.input_mib, "download_mib_per_s": args.download_mib_per_s}),
    );
    r.add(
        "cold_start_s",
        format!("leader start -> every member Running on the first model: {cold_s:.1} s"),
        json!(round(cold_s)),
    );
    r.add(
        "promotion_to_member_running",
        format!(
            "promotion -> a member Running on the new model: {}",
            spread.show()
        ),
        spread.json(),
    );
    r.add(
        "promotion_to_all_running_ms",
        format!("promotion -> every member Running on the new model (p100): {all_ms:.0} ms"),
        json!(round(all_ms)),
    );
    r.add(
        "promotion_to_completed_ms",
        format!("promotion -> the Pool's status.rollout.completedAt seen: {completed_ms:.0} ms"),
        json!(round(completed_ms)),
    );
    r.add(
        "leader",
        format!("CPU {leader_cpu:.0} % of one core during the rollout"),
        json!({"cpu_percent": round(leader_cpu)}),
    );
    etcd_used.add_to(&mut r);
    r.add(
        "hollow_cpu",
        format!(
            "CPU {hollow_cpu:.0} % of one core during the rollout ({})",
            if hollow_pids.is_empty() {
                "the bench process: hollow nodes and this watch"
            } else {
                "the rift sim processes, summed"
            }
        ),
        json!(round(hollow_cpu)),
    );
    r.add_load(load_at_start);
    drop(seen);
    drop(leader);
    hollow.crash().await;
    Ok(r)
}
