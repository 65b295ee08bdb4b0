//! Opening a job's data — `RIFT_INPUTS` and `RIFT_OUTPUTS` — to the user it runs as (`runAs`),
//! and to nobody else.
//!
//! The state directory is the agent's (0700). A job run as another user still has to read its
//! inputs and write its outputs, which live in its job directory there. So, for a job with
//! inputs or outputs whose user is switched to, the shim (root) opens exactly this:
//!
//! ```text
//! <state>/                         0711 root        traverse only (set by the agent at start)
//! <state>/jobs/                    0711 root        traverse only: no listing, no reading
//! <state>/jobs/<job>/              0711 root        traverse only; its records stay 0600
//! <state>/jobs/<job>/inputs/       0750 root:<gid>  the job's group may read, nobody else
//!   <input>/ (every directory)     0750 root:<gid>  files: the cache's own 0444 root inodes
//! <state>/jobs/<job>/outputs/      0750 root:<gid>
//!   <output>/                      0750 <uid>:<gid> the job's user writes its files here
//! ```
//!
//! Guarantees:
//! - A user who is neither the job's user nor in its primary group reaches none of the job's
//!   data: `inputs/` and `outputs/` are root's, group-only, and every other path that is
//!   traversable is not listable, and holds only the agent's 0600 files and 0700 directories.
//! - The job cannot change what it reads: input files are hard links of the node cache's
//!   inodes, owned by root and 0444, so the job's user may neither write nor `chmod` them.
//!   Files are never `chown`ed here (that would change the cache entry itself).
//! - The job cannot leave its outputs: `outputs/<output>/` is its own, but `outputs/` is
//!   root's, so it cannot rename the directory away or put a link in its place. (A symlinked
//!   or swapped output is refused when journaling anyway, [`crate::agent::jobio::outputs`].)
//! - Idempotent: run again on every attempt, it sets the same owners and modes.
//!
//! Caveat: every member of the job user's primary group reads the job's data. The installed
//! user `rift-job` has a group of its own (`useradd --user-group`).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::unistd::{chown, Gid, Uid};

use super::layout::{JobDir, RunSpec};
use super::run_as::RunAs;

/// Mode of a directory others may pass through but neither list nor read.
pub const TRAVERSE_ONLY: u32 = 0o711;
/// Mode of the job's data directories: the owner writes, the job's group reads.
pub const GROUP_READ: u32 = 0o750;

/// Opens `job`'s `inputs/` and `outputs/` to `user` as the module doc says (blocking). Does
/// nothing for a job with neither inputs nor outputs. The directories of declared outputs
/// must exist already.
pub fn open_to(job: &JobDir, spec: &RunSpec, user: &RunAs) -> io::Result<()> {
    if spec.inputs.is_empty() && spec.outputs.is_empty() {
        return Ok(());
    }
    let root = Uid::effective();
    let path = job.path();
    if let Some(jobs) = path.parent() {
        set(jobs, None, TRAVERSE_ONLY)?;
    }
    set(path, None, TRAVERSE_ONLY)?;
    if !spec.inputs.is_empty() {
        std::fs::create_dir_all(job.inputs())?;
        share_dirs(&job.inputs(), user.gid)?;
    }
    if !spec.outputs.is_empty() {
        std::fs::create_dir_all(job.outputs())?;
        set(&job.outputs(), Some((root, user.gid)), GROUP_READ)?;
        for output in &spec.outputs {
            set(
                &job.outputs().join(&output.name),
                Some((user.uid, user.gid)),
                GROUP_READ,
            )?;
        }
    }
    Ok(())
}

/// `dir` and every directory below it: root's, group `gid`, 0750. Symlinks and files are left
/// as they are.
fn share_dirs(dir: &Path, gid: Gid) -> io::Result<()> {
    set(dir, Some((Uid::effective(), gid)), GROUP_READ)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            share_dirs(&entry.path(), gid)?;
        }
    }
    Ok(())
}

/// Sets `path`'s owner and mode; refuses anything but a real directory (a symlink is never
/// followed).
fn set(path: &Path, owner: Option<(Uid, Gid)>, mode: u32) -> io::Result<()> {
    if !std::fs::symlink_metadata(path)?.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    if let Some((uid, gid)) = owner {
        chown(path, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(outputs: &[&str]) -> RunSpec {
        serde_json::from_value(serde_json::json!({
            "job": "j", "epoch": 1, "command": ["true"],
            "restartPolicy": "Never", "backoffLimit": 0, "onNodeLost": "wait",
            "lostAfterSecs": 60, "graceSecs": 1,
            "outputs": outputs.iter().map(|o| serde_json::json!({"name": o})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// The user this test runs as: chown to it needs no privilege.
    fn me() -> RunAs {
        RunAs::resolve(&Uid::effective().as_raw().to_string()).unwrap()
    }

    #[test]
    fn a_job_without_data_opens_nothing() {
        let root = tempfile::tempdir().unwrap();
        let job = JobDir::at(root.path().join("jobs/j"));
        std::fs::create_dir_all(job.path()).unwrap();
        std::fs::set_permissions(job.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        open_to(&job, &spec(&[]), &me()).unwrap();
        assert_eq!(mode(job.path()), 0o700);
        assert!(!job.inputs().exists() && !job.outputs().exists());
    }

    #[test]
    fn outputs_are_opened_and_a_symlink_in_their_place_is_refused_unfollowed() {
        let root = tempfile::tempdir().unwrap();
        let job = JobDir::at(root.path().join("jobs/j"));
        std::fs::create_dir_all(job.outputs().join("games")).unwrap();
        open_to(&job, &spec(&["games"]), &me()).unwrap();
        assert_eq!(mode(job.path()), TRAVERSE_ONLY);
        assert_eq!(mode(&root.path().join("jobs")), TRAVERSE_ONLY);
        assert_eq!(mode(&job.outputs()), GROUP_READ);
        assert_eq!(mode(&job.outputs().join("games")), GROUP_READ);

        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, job.outputs().join("models")).unwrap();
        let err = open_to(&job, &spec(&["models"]), &me()).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert_eq!(mode(&elsewhere), 0o700, "the link's target is left alone");
    }
}
