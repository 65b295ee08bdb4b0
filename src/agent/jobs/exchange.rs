//! Where a job that runs as another user writes `RIFT_PROGRESS_FILE` and `RIFT_RESULT_FILE`.
//!
//! The state directory is private to the agent's user (mode 0700), so a job running as the
//! `runAs` user cannot reach its own attempt directory. The shim gives each such attempt a
//! private directory of its own instead (`$TMPDIR/rift-<job>-<attempt>-XXXXXX`, mode 0700,
//! owned by that user) and copies what the job writes there into the state directory, where
//! the agent reads it as always: the last complete progress line to `progress.jsonl`, the
//! result to `result.json`. It copies every [`SYNC_EVERY`] while the job runs and once more
//! after it ended, before the exit record is written, so the final counters and result are in
//! place when the runner learns of the exit.
//!
//! Guarantees: the shim (root) only copies **regular files owned by the job's user**, opened
//! without following a symlink and without blocking: a job that swaps its files for links to
//! root's files (or a FIFO) gets nothing published, never a root-only file. At most
//! [`MAX_PROGRESS_TAIL`] bytes of progress and [`MAX_RESULT_BYTES`] of result are read.
//! The directory is removed when the attempt ends.
//!
//! Caveat: a job that outlives a SIGKILLed shim is no longer copied from (its output and exit
//! are not captured either then).

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::layout::{JobDir, MAX_PROGRESS_TAIL, MAX_RESULT_BYTES};
use super::run_as::RunAs;

/// How often the job's files are copied while it runs.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

/// One attempt's exchange directory and what was last copied from it.
pub struct Exchange {
    dir: PathBuf,
    uid: u32,
    job: JobDir,
    attempt: u32,
    last_progress: Option<Vec<u8>>,
    last_result: Option<(u64, i64, i64)>,
    last_sync: Option<Instant>,
    /// The last problem printed per file, so a lasting one is printed once.
    last_errors: [Option<String>; 2],
}

impl Exchange {
    /// Creates the directory for attempt `attempt` of `job`, owned by `user`.
    pub fn create(job: &JobDir, attempt: u32, user: &RunAs) -> io::Result<Exchange> {
        let name = job
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let template = std::env::temp_dir().join(format!("rift-{name}-{attempt}-XXXXXX"));
        let dir = nix::unistd::mkdtemp(&template)?;
        // mkdtemp makes it 0700; the owner becomes the job's user.
        nix::unistd::chown(&dir, Some(user.uid), Some(user.gid))?;
        Ok(Exchange {
            dir,
            uid: user.uid.as_raw(),
            job: job.clone(),
            attempt,
            last_progress: None,
            last_result: None,
            last_sync: None,
            last_errors: [None, None],
        })
    }

    pub fn progress_file(&self) -> PathBuf {
        self.dir.join("progress.jsonl")
    }

    pub fn result_file(&self) -> PathBuf {
        self.dir.join("result.json")
    }

    /// Copies what changed, at most every [`SYNC_EVERY`].
    pub fn sync_due(&mut self) {
        if self.last_sync.is_none_or(|t| t.elapsed() >= SYNC_EVERY) {
            self.sync();
        }
    }

    /// Copies what changed into the state directory now. Problems are printed to the shim's
    /// own log (never a file's contents), each once until it changes.
    pub fn sync(&mut self) {
        self.last_sync = Some(Instant::now());
        let outcomes = [
            ("progress", self.sync_progress()),
            ("result", self.sync_result()),
        ];
        for (i, (what, outcome)) in outcomes.into_iter().enumerate() {
            let problem = outcome.err().map(|e| e.to_string());
            if problem.is_some() && problem != self.last_errors[i] {
                eprintln!(
                    "rift shim: {what} file: {}",
                    problem.as_deref().unwrap_or("")
                );
            }
            self.last_errors[i] = problem;
        }
    }

    fn sync_progress(&mut self) -> io::Result<()> {
        let Some(mut f) = open_owned(&self.progress_file(), self.uid)? else {
            return Ok(());
        };
        let len = f.metadata()?.len();
        let from = len.saturating_sub(MAX_PROGRESS_TAIL);
        f.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        f.take(MAX_PROGRESS_TAIL).read_to_end(&mut tail)?;
        let Some(line) = last_complete_line(&tail) else {
            return Ok(());
        };
        if self.last_progress.as_deref() == Some(line) {
            return Ok(());
        }
        let mut out = line.to_vec();
        out.push(b'\n');
        write_atomic(&self.job.progress(self.attempt), &out)?;
        self.last_progress = Some(line.to_vec());
        Ok(())
    }

    fn sync_result(&mut self) -> io::Result<()> {
        let Some(f) = open_owned(&self.result_file(), self.uid)? else {
            return Ok(());
        };
        let m = f.metadata()?;
        let stamp = (m.len(), m.mtime(), m.mtime_nsec());
        if self.last_result == Some(stamp) {
            return Ok(());
        }
        if m.len() > MAX_RESULT_BYTES {
            self.last_result = Some(stamp);
            return Err(io::Error::other(format!(
                "{} bytes; the limit is {MAX_RESULT_BYTES}: not published",
                m.len()
            )));
        }
        let mut bytes = Vec::new();
        f.take(MAX_RESULT_BYTES).read_to_end(&mut bytes)?;
        write_atomic(&self.job.result(), &bytes)?;
        self.last_result = Some(stamp);
        Ok(())
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // remove_dir_all does not follow symlinks the job may have left inside.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens `path` for reading if it is a regular file owned by `uid`; `None` when absent.
/// Never follows a symlink at `path` and never blocks on a FIFO.
fn open_owned(path: &Path, uid: u32) -> io::Result<Option<std::fs::File>> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path);
    let refused = || {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not a regular file owned by the job's user; ignored",
        )
    };
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // O_NOFOLLOW on a symlink.
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return Err(refused()),
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    if !m.is_file() || m.uid() != uid {
        return Err(refused());
    }
    Ok(Some(f))
}

/// The last newline-terminated, non-blank line of `tail`, without its newline.
fn last_complete_line(tail: &[u8]) -> Option<&[u8]> {
    let end = tail.iter().rposition(|b| *b == b'\n')?;
    tail[..end]
        .split(|b| *b == b'\n')
        .rev()
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_complete_line_is_found_and_a_partial_one_ignored() {
        assert_eq!(
            last_complete_line(b"{\"a\":1}\n{\"a\":2}\n{\"a\":3"),
            Some(&b"{\"a\":2}"[..])
        );
        assert_eq!(
            last_complete_line(b"{\"a\":1}\n\n  \n"),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(last_complete_line(b"partial"), None);
        assert_eq!(last_complete_line(b""), None);
    }

    #[test]
    fn only_regular_files_of_the_users_own_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::Uid::effective().as_raw();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(open_owned(&file, me).unwrap().is_some());
        assert!(open_owned(&dir.path().join("absent"), me)
            .unwrap()
            .is_none());
        // Someone else's file, a symlink to our own, a FIFO: refused, without blocking.
        assert!(open_owned(&file, me + 1).is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(open_owned(&link, me).is_err());
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(open_owned(&fifo, me).is_err());
    }
}
