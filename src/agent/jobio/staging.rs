//! Staging a job's inputs before its process starts: each artifact into the node cache
//! ([`super::cache`]), then hard-linked read-only to `inputs/<input>/<artifact name>` in the
//! job's directory.
//!
//! Guarantees:
//! - **Never run on unverified bytes.** The runner starts an attempt only once its job's
//!   staging is [`Stage::Ready`]; every byte got there through a sha256-verified download.
//! - **Damage is retried, then refused.** A download whose bytes do not match their digest is
//!   tried again, up to [`TRIES`] times; then the job fails ([`Stage::Failed`]) with the reason.
//!   An input naming an Artifact that does not exist, or whose bytes the store lacks, fails the
//!   job at once with a reason that says what to do.
//! - **An unreachable store or etcd only waits.** Those are retried with backoff without
//!   counting against [`TRIES`]: staging resumes (from the partial file) when they are back.
//! - **One download at a time per node** (a shared semaphore), whatever the number of jobs.
//!
//! Every job's staging is one task; [`Stager::retain`] aborts those of jobs gone from the node
//! (an aborted download leaves its partial file, resumed by the next one).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::cache::NodeCache;
use super::StoreAccess;
use crate::agent::metrics::CacheMetrics;
use crate::api::artifact::{ArtifactSpec, Digest};
use crate::api::job_io::JobInput;
use crate::artifacts::TransferError;
use crate::cli::human_bytes;

/// Downloads of one artifact with damaged bytes before the job fails.
pub const TRIES: u32 = 3;
/// The longest wait between retries while the store or etcd is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where a job's staging stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    /// Bytes present out of all its inputs' bytes, and the download rate so far.
    Staging {
        done: u64,
        total: u64,
        bytes_per_second: u64,
        /// Why it is waiting, when it is (the store unreachable, a retry).
        note: Option<String>,
    },
    /// Every input is linked into the job's directory.
    Ready,
    /// Staging cannot succeed; the job fails with this message.
    Failed(String),
}

impl Stage {
    /// The runtime report's message while staging.
    pub fn describe(&self) -> String {
        match self {
            Stage::Staging {
                done,
                total,
                bytes_per_second,
                note,
            } => {
                let pct = if *total == 0 {
                    0
                } else {
                    (u128::from(*done) * 100 / u128::from(*total)) as u64
                };
                let mut s = format!(
                    "staging inputs: {} of {} ({pct}%) at {}/s",
                    human_bytes(*done),
                    human_bytes(*total),
                    human_bytes(*bytes_per_second)
                );
                if let Some(n) = note {
                    s.push_str("; ");
                    s.push_str(n);
                }
                s
            }
            Stage::Ready => "inputs staged".into(),
            Stage::Failed(m) => m.clone(),
        }
    }
}

struct Staged {
    /// The job instance staged for (its directory is made anew for another).
    instance: String,
    digests: BTreeSet<Digest>,
    stage: Arc<Mutex<Stage>>,
    task: JoinHandle<()>,
}

/// The node's staging tasks, by job.
#[derive(Clone)]
pub struct Stager {
    access: StoreAccess,
    cache: NodeCache,
    counters: CacheMetrics,
    downloads: Arc<Semaphore>,
    jobs: Arc<Mutex<HashMap<String, Staged>>>,
}

impl Stager {
    pub fn new(access: StoreAccess, cache: NodeCache, counters: CacheMetrics) -> Self {
        Self {
            access,
            cache,
            counters,
            downloads: Arc::new(Semaphore::new(1)),
            jobs: Arc::default(),
        }
    }

