//! The OpenSSH client that carries one tunnel: its command line, the pinned `known_hosts` it
//! checks the relay against, and what its stderr lines mean.
//!
//! Guarantees:
//! - The relay's host key is checked strictly against the one pinned in the Tunnel and nothing
//!   else: `StrictHostKeyChecking=yes`, a `known_hosts` holding only that key (under a
//!   `HostKeyAlias`, so the address used does not matter), no global known hosts, no user
//!   config (`-F /dev/null`), no host key updates.
//! - The identity file is passed to ssh by path; rift never reads, copies or logs the key.
//! - A dead link is noticed within `ServerAliveInterval × ServerAliveCountMax` (+ one interval)
//!   and a forward that cannot be set up ends ssh (`ExitOnForwardFailure=yes`).
//! - The child never outlives the agent: it is killed when its handle is dropped, and the
//!   kernel sends it SIGTERM when the agent dies (`PR_SET_PDEATHSIG`).
//!
//! Caveat: `PR_SET_PDEATHSIG` fires when the *thread* that spawned ssh exits; ssh is spawned
//! from a tokio worker thread, which lives as long as the agent's runtime.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::api::tunnel::PortForward;

/// Seconds between keepalives to the relay.
pub const ALIVE_INTERVAL_SECS: u32 = 3;
/// Unanswered keepalives before ssh gives up: a dead link is found in about 9-12 s.
pub const ALIVE_COUNT_MAX: u32 = 3;
/// How long the TCP connect and SSH banner exchange may take.
pub const CONNECT_TIMEOUT_SECS: u32 = 5;

/// The stderr line (at `-v`) that says every remote forward was accepted.
const FORWARDS_UP: &str = "forwarding_success: all expected forwarding replies received";

/// One ssh invocation.
#[derive(Clone, Debug)]
pub struct SshInvocation {
    /// The `HostKeyAlias` (and `known_hosts` name) for the relay.
    pub alias: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity_file: PathBuf,
    pub known_hosts: PathBuf,
    pub forwards: Vec<PortForward>,
}

/// The alias the relay's pinned key is filed under.
pub fn host_alias(relay: &str) -> String {
    format!("rift-relay-{relay}")
}

impl SshInvocation {
    /// The arguments after `ssh`.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-F", "/dev/null", "-N", "-T", "-v"]
            .map(String::from)
            .into();
        let opt = |a: &mut Vec<String>, o: String| {
            a.push("-o".into());
            a.push(o);
        };
        opt(&mut a, "BatchMode=yes".into());
        opt(&mut a, "StrictHostKeyChecking=yes".into());
        opt(
            &mut a,
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
        );
        opt(&mut a, "GlobalKnownHostsFile=/dev/null".into());
        opt(&mut a, format!("HostKeyAlias={}", self.alias));
        opt(&mut a, "CheckHostIP=no".into());
        opt(&mut a, "UpdateHostKeys=no".into());
        opt(&mut a, "IdentitiesOnly=yes".into());
        opt(&mut a, "ExitOnForwardFailure=yes".into());
        opt(&mut a, format!("ServerAliveInterval={ALIVE_INTERVAL_SECS}"));
        opt(&mut a, format!("ServerAliveCountMax={ALIVE_COUNT_MAX}"));
        opt(&mut a, format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}"));
        a.push("-i".into());
        a.push(self.identity_file.display().to_string());
        a.push("-p".into());
        a.push(self.port.to_string());
        a.push("-l".into());
        a.push(self.user.clone());
        for f in &self.forwards {
            a.push("-R".into());
            a.push(format!("{}:127.0.0.1:{}", f.remote_port, f.local_port));
        }
        // A host starting with `-` must not be read as an option.
        a.push("--".into());
        a.push(self.host.clone());
        a
    }

    /// Starts ssh with stderr piped (to [`classify`] its lines) and nothing else attached.
    pub fn spawn(&self) -> std::io::Result<Child> {
        let mut cmd = Command::new("ssh");
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C meant for a foreground agent reaches the agent,
            // which then stops ssh itself.
            .process_group(0);
        let parent = nix::unistd::getpid();
        // SAFETY: only async-signal-safe calls (prctl, getppid) run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
                // The agent may have died before the line above: do not run orphaned.
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other("the agent exited"));
                }
                Ok(())
            });
        }
        cmd.spawn()
    }
}

/// The `known_hosts` line pinning `key` (an OpenSSH public key line) for `alias`; a trailing
/// comment on the key is dropped.
pub fn known_hosts_line(alias: &str, key: &str) -> String {
    let mut parts = key.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    format!("{alias} {kind} {body}\n")
}

