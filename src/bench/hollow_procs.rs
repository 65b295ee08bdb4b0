//! Where a bench's hollow nodes run: in the bench process ([`Cluster`]), or in K `rift sim`
//! child processes ([`HollowProcesses`], `--hollow-processes K`), so the load generator's CPU
//! is measured apart from the bench's applier and watch and from the control plane.
//!
//! The children are plain `rift sim` (the one way to run hollow nodes), each with
//! `nodes / K` nodes (numbered on from the previous child's, one prefix for all), its own state
//! directory on tmpfs under the bench's, and the bench's own credentials (etcd `root` over TLS,
//! written to a 0600 file in the bench's directory, or plaintext).
//!
//! Guarantee: no child outlives the bench. Each runs with `--exit-with-stdin` and its stdin is a
//! pipe the bench holds, so it ends when the bench ends, by SIGKILL too (the kernel closes the
//! pipe); dropping [`HollowProcesses`] also SIGKILLs and reaps every child.

use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::env::{self, LocalEtcd, Proc};
use super::BenchError;
use crate::sim::{Cluster, HollowSettings};
use crate::store::Store;

/// The prefix of every hollow node a bench starts (`hollow-00000`..).
pub const PREFIX: &str = "hollow";

/// The hollow nodes of one bench run, wherever they run.
pub enum HollowNodes {
    /// In the bench process.
    InBench(Box<Cluster>),
    /// In `rift sim` children.
    Processes(HollowProcesses),
}

impl HollowNodes {
    /// Starts `nodes` hollow nodes, in the bench process when `processes` is 0, else in
    /// `processes` children, and waits (with progress on stderr) until every one is alive.
    /// Returns them and the seconds that took.
    pub async fn start(
        etcd: &LocalEtcd,
        store: &Store,
        nodes: usize,
        processes: usize,
        settings: HollowSettings,
        dir: &Path,
        limit: Duration,
    ) -> Result<(HollowNodes, f64), BenchError> {
        if processes == 0 {
            let (cluster, s) =
                super::schedule::hollow(&etcd.access, nodes, settings, dir, limit).await?;
            return Ok((HollowNodes::InBench(Box::new(cluster)), s));
        }
        let (p, s) =
            HollowProcesses::start(etcd, store, nodes, processes, &settings, dir, limit).await?;
        Ok((HollowNodes::Processes(p), s))
    }

    /// The children's process ids (none when the nodes run in the bench).
    pub fn pids(&self) -> Vec<u32> {
        match self {
            HollowNodes::InBench(_) => Vec::new(),
            HollowNodes::Processes(p) => p.pids(),
        }
    }

    /// Ends every node as a crash (leases left to expire) and removes their state.
    pub async fn crash(self) {
        match self {
            HollowNodes::InBench(c) => (*c).crash().await,
            HollowNodes::Processes(p) => p.stop().await,
        }
    }
}

/// CPU seconds (user + system) used so far by `pids`, summed; gone processes count 0.
pub fn cpu_seconds_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| env::cpu_seconds(*p)).sum()
}

/// Resident memory of `pids` in MiB, summed.
pub fn rss_mib_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| env::rss_mib(*p)).sum()
}

struct Child {
    proc: Proc,
    /// The pipe whose closing ends the child (see the module's guarantee).
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

/// Hollow nodes in `rift sim` children of this process; see the module's guarantee.
pub struct HollowProcesses {
    children: Vec<Child>,
}

impl HollowProcesses {
    /// Starts `processes` children sharing `nodes` hollow nodes and waits until all are alive.
    pub async fn start(
        etcd: &LocalEtcd,
        store: &Store,
        nodes: usize,
        processes: usize,
        settings: &HollowSettings,
        dir: &Path,
        limit: Duration,
    ) -> Result<(HollowProcesses, f64), BenchError> {
        let started = Instant::now();
        let root = dir.join("hollow-processes");
        std::fs::create_dir_all(&root).map_err(|e| BenchError::io(&root, e))?;
        let credentials = match &etcd.trust {
            Some(trust) => {
                let id = trust
                    .admin()
                    .map_err(|e| BenchError::Setup(e.to_string()))?;
                let path = root.join("admin.conf");
                crate::pki::credentials::Credentials {
                    endpoints: vec![etcd.endpoint.clone()],
                    ca: id.ca_pem,
                    cert: id.cert_pem,
                    key: id.key_pem,
                }
                .save(&path)
                .map_err(|e| BenchError::Setup(e.to_string()))?;
                Some(path)
            }
            None => None,
        };
        let exe = std::env::current_exe().map_err(|e| BenchError::Setup(e.to_string()))?;
        let mut children = Vec::with_capacity(processes);
        for (i, range) in shares(nodes, processes).into_iter().enumerate() {
            if range.is_empty() {
                continue;
            }
            let log = root.join(format!("sim-{i}.log"));
            let out = std::fs::File::create(&log).map_err(|e| BenchError::io(&log, e))?;
            let err = out.try_clone().map_err(|e| BenchError::io(&log, e))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("sim")
                .args(["--nodes", &range.len().to_string()])
                .args(["--first", &range.start.to_string()])
                .args(["--prefix", PREFIX])
                // One bench-wide wave, shared out: as many nodes register at once as in the
                // bench process.
                .args([
                    "--wave",
                    &(super::schedule::WAVE / processes).max(1).to_string(),
                ])
                .args(["--gpus-per-node", &settings.gpus.to_string()])
                .args(["--job-duration", &millis(settings.behaviour.duration)])
                .args(["--exit-code", &settings.behaviour.exit_code.to_string()])
                .args([
                    "--progress-every",
                    &millis(settings.behaviour.progress_every),
                ])
                .args([
                    "--node-lease-ttl",
                    &settings.node_lease_ttl.as_secs().max(1).to_string(),
                ])
                .args(staging_args(settings))
                .arg("--state-dir")
                .arg(root.join(format!("state-{i}")))
                .arg("--exit-with-stdin")
                .env("RIFT_ENDPOINTS", &etcd.endpoint)
                .env_remove("RIFT_LOG")
                .stdin(Stdio::piped())
                .stdout(out)
                .stderr(err);
            match &credentials {
                Some(path) => cmd.env("RIFT_CONFIG", path).env_remove("RIFT_INSECURE"),
                None => cmd.env("RIFT_INSECURE", "1").env_remove("RIFT_CONFIG"),
            };
            let mut child = cmd
                .spawn()
                .map_err(|e| BenchError::Setup(format!("cannot start rift sim: {e}")))?;
            let stdin = child.stdin.take();
            children.push(Child {
                proc: Proc { child },
                stdin,
                log,
            });
        }
        let mut procs = HollowProcesses { children };
        procs.wait_alive(store, nodes, started, limit).await?;
        Ok((procs, started.elapsed().as_secs_f64()))
    }