    /// Stages `inputs` of job `job` into `inputs_dir`, unless that is already under way or done
    /// for this `instance` of it (any string that changes when its directory is made anew).
    /// Needs a tokio runtime.
    pub fn want(&self, job: &str, instance: &str, inputs: &[JobInput], inputs_dir: PathBuf) {
        let mut jobs = self.jobs.lock().expect("stager lock");
        if jobs.get(job).is_some_and(|s| s.instance == instance) {
            return;
        }
        if let Some(old) = jobs.remove(job) {
            old.task.abort();
        }
        let digests = inputs
            .iter()
            .flat_map(|i| i.artifacts.iter())
            .filter_map(|a| Digest::parse(a).ok())
            .collect();
        let stage = Arc::new(Mutex::new(Stage::Staging {
            done: 0,
            total: 0,
            bytes_per_second: 0,
            note: None,
        }));
        let work = StageJob {
            access: self.access.clone(),
            cache: self.cache.clone(),
            counters: self.counters.clone(),
            downloads: self.downloads.clone(),
            inputs: inputs.to_vec(),
            inputs_dir,
            stage: stage.clone(),
        };
        let task = tokio::spawn(work.run());
        jobs.insert(
            job.to_string(),
            Staged {
                instance: instance.to_string(),
                digests,
                stage,
                task,
            },
        );
    }

    /// Where `job`'s staging stands; `None` when it was never asked for.
    pub fn stage(&self, job: &str) -> Option<Stage> {
        let jobs = self.jobs.lock().expect("stager lock");
        let s = jobs.get(job)?;
        let stage = s.stage.lock().expect("stage lock").clone();
        Some(stage)
    }

    /// Forgets (and stops staging) every job `keep` says no to.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.jobs.lock().expect("stager lock").retain(|job, s| {
            let k = keep(job);
            if !k {
                s.task.abort();
            }
            k
        });
    }

    /// The node's download slot (one download at a time), shared with [`super::models`].
    pub fn downloads(&self) -> Arc<Semaphore> {
        self.downloads.clone()
    }

    /// The artifacts of every job this stager knows (staging or staged): pinned in the cache.
    pub fn pinned(&self) -> BTreeSet<Digest> {
        self.jobs
            .lock()
            .expect("stager lock")
            .values()
            .flat_map(|s| s.digests.iter().copied())
            .collect()
    }
}

/// One job's staging.
struct StageJob {
    access: StoreAccess,
    cache: NodeCache,
    counters: CacheMetrics,
    downloads: Arc<Semaphore>,
    inputs: Vec<JobInput>,
    inputs_dir: PathBuf,
    stage: Arc<Mutex<Stage>>,
}

impl StageJob {
    async fn run(self) {
        let result = self.stage_all().await;
        *self.stage.lock().expect("stage lock") = match result {
            Ok(()) => Stage::Ready,
            Err(message) => Stage::Failed(message),
        };
    }

    fn set(&self, done: u64, total: u64, rate: u64, note: Option<String>) {
        *self.stage.lock().expect("stage lock") = Stage::Staging {
            done,
            total,
            bytes_per_second: rate,
            note,
        };
    }

    /// Waits out an unreachable etcd or store: `what` failed with `e`; returns the next delay.
    async fn wait(&self, delay: Duration, done: u64, total: u64, note: String) -> Duration {
        tracing::debug!(note, "staging waits");
        self.set(done, total, 0, Some(note));
        tokio::time::sleep(delay).await;
        (delay * 2).min(MAX_BACKOFF)
    }

