//! `rift up`: a whole cluster on one machine, stopped and resumed on the same state directory.

mod support;

use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::agent::{eventually, kill_processes_mentioning};
use support::cli::{rift, rift_command};
use support::proc::free_port;

struct Up {
    child: Child,
    endpoint: String,
}

impl Up {
    fn start(state: &std::path::Path, ports: (u16, u16, u16)) -> Up {
        let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/demo");
        let (client, peer, agent) = (
            ports.0.to_string(),
            ports.1.to_string(),
            ports.2.to_string(),
        );
        let state_arg = state.display().to_string();
        let child = rift_command(
            "",
            &[
                "up",
                "--state-dir",
                &state_arg,
                "-f",
                manifests,
                "--port",
                &client,
                "--peer-port",
                &peer,
                "--agent-port",
                &agent,
                "--gpus",
                "H100x2",
                "--label",
                "demo=true",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let endpoint = format!("https://127.0.0.1:{client}");
        // The credentials `rift up` writes, for `rift(&endpoint, ..)`.
        let trust = support::trust::Trust::new(&state.join("admin.conf"), &state.join("pki"));
        support::trust::register(std::slice::from_ref(&endpoint), &trust);
        Up { child, endpoint }
    }

    /// Ctrl-C, and wait (at most a minute) for it to exit.
    fn stop(&mut self) -> std::process::ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "rift up did not stop within a minute of Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_json(endpoint: &str) -> Option<serde_json::Value> {
    let run = rift(endpoint, &["status", "-o", "json"]);
    run.ok
        .then(|| serde_json::from_str(&run.stdout).ok())
        .flatten()
}

fn job_phase(endpoint: &str, job: &str) -> Option<String> {
    let run = rift(endpoint, &["get", "job", job, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
    v["status"]["phase"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rift_up_runs_the_demo_and_resumes_the_same_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ports = (free_port(), free_port(), free_port());
    let mut up = Up::start(&state, ports);
    let ep = up.endpoint.clone();

    eventually(
        Duration::from_secs(60),
        "a selfplay job Running",
        || async { (job_phase(&ep, "selfplay-hex8-local-0")? == "Running").then_some(()) },
    )
    .await;
    let s = eventually(
        Duration::from_secs(30),
        "status: a leader and one voter",
        || async {
            let s = status_json(&ep)?;
            let one_voter = s["voters"]["members"].as_array()?.len() == 1;
            (s["leader"]["node"] == "local" && one_voter && s["voters"]["quorum"] == true)
                .then_some(s)
        },
    )
    .await;
    assert_eq!(s["voters"]["desired"], serde_json::json!(["local"]));
    // etcd listens on the node's address, not on every interface.
    assert!(
        std::net::TcpStream::connect(("127.0.0.2", ports.0)).is_err(),
        "etcd answers on an address the node does not have"
    );
    // Everything in the state directory is private: etcd's data, job records, logs, results.
    assert_eq!(support::fs::not_private(&state), Vec::<String>::new());
    let member_id = s["voters"]["members"][0]["id"].clone();
    eventually(Duration::from_secs(30), "job hello Succeeded", || async {
        (job_phase(&ep, "hello")? == "Succeeded").then_some(())
    })
    .await;

    let exit = up.stop();
    assert!(exit.success(), "Ctrl-C stops cleanly: {exit:?}");
    assert!(
        status_json(&ep).is_none(),
        "its etcd member stopped with it"
    );

    // Again, on the same state directory: the same cluster, objects intact.
    let up2 = Up::start(&state, ports);
    let s = eventually(Duration::from_secs(60), "the cluster is back", || async {
        let s = status_json(&up2.endpoint)?;
        (s["voters"]["quorum"] == true).then_some(s)
    })
    .await;
    assert_eq!(
        s["voters"]["members"][0]["id"], member_id,
        "the same member"
    );
    let pool = rift(&up2.endpoint, &["get", "pool", "selfplay-hex8"]);
    assert!(pool.ok, "{}", pool.stderr);
    let hello = job_phase(&up2.endpoint, "hello").unwrap();
    assert_eq!(hello, "Succeeded", "the finished job is remembered");
    drop(up2);
    kill_processes_mentioning(&state);
}

#[test]
fn rift_up_refuses_ports_another_etcd_holds() {
    let etcd = support::etcd::EtcdCluster::single();
    let url = etcd.client_url(0);
    let port = url.rsplit(':').next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().display().to_string();
    let run = rift("", &["up", "--state-dir", &state, "--port", port]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("something already answers"),
        "{}",
        run.stderr
    );
}

#[test]
fn rift_up_checks_manifests_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: rift/v1\nkind: Job\nmetadata: {name: x}\nspec: {replicas: 2}\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let run = rift(
        "",
        &[
            "up",
            "--state-dir",
            &state.display().to_string(),
            "-f",
            &bad.display().to_string(),
        ],
    );
    assert!(!run.ok);
    assert!(run.stderr.contains("bad.yaml"), "{}", run.stderr);
    assert!(!state.join("etcd").exists(), "nothing started");
}
