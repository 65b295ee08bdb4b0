//! A job's sealed output files, uploaded and reported for the leader to record as Artifacts.
//!
//! A file in `outputs/<output>/` is sealed once it is there under a final name (renamed in, or
//! present when the process exits); names starting with `.` or ending in `.tmp` are still being
//! written, and `<file>.counts.json` is the file's sidecar (its counts, never an artifact).
//! Only regular files are taken, from output directories that are real directories: a symlink
//! is never followed out of the job's directory.
//!
//! Guarantees:
//! - **Journaled before anything moves.** Each sealed file gets an entry
//!   `<state>/uploads/<id>.json` (written durably first) and a hard link `<id>.data` to its
//!   bytes, so the upload survives the job's directory being removed and the agent being
//!   killed: a restarted agent takes every entry up where it was (`queued` → `uploaded` →
//!   `reported`) and finishes it.
//! - **Verified, content addressed, once.** The upload hashes while it streams and lands under
//!   the digest's key; bytes already in the store are not sent again; the leader records
//!   `sha256-<hex>` once, so a resumed upload or two jobs writing the same bytes make one
//!   Artifact.
//! - **Deleted only when recorded.** The job's file, its sidecar and the spooled link are
//!   removed only after the Artifact exists in etcd; until then the runner reports the job as
//!   still `Uploading` rather than finished ([`pending`]).
//! - **Never recorded onto bytes being collected.** An Artifact of the same bytes that garbage
//!   collection has marked (`deletionTimestamp`) does not count as recorded: the entry waits for
//!   it to go and uploads and reports again.
//! - **An unreachable store waits.** Entries stay queued and are retried with backoff; running
//!   jobs are not affected. One upload at a time per node.
//!
//! - **Resumed, not restarted.** Each entry's multipart upload is journaled in `<id>.parts`
//!   (upload id, finished parts): an agent killed mid-upload continues from the next part.
//!
//! Caveat: to a local-directory store an upload killed mid-way starts again from the first
//! byte (see [`crate::artifacts::transfer`]).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::store::txn::Op;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::cache::NodeCache;
use super::StoreAccess;
use crate::agent::jobs::layout::{read_json, write_json, JobDir, RunSpec};
use crate::api::artifact::{ArtifactSpec, Digest};
use crate::api::job_io::OutputReport;
use crate::api::labels;
use crate::controllers::artifacts::artifact_of;
use crate::store::keys;
use crate::tasks::CancellationToken;

/// Sidecar suffix: `<file>.counts.json` holds the file's counts.
pub const COUNTS_SUFFIX: &str = ".counts.json";
/// The largest sidecar read.
const MAX_SIDECAR_BYTES: u64 = 64 * 1024;
/// How often the uploader looks for work when idle.
const IDLE: Duration = Duration::from_millis(300);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How far one entry got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    Queued,
    Uploaded,
    /// The report is in etcd; waiting for the leader's Artifact.
    Reported,
}

/// One journal entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    pub step: Step,
    /// The file in the job's outputs directory.
    pub source: PathBuf,
    /// `digest` and `size` are filled in once uploaded.
    pub report: OutputReport,
}

/// Whether `name` in an output directory is a sealed file (not in progress, not a sidecar).
pub fn is_sealed_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with(".tmp")
        && !name.ends_with(COUNTS_SUFFIX)
}