    async fn stage_all(&self) -> Result<(), String> {
        // Every input's Artifact record first: its size, and a clear failure for one that
        // does not exist before a byte moves.
        let mut wanted: Vec<(String, String, Digest, u64)> = Vec::new();
        let mut delay = Duration::from_millis(200);
        for input in &self.inputs {
            for name in &input.artifacts {
                let digest =
                    Digest::parse(name).map_err(|e| format!("input {}: {e}", input.name))?;
                let record = loop {
                    match self.access.etcd.get::<ArtifactSpec>(name).await {
                        Ok(r) => break r,
                        Err(e) => {
                            delay = self
                                .wait(delay, 0, 0, format!("cannot read Artifact {name}: {e}"))
                                .await
                        }
                    }
                };
                let Some(record) = record else {
                    return Err(format!(
                        "input {}: Artifact {name} does not exist; push it (rift artifact push) or name one that does (rift get artifacts)",
                        input.name
                    ));
                };
                wanted.push((input.name.clone(), name.clone(), digest, record.spec.size));
            }
        }
        let total: u64 = wanted.iter().map(|w| w.3).sum();
        let mut done = 0u64;
        let started = Instant::now();
        let mut downloaded = 0u64;
        self.set(0, total, 0, None);
        for (input, name, digest, size) in &wanted {
            let path = self.cache.path(digest);
            let cached = {
                let c = self.cache.clone();
                let d = *digest;
                let s = *size;
                tokio::task::spawn_blocking(move || c.has(&d, s))
                    .await
                    .unwrap_or(false)
            };
            if cached {
                self.counters.hits.inc();
                self.counters.hit_bytes.inc_by(*size);
            } else {
                let _permit = self
                    .downloads
                    .acquire()
                    .await
                    .map_err(|_| "the agent is stopping".to_string())?;
                let mut tries = 0;
                let mut delay = Duration::from_millis(200);
                loop {
                    let store = match self.access.open().await {
                        Ok(s) => s,
                        Err(super::AccessError::Transient(e)) => {
                            delay = self.wait(delay, done, total, e).await;
                            continue;
                        }
                        Err(super::AccessError::Permanent(e)) => {
                            return Err(format!("input {input}: {e}"))
                        }
                    };
                    let base = done;
                    let progress = |d: u64, _t: u64| {
                        let secs = started.elapsed().as_secs_f64().max(0.001);
                        let rate = ((downloaded + d) as f64 / secs) as u64;
                        self.set(base + d, total, rate, None);
                    };
                    if let Some(parent) = path.parent() {
                        let _ = tokio::fs::create_dir_all(parent).await;
                    }
                    match crate::artifacts::download(&store, digest, &path, &progress).await {
                        Ok(_) => break,
                        Err(
                            e @ (TransferError::Corrupt { .. } | TransferError::TooLong { .. }),
                        ) => {
                            tries += 1;
                            tracing::warn!(artifact = %name, tries, %e, "damaged download");
                            if tries >= TRIES {
                                return Err(format!(
                                    "input {input}: {name}: gave up after {tries} downloads with damaged bytes; the last: {e}"
                                ));
                            }
                            delay = self
                                .wait(
                                    delay,
                                    done,
                                    total,
                                    format!("try {tries} of {TRIES} failed: {e}"),
                                )
                                .await;
                        }
                        Err(e) if e.is_retryable() => {
                            delay = self.wait(delay, done, total, e.to_string()).await;
                        }
                        Err(e) => return Err(format!("input {input}: {e}")),
                    }
                }
                downloaded += size;
                self.counters.misses.inc();
                self.counters.fetched_bytes.inc_by(*size);
                let (c, d) = (self.cache.clone(), *digest);
                tokio::task::spawn_blocking(move || c.seal(&d))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("cannot make the cached {name} read-only: {e}"))?;
            }
            let (c, d, dest) = (
                self.cache.clone(),
                *digest,
                self.inputs_dir.join(input).join(name),
            );
            let model_dir =
                (input == crate::api::pool::MODEL_INPUT).then(|| self.inputs_dir.join(input));
            let link_name = name.clone();
            tokio::task::spawn_blocking(move || {
                c.link(&d, &dest)?;
                // `$RIFT_INPUTS/model/current`, which a Reload swaps later.
                match model_dir {
                    Some(dir) => super::models::point_current_if_absent(&dir, &link_name),
                    None => Ok(()),
                }
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("input {input}: cannot link {name} into the job: {e}"))?;
            done += size;
            let secs = started.elapsed().as_secs_f64().max(0.001);
            self.set(done, total, (downloaded as f64 / secs) as u64, None);
        }
        Ok(())
    }
}
