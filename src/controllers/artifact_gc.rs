//! Artifact garbage collection: deletes artifacts nothing has needed for `gcAfter` (the
//! `ArtifactStore`'s setting, default a day), the etcd record's deletion first, then the bytes.
//!
//! Each pass loads (Artifacts, Jobs with status, Pools, TrainingTargets with status), decides
//! with pure functions ([`decide::referenced`], [`decide::decide`]) and writes.
//!
//! Guarantees:
//! * **Never a referenced artifact.** An artifact is marked for deletion only in a transaction
//!   that also requires that no Job, Pool, TrainingTarget or TrainingTarget status changed
//!   since the read the decision was made from (etcd range compares on each prefix's mod
//!   revisions) and that the record itself is unchanged (so a `rift.dev/keep` label added
//!   meanwhile cancels it). A Job naming the artifact created between the decision and the mark
//!   fails the compare; the pass ends and the next one decides again from a fresh read.
//! * **The mark is the commit point.** A marked record (`deletionTimestamp`, finalizer
//!   [`BYTES_FINALIZER`]) is finished on every pass until done: its bytes are deleted from the
//!   store, then the record (compare-and-swap on its mod revision). A leader that dies between
//!   the two leaves the mark, and the next leader finishes it; no bytes are left without a
//!   record by this controller, and no record names missing bytes except a marked one.
//! * **What cannot be read is never acted on.** A pass with any Job, Pool or TrainingTarget that
//!   does not decode marks nothing (it might name an artifact); an Artifact record that does not
//!   decode is left alone.
//! * **Fenced.** Every write goes through the leader's store.
//!
//! Caveats:
//! * "Unreferenced for `gcAfter`" is measured by the leader on its own monotonic clock from the
//!   first pass that saw the artifact unreferenced: a new leader starts every clock over, so it
//!   deletes later, never earlier.
//! * A writer that finds a marked record for bytes it just produced (identical bytes, made again)
//!   must wait for the record to go and upload again: the bytes are about to be deleted.
//! * Aborted multipart uploads are not cleaned here: `object_store` has no call that lists a
//!   bucket's unfinished uploads (only `abort_multipart` for an upload id one already holds).
//!   On S3-compatible stores, set a lifecycle rule (`AbortIncompleteMultipartUpload`); the
//!   uploader aborts its own uploads when it fails.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use crate::api::artifact_store::{ArtifactStoreSpec, DEFAULT_STORE};
use crate::api::event::Reason;
use crate::api::selector::LabelSelector;
use crate::api::{Artifact, ArtifactSpec, Digest, JobSpec, PoolSpec, Spec, TrainingTargetSpec};
use crate::artifacts;
use crate::store::events::EventRecorder;
use crate::store::{keys, Guard, KeyValue, Op, Store, StoreError};
use crate::tasks::CancellationToken;

pub mod decide;

use decide::{Referrers, Step};

/// The finalizer a marked Artifact record carries until its bytes are deleted.
pub const BYTES_FINALIZER: &str = "rift.dev/artifact-bytes";
/// How often a waiting collector checks whether the ArtifactStore changed.
const STORE_CHECK: Duration = Duration::from_secs(1);
/// The most steps (marks and finishes) one pass takes.
pub const MAX_STEPS_PER_PASS: usize = 256;