/// The entry id of `file` in output `output` of the Job `uid` (or `job` when it has no uid).
fn entry_id(job: &str, uid: &str, output: &str, file: &str) -> String {
    let mut h = Sha256::new();
    for part in [job, uid, output, file] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// The labels of an artifact made from `output` of the job run by `spec`.
pub fn artifact_labels(spec: &RunSpec, output: &str) -> BTreeMap<String, String> {
    let mut out = spec
        .outputs
        .iter()
        .find(|o| o.name == output)
        .map(|o| o.labels.clone())
        .unwrap_or_default();
    for key in labels::INHERITED_BY_OUTPUTS {
        if let Some(v) = spec.labels.get(key) {
            out.insert(key.to_string(), v.clone());
        }
    }
    out.insert(labels::ARTIFACT_JOB.into(), spec.job.clone());
    out.insert(labels::ARTIFACT_OUTPUT.into(), output.into());
    out
}

/// Journals every sealed file of the job's outputs not journaled yet (blocking). `attempt` is
/// the attempt that wrote them.
pub fn journal_sealed(
    uploads: &Path,
    dir: &JobDir,
    spec: &RunSpec,
    attempt: u32,
) -> io::Result<()> {
    for output in &spec.outputs {
        let out_dir = dir.outputs().join(&output.name);
        // A directory, never a symlink a job put in its place (that would take files from
        // outside the job's directory).
        match std::fs::symlink_metadata(&out_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                tracing::warn!(job = spec.job, dir = %out_dir.display(), "an output is not a directory; its files are not taken");
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        let entries = std::fs::read_dir(&out_dir)?;
        for e in entries {
            let e = e?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !is_sealed_name(&name) || !e.file_type()?.is_file() {
                continue;
            }
            let id = entry_id(&spec.job, &spec.uid, &output.name, &name);
            let json = uploads.join(format!("{id}.json"));
            if json.exists() {
                continue;
            }
            let source = e.path();
            let entry = Pending {
                step: Step::Queued,
                report: OutputReport {
                    job: spec.job.clone(),
                    uid: spec.uid.clone(),
                    attempt,
                    output: output.name.clone(),
                    digest: String::new(),
                    size: 0,
                    format: output.format.clone(),
                    labels: artifact_labels(spec, &output.name),
                    parents: spec
                        .inputs
                        .iter()
                        .flat_map(|i| i.artifacts.clone())
                        .collect(),
                    counts: read_counts(&sidecar(&source)),
                },
                source: source.clone(),
            };
            std::fs::create_dir_all(uploads)?;
            write_json(&json, &entry)?;
            if let Err(e) = link_data(uploads, &id, &source) {
                tracing::warn!(job = spec.job, file = %source.display(), %e, "an output file is not taken");
                let _ = std::fs::remove_file(&json);
                continue;
            }
            tracing::info!(job = spec.job, file = %source.display(), "output sealed; queued for upload");
        }
    }
    Ok(())
}

fn sidecar(source: &Path) -> PathBuf {
    let mut name = source.file_name().unwrap_or_default().to_os_string();
    name.push(COUNTS_SUFFIX);
    source.with_file_name(name)
}

/// The counts in a sidecar; none when there is no sidecar or it is not `{"name": number}`
/// (warned: the artifact is still made, without counts).
/// Only a regular file is read (never a link a job put there: the agent may be root), and at
/// most [`MAX_SIDECAR_BYTES`] of it.
fn read_counts(path: &Path) -> BTreeMap<String, u64> {
    use std::io::Read as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return BTreeMap::new();
    };
    let parsed = if !meta.is_file() {
        Err("not a regular file".to_string())
    } else if meta.len() > MAX_SIDECAR_BYTES {
        Err(format!("larger than {MAX_SIDECAR_BYTES} bytes"))
    } else {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_SIDECAR_BYTES).read_to_end(&mut bytes))
            .map_err(|e| e.to_string())
            .and_then(|_| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    };
    parsed.unwrap_or_else(|e| {
        tracing::warn!(sidecar = %path.display(), e, "ignoring counts that are not {{\"name\": whole number}}");
        BTreeMap::new()
    })
}

/// Links `source` into the spool as `<id>.data`, and keeps the link only when it is a regular
/// file owned by the owner of `source`'s output directory. A job (possibly another user, its
/// directory its own) that swaps a sealed file for a symlink, or links in someone else's file,
/// between the look and the link gets an error, never a spooled copy of that file.
fn link_data(uploads: &Path, id: &str, source: &Path) -> io::Result<()> {
    let data = uploads.join(format!("{id}.data"));
    let owner = std::fs::symlink_metadata(source.parent().unwrap_or(Path::new("/")))?.uid();
    match std::fs::hard_link(source, &data) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let linked = std::fs::symlink_metadata(&data)?;
    if !linked.is_file() || linked.uid() != owner {
        let _ = std::fs::remove_file(&data);
        return Err(io::Error::other(format!(
            "not a regular file owned by its output directory's owner (uid {owner})"
        )));
    }
    Ok(())
}

