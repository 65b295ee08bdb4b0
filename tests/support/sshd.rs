//! A real OpenSSH server on a loopback address, as a relay for tunnel tests: its own host key
//! and authorized_keys in a temp dir, run in the foreground (`sshd -D -e -f <config>`) with
//! `GatewayPorts yes`, so a reverse forward listens on every address (peers reach
//! `relay-host:remote-port`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where Debian's openssh-server puts sshd (it must be run by absolute path).
pub const SSHD: &str = "/usr/sbin/sshd";

/// Generates an ed25519 key pair at `path` (no passphrase); returns the public key line.
pub fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "rift-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

/// The key pair a tunnel logs in with.
pub struct ClientKey {
    pub path: PathBuf,
    pub public: String,
    _dir: tempfile::TempDir,
}

impl ClientKey {
    pub fn new() -> ClientKey {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519");
        let public = keygen(&path);
        ClientKey {
            path,
            public,
            _dir: dir,
        }
    }
}

/// The user tests run as (sshd logs in as the same user).
pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One sshd relay; stopped (with its sessions) on drop.
pub struct Sshd {
    pub host: String,
    pub port: u16,
    /// The server's host key line (`ssh-ed25519 AAAA...`), to pin.
    pub host_key: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Sshd {
    /// Starts sshd on `host:port` accepting `client`'s key, and waits until it accepts.
    pub fn start(host: &str, port: u16, client: &ClientKey) -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let host_key = keygen(&d.join("host_key"));
        std::fs::write(d.join("authorized_keys"), format!("{}\n", client.public)).unwrap();
        let config = format!(
            "Port {port}\nListenAddress {host}\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin yes\n\
             AllowTcpForwarding yes\nGatewayPorts yes\nClientAliveInterval 3\n\
             ClientAliveCountMax 3\nLogLevel VERBOSE\n",
            hk = d.join("host_key").display(),
            ak = d.join("authorized_keys").display(),
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        // The privilege separation directory Debian's sshd insists on.
        let _ = std::fs::create_dir_all("/run/sshd");
        let mut s = Sshd {
            host: host.into(),
            port,
            host_key,
            dir,
            child: None,
        };
        s.start_again();
        s
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("sshd_config")
    }

    /// The server's log (connections, authentications, forwards).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// How many connections the server has accepted so far.
    pub fn connections(&self) -> usize {
        self.log().matches("Connection from").count()
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "sshd already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sshd.log"))
            .unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(self.config())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd starts (is openssh-server installed? scripts/install-deps.sh --test)");
        self.child = Some(child);
        let start = Instant::now();
        let addr = format!("{}:{}", self.host, self.port);
        while std::net::TcpStream::connect_timeout(
            &addr.parse().unwrap(),
            Duration::from_millis(200),
        )
        .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd did not start listening on {addr}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The listener and every session process below it.
    pub fn pids(&self) -> Vec<i32> {
        match &self.child {
            Some(c) => {
                let mut all = vec![c.id() as i32];
                all.extend(descendants(c.id() as i32));
                all
            }
            None => vec![],
        }
    }

    /// Stops the server and all its sessions (SIGKILL): the relay is gone.
    pub fn stop(&mut self) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Freezes the server and its sessions (SIGSTOP): connections stay open but nothing
    /// answers, as with a relay that hangs or a link that silently drops packets.
    pub fn freeze(&self) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
        }
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.thaw();
        self.stop();
    }
}

/// Every process whose parent chain leads to `root` (sshd sessions call setsid, so their
/// process group is their own).
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parent_of.push((pid, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

/// Pids of `ssh` client processes whose command line mentions `needle` (e.g. an agent's state
/// directory, where the tunnel's known_hosts lives).
pub fn ssh_clients_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.to_string_lossy().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ssh = args
            .first()
            .is_some_and(|a| a == "ssh" || a.ends_with("/ssh"));
        if is_ssh
            && args.iter().any(|a| a.contains(&needle))
            && super::agent::process_alive(pid as u32)
        {
            out.push(pid);
        }
    }
    out
}
