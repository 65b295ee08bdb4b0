//! A Pool member's model on its node: prefetching a newly promoted model into the node cache
//! and, for `update: Reload`, swapping it under the running process.
//!
//! How the agent learns of it: the Pool controller writes a [`ModelOrder`] into each member's
//! binding, which the runner already watches (no other watch, no polling). For every job with
//! an order, [`Models::want`] runs one task that
//! 1. prefetches the model into the node cache ([`super::cache`]), through the download slot
//!    it shares with staging (one download at a time per node), without touching the job;
//! 2. with `reload`, links it into `$RIFT_INPUTS/model/`, points `$RIFT_INPUTS/model/current`
//!    at it ([`swap`]) and sends SIGHUP to the job's process group, then records the model as
//!    held (`$RIFT_INPUTS/model/.held`, [`held`]).
//!
//! Guarantees:
//! - **`current` always names a complete, verified file.** Bytes reach the cache only through
//!   the sha256-checked download (a damaged or interrupted one never appears under its name);
//!   the symlink is made aside and renamed over `current` (rename is atomic), and the model it
//!   named before stays linked, so a reader that resolved the old target can still open it.
//! - **A model that cannot be fetched changes nothing.** Store down, damaged bytes or a missing
//!   Artifact: the job keeps its model, the report carries the problem, and the task keeps
//!   trying (backoff up to [`MAX_BACKOFF`]) until it succeeds or the order changes.
//! - **Held means signalled.** A model is reported held only after SIGHUP was sent (or when no
//!   process runs, so the next attempt starts on it); an agent killed between the swap and the
//!   signal does both again when it comes back (`.held` still names the old model). Held is not
//!   handled: the job's handler may run a moment after the report says held.
//!
//! Caveat: a job without a SIGHUP handler exits on it and is restarted by its `restartPolicy`
//! (`Never` ends it: Reload suits jobs that handle SIGHUP or restart `OnFailure`/`Always`).

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::cache::NodeCache;
use super::StoreAccess;
use crate::agent::jobs::layout::RunSpec;
use crate::api::artifact::{ArtifactSpec, Digest};
use crate::api::job_io::JobInput;
use crate::api::labels;
use crate::api::placement::ModelOrder;
use crate::api::pool::MODEL_INPUT;

/// The symlink a job reads its model through: `$RIFT_INPUTS/model/current`.
pub const CURRENT: &str = "current";
/// The model last swapped in and signalled.
const HELD: &str = ".held";
/// The longest wait between tries while the model cannot be fetched.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Points `model_dir/current` at `name` and records it held (the process starts after
/// staging, so it starts on it), unless `current` exists (staging calls it after linking a
/// `model` input, so a re-staged job keeps a model swapped in since). Blocking.
pub fn point_current_if_absent(model_dir: &Path, name: &str) -> io::Result<()> {
    match std::fs::symlink_metadata(model_dir.join(CURRENT)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            replace_symlink(model_dir, name, CURRENT)?;
            record_held(model_dir, name)
        }
        Err(e) => Err(e),
    }
}

