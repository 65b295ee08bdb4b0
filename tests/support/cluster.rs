//! A small real cluster: one etcd member, one controller agent (`role: ctl`, no GPUs, leader
//! lease TTL 2 s, reschedule margin 2 s) and worker agents (`worker: "yes"`) added on demand.
//! Every piece is a real process; every agent has its own state directory.
//!
//! Workers never count as overloaded (the tests share a busy machine: a full CPU or a nearly
//! full shared disk must not make a worker unschedulable; `DiskPressure`, set only through an
//! ArtifactStore's watermarks, is what tests of a full disk use), and every agent's node lease
//! TTL is 2 s ([`TestAgent`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rift::api::{Job, JobPhase, JobSpec, Object};
use rift::store::Store;

use super::agent::{eventually, TestAgent};
use super::cli::rift;
use super::etcd::EtcdCluster;
use super::s3::{S3Server, BUCKET, SECRET_KEY};

/// An agent config file with `labels`, written under `dir`.
pub fn agent_config(dir: &Path, name: &str, labels: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!("labels: {labels}\nthresholds: {{cpu: 100, disk: 100}}\n"),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

pub struct Cluster {
    pub etcd: EtcdCluster,
    pub store: Store,
    pub dir: tempfile::TempDir,
    pub ctl: TestAgent,
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::on(EtcdCluster::single()).await
    }

    /// A cluster whose etcd member advertises no reachable client URL, so a worker started
    /// with [`Cluster::worker_at`] a fault proxy reaches etcd only through it.
    pub async fn start_unadvertised() -> Cluster {
        Self::on(EtcdCluster::single_unadvertised()).await
    }

    async fn on(etcd: EtcdCluster) -> Cluster {
        let store = etcd.store().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = agent_config(dir.path(), "ctl", "{role: ctl}");
        let ctl = TestAgent::start(
            "ctl",
            &etcd.endpoints_csv(),
            &[
                "--config",
                &cfg,
                "--controllers",
                "--lease-ttl",
                "2",
                "--reschedule-margin",
                "2",
            ],
        );
        Cluster {
            etcd,
            store,
            dir,
            ctl,
        }
    }

    /// A worker reaching etcd directly, with `gpus` declared (e.g. `H100x2`).
    pub fn worker(&self, name: &str, gpus: &[&str]) -> TestAgent {
        self.worker_at(name, &self.etcd.endpoints_csv(), gpus)
    }

    /// A worker reaching etcd at `endpoints` (a fault proxy, say).
    pub fn worker_at(&self, name: &str, endpoints: &str, gpus: &[&str]) -> TestAgent {
        let cfg = agent_config(self.dir.path(), name, "{worker: \"yes\"}");
        let mut args = vec!["--config", cfg.as_str()];
        for g in gpus {
            args.extend(["--gpus", g]);
        }
        TestAgent::start(name, endpoints, &args)
    }

    /// `rift apply -f -` of `yaml`; panics with its stderr when it fails.
    pub fn apply(&self, yaml: &str) {
        let out = super::cli::rift_stdin(&self.etcd.endpoints_csv(), &["apply", "-f", "-"], yaml);
        assert!(out.ok, "{}", out.stderr);
    }

    pub async fn job(&self, name: &str) -> Option<Job> {
        self.store.get::<JobSpec>(name).await.ok().flatten()
    }

    /// Waits until Job `name` is Running (anywhere).
    pub async fn wait_running(&self, name: &str, within: u64) -> Job {
        eventually(
            Duration::from_secs(within),
            &format!("{name} running"),
            || async {
                self.job(name).await.filter(|j| {
                    j.status
                        .as_ref()
                        .is_some_and(|s| s.phase == JobPhase::Running)
                })
            },
        )
        .await
    }

    /// Waits until Job `name` is Running on `node`.
    pub async fn wait_running_on(&self, name: &str, node: &str, within: u64) -> Job {
        eventually(
            Duration::from_secs(within),
            &format!("{name} running on {node}"),
            || async {
                self.job(name).await.filter(|j| {
                    j.status.as_ref().is_some_and(|s| {
                        s.phase == JobPhase::Running && s.node.as_deref() == Some(node)
                    })
                })
            },
        )
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- controller agent log ---\n{}", self.ctl.log());
        }
    }
}

