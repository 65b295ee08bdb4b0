//! Playbook "When etcd loses quorum": two of three members die; the survivor is restarted once
//! with `--force-new-cluster` on its own data directory and comes back as a one-member cluster
//! with every object intact. (Three etcd processes on one machine stand in for three hosts.)

use super::*;

struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    child: Option<KillOnDrop>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn start(&mut self, initial_cluster: &str, extra: &[&str]) {
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.client_url()])
            .args(["--advertise-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-token", "playbook"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(extra);
        let log = self.dir.join(format!("etcd-{}.log", std::process::id()));
        self.child = Some(KillOnDrop(spawn_logged(&mut cmd, &log)));
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.0.wait();
        }
    }
}

fn etcdctl(endpoint: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--dial-timeout=2s",
            "--command-timeout=3s",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn wait_healthy(endpoint: &str) {
    for _ in 0..200 {
        if etcdctl(endpoint, &["endpoint", "health"]).0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{endpoint} never became healthy");
}

#[test]
fn etcd_quorum_loss_is_recovered_from_the_surviving_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut members: Vec<Member> = (0..3)
        .map(|i| {
            let d = dir.path().join(format!("m{i}"));
            std::fs::create_dir_all(&d).unwrap();
            Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                dir: d,
                child: None,
            }
        })
        .collect();
    let initial: Vec<String> = members
        .iter()
        .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
        .collect();
    let initial = initial.join(",");
    for m in &mut members {
        m.start(&initial, &["--initial-cluster-state", "new"]);
    }
    let all: Vec<String> = members.iter().map(Member::client_url).collect();
    let all = all.join(",");
    wait_healthy(&all);
    let objects = "apiVersion: rift/v1\nkind: Node\nmetadata: {name: keep-me}\nspec: {provider: hetzner}\n---\n\
                   apiVersion: rift/v1\nkind: VoterSet\nmetadata: {name: default}\nspec: {voters: [m0, m1, m2]}\n";
    assert!(rift_stdin(&all, &["apply", "-f", "-"], objects).ok);

    // Two members are lost for good.
    members[1].child = None;
    members[2].child = None;
    let survivor = members[0].client_url();

    // etcdctl endpoint status still answers from the survivor; endpoint health says no quorum.
    let (ok, status) = etcdctl(&survivor, &["endpoint", "status", "-w", "table"]);
    assert!(ok && status.contains(&survivor), "{status}");
    let (healthy, why) = etcdctl(&survivor, &["endpoint", "health"]);
    assert!(!healthy, "{why}");

    // On the survivor: stop it, start it once with --force-new-cluster on its data dir.
    members[0].stop();
    members[0].start(&initial, &["--force-new-cluster"]);
    wait_healthy(&survivor);
    let (_, list) = etcdctl(&survivor, &["member", "list"]);
    assert_eq!(
        list.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{list}"
    );

    // Then run it normally again (as its agent would); everything is still there.
    members[0].stop();
    members[0].start(&initial, &["--initial-cluster-state", "existing"]);
    wait_healthy(&survivor);
    let node = json(&survivor, &["get", "node", "keep-me"]).unwrap();
    assert_eq!(node["spec"]["provider"], "hetzner");
    let vs = json(&survivor, &["get", "voterset", "default"]).unwrap();
    assert_eq!(vs["spec"]["voters"], serde_json::json!(["m0", "m1", "m2"]));
}
