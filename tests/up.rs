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
    state: std::path::PathBuf,
}

/// The demo manifests with their Notifier pointed at `webhook_port` (the README's runs use
/// rift up's default port; tests never use a fixed one).
fn demo_manifests(dir: &std::path::Path, webhook_port: u16) -> std::path::PathBuf {
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/demo");
    let to = dir.join("demo");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let text = text.replace("127.0.0.1:8771", &format!("127.0.0.1:{webhook_port}"));
        std::fs::write(to.join(entry.file_name()), text).unwrap();
    }
    to
}

impl Up {
    /// `rift up` on the demo; `ports` are etcd client, etcd peer, agent HTTP, webhook, dashboard.
    fn start(state: &std::path::Path, ports: (u16, u16, u16, u16, u16)) -> Up {
        let manifests = demo_manifests(state.parent().unwrap(), ports.3);
        let manifests = manifests.to_str().unwrap();
        let (client, peer, agent, webhook) = (
            ports.0.to_string(),
            ports.1.to_string(),
            ports.2.to_string(),
            ports.3.to_string(),
        );
        let dashboard = format!("127.0.0.1:{}", ports.4);
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
                "--webhook-port",
                &webhook,
                "--gpus",
                "H100x2",
                "--label",
                "demo=true",
                "--dashboard",
                &dashboard,
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
        Up {
            child,
            endpoint,
            state: state.to_path_buf(),
        }
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
    /// Kills it and, since a killed `rift up` cannot stop them, its etcd member and jobs: a
    /// failing test leaves nothing running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_processes_mentioning(&self.state);
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

/// `(pid, start time)` of every job process `rift up` started under `state` (from the records
/// its shims wrote), and whether each still runs.
fn job_processes(state: &std::path::Path) -> Vec<(u32, bool)> {
    let mut out = Vec::new();
    let Ok(jobs) = std::fs::read_dir(state.join("jobs")) else {
        return out;
    };
    for job in jobs.flatten() {
        let Ok(attempts) = std::fs::read_dir(job.path().join("attempts")) else {
            continue;
        };
        for attempt in attempts.flatten() {
            let Ok(text) = std::fs::read_to_string(attempt.path().join("job.json")) else {
                continue;
            };
            let rec: serde_json::Value = serde_json::from_str(&text).unwrap();
            let pid = rec["pid"].as_u64().unwrap() as u32;
            let ticks = rec["startTicks"].as_u64().unwrap();
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 2..].to_string();
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    Some(f[0] != "Z" && f.get(19)?.parse::<u64>().ok()? == ticks)
                })
                .unwrap_or(false);
            out.push((pid, alive));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rift_up_runs_the_demo_and_resumes_the_same_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ports = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
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
    // It serves the dashboard too, reading the same cluster.
    let dashboard = format!("127.0.0.1:{}", ports.4);
    let (code, page) = support::http::get(&dashboard, "/nodes", Duration::from_secs(5))
        .expect("rift up serves the dashboard");
    assert_eq!(code, 200);
    assert!(page.contains("id=\"node-local\""), "{page}");
    // Its etcd member runs with rift's Go settings: GOGC 400 under a memory limit.
    let etcd_env = etcd_environment(&state);
    assert!(etcd_env.contains(&"GOGC=400".to_string()), "{etcd_env:?}");
    assert!(
        etcd_env
            .iter()
            .any(|v| v.starts_with("GOMEMLIMIT=") && v.ends_with("MiB")),
        "{etcd_env:?}"
    );
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

    // The demo Notifier posts to the receiver rift up runs (training starts once selfplay has
    // made 200 games); nothing fails.
    let log = state.join("notifications.log");
    eventually(
        Duration::from_secs(90),
        "the demo's training_started notification in notifications.log",
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .any(|l| l.contains(" training_started "))
                .then_some(())
        },
    )
    .await;
    let notifier = eventually(Duration::from_secs(30), "the Notifier's status", || async {
        let run = rift(&ep, &["get", "notifier", "local-webhook", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
        (v["status"]["delivered"].as_u64()? >= 1).then_some(v)
    })
    .await;
    assert_eq!(
        notifier["status"]["failures"].as_u64().unwrap_or(0),
        0,
        "{notifier}"
    );

    // A second `rift up` on the same state directory is refused, naming the first.
    let second = rift(
        "",
        &[
            "up",
            "--state-dir",
            &state.display().to_string(),
            "--port",
            "1",
        ],
    );
    assert!(!second.ok);
    assert!(
        second.stderr.contains(&format!(
            "rift up is already running on {} (pid {})",
            state.display(),
            up.child.id()
        )),
        "{}",
        second.stderr
    );
    assert!(status_json(&ep).is_some(), "the first one is untouched");

    let running = job_processes(&state);
    assert!(
        running.iter().any(|(_, alive)| *alive),
        "jobs run: {running:?}"
    );
    let exit = up.stop();
    assert!(exit.success(), "Ctrl-C stops cleanly: {exit:?}");
    assert!(
        status_json(&ep).is_none(),
        "its etcd member stopped with it"
    );
    let left: Vec<u32> = job_processes(&state)
        .into_iter()
        .filter_map(|(pid, alive)| alive.then_some(pid))
        .collect();
    assert!(
        left.is_empty(),
        "a rift up cluster's jobs stop with it: {left:?} still run"
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
    let ep2 = up2.endpoint.clone();
    eventually(
        Duration::from_secs(60),
        "selfplay Running again after the resume",
        || async { (job_phase(&ep2, "selfplay-hex8-local-0")? == "Running").then_some(()) },
    )
    .await;
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

/// The processes that mention `state` in their command line or environment (etcd's data
/// directory, shims, jobs' progress files): what a `rift up` on `state` started.
fn processes_mentioning(state: &std::path::Path) -> Vec<String> {
    let needle = state.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || !support::agent::process_alive(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let text = |b: &[u8]| String::from_utf8_lossy(b).replace('\0', " ");
        if text(&cmdline).contains(&needle) || text(&environ).contains(&needle) {
            found.push(format!("{pid}: {}", text(&cmdline)));
        }
    }
    found
}

/// The environment of the etcd process whose data directory is under `state`.
fn etcd_environment(state: &std::path::Path) -> Vec<String> {
    let needle = state.to_string_lossy().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = String::from_utf8_lossy(&cmdline)
            .split('\0')
            .map(str::to_string)
            .collect();
        let is_etcd = args.first().is_some_and(|a| a.ends_with("etcd"));
        if is_etcd && args.iter().any(|a| a.contains(&needle)) {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            return String::from_utf8_lossy(&environ)
                .split('\0')
                .map(str::to_string)
                .collect();
        }
    }
    panic!("no etcd process with its data under {needle}")
}

/// Which of `ports` on 127.0.0.1 still accept connections.
fn listening(ports: &[u16]) -> Vec<u16> {
    ports
        .iter()
        .copied()
        .filter(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
        .collect()
}

/// Waits (at most a minute) for `child` to exit.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rift up did not end within a minute"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rift_up_stopped_right_after_start_leaves_no_process_and_no_listener_behind() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ports = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let mut up = Up::start(&state, ports);
    // Right after start: the agent listens and its etcd member has been started; the
    // cluster, the manifests and the jobs are still on their way.
    eventually(Duration::from_secs(30), "the agent listening", || async {
        (!listening(&[ports.2]).is_empty()).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "its etcd member started",
        || async { (!processes_mentioning(&state).is_empty()).then_some(()) },
    )
    .await;
    let exit = up.stop();
    assert!(
        exit.success(),
        "a stop during start is a clean stop: {exit:?}"
    );
    assert_eq!(
        processes_mentioning(&state),
        Vec::<String>::new(),
        "etcd, shims and jobs stop with it"
    );
    assert_eq!(
        listening(&[ports.0, ports.1, ports.2, ports.3, ports.4]),
        Vec::<u16>::new(),
        "no port it opened is left open"
    );
}

#[test]
fn a_rift_up_that_fails_at_start_stops_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (client, agent, webhook) = (free_port(), free_port(), free_port());
    // etcd's peer port is taken: the agent and its tasks start, the etcd member cannot.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = taken.local_addr().unwrap().port();
    let state_arg = state.display().to_string();
    let ports: Vec<String> = [client, peer, agent, webhook]
        .iter()
        .map(u16::to_string)
        .collect();
    let mut child = rift_command(
        "",
        &[
            "up",
            "--state-dir",
            &state_arg,
            "--port",
            &ports[0],
            "--peer-port",
            &ports[1],
            "--agent-port",
            &ports[2],
            "--webhook-port",
            &ports[3],
            "--no-dashboard",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let _cleanup = KillOnDrop(state.clone());
    let exit = wait_exit(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!exit.success(), "{stderr}");
    assert!(stderr.contains("etcd did not come up"), "{stderr}");
    assert!(
        state.join("pki").exists(),
        "it got as far as starting: {stderr}"
    );
    assert_eq!(
        processes_mentioning(&state),
        Vec::<String>::new(),
        "nothing it started runs on"
    );
    assert_eq!(
        listening(&[client, agent, webhook]),
        Vec::<u16>::new(),
        "no port it opened is left open"
    );
}

/// Kills whatever still mentions the state directory when a test ends (a failing one too).
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_processes_mentioning(&self.0);
    }
}