/// The Artifact name of `bytes`: `sha256-<hex of their digest>`.
pub fn artifact_name(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256-{}", hex::encode(sha2::Sha256::digest(bytes)))
}

impl Cluster {
    /// Applies ArtifactStore `default` on `server` with an absolute credentials file (so agents
    /// and the CLI find it whatever their secrets directory) and `extra` spec lines (each
    /// indented two spaces); returns the credentials file. Cache watermarks 99/98 % unless
    /// `extra` sets `cache`: the tests share the machine's disk, which may well be fuller than
    /// the default 85 % (DiskPressure has its own test, tests/disk.rs).
    pub fn use_s3(&self, server: &S3Server, extra: &str) -> PathBuf {
        let creds = S3Server::write_credentials(self.dir.path(), "s3.env", SECRET_KEY);
        let cache = if extra.contains("cache:") {
            ""
        } else {
            "  cache: {highPercent: 99, lowPercent: 98}\n"
        };
        self.apply(&format!(
            "apiVersion: rift/v1\nkind: ArtifactStore\nmetadata: {{name: default}}\nspec:\n  url: s3://{BUCKET}\n  endpoint: {}\n  credentialsFile: {}\n{cache}{extra}",
            server.endpoint(),
            creds.display()
        ));
        creds
    }

    /// Pushes `bytes` (written to `file` in the cluster's directory) with `rift artifact push
    /// -l LABEL`; returns the Artifact's name.
    pub fn push(&self, bytes: &[u8], file: &str, label: &str) -> String {
        let path = self.dir.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        let r = rift(
            &self.etcd.endpoints_csv(),
            &["artifact", "push", path.to_str().unwrap(), "-l", label],
        );
        assert!(r.ok, "{}", r.stderr);
        artifact_name(bytes)
    }
}

/// Creates Job `name` running `command` on a worker (`worker: "yes"`), grace period 2 s, then
/// `tune`d.
pub async fn create_job(
    store: &Store,
    name: &str,
    command: Vec<String>,
    tune: impl FnOnce(&mut JobSpec),
) {
    let mut spec = JobSpec::with_command(command);
    spec.node_selector.insert("worker".into(), "yes".into());
    spec.termination_grace_period = rift::api::duration::HumanDuration::from_secs(2);
    tune(&mut spec);
    store.create(&Object::new(name, spec)).await.unwrap();
}

/// `sh -c script`, as a job command.
pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// The pid of `agent`'s own process (not its shims): the child it was spawned as. (Scanning
/// /proc for its command line raced the spawn: a process forked but not yet exec'd still shows
/// the test's own command line.)
pub fn agent_pid(agent: &TestAgent) -> nix::unistd::Pid {
    let pid = agent
        .pid()
        .unwrap_or_else(|| panic!("agent {} is not running", agent.name));
    nix::unistd::Pid::from_raw(pid as i32)
}

/// When each attempt folder of `job` on `agent` says its job process started (wall clock).
pub fn attempt_starts(agent: &TestAgent, job: &str) -> Vec<(u32, chrono::DateTime<chrono::Utc>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(agent.job_dir(job).join("attempts")) else {
        return out;
    };
    for e in entries.flatten() {
        let Some(n) = e.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let rec: Option<serde_json::Value> = std::fs::read(e.path().join("job.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(at) = rec
            .and_then(|r| r["startedAt"].as_str().map(str::to_string))
            .and_then(|s| s.parse().ok())
        {
            out.push((n, at));
        }
    }
    out.sort();
    out
}
