//! Process faults: find rift's processes on this machine from the process table — agents,
//! shims, job processes, etcd members — and stop, continue or kill them, as a crashed host, a
//! hung VM, an OOM kill or an operator's `kill -9` would.
//!
//! Processes are found by what their command line names, never by pid files alone: an agent by
//! its `--state-dir`, a shim by its `--dir` under an agent's state directory, an etcd member by
//! its `--data-dir`. Every test and benchmark gives its processes directories of their own, so
//! these never match another run's processes on a shared machine.
//!
//! Guarantees: a zombie is never reported as a process (it can neither run nor be stopped);
//! [`Paused`] continues its process when dropped, so a panicking test never leaves a process
//! stopped for good.
//!
//! Caveat: the process table is read without a lock; a process may end between the read and
//! the signal, in which case [`signal`] reports [`ProcessError::Gone`].

use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A signal could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("process {pid} is gone (it ended before {signal} reached it)")]
    Gone { pid: u32, signal: Signal },
    #[error("cannot send {signal} to process {pid}: {errno} (run as the user that started it)")]
    Denied {
        pid: u32,
        signal: Signal,
        errno: Errno,
    },
}

/// One process from the process table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub argv: Vec<String>,
}

impl Process {
    /// The value after `flag` in the argv (`--state-dir X` or `--state-dir=X`).
    pub fn flag(&self, flag: &str) -> Option<&str> {
        let eq = format!("{flag}=");
        self.argv.iter().enumerate().find_map(|(i, a)| {
            if a == flag {
                self.argv.get(i + 1).map(String::as_str)
            } else {
                a.strip_prefix(&eq)
            }
        })
    }

    /// Whether argv contains `word` as a whole argument.
    pub fn has_arg(&self, word: &str) -> bool {
        self.argv.iter().any(|a| a == word)
    }
}

/// Every live (not zombie) process whose command line can be read.
pub fn processes() -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| is_alive(*pid))
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            if raw.is_empty() {
                return None; // a kernel thread, or a process just ending
            }
            let argv = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some(Process { pid, argv })
        })
        .collect()
}

/// Whether `pid` is a live process (exists and is not a zombie).
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 1..)?;
            rest.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// Whether `pid` is stopped (SIGSTOP: state `T`).
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 1..)?;
            rest.split_whitespace().next().map(|state| state == "T")
        })
        .unwrap_or(false)
}

/// The `rift agent` process whose state directory is `state_dir`.
pub fn agent(state_dir: &Path) -> Option<u32> {
    let dir = state_dir.to_string_lossy();
    processes()
        .into_iter()
        .find(|p| p.has_arg("agent") && p.flag("--state-dir") == Some(dir.as_ref()))
        .map(|p| p.pid)
}

/// Every `rift shim` of the agent whose state directory is `state_dir`, with the job each
/// supervises (the shim's `--dir` is `<state>/jobs/<job>`).
pub fn shims(state_dir: &Path) -> Vec<(String, u32)> {
    let jobs = state_dir.join("jobs");
    processes()
        .into_iter()
        .filter(|p| p.has_arg("shim"))
        .filter_map(|p| {
            let dir = Path::new(p.flag("--dir")?);
            let job = dir.strip_prefix(&jobs).ok()?.to_str()?.to_string();
            Some((job, p.pid))
        })
        .collect()
}

/// The etcd process whose data directory is `data_dir`.
pub fn etcd_member(data_dir: &Path) -> Option<u32> {
    let dir = data_dir.to_string_lossy();
    processes()
        .into_iter()
        .find(|p| p.flag("--data-dir") == Some(dir.as_ref()))
        .map(|p| p.pid)
}

/// Every process whose command line or environment mentions `path`: what an agent with that
/// state directory started (its shims name it, their jobs inherit `RIFT_*` paths below it),
/// for cleaning up after a run.
pub fn mentioning(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let hit = |bytes: &[u8]| String::from_utf8_lossy(bytes).contains(needle.as_str());
    processes()
        .into_iter()
        .filter(|p| {
            p.argv.iter().any(|a| a.contains(needle.as_str()))
                || std::fs::read(format!("/proc/{}/environ", p.pid)).is_ok_and(|e| hit(&e))
        })
        .map(|p| p.pid)
        .collect()
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: Signal) -> Result<(), ProcessError> {
    match kill(Pid::from_raw(pid as i32), signal) {
        Ok(()) => Ok(()),
        Err(Errno::ESRCH) => Err(ProcessError::Gone { pid, signal }),
        Err(errno) => Err(ProcessError::Denied { pid, signal, errno }),
    }
}

/// A process held stopped (SIGSTOP) until [`Paused::resume`] or drop (SIGCONT): a hung VM, a
/// process paused by a debugger, a machine swapping to death.
#[derive(Debug)]
pub struct Paused {
    pid: u32,
    resumed: bool,
}

impl Paused {
    /// Stops `pid` now.
    pub fn stop(pid: u32) -> Result<Paused, ProcessError> {
        signal(pid, Signal::SIGSTOP)?;
        Ok(Paused {
            pid,
            resumed: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Continues the process (it may have ended meanwhile: that is no error).
    pub fn resume(mut self) {
        self.cont();
    }

    fn cont(&mut self) {
        if !self.resumed {
            self.resumed = true;
            let _ = signal(self.pid, Signal::SIGCONT);
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.cont();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < until, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_process_is_found_by_its_flag_and_paused_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // A stand-in with an etcd-like command line (`; :` keeps sh from exec'ing sleep).
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30; :", "x", "--data-dir"])
            .arg(&data)
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_until("found", || etcd_member(&data) == Some(pid));
        let paused = Paused::stop(pid).unwrap();
        wait_until("stopped", || is_stopped(pid));
        drop(paused);
        wait_until("continued", || !is_stopped(pid));
        signal(pid, Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        assert!(!is_alive(pid), "a reaped process is gone");
        assert!(matches!(
            signal(pid, Signal::SIGKILL),
            Err(ProcessError::Gone { .. })
        ));
    }

    #[test]
    fn flags_are_read_with_a_space_or_an_equals_sign() {
        let p = Process {
            pid: 1,
            argv: ["rift", "agent", "--state-dir=/a", "--name", "n"]
                .map(String::from)
                .to_vec(),
        };
        assert_eq!(p.flag("--state-dir"), Some("/a"));
        assert_eq!(p.flag("--name"), Some("n"));
        assert_eq!(p.flag("--port"), None);
        assert!(p.has_arg("agent"));
    }
}
