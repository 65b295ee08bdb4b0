//! Looking at what rift left on disk.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Every path under `root` that others could read: a directory not 0700, a file rift wrote
/// with any group or other permission bit.
pub fn not_private(root: &Path) -> Vec<String> {
    /// Bytes the job wrote (its outputs, and their upload spool, a hard link to the same file)
    /// keep the job's own modes, and artifact copies are read-only: both are reachable only
    /// through the 0700 directories checked here.
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
        if mode != 0o700 {
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
