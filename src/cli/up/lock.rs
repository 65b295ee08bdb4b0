//! One `rift up` per state directory: an exclusive `flock` on `<state>/up.pid`, held for the
//! life of the process, with the holder's pid written inside for the message a second
//! `rift up` prints.
//!
//! The kernel drops the lock when the process ends however it ends (SIGKILL included), so a
//! crashed `rift up` never leaves a stale lock; the pid file's content is only informational.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Why the state directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "rift up is already running on {dir} (pid {pid}); stop it (Ctrl-C in its terminal, or \
         `kill {pid}`), or use another --state-dir"
    )]
    Held { dir: String, pid: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The held lock; released when dropped or when the process ends.
#[derive(Debug)]
pub struct StateLock {
    _file: Flock<File>,
}

/// The pid file inside `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("up.pid")
}

/// Takes the state directory for this process, or says who holds it.
pub fn take(state_dir: &Path) -> Result<StateLock, LockError> {
    let path = path(state_dir);
    let io = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Held {
                dir: state_dir.display().to_string(),
                pid: if pid.is_empty() { "unknown" } else { pid }.to_string(),
            });
        }
        Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
    };
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    Ok(StateLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = take(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in this process
        // conflicts exactly as another process's would.
        match take(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        assert!(take(dir.path()).is_ok());
    }
}
