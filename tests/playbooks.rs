//! The README's playbooks, run on one machine with the commands the README gives: real etcd
//! members, real agents, real jobs, a real sshd. What cannot run on one machine (systemd, a
//! second host) is replaced by its nearest equivalent and said so at each test.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::agent::{eventually, kill_processes_mentioning, process_alive, TestAgent};
use support::cli::{rift, rift_command, rift_stdin, KillOnDrop};
use support::etcd::EtcdCluster;
use support::proc::free_port;
use support::sshd::{ClientKey, Sshd};

fn json(ep: &str, args: &[&str]) -> Option<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = rift(ep, &all);
    out.ok
        .then(|| serde_json::from_str(&out.stdout).ok())
        .flatten()
}

fn job_running(ep: &str, name: &str) -> Option<Value> {
    json(ep, &["get", "job", name]).filter(|j| j["status"]["phase"] == "Running")
}

fn node_ready(ep: &str, name: &str) -> Option<Value> {
    json(ep, &["get", "node", name]).filter(|n| {
        n["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    })
}

fn labels_config(dir: &Path, name: &str, labels: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, format!("labels: {labels}\n")).unwrap();
    path.to_string_lossy().into_owned()
}

/// Playbook "Replace a voter": edit the VoterSet as YAML and apply it. (The voters controller
/// that then converges etcd's members is tested with it; here: the commands round-trip.)
#[test]
fn replace_a_voter_by_editing_the_voterset() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let vs = "apiVersion: rift/v1\nkind: VoterSet\nmetadata: {name: default}\nspec:\n  voters: [hetzner-cpu1, hetzner-cpu2, lambda-gh200-old]\n";
    assert!(rift_stdin(&ep, &["apply", "-f", "-"], vs).ok);

    // rift get voterset default -o yaml > vs.yaml; edit; rift apply -f vs.yaml
    let got = rift(&ep, &["get", "voterset", "default", "-o", "yaml"]);
    assert!(got.ok, "{}", got.stderr);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vs.yaml");
    std::fs::write(
        &file,
        got.stdout.replace("lambda-gh200-old", "nebius-h100-3"),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let dry = rift(&ep, &["apply", "--dry-run", "-f", f]);
    assert_eq!(
        dry.stdout.trim(),
        "voterset/default configured (dry run)",
        "{}",
        dry.stderr
    );
    let applied = rift(&ep, &["apply", "-f", f]);
    assert_eq!(
        applied.stdout.trim(),
        "voterset/default configured",
        "{}",
        applied.stderr
    );

    // rift get voterset -w shows the new list at once.
    let mut watch = KillOnDrop(
        rift_command(&ep, &["get", "voterset", "-w"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(watch.0.stdout.take().unwrap()).lines();
    let header = lines.next().unwrap().unwrap();
    assert!(header.starts_with("NAME"), "{header}");
    let row = lines.next().unwrap().unwrap();
    assert!(
        row.contains("hetzner-cpu1,hetzner-cpu2,nebius-h100-3"),
        "{row}"
    );
}

/// Playbook "Drain and retire a node": drain with --wait, take it out of the VoterSet, stop its
/// agent, delete its Node. Its jobs end up on the other node and keep running.
#[tokio::test]
async fn drain_and_retire_a_node() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let dir = tempfile::tempdir().unwrap();
    let ctl_cfg = labels_config(dir.path(), "ctl", "{role: ctl}");
    let _ctl = TestAgent::start(
        "ctl",
        &ep,
        &["--config", &ctl_cfg, "--controllers", "--lease-ttl", "2"],
    );
    let w_cfg = labels_config(dir.path(), "w", "{worker: \"yes\"}");
    let mut w1 = TestAgent::start("w1", &ep, &["--config", &w_cfg]);
    let pool = "apiVersion: rift/v1\nkind: Pool\nmetadata: {name: work}\nspec:\n  replicas: 2\n  nodeSelector: {worker: \"yes\"}\n  template:\n    spec:\n      command: [sleep, \"300\"]\n      terminationGracePeriod: 2s\n";
    assert!(rift_stdin(&ep, &["apply", "-f", "-"], pool).ok);
    for j in ["work-0", "work-1"] {
        let job = eventually(Duration::from_secs(30), "jobs on w1", || async {
            job_running(&ep, j)
        })
        .await;
        assert_eq!(job["status"]["node"], "w1");
    }
    let _w2 = TestAgent::start("w2", &ep, &["--config", &w_cfg]);
    eventually(Duration::from_secs(20), "w2 ready", || async {
        node_ready(&ep, "w2")
    })
    .await;

    let drain = rift(&ep, &["drain", "w1", "--wait", "--timeout", "60"]);
    assert!(drain.ok, "{}\n{}", drain.stdout, drain.stderr);
    assert!(drain.stdout.contains("node/w1 drained"), "{}", drain.stdout);
    for j in ["work-0", "work-1"] {
        let job = eventually(Duration::from_secs(30), "jobs on w2", || async {
            job_running(&ep, j).filter(|j| j["status"]["node"] == "w2")
        })
        .await;
        assert!(process_alive(job["status"]["pid"].as_u64().unwrap() as u32));
    }

    // Stop the agent (systemctl stop rift-agent), then delete the Node.
    w1.kill();
    let deleted = rift(&ep, &["delete", "node", "w1"]);
    assert!(deleted.ok, "{}", deleted.stderr);
    let nodes = json(&ep, &["get", "nodes"]).unwrap();
    let names: Vec<&str> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ctl", "w2"]);
    for j in ["work-0", "work-1"] {
        assert_eq!(job_running(&ep, j).unwrap()["status"]["node"], "w2");
    }
}

/// Starts `BIN agent` as systemd would (the unit's ExecStart), with test ports and state dir.
fn start_installed_agent(bin: &Path, root: &Path, ep: &str, port: u16) -> KillOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("agent.log"))
        .unwrap();
    KillOnDrop(
        Command::new(bin)
            .arg("agent")
            .arg("--config")
            .arg(root.join("etc/rift/node.yaml"))
            .arg("--state-dir")
            .arg(root.join("var/lib/rift"))
            .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
            .args(["--lease-ttl", "2", "--node-lease-ttl", "2"])
            .env("RIFT_ENDPOINTS", ep)
            .env("RIFT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn install_node(root: &Path, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/install-node.sh"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Playbook "Rolling upgrade of agents": install a new binary with install-node.sh and restart
/// the agent (SIGTERM to the agent alone, as `systemctl restart` does with KillMode=process).
/// The running job keeps its process.
#[tokio::test]
async fn rolling_upgrade_keeps_running_jobs() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // Jobs run as this test's own user: an install under --root creates no rift-job user.
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .unwrap()
        .unwrap()
        .name;
    install_node(
        r,
        &[
            "--binary",
            support::cli::rift_bin(),
            "--name",
            "n1",
            "--endpoints",
            &ep,
            "--controllers",
            "--run-as",
            &me,
        ],
    );
    let bin: PathBuf = r.join("usr/local/bin/rift");
    let port = free_port();
    // Its identity, as its join would have given it.
    cluster.trust().unwrap().admit(
        &ep,
        &r.join("var/lib/rift"),
        "n1",
        rift::pki::NodeRole::Controller,
        "127.0.0.1",
    );
    let mut agent = start_installed_agent(&bin, r, &ep, port);
    let job = "apiVersion: rift/v1\nkind: Job\nmetadata: {name: long-training}\nspec:\n  type: training\n  command: [sleep, \"300\"]\n";
    assert!(rift_stdin(&ep, &["apply", "-f", "-"], job).ok);
    let before = eventually(Duration::from_secs(30), "the job running", || async {
        job_running(&ep, "long-training")
    })
    .await;
    let pid = before["status"]["pid"].as_u64().unwrap() as u32;

    // A new build: same program, different bytes.
    let new_dir = tempfile::tempdir().unwrap();
    let new_bin = new_dir.path().join("rift");
    let mut bytes = std::fs::read(support::cli::rift_bin()).unwrap();
    bytes.extend_from_slice(b"\0v2");
    std::fs::write(&new_bin, &bytes).unwrap();
    std::fs::set_permissions(&new_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = install_node(r, &["--binary", new_bin.to_str().unwrap()]);
    assert!(out.contains("updated  /usr/local/bin/rift"), "{out}");

    // systemctl restart rift-agent
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    agent.0.wait().unwrap();
    assert!(process_alive(pid), "the job outlives its agent");
    let _agent = start_installed_agent(&bin, r, &ep, port);

    eventually(Duration::from_secs(30), "n1 ready again", || async {
        node_ready(&ep, "n1")
    })
    .await;
    let after = eventually(Duration::from_secs(30), "the job re-adopted", || async {
        job_running(&ep, "long-training").filter(|j| j["status"]["pid"] == before["status"]["pid"])
    })
    .await;
    assert_eq!(after["status"]["attempts"], 1, "not restarted");
    assert!(process_alive(pid));
    drop(_agent);
    kill_processes_mentioning(&r.join("var/lib/rift"));
}

/// Playbook "Move from the old orchestrator": import, review, dry-run, apply; an agent started
/// on an imported host joins under its imported Node (the applied spec wins).
#[tokio::test]
async fn move_from_the_old_orchestrator() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    let hosts =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import/distributed_hosts.yaml");
    let imported = rift(
        &ep,
        &[
            "import",
            "hosts",
            hosts.to_str().unwrap(),
            "-o",
            fleet.to_str().unwrap(),
        ],
    );
    assert!(imported.ok, "{}", imported.stderr);
    let f = fleet.to_str().unwrap();
    let dry = rift(&ep, &["apply", "--dry-run", "-f", f]);
    assert!(dry.ok, "{}", dry.stderr);
    let applied = rift(&ep, &["apply", "-f", f]);
    assert!(applied.ok, "{}", applied.stderr);

    // hetzner-cpu3 was `status: maintenance`: imported cordoned. Its agent starts and joins.
    let _agent = TestAgent::start("hetzner-cpu3", &ep, &[]);
    let node = eventually(
        Duration::from_secs(20),
        "the imported node ready",
        || async { node_ready(&ep, "hetzner-cpu3") },
    )
    .await;
    assert_eq!(node["spec"]["unschedulable"], true);
    assert_eq!(
        node["spec"]["addresses"],
        serde_json::json!(["100.64.2.3", "46.62.147.152"])
    );
    let un = rift(&ep, &["uncordon", "hetzner-cpu3"]);
    assert_eq!(un.stdout.trim(), "node/hetzner-cpu3 uncordoned");
}

/// Playbook "Add a NAT-blocked node with a tunnel": the relay's host key from `ssh-keyscan`
/// goes into the Tunnel and is accepted; without it the Tunnel is refused.
#[test]
fn add_a_nat_blocked_node_with_a_tunnel_pinned_by_ssh_keyscan() {
    let relay = Sshd::start("127.0.0.1", free_port(), &ClientKey::new());
    let port = relay.port;
    let scanned = (0..50)
        .find_map(|_| {
            let out = Command::new("ssh-keyscan")
                .args(["-t", "ed25519", "-p", &port.to_string(), "127.0.0.1"])
                .stderr(Stdio::null())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("ssh-ed25519") {
                Some(text)
            } else {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        })
        .expect("ssh-keyscan reads the relay's key");
    // ssh-keyscan RELAY | awk '{print $2" "$3}'
    let line = scanned.lines().find(|l| !l.starts_with('#')).unwrap();
    let key: Vec<&str> = line.split_whitespace().skip(1).take(2).collect();
    let key = key.join(" ");
    assert!(
        relay.host_key.starts_with(&key),
        "keyscan saw the relay's own key"
    );

    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let manifest = |host_key: &str| {
        format!(
            "apiVersion: rift/v1\nkind: Node\nmetadata: {{name: vast-new}}\nspec:\n  provider: vast\n  natBlocked: true\n  gpus: [{{model: RTX 4090, count: 8}}]\n---\n\
             apiVersion: rift/v1\nkind: Tunnel\nmetadata: {{name: vast-new}}\nspec:\n  node: vast-new\n  relay: hetzner-cpu1\n  sshPort: {port}\n  \
             ports: [{{remotePort: 20099, localPort: 8770}}]\n  identityFile: /etc/rift/tunnel_ed25519\n{host_key}"
        )
    };
    let refused = rift_stdin(&ep, &["apply", "-f", "-"], &manifest(""));
    assert!(!refused.ok);
    assert!(
        refused
            .stderr
            .contains("pin relay `hetzner-cpu1`'s host key"),
        "{}",
        refused.stderr
    );
    let good = manifest(&format!("  hostKey: {key}\n"));
    let dry = rift_stdin(&ep, &["apply", "--dry-run", "-f", "-"], &good);
    assert!(dry.ok, "{}", dry.stderr);
    let applied = rift_stdin(&ep, &["apply", "-f", "-"], &good);
    assert!(
        applied.stdout.contains("tunnel/vast-new created"),
        "{}",
        applied.stderr
    );
    let t = json(&ep, &["get", "tunnel", "vast-new"]).unwrap();
    assert_eq!(t["spec"]["hostKey"], key);
}

#[path = "playbooks/quorum.rs"]
mod quorum;

/// Kept here so `quorum` can use it.
fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let f = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap()
}