/// Writes the `known_hosts` file for one relay (replaced atomically; 0600 under the agent's
/// umask).
pub fn write_known_hosts(path: &Path, alias: &str, key: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(known_hosts_line(alias, key).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// What one stderr line of `ssh -v` means to the supervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// Every remote forward is set up: the tunnel is up.
    ForwardsUp,
    /// A line meant for people (not `debug1:`): a candidate for `lastError`.
    Message(String),
    /// Debug chatter.
    Debug,
}

pub fn classify(line: &str) -> Line {
    let line = line.trim_end();
    if line.contains(FORWARDS_UP) {
        Line::ForwardsUp
    } else if line.starts_with("debug") || line.trim().is_empty() || line.starts_with("OpenSSH_") {
        Line::Debug
    } else {
        Line::Message(line.to_string())
    }
}

/// `lastError` from the messages an ssh run printed (oldest first) and how it ended: a host key
/// mismatch is named as such; otherwise the last message, or the exit status.
pub fn explain(messages: &[String], exit: &str) -> String {
    let mismatch = messages.iter().any(|m| {
        m.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || m.contains("Host key verification failed")
            || m.contains("host key is known for")
    });
    if mismatch {
        let detail = messages
            .iter()
            .rev()
            .find(|m| m.contains("Host key for") || m.contains("host key is known for"))
            .or(messages.last())
            .map(String::as_str)
            .unwrap_or("Host key verification failed.");
        return format!(
            "host key mismatch: the relay presented a host key other than the pinned one ({detail})"
        );
    }
    let last = messages
        .iter()
        .rev()
        .find(|m| !m.starts_with("Transferred:") && !m.starts_with("Bytes per second"));
    match last {
        Some(m) => format!("{m} ({exit})"),
        None => exit.to_string(),
    }
}

/// The keepalive settings as a duration: how long a dead link can go unnoticed.
pub fn dead_link_bound() -> Duration {
    Duration::from_secs(u64::from(ALIVE_INTERVAL_SECS * (ALIVE_COUNT_MAX + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> SshInvocation {
        SshInvocation {
            alias: host_alias("r1"),
            host: "100.64.0.7".into(),
            port: 2222,
            user: "rift".into(),
            identity_file: "/etc/rift/id_ed25519".into(),
            known_hosts: "/var/lib/rift/tunnels/t/known_hosts".into(),
            forwards: vec![
                PortForward {
                    remote_port: 18770,
                    local_port: 8770,
                },
                PortForward {
                    remote_port: 2201,
                    local_port: 22,
                },
            ],
        }
    }

    #[test]
    fn the_command_pins_the_host_key_and_detects_dead_links() {
        let args = inv().args().join(" ");
        for part in [
            "-F /dev/null -N -T",
            "-o BatchMode=yes",
            "-o StrictHostKeyChecking=yes",
            "-o UserKnownHostsFile=/var/lib/rift/tunnels/t/known_hosts",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o HostKeyAlias=rift-relay-r1",
            "-o ExitOnForwardFailure=yes",
            "-o ServerAliveInterval=3",
            "-o ServerAliveCountMax=3",
            "-i /etc/rift/id_ed25519",
            "-p 2222 -l rift",
            "-R 18770:127.0.0.1:8770 -R 2201:127.0.0.1:22",
        ] {
            assert!(args.contains(part), "`{part}` not in {args}");
        }
        assert!(args.ends_with("-- 100.64.0.7"), "{args}");
        assert!(!args.contains("StrictHostKeyChecking=no"));
        assert!(dead_link_bound() < Duration::from_secs(15));
    }

    #[test]
    fn known_hosts_holds_only_the_pinned_key_under_the_alias() {
        assert_eq!(
            known_hosts_line("rift-relay-r1", "ssh-ed25519 AAAAC3Nz relay@host"),
            "rift-relay-r1 ssh-ed25519 AAAAC3Nz\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t/known_hosts");
        write_known_hosts(&path, "a", "ssh-ed25519 KEY").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a ssh-ed25519 KEY\n"
        );
    }

    #[test]
    fn stderr_lines_are_classified() {
        assert_eq!(
            classify("debug1: forwarding_success: all expected forwarding replies received"),
            Line::ForwardsUp
        );
        assert_eq!(classify("debug1: Connecting to x"), Line::Debug);
        assert_eq!(classify("OpenSSH_9.2p1 Debian"), Line::Debug);
        assert_eq!(
            classify("ssh: connect to host 127.0.0.2 port 22: Connection refused\n"),
            Line::Message("ssh: connect to host 127.0.0.2 port 22: Connection refused".into())
        );
    }

    #[test]
    fn a_host_key_mismatch_is_named() {
        let msgs: Vec<String> = [
            "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
            "Host key for rift-relay-r1 has changed and you have requested strict checking.",
            "Host key verification failed.",
        ]
        .map(String::from)
        .into();
        let e = explain(&msgs, "exit status 255");
        assert!(e.starts_with("host key mismatch"), "{e}");
        assert!(e.contains("Host key for rift-relay-r1 has changed"), "{e}");
    }

    #[test]
    fn other_failures_keep_the_last_message_and_the_exit() {
        let msgs: Vec<String> = [
            "ssh: connect to host 127.0.0.2 port 22: Connection refused",
            "Transferred: sent 1, received 2 bytes",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            explain(&msgs, "exit status 255"),
            "ssh: connect to host 127.0.0.2 port 22: Connection refused (exit status 255)"
        );
        assert_eq!(explain(&[], "killed by signal 9"), "killed by signal 9");
    }
}
