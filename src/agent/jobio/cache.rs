//! The node's artifact cache: `<state>/cache/sha256/<64 hex>`, one read-only file per artifact,
//! shared by every job on the node and outliving them.
//!
//! Guarantees:
//! - **Only verified bytes.** An entry is written by [`crate::artifacts::download`], which
//!   hashes while it streams into `<hex>.partial` and renames to `<hex>` only when the digest
//!   matches; a damaged or interrupted download never appears under an entry's name (and an
//!   interrupted one is resumed from its partial file).
//! - **Read-only, linked not copied.** Entries are mode 0444; a job gets a hard link to one
//!   (same inode, no copy), so a second job needing the same artifact costs nothing.
//! - **Least recently used is known.** Linking an entry into a job sets its mtime to now; the
//!   eviction decision ([`super::evict`]) orders entries by it.
//!
//! Caveat: a job running as the agent's own user could `chmod` an entry and write to it; with
//! `runAs` (the installed default) it cannot reach the state directory at all — which also
//! means such a job cannot read its inputs yet (see docs/architecture.md, "Artifacts").

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::agent::jobs::layout::StateDir;
use crate::api::artifact::Digest;

/// One cached artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub digest: Digest,
    pub size: u64,
    /// When a job last had it linked in (the file's mtime).
    pub last_used: SystemTime,
}

/// Paths and blocking operations of the node cache.
#[derive(Clone, Debug)]
pub struct NodeCache {
    dir: PathBuf,
}

impl NodeCache {
    pub fn new(state: &StateDir) -> Self {
        Self {
            dir: state.cache().join("sha256"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `digest`'s bytes are (or will be) cached.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Whether a complete entry of `size` bytes is cached for `digest`.
    pub fn has(&self, digest: &Digest, size: u64) -> bool {
        std::fs::metadata(self.path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Makes a freshly downloaded entry read-only.
    pub fn seal(&self, digest: &Digest) -> io::Result<()> {
        std::fs::set_permissions(self.path(digest), std::fs::Permissions::from_mode(0o444))
    }

    /// Hard-links `digest`'s entry to `dest` (replacing another file there) and marks the entry
    /// used now.
    pub fn link(&self, digest: &Digest, dest: &Path) -> io::Result<()> {
        let src = self.path(digest);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let same = match (std::fs::metadata(&src), std::fs::metadata(dest)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if !same {
            match std::fs::remove_file(dest) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            std::fs::hard_link(&src, dest)?;
        }
        let file = std::fs::File::open(&src)?;
        file.set_modified(SystemTime::now())
    }

    /// Puts a copy of `source` in the cache as `digest`'s entry, unless it is cached already:
    /// so an output this node uploaded is a hit for the next job here that reads it (training
    /// reading its node's games, evaluation its candidate). The copy is hashed while it is
    /// written to `<hex>.adopt` and renamed into place only when it matches `digest`: a source
    /// changed since its upload is left out, never cached under the wrong name. Blocking.
    pub fn adopt(&self, digest: &Digest, source: &Path) -> io::Result<bool> {
        use sha2::{Digest as _, Sha256};
        use std::io::{Read, Write};
        let dest = self.path(digest);
        if dest.exists() {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!("{}.adopt", digest.hex()));
        let result = (|| {
            let mut from = std::fs::File::open(source)?;
            let mut to = std::fs::File::create(&tmp)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = from.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                to.write_all(&buf[..n])?;
            }
            to.sync_all()?;
            if Digest::from_bytes(hasher.finalize().into()) != *digest {
                return Ok(false);
            }
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))?;
            std::fs::rename(&tmp, &dest)?;
            Ok(true)
        })();
        if !matches!(result, Ok(true)) {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Every complete entry (partial downloads and stray names are skipped).
    pub fn entries(&self) -> Vec<Entry> {
        let Ok(read) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        read.filter_map(|e| {
            let e = e.ok()?;
            let digest = Digest::parse(e.file_name().to_str()?).ok()?;
            let meta = e.metadata().ok()?;
            Some(Entry {
                digest,
                size: meta.len(),
                last_used: meta.modified().ok()?,
            })
        })
        .collect()
    }

    /// Removes `digest`'s entry. Jobs holding a hard link keep their copy.
    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linked_entry_is_the_same_read_only_inode_and_counts_as_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::new(&StateDir::new(dir.path()));
        let d = Digest::from_bytes([7; 32]);
        std::fs::create_dir_all(cache.dir()).unwrap();
        std::fs::write(cache.path(&d), b"bytes").unwrap();
        cache.seal(&d).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::open(cache.path(&d))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let dest = dir.path().join("job/inputs/games/x");
        cache.link(&d, &dest).unwrap();
        cache.link(&d, &dest).unwrap(); // again: nothing changes
        let (a, b) = (
            std::fs::metadata(cache.path(&d)).unwrap(),
            std::fs::metadata(&dest).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        assert_eq!(b.permissions().mode() & 0o777, 0o444);
        let entries = cache.entries();
        assert_eq!(entries.len(), 1);
        assert!(entries[0].last_used > old);
        assert!(cache.has(&d, 5) && !cache.has(&d, 6));
    }

    #[test]
    fn an_adopted_output_is_cached_only_when_its_bytes_match_the_digest() {
        use sha2::{Digest as _, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::new(&StateDir::new(dir.path()));
        let source = dir.path().join("model.pt");
        std::fs::write(&source, b"weights").unwrap();
        let right = Digest::from_bytes(Sha256::digest(b"weights").into());
        let wrong = Digest::from_bytes(Sha256::digest(b"other").into());
        assert!(!cache.adopt(&wrong, &source).unwrap());
        assert!(!cache.path(&wrong).exists());
        assert!(cache.adopt(&right, &source).unwrap());
        assert!(!cache.adopt(&right, &source).unwrap()); // already there
        assert!(cache.has(&right, 7));
        let meta = std::fs::metadata(cache.path(&right)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o444);
        assert_ne!(meta.ino(), std::fs::metadata(&source).unwrap().ino());
        assert_eq!(cache.entries().len(), 1, "no temporary name left behind");
    }
}