/// Makes `model_dir/<link>` a symlink to `target` (a name in the same directory) by renaming a
/// fresh symlink over it: readers see the old target or the new one, never neither.
fn replace_symlink(model_dir: &Path, target: &str, link: &str) -> io::Result<()> {
    let tmp = model_dir.join(format!(".{link}.swap"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, model_dir.join(link))
}

/// Links the cached `digest` into `model_dir` as `name`, swaps `current` to it, and removes the
/// model files older than the one `current` named before. Blocking.
pub fn swap(cache: &NodeCache, digest: &Digest, model_dir: &Path, name: &str) -> io::Result<()> {
    std::fs::create_dir_all(model_dir)?;
    let previous = std::fs::read_link(model_dir.join(CURRENT))
        .ok()
        .and_then(|p| p.to_str().map(str::to_string));
    cache.link(digest, &model_dir.join(name))?;
    replace_symlink(model_dir, name, CURRENT)?;
    for e in std::fs::read_dir(model_dir)? {
        let e = e?;
        let Some(file) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if file != name
            && Some(&file) != previous.as_ref()
            && Digest::parse(&file).is_ok()
            && e.file_type()?.is_file()
        {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// The model the job's process holds: the one staged before it started, or the last one
/// swapped in and signalled. Read from `.held`, never from `current`: an agent killed between
/// a swap and its SIGHUP finds `current` on the new model but `.held` on the old one, and so
/// swaps and signals again. Blocking.
pub fn held(model_dir: &Path) -> Option<String> {
    std::fs::read_to_string(model_dir.join(HELD))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| Digest::parse(s).is_ok())
}

fn record_held(model_dir: &Path, name: &str) -> io::Result<()> {
    let tmp = model_dir.join(format!("{HELD}.tmp"));
    std::fs::write(&tmp, name)?;
    std::fs::rename(tmp, model_dir.join(HELD))
}

/// `spec` as its outputs should be taken while the job holds `held`: a Pool member's outputs
/// get the [`labels::MODEL`] label, and its `model` input (the Artifacts' parents) names the
/// held model, which a Reload may have changed since the job started.
pub fn with_held_model(mut spec: RunSpec, held: Option<&str>) -> RunSpec {
    let Some(held) = held else {
        return spec;
    };
    if !spec.labels.contains_key(labels::POOL) {
        return spec;
    }
    match spec.inputs.iter_mut().find(|i| i.name == MODEL_INPUT) {
        Some(input) => input.artifacts = vec![held.to_string()],
        None => spec
            .inputs
            .push(JobInput::of(MODEL_INPUT, [held.to_string()])),
    }
    for output in &mut spec.outputs {
        output
            .labels
            .insert(labels::MODEL.into(), labels::model_label_value(held));
    }
    spec
}

/// What a job's model order came to so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The ordered model is verified in the node cache.
    pub prefetched: bool,
    /// Why it is not (yet) done.
    pub problem: String,
}

struct Ordered {
    order: ModelOrder,
    digest: Digest,
    pid: Arc<Mutex<Option<u32>>>,
    progress: Arc<Mutex<Progress>>,
    task: JoinHandle<()>,
}

/// The node's model orders, by job.
#[derive(Clone)]
pub struct Models {
    access: StoreAccess,
    cache: NodeCache,
    downloads: Arc<Semaphore>,
    jobs: Arc<Mutex<HashMap<String, Ordered>>>,
    held: Arc<Mutex<BTreeSet<Digest>>>,
}

impl Models {
    /// `downloads` is the node's download slot, shared with staging.
    pub fn new(access: StoreAccess, cache: NodeCache, downloads: Arc<Semaphore>) -> Self {
        Self {
            access,
            cache,
            downloads,
            jobs: Arc::default(),
            held: Arc::default(),
        }
    }

    /// Carries out `order` for `job` (its model directory `model_dir`; `pid` leads its process
    /// group while it runs), unless that is already under way. An order that does not name an
    /// artifact is ignored. Needs a tokio runtime.
    pub fn want(&self, job: &str, order: &ModelOrder, model_dir: PathBuf, pid: Option<u32>) {
        let mut jobs = self.jobs.lock().expect("models lock");
        if let Some(o) = jobs.get(job).filter(|o| &o.order == order) {
            *o.pid.lock().expect("pid lock") = pid;
            return;
        }
        let Ok(digest) = Digest::parse(&order.artifact) else {
            return;
        };
        if let Some(old) = jobs.remove(job) {
            old.task.abort();
        }
        let pid = Arc::new(Mutex::new(pid));
        let progress = Arc::new(Mutex::new(Progress::default()));
        let work = Fetch {
            job: job.to_string(),
            access: self.access.clone(),
            cache: self.cache.clone(),
            downloads: self.downloads.clone(),
            order: order.clone(),
            digest,
            model_dir,
            pid: pid.clone(),
            progress: progress.clone(),
        };
        let task = tokio::spawn(work.run());
        jobs.insert(
            job.to_string(),
            Ordered {
                order: order.clone(),
                digest,
                pid,
                progress,
                task,
            },
        );
    }

    /// Where `job`'s order for `artifact` stands; `None` when there is none for it.
    pub fn progress(&self, job: &str, artifact: &str) -> Option<Progress> {
        let jobs = self.jobs.lock().expect("models lock");
        let o = jobs.get(job).filter(|o| o.order.artifact == artifact)?;
        let p = o.progress.lock().expect("progress lock").clone();
        Some(p)
    }

    /// Forgets (and stops) the orders of every job `keep` says no to.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.jobs.lock().expect("models lock").retain(|job, o| {
            let k = keep(job);
            if !k {
                o.task.abort();
            }
            k
        });
    }

    /// Records the models the node's jobs hold now (pinned with the ordered ones).
    pub fn set_held<'a>(&self, held: impl IntoIterator<Item = &'a str>) {
        *self.held.lock().expect("held lock") = held
            .into_iter()
            .filter_map(|h| Digest::parse(h).ok())
            .collect();
    }

    /// Every model ordered for or held by a job on this node: pinned in the cache (the current
    /// and previous model of the node's Pools).
    pub fn pinned(&self) -> BTreeSet<Digest> {
        let mut out = self.held.lock().expect("held lock").clone();
        out.extend(
            self.jobs
                .lock()
                .expect("models lock")
                .values()
                .map(|o| o.digest),
        );
        out
    }
}

