//! The local `etcd` process: its command line, starting it in its own process group (so a
//! Ctrl-C in the agent's terminal or a `systemctl restart` of the agent does not take it
//! down), adopting it again after an agent restart, and stopping it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::decide::StartMode;
use crate::agent::jobs::layout::{read_json, write_json, ProcRecord};
use crate::agent::jobs::procs;

/// How many set-aside data directories of removed members are kept.
pub const KEEP_SET_ASIDE: usize = 3;

/// Where the member keeps its files: `<state>/etcd/{data/, member.json, etcd.log}`.
#[derive(Clone, Debug)]
pub struct MemberDir {
    root: PathBuf,
}

impl MemberDir {
    pub fn new(state_dir: &Path) -> Self {
        MemberDir {
            root: state_dir.join("etcd"),
        }
    }
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    pub fn record(&self) -> PathBuf {
        self.root.join("member.json")
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("etcd.log")
    }
    /// The data directory holds a member: its write-ahead log has a segment. (etcd creates
    /// `member/snap/db` before it validates a join, so `member/` alone proves nothing.)
    pub fn has_data(&self) -> bool {
        std::fs::read_dir(self.data().join("member/wal")).is_ok_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wal")))
        })
    }
    /// Moves the data directory to `data.removed-<unix time>` (after the member was removed):
    /// never deleted at once, in case the removal was a mistake. The newest
    /// [`KEEP_SET_ASIDE`] copies are kept; older ones are deleted. Returns where it went.
    pub fn set_aside(&self) -> std::io::Result<PathBuf> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut kept = self.root.join(format!("data.removed-{secs}"));
        let mut n = 1;
        while kept.exists() {
            kept = self.root.join(format!("data.removed-{secs}.{n}"));
            n += 1;
        }
        match std::fs::rename(self.data(), &kept) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut copies: Vec<(u64, u64, PathBuf)> = std::fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let stamp = name.strip_prefix("data.removed-")?;
                        let (secs, n) = stamp.split_once('.').unwrap_or((stamp, "0"));
                        Some((secs.parse().ok()?, n.parse().ok()?, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        copies.sort();
        let excess = copies.len().saturating_sub(KEEP_SET_ASIDE);
        for (_, _, old) in copies.into_iter().take(excess) {
            std::fs::remove_dir_all(old)?;
        }
        Ok(kept)
    }
    /// Removes a data directory that holds no member (what a failed start or join left: no
    /// write-ahead log), so etcd starts clean. Copies set aside earlier are never touched: a
    /// failed rejoin must not cost the data of the member that was removed before it.
    pub fn set_aside_partial(&self) -> std::io::Result<()> {
        if self.data().exists() && !self.has_data() {
            std::fs::remove_dir_all(self.data())?;
        }
        Ok(())
    }
    /// `<root>/cluster.json`: the cluster this state directory joined.
    fn cluster_record(&self) -> PathBuf {
        self.root.join("cluster.json")
    }
    pub fn cluster_id(&self) -> Option<u64> {
        let v: serde_json::Value = read_json(&self.cluster_record()).ok().flatten()?;
        u64::from_str_radix(v["clusterId"].as_str()?, 16).ok()
    }
    pub fn write_cluster_id(&self, id: u64) -> std::io::Result<()> {
        write_json(
            &self.cluster_record(),
            &serde_json::json!({"clusterId": format!("{id:x}")}),
        )
    }
}

/// The member's certificates (under `<state>/pki/`): client and peer TLS, both requiring a
/// certificate of the cluster CA; peers must be `etcd-peer`.
#[derive(Clone, Debug)]
pub struct MemberTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
}

impl MemberTls {
    pub fn in_dir(pki: &crate::pki::PkiDir) -> MemberTls {
        use crate::pki::dir::LeafFile;
        MemberTls {
            ca: pki.ca_cert(),
            server_cert: pki.cert(LeafFile::EtcdServer),
            server_key: pki.key(LeafFile::EtcdServer),
            peer_cert: pki.cert(LeafFile::EtcdPeer),
            peer_key: pki.key(LeafFile::EtcdPeer),
        }
    }

    /// etcd's TLS flags for these files.
    pub fn args(&self) -> Vec<String> {
        let p = |path: &PathBuf| path.display().to_string();
        vec![
            "--cert-file".into(),
            p(&self.server_cert),
            "--key-file".into(),
            p(&self.server_key),
            "--trusted-ca-file".into(),
            p(&self.ca),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            p(&self.peer_cert),
            "--peer-key-file".into(),
            p(&self.peer_key),
            "--peer-trusted-ca-file".into(),
            p(&self.ca),
            "--peer-client-cert-auth".into(),
            "--peer-cert-allowed-cn".into(),
            crate::pki::names::ETCD_PEER_CN.into(),
        ]
    }
}

