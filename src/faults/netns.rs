//! A node in a network namespace of its own: everything started in it (an agent, its shims,
//! their jobs) reaches the rest of the machine only through one veth link, which can be cut
//! and restored. Unlike a [`super::FaultProxy`], nothing can route around the cut: endpoints
//! the agent learns later (etcd's advertised client URLs) are behind the same link.
//!
//! Addresses come from 198.18.0.0/15, the range set aside for benchmarking network devices
//! (RFC 2544): each namespace gets a /30 with the host side at `.1` and the namespace side at
//! `.2`. The link exists only on this machine; nothing is routed off it.
//!
//! Needs `ip` (iproute2) and the right to create namespaces and links (root, or
//! CAP_NET_ADMIN). [`available`] says whether this machine allows it and, when not, why, so
//! a caller can skip with that reason instead of passing silently.
//!
//! Caveats: a cut (link down) drops packets without a reset, as a dead route does: open
//! connections stall until their own timeouts fire. Dropping a [`NetNs`] deletes the link and
//! the namespace's name, but processes still inside keep the namespace alive (without a
//! link) until they end: stop them first.

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A namespace could not be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("network namespaces are not available here: {0}")]
    Unavailable(String),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
}

/// Namespaces tried by this process so far (names stay distinct within a run).
static SEQ: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> Result<Output, NetNsError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetNsError::Unavailable(format!("cannot run `ip` (install iproute2): {e}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(NetNsError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether this machine lets this process make namespaces and veth links; `Err` says why not.
pub fn available() -> Result<(), NetNsError> {
    let ns = NetNs::create().map_err(|e| match e {
        NetNsError::Command { command, stderr } => NetNsError::Unavailable(format!(
            "`{command}`: {stderr} (needs root or CAP_NET_ADMIN)"
        )),
        unavailable => unavailable,
    })?;
    drop(ns);
    Ok(())
}

/// A network namespace joined to the host by one veth link.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    /// The veth pair is ours (another process may hold an interface of the name we tried).
    linked: bool,
}

impl NetNs {
    /// Makes a namespace with its loopback up and a veth link to the host, both ends up.
    ///
    /// Interface names and subnets are picked from a hash of this process's id and a counter;
    /// when another process holds the pick (`File exists`), the next one is tried.
    pub fn create() -> Result<NetNs, NetNsError> {
        let mut last = None;
        for _ in 0..16 {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let tag = (std::process::id().wrapping_mul(7919) ^ seq.wrapping_mul(104_729)) % 16384;
            match NetNs::create_as(seq, tag) {
                Ok(ns) => return Ok(ns),
                Err(NetNsError::Command { command, stderr }) if stderr.contains("File exists") => {
                    last = Some(NetNsError::Command { command, stderr });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("16 attempts were made"))
    }

    fn create_as(seq: u32, tag: u32) -> Result<NetNs, NetNsError> {
        // Interface names are at most 15 bytes: `rifth` + 5 digits.
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + tag * 4;
        let mut ns = NetNs {
            name: format!("rift-{}-{seq}", std::process::id()),
            host_if: format!("rifth{tag}"),
            host_ip: Ipv4Addr::from(base + 1),
            ns_ip: Ipv4Addr::from(base + 2),
            linked: false,
        };
        let peer = format!("riftn{tag}");
        run(&["netns", "add", &ns.name])?;
        // From here on, dropping `ns` undoes what was made.
        run(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ns.linked = true;
        run(&["link", "set", &peer, "netns", &ns.name])?;
        run(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ])?;
        run(&["link", "set", &ns.host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            run(&all)
        };
        inside(&["addr", "add", &format!("{}/30", ns.ns_ip), "dev", &peer])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's end of the link: services the namespace must reach listen here.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The namespace's end of the link.
    pub fn ns_ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Cuts the link: every packet either way is dropped until [`NetNs::restore`].
    pub fn cut(&self) -> Result<(), NetNsError> {
        run(&["link", "set", &self.host_if, "down"]).map(drop)
    }

    /// Brings the link back; returns once the host end reports its carrier (both ends up), or
    /// after 5 s.
    pub fn restore(&self) -> Result<(), NetNsError> {
        run(&["link", "set", &self.host_if, "up"])?;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < until {
            let out = run(&["-o", "link", "show", "dev", &self.host_if])?;
            if String::from_utf8_lossy(&out.stdout).contains("LOWER_UP") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the host end deletes the pair.
        if self.linked {
            let _ = run(&["link", "del", &self.host_if]);
        }
        let _ = run(&["netns", "del", &self.name]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_reaches_the_host_until_its_link_is_cut() {
        if let Err(e) = available() {
            eprintln!("SKIPPED a_namespace_reaches_the_host_until_its_link_is_cut: {e}");
            return;
        }
        let ns = NetNs::create().unwrap();
        let listener = std::net::TcpListener::bind((ns.host_ip(), 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let connect = |timeout: &str| {
            ns.command("timeout")
                .args([timeout, "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{}/{port}", ns.host_ip()))
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        };
        // Reachable again within 20 s (tries of 5 s: a loaded machine starts bash slowly).
        let eventually_connects = || {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::time::Instant::now() < until {
                if connect("5") {
                    return true;
                }
            }
            false
        };
        assert!(
            eventually_connects(),
            "the namespace reaches the host over its link"
        );
        ns.cut().unwrap();
        assert!(!connect("2"), "a cut link carries nothing");
        ns.restore().unwrap();
        assert!(
            eventually_connects(),
            "a restored link carries traffic again"
        );
        // The host's loopback is not reachable from inside: there is no way around the link.
        let lo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let lo_port = lo.local_addr().unwrap().port();
        let direct = ns
            .command("timeout")
            .args(["2", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{lo_port}"))
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!direct.success());
    }
}