/// One job's model order.
struct Fetch {
    job: String,
    access: StoreAccess,
    cache: NodeCache,
    downloads: Arc<Semaphore>,
    order: ModelOrder,
    digest: Digest,
    model_dir: PathBuf,
    pid: Arc<Mutex<Option<u32>>>,
    progress: Arc<Mutex<Progress>>,
}

impl Fetch {
    async fn run(self) {
        let mut delay = Duration::from_millis(200);
        loop {
            let result = match self.prefetch().await {
                Ok(()) if self.order.reload => self.reload().await,
                other => other,
            };
            match result {
                Ok(()) => {
                    self.set(true, String::new());
                    return;
                }
                Err(problem) => {
                    tracing::warn!(
                        job = self.job,
                        model = self.order.artifact,
                        problem,
                        "model not swapped yet"
                    );
                    let prefetched = self.progress.lock().expect("progress lock").prefetched;
                    self.set(prefetched, problem);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn set(&self, prefetched: bool, problem: String) {
        *self.progress.lock().expect("progress lock") = Progress {
            prefetched,
            problem,
        };
    }

    /// The model into the node cache (verified), or why not now.
    async fn prefetch(&self) -> Result<(), String> {
        let name = &self.order.artifact;
        let record = self
            .access
            .etcd
            .get::<ArtifactSpec>(name)
            .await
            .map_err(|e| format!("cannot read Artifact {name}: {e}"))?
            .ok_or_else(|| format!("Artifact {name} does not exist"))?;
        let size = record.spec.size;
        if self.cached(size).await {
            self.set(true, String::new());
            return Ok(());
        }
        let _permit = self
            .downloads
            .acquire()
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        // Staging may have fetched it while this waited for the slot.
        if !self.cached(size).await {
            let store = self
                .access
                .open()
                .await
                .map_err(|e| format!("cannot open the artifact store: {e}"))?;
            let path = self.cache.path(&self.digest);
            if let Some(parent) = path.parent() {
                let _ = tokio::fs::create_dir_all(parent).await;
            }
            let progress = |_: u64, _: u64| {};
            crate::artifacts::download(&store, &self.digest, &path, &progress)
                .await
                .map_err(|e| format!("cannot fetch model {name}: {e}"))?;
            let (c, d) = (self.cache.clone(), self.digest);
            tokio::task::spawn_blocking(move || c.seal(&d))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot make the cached {name} read-only: {e}"))?;
        }
        self.set(true, String::new());
        Ok(())
    }

    async fn cached(&self, size: u64) -> bool {
        let (c, d) = (self.cache.clone(), self.digest);
        tokio::task::spawn_blocking(move || c.has(&d, size))
            .await
            .unwrap_or(false)
    }

    /// Swaps the prefetched model in, signals the job, records it held.
    async fn reload(&self) -> Result<(), String> {
        let (c, d, dir, name) = (
            self.cache.clone(),
            self.digest,
            self.model_dir.clone(),
            self.order.artifact.clone(),
        );
        let pid = self.pid.clone();
        let job = self.job.clone();
        tokio::task::spawn_blocking(move || {
            swap(&c, &d, &dir, &name)
                .map_err(|e| format!("cannot swap model {name} into the job: {e}"))?;
            if let Some(pid) = *pid.lock().expect("pid lock") {
                crate::agent::jobs::procs::signal_group(pid, nix::sys::signal::Signal::SIGHUP);
                tracing::info!(job, pid, model = name, "model swapped in; SIGHUP sent");
            }
            record_held(&dir, &name).map_err(|e| format!("cannot record model {name} held: {e}"))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::jobs::layout::StateDir;

    fn cached(cache: &NodeCache, n: u8, bytes: &[u8]) -> (Digest, String) {
        let d = Digest::from_bytes([n; 32]);
        std::fs::create_dir_all(cache.dir()).unwrap();
        std::fs::write(cache.path(&d), bytes).unwrap();
        cache.seal(&d).unwrap();
        (d, d.artifact_name())
    }

    #[test]
    fn a_swap_repoints_current_keeps_the_previous_model_and_drops_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::new(&StateDir::new(dir.path()));
        let model_dir = dir.path().join("job/inputs/model");
        let (d1, m1) = cached(&cache, 1, b"one");
        let (d2, m2) = cached(&cache, 2, b"two");
        let (d3, m3) = cached(&cache, 3, b"three");
        cache.link(&d1, &model_dir.join(&m1)).unwrap();
        point_current_if_absent(&model_dir, &m1).unwrap();
        assert_eq!(held(&model_dir).as_deref(), Some(m1.as_str()));
        swap(&cache, &d2, &model_dir, &m2).unwrap();
        assert_eq!(std::fs::read(model_dir.join(CURRENT)).unwrap(), b"two");
        assert_eq!(
            held(&model_dir).as_deref(),
            Some(m1.as_str()),
            "swapped but not signalled yet: the old one is still held"
        );
        // Staging the job again does not undo the swap.
        point_current_if_absent(&model_dir, &m1).unwrap();
        assert_eq!(std::fs::read(model_dir.join(CURRENT)).unwrap(), b"two");
        swap(&cache, &d3, &model_dir, &m3).unwrap();
        assert_eq!(std::fs::read(model_dir.join(CURRENT)).unwrap(), b"three");
        let mut left: Vec<String> = std::fs::read_dir(&model_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        left.sort();
        let mut want = vec![CURRENT.to_string(), m2.clone(), m3.clone()];
        want.sort();
        assert_eq!(left, want, "the previous model stays, older ones go");
        record_held(&model_dir, &m3).unwrap();
        assert_eq!(held(&model_dir).as_deref(), Some(m3.as_str()));
    }

    #[test]
    fn current_names_a_complete_file_at_every_instant_of_a_swap() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::new(&StateDir::new(dir.path()));
        let model_dir = dir.path().join("inputs/model");
        let big = |c: u8| vec![c; 1 << 20];
        let (da, ma) = cached(&cache, 1, &big(b'a'));
        let (db, mb) = cached(&cache, 2, &big(b'b'));
        swap(&cache, &da, &model_dir, &ma).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (stop, path) = (stop.clone(), model_dir.join(CURRENT));
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let bytes = std::fs::read(&path).expect("current always resolves");
                    assert_eq!(bytes.len(), 1 << 20, "a whole model, never part of one");
                    assert!(
                        bytes.iter().all(|b| *b == bytes[0]),
                        "one model, never a mix"
                    );
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..200 {
            let (d, m) = if i % 2 == 0 { (&db, &mb) } else { (&da, &ma) };
            swap(&cache, d, &model_dir, m).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }

    #[test]
    fn a_pool_members_outputs_are_labelled_with_the_model_it_holds() {
        let spec: RunSpec = serde_json::from_value(serde_json::json!({
            "job": "sp-0", "epoch": 1, "command": ["x"], "restartPolicy": "Always",
            "backoffLimit": 3, "onNodeLost": "reschedule", "lostAfterSecs": 60, "graceSecs": 10,
            "inputs": [{"name": "model", "artifacts": [format!("sha256-{}", "1".repeat(64))]}],
            "outputs": [{"name": "games", "labels": {"type": "games"}}],
            "labels": {"rift.dev/pool": "sp"}
        }))
        .unwrap();
        let m2 = format!("sha256-{}", "ab".repeat(32));
        let out = with_held_model(spec.clone(), Some(&m2));
        assert_eq!(
            out.inputs[0].artifacts,
            std::slice::from_ref(&m2),
            "parents name the held model"
        );
        assert_eq!(
            out.outputs[0].labels[labels::MODEL],
            format!("sha256-{}", "ab".repeat(8))
        );
        assert_eq!(out.outputs[0].labels["type"], "games");
        // Not a Pool member (a training run's warm start): unchanged.
        let mut training = spec;
        training.labels.clear();
        assert_eq!(with_held_model(training.clone(), Some(&m2)), training);
    }
}