/// Everything the command line needs.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub name: String,
    pub binary: PathBuf,
    pub dir: MemberDir,
    pub peer_url: String,
    pub client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub listen_client_urls: Vec<String>,
    /// TLS on both ports (`None`: a plaintext cluster).
    pub tls: Option<MemberTls>,
    /// `http://127.0.0.1:<port>` for `/metrics` and `/health`, when configured.
    pub metrics_url: Option<String>,
    pub extra_args: Vec<String>,
    /// `GOGC` for the process.
    pub gogc: u32,
    /// `GOMEMLIMIT` for the process, in MiB (`None`: none).
    pub memory_limit_mib: Option<u64>,
}

impl MemberSpec {
    /// The Go runtime settings the member runs with (`GOGC`, and `GOMEMLIMIT` when limited).
    pub fn go_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("GOGC", self.gogc.to_string())];
        if let Some(mib) = self.memory_limit_mib {
            env.push(("GOMEMLIMIT", format!("{mib}MiB")));
        }
        env
    }
}

/// The etcd arguments for starting in `mode`.
pub fn args(spec: &MemberSpec, mode: &StartMode) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--name".into(),
        spec.name.clone(),
        "--data-dir".into(),
        spec.dir.data().display().to_string(),
        "--listen-client-urls".into(),
        spec.listen_client_urls.join(","),
        "--advertise-client-urls".into(),
        spec.client_urls.join(","),
        "--listen-peer-urls".into(),
        spec.listen_peer_urls.join(","),
        "--initial-advertise-peer-urls".into(),
        spec.peer_url.clone(),
        // `rift apply` writes a whole manifest set in one transaction.
        "--max-txn-ops".into(),
        "10000".into(),
        "--auto-compaction-mode".into(),
        "periodic".into(),
        "--auto-compaction-retention".into(),
        "1h".into(),
        // etcd's default, stated: it refuses a membership change that would lose quorum.
        "--strict-reconfig-check".into(),
        "--logger".into(),
        "zap".into(),
        "--log-outputs".into(),
        spec.dir.log().display().to_string(),
    ];
    if let Some(tls) = &spec.tls {
        a.extend(tls.args());
    }
    if let Some(url) = &spec.metrics_url {
        a.extend(["--listen-metrics-urls".into(), url.clone()]);
    }
    let cluster = match mode {
        StartMode::FromData => None,
        StartMode::New => Some((vec![(spec.name.clone(), spec.peer_url.clone())], "new")),
        StartMode::Join { cluster } => Some((cluster.clone(), "existing")),
    };
    if let Some((members, state)) = cluster {
        let joined: Vec<String> = members.iter().map(|(n, u)| format!("{n}={u}")).collect();
        a.extend([
            "--initial-cluster".into(),
            joined.join(","),
            "--initial-cluster-state".into(),
            state.into(),
        ]);
    }
    a.extend(spec.extra_args.iter().cloned());
    a
}

/// A running member process: started by this agent (`child` kept to reap it) or adopted.
pub struct MemberProcess {
    pub record: ProcRecord,
    child: Option<tokio::process::Child>,
}

impl MemberProcess {
    /// Starts etcd in its own process group, output appended to the member's log.
    pub fn spawn(spec: &MemberSpec, mode: &StartMode) -> std::io::Result<MemberProcess> {
        std::fs::create_dir_all(spec.dir.data().parent().expect("data has a parent"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.dir.log())?;
        let child = tokio::process::Command::new(&spec.binary)
            .args(args(spec, mode))
            .envs(spec.go_env())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        let pid = child.id().unwrap_or_default();
        let record = procs::record(pid).ok_or_else(|| {
            std::io::Error::other(format!("etcd (pid {pid}) exited at once; see its log"))
        })?;
        write_json(&spec.dir.record(), &record)?;
        Ok(MemberProcess {
            record,
            child: Some(child),
        })
    }

    /// The member a previous agent started, if it still runs.
    pub fn adopt(dir: &MemberDir) -> Option<MemberProcess> {
        let record: ProcRecord = read_json(&dir.record()).ok().flatten()?;
        procs::is_alive(&record).then_some(MemberProcess {
            record,
            child: None,
        })
    }

    /// Whether the process was started with client-certificate TLS (read from its command
    /// line): a member adopted from before the cluster moved to TLS was not.
    pub fn runs_tls(&self) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", self.record.pid))
            .map(|c| c.split(|b| *b == 0).any(|arg| arg == b"--client-cert-auth"))
            .unwrap_or(false)
    }