/// Every journal entry (blocking); an entry whose spooled bytes are missing is relinked from
/// its source, or dropped when the source is gone too (it was journaled, never linked).
pub fn load(uploads: &Path) -> Vec<(String, Pending)> {
    let Ok(read) = std::fs::read_dir(uploads) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in read.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        match read_json::<Pending>(&e.path()) {
            Ok(Some(p)) => {
                if !uploads.join(format!("{id}.data")).exists()
                    && link_data(uploads, id, &p.source).is_err()
                {
                    tracing::warn!(file = %p.source.display(), "a journaled output is gone; dropping its entry");
                    let _ = std::fs::remove_file(e.path());
                    continue;
                }
                out.push((id.to_string(), p));
            }
            other => {
                tracing::warn!(entry = %e.path().display(), ?other, "unreadable upload journal entry")
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Entries not finished, per `(job, uid)` (blocking).
pub fn pending(uploads: &Path) -> HashMap<(String, String), usize> {
    let mut out = HashMap::new();
    let Ok(read) = std::fs::read_dir(uploads) else {
        return out;
    };
    for e in read.flatten() {
        if e.path().extension().is_some_and(|x| x == "json") {
            if let Ok(Some(p)) = read_json::<Pending>(&e.path()) {
                *out.entry((p.report.job, p.report.uid)).or_insert(0) += 1;
            }
        }
    }
    out
}

/// Removes what a finished entry left: the job's file (only if it is still the bytes that were
/// uploaded), its sidecar, the spooled link, then the entry. The bytes go to the node cache
/// first ([`NodeCache::adopt`]: verified against the uploaded digest) when `cache` is given.
fn finish(uploads: &Path, id: &str, p: &Pending, cache: Option<&NodeCache>) -> io::Result<()> {
    let data = uploads.join(format!("{id}.data"));
    if let (Some(cache), Ok(digest)) = (cache, Digest::parse(&p.report.digest)) {
        if let Err(e) = cache.adopt(&digest, &data) {
            tracing::warn!(digest = %digest, %e, "an uploaded output stays out of the node cache");
        }
    }
    let same = match (std::fs::metadata(&data), std::fs::metadata(&p.source)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    };
    if same {
        let _ = std::fs::remove_file(&p.source);
        let _ = std::fs::remove_file(sidecar(&p.source));
    }
    let _ = std::fs::remove_file(&data);
    let _ = std::fs::remove_file(uploads.join(format!("{id}.parts")));
    std::fs::remove_file(uploads.join(format!("{id}.json")))
}

/// Uploads journaled outputs, one at a time, until stopped.
pub struct Uploader {
    pub node: String,
    pub access: StoreAccess,
    pub uploads: PathBuf,
    /// Where uploaded outputs are kept for later jobs on this node (none: not kept).
    pub cache: Option<NodeCache>,
}

impl Uploader {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = IDLE;
        loop {
            let dir = self.uploads.clone();
            let entries = tokio::task::spawn_blocking(move || load(&dir))
                .await
                .unwrap_or_default();
            let mut failed = false;
            for (id, mut p) in entries {
                if shutdown.is_cancelled() {
                    return;
                }
                if let Err(e) = self.advance(&id, &mut p).await {
                    tracing::warn!(file = %p.source.display(), e, "output upload: will retry");
                    failed = true;
                }
            }
            backoff = if failed {
                (backoff * 2).min(MAX_BACKOFF)
            } else {
                IDLE
            };
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Takes entry `id` as far as it can go now.
    async fn advance(&self, id: &str, p: &mut Pending) -> Result<(), String> {
        let json = self.uploads.join(format!("{id}.json"));
        loop {
            match p.step {
                Step::Queued => {
                    let store = self.access.open().await.map_err(|e| e.to_string())?;
                    let data = self.uploads.join(format!("{id}.data"));
                    let parts = self.uploads.join(format!("{id}.parts"));
                    let up = crate::artifacts::upload_journaled(
                        &store,
                        &data,
                        Some(&parts),
                        &crate::artifacts::transfer::quiet,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    if up.resumed_bytes > 0 {
                        tracing::info!(job = p.report.job, digest = %up.digest, resumed_bytes = up.resumed_bytes, size = up.size, "output upload resumed from its journal: the store already had {} of {} bytes", up.resumed_bytes, up.size);
                    }
                    // A record garbage collection has marked is losing its bytes: wait until
                    // it is gone, then store them again (the next turns upload anew).
                    if self.marked(&up.digest.artifact_name()).await? {
                        tracing::info!(job = p.report.job, digest = %up.digest, "waiting for a collected Artifact of these bytes to go before storing them again");
                        return Ok(());
                    }
                    p.report.digest = up.digest.to_string();
                    p.report.size = up.size;
                    p.step = Step::Uploaded;
                    persist(&json, p).await?;
                    tracing::info!(job = p.report.job, digest = %up.digest, size = up.size, "output uploaded");
                }
                Step::Uploaded => {
                    let key = self.report_key(p)?;
                    let mut body = serde_json::to_vec(&p.report).expect("reports serialize");
                    // The leader refuses a report that makes no valid Artifact; the one part a
                    // job controls freely is its sidecar's counts: drop bad ones, keep the bytes.
                    if let Err(why) = artifact_of(&key, &body) {
                        if p.report.counts.is_empty() {
                            return Err(format!("the output makes no valid Artifact: {why}"));
                        }
                        tracing::warn!(file = %p.source.display(), why, "dropping the sidecar's counts: they make no valid Artifact");
                        p.report.counts.clear();
                        body = serde_json::to_vec(&p.report).expect("reports serialize");
                    }
                    self.access
                        .etcd
                        .txn(vec![], vec![Op::put(key, body)], vec![])
                        .await
                        .map_err(|e| e.to_string())?;
                    p.step = Step::Reported;
                    persist(&json, p).await?;
                }
                Step::Reported => {
                    let name = Digest::parse(&p.report.digest)
                        .map_err(|e| e.to_string())?
                        .artifact_name();
                    let record = self
                        .access
                        .etcd
                        .get::<ArtifactSpec>(&name)
                        .await
                        .map_err(|e| e.to_string())?;
                    match record {
                        None => return Ok(()), // the leader has not recorded it yet
                        Some(r) if r.metadata.deletion_timestamp.is_some() => {
                            // Collected meanwhile: its bytes are going; upload again later.
                            p.step = Step::Queued;
                            persist(&json, p).await?;
                            return Ok(());
                        }
                        Some(_) => {}
                    }
                    let key = self.report_key(p)?;
                    self.access
                        .etcd
                        .txn(vec![], vec![Op::delete(key)], vec![])
                        .await
                        .map_err(|e| e.to_string())?;
                    let (dir, id, entry) = (self.uploads.clone(), id.to_string(), p.clone());
                    let cache = self.cache.clone();
                    tokio::task::spawn_blocking(move || finish(&dir, &id, &entry, cache.as_ref()))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                    tracing::info!(job = p.report.job, artifact = name, "output recorded");
                    return Ok(());
                }
            }
        }
    }

    /// Whether the Artifact `name` exists and garbage collection has marked it for deletion.
    async fn marked(&self, name: &str) -> Result<bool, String> {
        let record = self
            .access
            .etcd
            .get::<ArtifactSpec>(name)
            .await
            .map_err(|e| e.to_string())?;
        Ok(record.is_some_and(|r| r.metadata.deletion_timestamp.is_some()))
    }

    fn report_key(&self, p: &Pending) -> Result<String, String> {
        let d = Digest::parse(&p.report.digest).map_err(|e| e.to_string())?;
        Ok(keys::agent_output(&self.node, &p.report.job, &d.hex()))
    }
}

async fn persist(json: &Path, p: &Pending) -> Result<(), String> {
    let (path, entry) = (json.to_path_buf(), p.clone());
    tokio::task::spawn_blocking(move || write_json(&path, &entry))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot write the upload journal: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_progress_names_and_sidecars_are_never_sealed() {
        for name in ["shard.npz", "model.pt", "a"] {
            assert!(is_sealed_name(name), "{name}");
        }
        for name in [".shard.npz", "shard.npz.tmp", "shard.npz.counts.json", ""] {
            assert!(!is_sealed_name(name), "{name}");
        }
    }

    fn spec(outputs: &[&str]) -> RunSpec {
        serde_json::from_value(serde_json::json!({
            "job": "sp", "uid": "u1", "epoch": 1, "command": ["true"],
            "restartPolicy": "Never", "backoffLimit": 0, "onNodeLost": "wait",
            "lostAfterSecs": 60, "graceSecs": 1,
            "outputs": outputs.iter().map(|o| serde_json::json!({"name": o})).collect::<Vec<_>>(),
            "labels": {"rift.dev/pool": "selfplay", "other": "x"}
        }))
        .unwrap()
    }

    #[test]
    fn only_sealed_regular_files_inside_the_job_are_journaled_once() {
        let root = tempfile::tempdir().unwrap();
        let job = JobDir::at(root.path().join("job"));
        let uploads = root.path().join("uploads");
        let games = job.outputs().join("games");
        std::fs::create_dir_all(&games).unwrap();
        std::fs::write(games.join("a.npz"), b"a").unwrap();
        std::fs::write(games.join("a.npz.counts.json"), br#"{"games": 7}"#).unwrap();
        std::fs::write(games.join(".b.npz"), b"b").unwrap();
        std::fs::write(games.join("c.npz.tmp"), b"c").unwrap();
        let secret = root.path().join("secret");
        std::fs::write(&secret, b"s").unwrap();
        std::os::unix::fs::symlink(&secret, games.join("link.npz")).unwrap();
        // An output directory swapped for a symlink to elsewhere is not read.
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("x.npz"), b"x").unwrap();
        std::os::unix::fs::symlink(&elsewhere, job.outputs().join("models")).unwrap();

        let s = spec(&["games", "models"]);
        journal_sealed(&uploads, &job, &s, 2).unwrap();
        journal_sealed(&uploads, &job, &s, 2).unwrap(); // again: nothing new
        let entries = load(&uploads);
        assert_eq!(entries.len(), 1, "{entries:?}");
        let (_, p) = &entries[0];
        assert_eq!(p.source, games.join("a.npz"));
        assert_eq!((p.report.attempt, p.step), (2, Step::Queued));
        assert_eq!(p.report.counts.get("games"), Some(&7));
        assert_eq!(
            p.report.labels.get("rift.dev/pool").map(String::as_str),
            Some("selfplay")
        );
        assert_eq!(
            p.report.labels.get("rift.dev/output").map(String::as_str),
            Some("games")
        );
        assert!(!p.report.labels.contains_key("other"));
        assert_eq!(pending(&uploads).get(&("sp".into(), "u1".into())), Some(&1));
    }

    #[test]
    fn a_sidecar_that_is_a_link_or_a_device_gives_no_counts() {
        let root = tempfile::tempdir().unwrap();
        let counts = root.path().join("real.counts.json");
        std::fs::write(&counts, br#"{"games": 7}"#).unwrap();
        let link = root.path().join("a.npz.counts.json");
        std::os::unix::fs::symlink(&counts, &link).unwrap();
        assert!(read_counts(&link).is_empty(), "a link is not followed");
        // A device reads forever; it is never read.
        assert!(read_counts(Path::new("/dev/zero")).is_empty());
        assert_eq!(read_counts(&counts).get("games"), Some(&7));
    }

    #[test]
    fn a_file_someone_else_owns_in_an_output_directory_is_not_spooled() {
        if !nix::unistd::Uid::effective().is_root() {
            return; // Only root can give a file away; the job-side check is the same.
        }
        let root = tempfile::tempdir().unwrap();
        let job = JobDir::at(root.path().join("job"));
        let uploads = root.path().join("uploads");
        let games = job.outputs().join("games");
        std::fs::create_dir_all(&games).unwrap();
        // The directory is the job user's (uid 65534); one file is, one is root's (a hard link
        // the job made to a file it does not own).
        let job_user = nix::unistd::Uid::from_raw(65534);
        nix::unistd::chown(&games, Some(job_user), None).unwrap();
        std::fs::write(games.join("mine.npz"), b"mine").unwrap();
        nix::unistd::chown(&games.join("mine.npz"), Some(job_user), None).unwrap();
        std::fs::write(games.join("roots.npz"), b"root's").unwrap();
        journal_sealed(&uploads, &job, &spec(&["games"]), 1).unwrap();
        let entries = load(&uploads);
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].1.source, games.join("mine.npz"));
        let spooled = std::fs::read_dir(&uploads).unwrap().count();
        assert_eq!(spooled, 2, "one entry and its data, nothing of root's file");
    }
}
