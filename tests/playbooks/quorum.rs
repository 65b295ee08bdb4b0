//! Playbook "When etcd loses quorum": two of three members die; the survivor is restarted once
//! with `--force-new-cluster` on its own data directory and comes back as a one-member cluster
//! with every object intact. (Three etcd processes on one machine stand in for three hosts; each
//! has its certificates in `<dir>/pki/` as a voter's agent keeps them, and `etcdctl` uses the
//! node certificate there, as the README says.)

use super::*;

use rift::agent::etcd_member::process::MemberTls;
use rift::pki::local::LocalTrust;

struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    tls: MemberTls,
    child: Option<KillOnDrop>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client)
    }

    fn start(&mut self, initial_cluster: &str, extra: &[&str]) {
        let peer = format!("https://127.0.0.1:{}", self.peer);
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
            .args(self.tls.args())
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

/// `etcdctl` with the node's certificates (`P=<state>/pki`: --cacert $P/ca.crt --cert
/// $P/node.crt --key $P/node.key), as the playbook runs it.
fn etcdctl(pki: &Path, endpoint: &str, args: &[&str]) -> (bool, String) {
    let f = |name: &str| pki.join(name).display().to_string();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--dial-timeout=2s",
            "--command-timeout=3s",
        ])
        .args(["--cacert", &f("ca.crt"), "--cert", &f("node.crt")])
        .args(["--key", &f("node.key")])
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

fn wait_healthy(pki: &Path, endpoint: &str) {
    for _ in 0..200 {
        if etcdctl(pki, endpoint, &["endpoint", "health"]).0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{endpoint} never became healthy");
}

#[test]
fn etcd_quorum_loss_is_recovered_from_the_surviving_member() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalTrust::create(&dir.path().join("ca")).unwrap();
    let mut members: Vec<Member> = (0..3)
        .map(|i| {
            let d = dir.path().join(format!("m{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let name = format!("m{i}");
            ca.provision_node(
                &d,
                &name,
                rift::pki::NodeRole::Controller,
                &["127.0.0.1".to_string()],
                rift::pki::LEAF_VALIDITY,
            )
            .unwrap();
            Member {
                tls: MemberTls::in_dir(&rift::pki::PkiDir::new(&d)),
                name,
                client: free_port(),
                peer: free_port(),
                dir: d,
                child: None,
            }
        })
        .collect();
    let pki = dir.path().join("m0/pki");
    let initial: Vec<String> = members
        .iter()
        .map(|m| format!("{}=https://127.0.0.1:{}", m.name, m.peer))
        .collect();
    let initial = initial.join(",");
    for m in &mut members {
        m.start(&initial, &["--initial-cluster-state", "new"]);
    }
    let urls: Vec<String> = members.iter().map(Member::client_url).collect();
    let all = urls.join(",");
    wait_healthy(&pki, &all);
    // The operator's credentials for `rift` (authentication stays off here: etcd's own
    // recovery is what this playbook is about).
    let admin = ca.admin().unwrap();
    let conf = dir.path().join("admin.conf");
    rift::pki::credentials::Credentials {
        endpoints: urls.clone(),
        ca: admin.ca_pem,
        cert: admin.cert_pem,
        key: admin.key_pem,
    }
    .save(&conf)
    .unwrap();
    let trust = support::trust::Trust::new(&conf, &dir.path().join("ca"));
    support::trust::register(&urls, &trust);
    let objects = "apiVersion: rift/v1\nkind: Node\nmetadata: {name: keep-me}\nspec: {provider: hetzner}\n---\n\
                   apiVersion: rift/v1\nkind: VoterSet\nmetadata: {name: default}\nspec: {voters: [m0, m1, m2]}\n";
    assert!(rift_stdin(&all, &["apply", "-f", "-"], objects).ok);

    // Two members are lost for good.
    members[1].child = None;
    members[2].child = None;
    let survivor = members[0].client_url();

    // etcdctl endpoint status still answers from the survivor; endpoint health says no quorum.
    let (ok, status) = etcdctl(&pki, &survivor, &["endpoint", "status", "-w", "table"]);
    assert!(ok && status.contains(&survivor), "{status}");
    let (healthy, why) = etcdctl(&pki, &survivor, &["endpoint", "health"]);
    assert!(!healthy, "{why}");

    // On the survivor: stop it, start it once with --force-new-cluster on its data dir.
    members[0].stop();
    members[0].start(&initial, &["--force-new-cluster"]);
    wait_healthy(&pki, &survivor);
    let (_, list) = etcdctl(&pki, &survivor, &["member", "list"]);
    assert_eq!(
        list.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{list}"
    );

    // Then run it normally again (as its agent would); everything is still there.
    members[0].stop();
    members[0].start(&initial, &["--initial-cluster-state", "existing"]);
    wait_healthy(&pki, &survivor);
    let node = json(&survivor, &["get", "node", "keep-me"]).unwrap();
    assert_eq!(node["spec"]["provider"], "hetzner");
    let vs = json(&survivor, &["get", "voterset", "default"]).unwrap();
    assert_eq!(vs["spec"]["voters"], serde_json::json!(["m0", "m1", "m2"]));
    support::trust::unregister(&urls);
}