    /// Waits until `nodes` hollow nodes are alive, printing progress every 5 s; fails at once
    /// when a child exits, with the end of its log.
    async fn wait_alive(
        &mut self,
        store: &Store,
        nodes: usize,
        started: Instant,
        limit: Duration,
    ) -> Result<(), BenchError> {
        let mut alive = 0;
        let mut shown = Instant::now();
        while alive < nodes {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for c in &mut self.children {
                if let Ok(Some(status)) = c.proc.child.try_wait() {
                    return Err(BenchError::Setup(format!(
                        "rift sim exited ({status}) before its nodes were alive; the end of {}:\n{}",
                        c.log.display(),
                        env::log_tail(&c.log, 2000)
                    )));
                }
            }
            // A slow answer while thousands register is no failure: ask again.
            if let Ok(names) = crate::store::compose::alive_nodes(store).await {
                alive = names
                    .iter()
                    .filter(|n| n.strip_prefix(PREFIX).is_some_and(|r| r.starts_with('-')))
                    .count();
            }
            if shown.elapsed() >= Duration::from_secs(5) {
                eprintln!(
                    "rift bench: {alive} of {nodes} hollow nodes alive in {} processes ({:.0} s)",
                    self.children.len(),
                    started.elapsed().as_secs_f64()
                );
                shown = Instant::now();
            }
            if started.elapsed() > limit {
                return Err(BenchError::Timeout(format!(
                    "{alive} of {nodes} hollow nodes alive after {} s (logs: {})",
                    limit.as_secs(),
                    self.children
                        .first()
                        .and_then(|c| c.log.parent())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.proc.pid()).collect()
    }

    /// Closes every child's stdin (each ends its nodes as crashes and removes its state) and
    /// waits up to 30 s for them; one still running then is SIGKILLed (on drop).
    pub async fn stop(mut self) {
        for c in &mut self.children {
            c.stdin.take();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && self
                .children
                .iter_mut()
                .any(|c| matches!(c.proc.child.try_wait(), Ok(None)))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `nodes` split into `processes` consecutive ranges whose sizes differ by at most one.
pub fn shares(nodes: usize, processes: usize) -> Vec<std::ops::Range<usize>> {
    let processes = processes.max(1);
    let (each, extra) = (nodes / processes, nodes % processes);
    let mut start = 0;
    (0..processes)
        .map(|i| {
            let len = each + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// `rift sim`'s simulated-staging flags for `settings` (whole MiB).
fn staging_args(settings: &HollowSettings) -> Vec<String> {
    match settings.staging {
        Some(m) => vec![
            "--input-mib".into(),
            (m.artifact_bytes >> 20).max(1).to_string(),
            "--download-mib-per-s".into(),
            (m.bytes_per_second >> 20).max(1).to_string(),
        ],
        None => Vec::new(),
    }
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::shares;

    #[test]
    fn shares_cover_every_node_once_in_near_equal_ranges() {
        assert_eq!(shares(10, 4), vec![0..3, 3..6, 6..8, 8..10]);
        assert_eq!(shares(5000, 4).iter().map(|r| r.len()).sum::<usize>(), 5000);
        assert_eq!(shares(2, 4), vec![0..1, 1..2, 2..2, 2..2]);
        assert_eq!(shares(7, 0), vec![0..7]);
    }
}