    /// True while the process runs (a child that exited is reaped here).
    pub fn is_running(&mut self) -> bool {
        if let Some(child) = &mut self.child {
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
        }
        procs::is_alive(&self.record)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if !self.is_running() {
            return;
        }
        procs::signal(self.record.pid, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while self.is_running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.is_running() {
            procs::signal(self.record.pid, Signal::SIGKILL);
            while self.is_running() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// `binary` itself if it names a path, else its first match on `PATH`.
pub fn find_binary(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(binary))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MemberSpec {
        MemberSpec {
            name: "a".into(),
            binary: "etcd".into(),
            dir: MemberDir::new(Path::new("/s")),
            peer_url: "http://10.0.0.1:2380".into(),
            client_urls: vec!["http://10.0.0.1:2379".into(), "http://1.2.3.4:2379".into()],
            listen_peer_urls: vec!["http://0.0.0.0:2380".into()],
            listen_client_urls: vec!["http://0.0.0.0:2379".into()],
            tls: None,
            metrics_url: None,
            extra_args: vec!["--heartbeat-interval".into(), "200".into()],
            gogc: 400,
            memory_limit_mib: Some(2048),
        }
    }

    #[test]
    fn the_member_runs_with_its_gc_target_and_memory_limit() {
        let mut s = spec();
        assert_eq!(
            s.go_env(),
            vec![
                ("GOGC", "400".to_string()),
                ("GOMEMLIMIT", "2048MiB".to_string())
            ]
        );
        s.memory_limit_mib = None;
        assert_eq!(s.go_env(), vec![("GOGC", "400".to_string())]);
    }

    fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).map(String::as_str)
    }

    /// A data directory holding a member (a write-ahead log segment), marked with `tag`.
    fn member_data(dir: &MemberDir, tag: &str) {
        std::fs::create_dir_all(dir.data().join("member/wal")).unwrap();
        std::fs::write(dir.data().join("member/wal/0.wal"), tag).unwrap();
    }

    fn set_aside_tags(dir: &MemberDir) -> Vec<String> {
        let mut tags: Vec<String> = std::fs::read_dir(&dir.root)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("data.removed-"))
            .map(|e| std::fs::read_to_string(e.path().join("member/wal/0.wal")).unwrap())
            .collect();
        tags.sort();
        tags
    }

    #[test]
    fn a_failed_rejoin_never_costs_the_data_set_aside_before_it() {
        let state = tempfile::tempdir().unwrap();
        let dir = MemberDir::new(state.path());
        member_data(&dir, "first");
        dir.set_aside().unwrap();
        // A rejoin that failed before it wrote a log: its leftovers go, the copy stays.
        std::fs::create_dir_all(dir.data().join("member/snap")).unwrap();
        dir.set_aside_partial().unwrap();
        assert!(!dir.data().exists());
        assert_eq!(set_aside_tags(&dir), ["first"]);
        // Removed again and again (within the same second, too): the newest copies stay.
        for tag in ["second", "third", "fourth"] {
            member_data(&dir, tag);
            dir.set_aside().unwrap();
        }
        assert_eq!(set_aside_tags(&dir).len(), KEEP_SET_ASIDE);
        assert!(!set_aside_tags(&dir).contains(&"first".to_string()));
        assert!(set_aside_tags(&dir).contains(&"fourth".to_string()));
    }

    #[test]
    fn a_restart_from_data_passes_no_initial_cluster() {
        let a = args(&spec(), &StartMode::FromData);
        assert_eq!(value(&a, "--data-dir"), Some("/s/etcd/data"));
        assert_eq!(
            value(&a, "--advertise-client-urls"),
            Some("http://10.0.0.1:2379,http://1.2.3.4:2379")
        );
        assert!(value(&a, "--initial-cluster").is_none());
        assert_eq!(a[a.len() - 2..], ["--heartbeat-interval", "200"]);
    }

    #[test]
    fn new_and_join_name_the_initial_cluster_and_its_state() {
        let a = args(&spec(), &StartMode::New);
        assert_eq!(
            value(&a, "--initial-cluster"),
            Some("a=http://10.0.0.1:2380")
        );
        assert_eq!(value(&a, "--initial-cluster-state"), Some("new"));
        let cluster = vec![
            ("b".into(), "http://10.0.0.2:2380".into()),
            ("a".into(), "http://10.0.0.1:2380".into()),
        ];
        let a = args(&spec(), &StartMode::Join { cluster });
        assert_eq!(
            value(&a, "--initial-cluster"),
            Some("b=http://10.0.0.2:2380,a=http://10.0.0.1:2380")
        );
        assert_eq!(value(&a, "--initial-cluster-state"), Some("existing"));
    }

    #[test]
    fn a_tls_member_requires_client_certificates_on_both_ports() {
        let mut s = spec();
        s.tls = Some(MemberTls::in_dir(&crate::pki::PkiDir::new(Path::new("/s"))));
        s.metrics_url = Some("http://127.0.0.1:2381".into());
        let a = args(&s, &StartMode::FromData);
        assert!(a.contains(&"--client-cert-auth".to_string()));
        assert!(a.contains(&"--peer-client-cert-auth".to_string()));
        assert_eq!(value(&a, "--cert-file"), Some("/s/pki/etcd-server.crt"));
        assert_eq!(value(&a, "--peer-cert-allowed-cn"), Some("etcd-peer"));
        assert_eq!(
            value(&a, "--listen-metrics-urls"),
            Some("http://127.0.0.1:2381")
        );
        // Extra arguments still come last, so they can override.
        assert_eq!(a[a.len() - 2..], ["--heartbeat-interval", "200"]);
    }

    #[test]
    fn binaries_are_found_on_path_or_by_path() {
        assert!(find_binary(Path::new("sh")).is_some());
        assert!(find_binary(Path::new("/bin/sh")).is_some());
        assert!(find_binary(Path::new("no-such-binary-rift")).is_none());
        assert!(find_binary(Path::new("/nonexistent/etcd")).is_none());
    }
}