/// How often passes run for a given `gcAfter`: a quarter of it, between 1 s and a minute.
pub fn pass_interval(gc_after: Duration) -> Duration {
    (gc_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Why a pass could not finish.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open the artifact store to delete bytes: {0}")]
    Open(#[from] artifacts::OpenError),
    #[error("cannot delete the bytes of {name} from {url}: {source}; the record stays marked and the next pass tries again")]
    Bytes {
        name: String,
        url: String,
        #[source]
        source: object_store::Error,
    },
}

/// What one pass did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    pub marked: usize,
    pub deleted: usize,
    /// Marks refused because something changed since the read (a new Job, a label, ...).
    pub conflicts: usize,
    /// Artifacts referenced or kept at this pass.
    pub kept: usize,
}

/// The controller's state between passes.
pub struct ArtifactGc {
    store: Store,
    secrets_dir: PathBuf,
    events: EventRecorder,
    /// When this leader first saw each artifact unreferenced (and not kept).
    unreferenced_since: HashMap<String, Instant>,
    /// The store bytes are deleted from, opened for the spec it was opened from.
    opened: Option<(ArtifactStoreSpec, artifacts::Store)>,
}

/// A pass's decisions with what they were decided from, to be carried out by
/// [`ArtifactGc::apply`].
pub struct Plan {
    loaded: Loaded,
    steps: Vec<Step>,
    stats: PassStats,
    every: Duration,
}

impl Plan {
    /// The steps decided, finishes first.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
}

/// One load: everything a pass decides from, with the revision each part was read at.
struct Loaded {
    spec: ArtifactStoreSpec,
    artifacts: Vec<(Artifact, serde_json::Value)>,
    jobs: Vec<crate::api::Job>,
    pools: Vec<crate::api::Pool>,
    targets: Vec<crate::api::TrainingTarget>,
    /// (prefix, revision it was read at): nothing under it may have changed since.
    guards: Vec<(String, i64)>,
    /// Some holder did not decode: mark nothing.
    undecodable: Vec<String>,
}

impl ArtifactGc {
    /// `store` must be the leader's fenced store; `secrets_dir` is where the ArtifactStore's
    /// `credentialsFile` is.
    pub fn new(store: Store, secrets_dir: PathBuf) -> Self {
        Self {
            events: EventRecorder::controller(store.clone(), "artifact-gc"),
            store,
            secrets_dir,
            unreferenced_since: HashMap::new(),
            opened: None,
        }
    }

    /// Runs passes until `stop` (returns `Ok`) or a write is refused by the leader fence
    /// (returns [`StoreError::Fenced`]: the caller steps down). Other failures are logged and
    /// retried at the next pass.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), StoreError> {
        let mut interval = pass_interval(crate::api::artifact_store::DEFAULT_GC_AFTER.0);
        loop {
            let seen = self.store_revision().await;
            let pass = self.pass();
            let result = tokio::select! {
                r = pass => r,
                _ = stop.cancelled() => return Ok(()),
            };
            match result {
                Ok((stats, every)) => {
                    interval = every;
                    if stats.marked + stats.deleted + stats.conflicts > 0 {
                        tracing::info!(?stats, "artifact gc pass");
                    }
                }
                Err(GcError::Store(StoreError::Fenced)) => return Err(StoreError::Fenced),
                Err(e) => tracing::warn!(%e, "artifact gc pass failed; retrying"),
            }
            // Wait for the interval, or less when the ArtifactStore changes (a new gcAfter
            // applies at once); one small read a second.
            let until = Instant::now() + interval;
            while Instant::now() < until {
                tokio::select! {
                    _ = tokio::time::sleep(STORE_CHECK.min(until - Instant::now())) => {}
                    _ = stop.cancelled() => return Ok(()),
                }
                if self.store_revision().await != seen {
                    break;
                }
            }
        }
    }

    /// The ArtifactStore's mod revision (0 when absent, -1 when it cannot be read).
    async fn store_revision(&self) -> i64 {
        let key = keys::object(ArtifactStoreSpec::PLURAL, DEFAULT_STORE);
        match self.store.get_raw(&key).await {
            Ok(kv) => kv.map_or(0, |kv| kv.mod_revision),
            Err(_) => -1,
        }
    }

    /// One pass ([`ArtifactGc::plan`], then [`ArtifactGc::apply`]); returns what it did and
    /// how long to wait for the next.
    pub async fn pass(&mut self) -> Result<(PassStats, Duration), GcError> {
        match self.plan().await? {
            Some(plan) => self.apply(plan).await,
            None => Ok((
                PassStats::default(),
                pass_interval(Duration::from_secs(240)),
            )),
        }
    }

    /// Loads and decides; `None` when the cluster has no ArtifactStore (nothing to collect).
    pub async fn plan(&mut self) -> Result<Option<Plan>, GcError> {
        let Some(loaded) = self.load().await? else {
            self.unreferenced_since.clear();
            return Ok(None);
        };
        let gc_after = loaded.spec.gc_after.as_duration();
        let every = pass_interval(gc_after);
        let artifacts: Vec<Artifact> = loaded.artifacts.iter().map(|(a, _)| a.clone()).collect();
        let referenced = decide::referenced(&Referrers {
            jobs: &loaded.jobs,
            pools: &loaded.pools,
            targets: &loaded.targets,
        });
        let unreferenced_for = self.track(&artifacts, &referenced);
        let stats = PassStats {
            kept: artifacts.len() - unreferenced_for.len(),
            ..PassStats::default()
        };
        let mut steps = decide::decide(
            &artifacts,
            &referenced,
            &unreferenced_for,
            gc_after,
            MAX_STEPS_PER_PASS,
        );
        if !loaded.undecodable.is_empty() {
            tracing::warn!(
                objects = %loaded.undecodable.join(", "),
                "objects that may name artifacts cannot be decoded; marking nothing until they can"
            );
            steps.retain(|s| matches!(s, Step::Finish { .. }));
        }
        Ok(Some(Plan {
            loaded,
            steps,
            stats,
            every,
        }))
    }

    /// Carries out `plan`: marks (each guarded as the module docs say; the first refused one
    /// ends the pass), and finishes marked deletions, bytes then record.
    pub async fn apply(&mut self, plan: Plan) -> Result<(PassStats, Duration), GcError> {
        let Plan {
            loaded,
            steps,
            mut stats,
            every,
        } = plan;
        let raw: HashMap<&str, &serde_json::Value> = loaded
            .artifacts
            .iter()
            .map(|(a, v)| (a.metadata.name.as_str(), v))
            .collect();
        for step in &steps {
            match step {
                Step::Mark { name, expect } => {
                    if self
                        .mark(name, *expect, raw[name.as_str()], &loaded.guards)
                        .await?
                    {
                        stats.marked += 1;
                        let size = loaded
                            .artifacts
                            .iter()
                            .find(|(a, _)| &a.metadata.name == name)
                            .map_or(0, |(a, _)| a.spec.size);
                        self.events.record(
                            "Artifact",
                            name,
                            Reason::ArtifactDeleting,
                            format!(
                                "unreferenced for {}: deleting the record, then its {size} bytes",
                                loaded.spec.gc_after
                            ),
                        );
                        self.unreferenced_since.remove(name);
                    } else {
                        // Something changed since the read: decide again from a fresh one.
                        stats.conflicts += 1;
                        break;
                    }
                }
                Step::Finish { name, expect } => {
                    self.delete_bytes(&loaded.spec, name).await?;
                    if self.delete_record(name, *expect).await? {
                        stats.deleted += 1;
                        tracing::info!(artifact = name, "artifact deleted");
                    }
                }
            }
        }
        Ok((stats, every))
    }

    /// Updates the unreferenced clocks; returns how long each unreferenced, unkept artifact has
    /// been so.
    fn track(
        &mut self,
        artifacts: &[Artifact],
        referenced: &BTreeSet<&str>,
    ) -> HashMap<String, Duration> {
        let now = Instant::now();
        let candidates: HashMap<&str, ()> = artifacts
            .iter()
            .filter(|a| !decide::is_kept(a) && !referenced.contains(a.metadata.name.as_str()))
            .map(|a| (a.metadata.name.as_str(), ()))
            .collect();
        self.unreferenced_since
            .retain(|n, _| candidates.contains_key(n.as_str()));
        candidates
            .keys()
            .map(|n| {
                let since = *self.unreferenced_since.entry(n.to_string()).or_insert(now);
                (n.to_string(), now.duration_since(since))
            })
            .collect()
    }

    /// Reads what a pass decides from; `None` when the cluster has no ArtifactStore.
    async fn load(&self) -> Result<Option<Loaded>, GcError> {
        let Some(store_obj) = self.store.get::<ArtifactStoreSpec>(DEFAULT_STORE).await? else {
            return Ok(None);
        };
        let everything = LabelSelector::everything();
        let (artifact_kvs, _) = self
            .store
            .list_raw(&keys::objects_prefix(ArtifactSpec::PLURAL), None)
            .await?;
        let artifacts = artifact_kvs.iter().filter_map(decode_artifact).collect();
        let (jobs, jobs_rev) = self.store.list_checked::<JobSpec>(&everything).await?;
        let (pools, pools_rev) = self.store.list_checked::<PoolSpec>(&everything).await?;
        let (targets, targets_rev) = self
            .store
            .list_checked::<TrainingTargetSpec>(&everything)
            .await?;
        let undecodable = [
            ("Job", &jobs.undecodable),
            ("Pool", &pools.undecodable),
            ("TrainingTarget", &targets.undecodable),
        ]
        .into_iter()
        .flat_map(|(kind, names)| names.iter().map(move |(n, _)| format!("{kind}/{n}")))
        .collect();
        Ok(Some(Loaded {
            spec: store_obj.spec,
            artifacts,
            jobs: jobs.objects,
            pools: pools.objects,
            targets: targets.objects,
            guards: vec![
                (keys::objects_prefix(JobSpec::PLURAL), jobs_rev),
                (keys::objects_prefix(PoolSpec::PLURAL), pools_rev),
                (
                    keys::objects_prefix(TrainingTargetSpec::PLURAL),
                    targets_rev,
                ),
                (keys::status_prefix(TrainingTargetSpec::PLURAL), targets_rev),
            ],
            undecodable,
        }))
    }

    /// Marks `name` for deletion if its record is still at `expect` and nothing under any
    /// guarded prefix changed since it was read. False when a compare failed.
    async fn mark(
        &self,
        name: &str,
        expect: i64,
        raw: &serde_json::Value,
        guards: &[(String, i64)],
    ) -> Result<bool, StoreError> {
        let key = keys::object(ArtifactSpec::PLURAL, name);
        let mut value = raw.clone();
        let meta = &mut value["metadata"];
        meta["deletionTimestamp"] = serde_json::json!(Utc::now());
        meta["finalizers"] = serde_json::json!([BYTES_FINALIZER]);
        let mut compares = vec![Guard::unchanged(key.as_str(), expect)];
        compares.extend(
            guards
                .iter()
                .map(|(prefix, rev)| Guard::prefix_unchanged_since(prefix.as_str(), *rev)),
        );
        let body = serde_json::to_vec(&value).expect("JSON serializes");
        let outcome = self
            .store
            .txn(compares, vec![Op::put(key.as_str(), body)], vec![])
            .await?;
        Ok(outcome.succeeded)
    }

    /// Deletes the bytes of `name` (absent bytes count as deleted).
    async fn delete_bytes(&mut self, spec: &ArtifactStoreSpec, name: &str) -> Result<(), GcError> {
        let Ok(digest) = Digest::parse(name) else {
            return Ok(()); // not a content name: no bytes of ours (validation refuses these)
        };
        if self.opened.as_ref().is_none_or(|(s, _)| s != spec) {
            self.opened = Some((spec.clone(), artifacts::open(spec, &self.secrets_dir)?));
        }
        let (_, store) = self.opened.as_ref().expect("opened above");
        let path = object_store::path::Path::from(digest.cas_key());
        match store.objects.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(GcError::Bytes {
                name: name.into(),
                url: store.url.clone(),
                source,
            }),
        }
    }

    /// Deletes the marked record (and any stored status) if it is still at `expect`.
    async fn delete_record(&self, name: &str, expect: i64) -> Result<bool, StoreError> {
        let key = keys::object(ArtifactSpec::PLURAL, name);
        let status = keys::status(ArtifactSpec::PLURAL, name);
        let outcome = self
            .store
            .txn(
                vec![Guard::unchanged(key.as_str(), expect)],
                vec![Op::delete(key.as_str()), Op::delete(status.as_str())],
                vec![],
            )
            .await?;
        Ok(outcome.succeeded)
    }
}

/// An Artifact record with its mod revision as `resourceVersion`, and its stored JSON (written
/// back with the mark, unknown to nothing); `None` when it does not decode.
fn decode_artifact(kv: &KeyValue) -> Option<(Artifact, serde_json::Value)> {
    let value: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
    let mut artifact: Artifact = serde_json::from_value(value.clone()).ok()?;
    if keys::name_of(&kv.key) != artifact.metadata.name {
        return None;
    }
    artifact.metadata.resource_version = Some(kv.mod_revision.to_string());
    Some((artifact, value))
}
