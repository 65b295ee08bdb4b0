//! Process identity on Linux: a pid is only "the same process" if its start time matches, so a
//! pid reused after a reboot or a wrap-around is never adopted or signalled.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::layout::ProcRecord;

/// The start time (clock ticks since boot) of `pid`, or `None` if no such process exists.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces and parentheses).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `state` is field 3 of stat, index 0 here; `starttime` is field 22, index 19.
    if fields.first() == Some(&"Z") {
        return None; // a zombie has finished
    }
    fields.get(19)?.parse().ok()
}

/// True when the recorded process is still running (same pid, same start time).
pub fn is_alive(rec: &ProcRecord) -> bool {
    start_ticks(rec.pid) == Some(rec.start_ticks)
}

/// The record of a process by pid, if it exists.
pub fn record(pid: u32) -> Option<ProcRecord> {
    Some(ProcRecord {
        pid,
        start_ticks: start_ticks(pid)?,
        started_at: Some(chrono::Utc::now()),
    })
}

/// Signals the process group led by `pid`; a group that is gone is not an error.
pub fn signal_group(pid: u32, sig: Signal) {
    if let Err(e) = killpg(Pid::from_raw(pid as i32), sig) {
        if e != nix::errno::Errno::ESRCH {
            tracing::warn!(pid, ?sig, %e, "could not signal process group");
        }
    }
}

/// Signals one process.
pub fn signal(pid: u32, sig: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_different_start_time_is_not() {
        let me = record(std::process::id()).unwrap();
        assert!(is_alive(&me));
        let reused = ProcRecord {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(
            !is_alive(&reused),
            "a pid with another start time is another process"
        );
        assert!(start_ticks(u32::MAX / 2).is_none());
    }
}
