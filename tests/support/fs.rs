//! Looking at what rift left on disk.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Every path under `root` that others could read: a directory not 0700, a file rift wrote
/// with any group or other permission bit.
pub fn not_private(root: &Path) -> Vec<String> {
    not_private_except(root, &[])
}

/// [`not_private`], except the directories in `open` (paths relative to `root`, `""` for
/// `root` itself) must have exactly the mode given: what rift opens to a job's user (`runAs`).
/// A listed directory with another mode, or missing, is reported too.
pub fn not_private_except(root: &Path, open: &[(&str, u32)]) -> Vec<String> {
    /// Bytes the job wrote (its outputs, and their upload spool, a hard link to the same file)
    /// keep the job's own modes, and artifact copies are read-only: both are reachable only
    /// through the 0700 directories checked here (or the job's data directories in `open`).
    fn job_data(path: &Path) -> bool {
        let s = path.to_string_lossy();
        s.contains("/outputs/")
            || (s.contains("/uploads/") && s.ends_with(".data"))
            || s.contains("/cache/sha256/")
            || s.contains("/inputs/")
    }

    let mut bad = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mode = std::fs::symlink_metadata(&dir)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        let rel = dir
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let want = open
            .iter()
            .find(|(p, _)| *p == rel)
            .map_or(0o700, |(_, m)| *m);
        if mode != want {
            bad.push(format!("{} {mode:o}", dir.display()));
        }
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.permissions().mode() & 0o077 != 0 && !job_data(&entry.path()) {
                bad.push(format!(
                    "{} {:o}",
                    entry.path().display(),
                    meta.permissions().mode() & 0o777
                ));
            }
        }
    }
    for (p, _) in open {
        if !root.join(p).is_dir() {
            bad.push(format!("{} missing", root.join(p).display()));
        }
    }
    bad
}

/// Every file under `root` whose bytes contain `needle`.
pub fn files_containing(root: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
            {
                hits.push(path);
            }
        }
    }
    hits
}
