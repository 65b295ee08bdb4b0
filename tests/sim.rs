//! Hollow nodes against real etcd with a real leader: simulated jobs go Running, report
//! progress and end as their simulated processes say; crashed hollow nodes go NotReady; and
//! every `rift bench` scenario runs at a smoke size and prints its JSON line.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rift::api::job::RestartPolicy;
use rift::api::{JobPhase, JobSpec, NodeSpec, Object};
use rift::sim::{Cluster, HollowSettings, Life};
use rift::store::Store;
use support::agent::{eventually, TestAgent};
use support::cli::rift_bin;
use support::etcd::EtcdCluster;

/// A `rift sim` process, killed on drop.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hollow_job(tune: impl FnOnce(&mut JobSpec)) -> JobSpec {
    let mut spec = JobSpec::with_command(["selfplay"]);
    spec.node_selector.insert("hollow".into(), "true".into());
    tune(&mut spec);
    spec
}

async fn ready_nodes(store: &Store, prefix: &str) -> usize {
    let Ok((nodes, _)) = store.list::<NodeSpec>(&Default::default()).await else {
        return 0;
    };
    nodes
        .iter()
        .filter(|n| n.metadata.name.starts_with(prefix))
        .filter(|n| n.status.as_ref().is_some_and(|s| s.is_ready()))
        .count()
}

async fn job_status(store: &Store, name: &str) -> Option<rift::api::job::JobStatus> {
    store.get::<JobSpec>(name).await.ok()??.status
}

#[tokio::test]
async fn hollow_nodes_run_jobs_with_progress_to_their_simulated_exit() {
    let etcd = EtcdCluster::single();
    let store = etcd.store().await;
    let _leader = TestAgent::start("ctl", &etcd.endpoints_csv(), &["--controllers"]);
    let state = tempfile::tempdir().unwrap();
    let _sim = Sim(Command::new(rift_bin())
        .args([
            "sim",
            "--nodes",
            "20",
            "--prefix",
            "h",
            "--job-duration",
            "4s",
        ])
        .args([
            "--progress-every",
            "1s",
            "--node-lease-ttl",
            "2",
            "--state-dir",
        ])
        .arg(state.path())
        .env("RIFT_ENDPOINTS", etcd.endpoints_csv())
        .env("RIFT_CONFIG", etcd.admin_conf())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    eventually(Duration::from_secs(30), "20 hollow nodes Ready", || async {
        (ready_nodes(&store, "h-").await == 20).then_some(())
    })
    .await;

    for i in 0..10 {
        store
            .create(&Object::new(format!("ok-{i}"), hollow_job(|_| {})))
            .await
            .unwrap();
    }
    let failing = hollow_job(|s| {
        s.env.insert("RIFT_SIM_EXIT_CODE".into(), "3".into());
        s.env.insert("RIFT_SIM_DURATION".into(), "1s".into());
        s.restart_policy = RestartPolicy::Never;
    });
    store.create(&Object::new("bad", failing)).await.unwrap();

    // Running on a hollow node, then progress counted by the simulated process.
    let running = eventually(
        Duration::from_secs(30),
        "ok-0 running with progress",
        || async {
            job_status(&store, "ok-0").await.filter(|s| {
                s.phase == JobPhase::Running && s.progress.get("games").is_some_and(|g| *g > 0.0)
            })
        },
    )
    .await;
    assert!(running.node.as_deref().is_some_and(|n| n.starts_with("h-")));

    for i in 0..10 {
        let s = eventually(
            Duration::from_secs(40),
            &format!("ok-{i} succeeded"),
            || async {
                job_status(&store, &format!("ok-{i}"))
                    .await
                    .filter(|s| s.phase == JobPhase::Succeeded)
            },
        )
        .await;
        assert_eq!(s.exit_code, Some(0));
        assert!(
            s.progress["games"] >= 30.0,
            "4 s at 10 games/s: {:?}",
            s.progress
        );
    }
    let bad = eventually(Duration::from_secs(30), "bad failed", || async {
        job_status(&store, "bad")
            .await
            .filter(|s| s.phase == JobPhase::Failed)
    })
    .await;
    assert_eq!(bad.exit_code, Some(3));
    assert_eq!(bad.attempts, 1, "restartPolicy Never: one attempt");
}

#[tokio::test]
async fn a_crashed_hollow_node_goes_not_ready_and_a_stopped_one_at_once() {
    let etcd = EtcdCluster::single();
    let store = etcd.store().await;
    let state = tempfile::tempdir().unwrap();
    let settings = HollowSettings {
        node_lease_ttl: Duration::from_secs(2),
        ..HollowSettings::default()
    };
    let cluster = Cluster::start(&etcd.access(), "c", 6, settings, state.path().to_path_buf())
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "6 nodes ready", || async {
        (ready_nodes(&store, "c-").await == 6).then_some(())
    })
    .await;
    // Longer than a TTL: the survivors' leases are being renewed over the shared stream.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ready_nodes(&store, "c-").await, 6);

    let crashed = cluster.end(2, Life::Crash).to_string();
    let start = std::time::Instant::now();
    eventually(
        Duration::from_secs(10),
        "the crashed node NotReady",
        || async {
            let n = store.get::<NodeSpec>(&crashed).await.ok()??;
            (!n.status?.is_ready()).then_some(())
        },
    )
    .await;
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "a crash is noticed by lease expiry, not at once ({:?})",
        start.elapsed()
    );
    let stopped = cluster.end(4, Life::Stop).to_string();
    eventually(
        Duration::from_secs(2),
        "the stopped node NotReady",
        || async {
            let n = store.get::<NodeSpec>(&stopped).await.ok()??;
            (!n.status?.is_ready()).then_some(())
        },
    )
    .await;
    assert_eq!(ready_nodes(&store, "c-").await, 4, "the others stay Ready");
    cluster.stop().await;
    assert!(!state.path().exists(), "stop removes the hollow state");
}

/// Runs `rift bench ARGS` and returns its JSON line.
fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(rift_bin())
        .arg("bench")
        .args(args)
        .args(["--limit-seconds", "1", "--timeout", "120"])
        .env_remove("RIFT_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rift bench {args:?} failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().expect("output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn spread_ok(v: &serde_json::Value, count: u64) {
    assert_eq!(v["count"], count, "{v}");
    let (p50, p99) = (v["p50_ms"].as_f64().unwrap(), v["p99_ms"].as_f64().unwrap());
    assert!(p50 > 0.0 && p50 <= p99, "{v}");
}

#[test]
fn bench_schedule_and_etcd_limit_print_their_figures() {
    let v = bench(&["schedule", "--nodes", "10", "--jobs", "30"]);
    assert_eq!(v["scenario"], "schedule");
    assert_eq!(v["setup"]["nodes"], 10);
    spread_ok(&v["apply_to_running"], 30);
    spread_ok(&v["apply_to_bound"], 30);
    for k in [
        "bound_per_s",
        "running_per_s",
        "apply_per_s",
        "etcd_txn_per_s",
    ] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    assert!(v["running_fraction_of_etcd"].as_f64().unwrap() > 0.0);
    assert!(v["leader"]["rss_mib"].as_f64().unwrap() > 1.0);
    assert!(v["etcd"]["db_mib"].as_f64().unwrap() > 0.0);

    let v = bench(&[
        "schedule",
        "--nodes",
        "4",
        "--jobs",
        "8",
        "--hollow-processes",
        "2",
    ]);
    spread_ok(&v["apply_to_running"], 8);
    assert_eq!(v["hollow_processes"]["processes"], 2, "{v}");
    assert!(
        v["hollow_processes"]["rss_mib"].as_f64().unwrap() > 1.0,
        "{v}"
    );
    assert!(
        v["bench_process"]["cpu_percent"].as_f64().unwrap() >= 0.0,
        "{v}"
    );

    let v = bench(&["etcd-limit"]);
    assert_eq!(v["scenario"], "etcd-limit");
    assert!(v["etcd_txn_per_s"].as_f64().unwrap() > 10.0, "{v}");
    assert!(v["etcd_batched_keys_per_s"].as_f64().unwrap() > 10.0, "{v}");
}

#[test]
fn bench_failover_detect_and_idle_print_their_figures() {
    let v = bench(&[
        "failover",
        "--nodes",
        "10",
        "--trials",
        "1",
        "--lease-ttl",
        "2",
    ]);
    for k in [
        "sigkill_takeover",
        "sigkill_first_binding",
        "sigterm_takeover",
        "sigterm_first_binding",
    ] {
        spread_ok(&v[k], 1);
    }
    let v = bench(&["detect", "--nodes", "10", "--kill", "3", "--lease-ttl", "2"]);
    spread_ok(&v["not_ready"], 3);
    assert!(v["not_ready"]["p99_ms"].as_f64().unwrap() < 10_000.0, "{v}");
    let v = bench(&["idle", "--seconds", "2"]);
    for k in ["leader", "agent"] {
        assert!(v[k]["rss_mib"].as_f64().unwrap() > 1.0, "{v}");
        assert!(v[k]["cpu_percent"].as_f64().unwrap() >= 0.0, "{v}");
    }
}

#[test]
fn bench_rollout_prints_its_figures() {
    let v = bench(&[
        "rollout",
        "--nodes",
        "4",
        "--input-mib",
        "10",
        "--max-unavailable",
        "2",
    ]);
    assert_eq!(v["scenario"], "rollout");
    spread_ok(&v["promotion_to_member_running"], 4);
    let all = v["promotion_to_all_running_ms"].as_f64().unwrap();
    assert_eq!(
        all,
        v["promotion_to_member_running"]["max_ms"].as_f64().unwrap(),
        "{v}"
    );
    // Each member stages the new model (10 MiB at 100 MiB/s) before it runs.
    assert!(
        v["promotion_to_member_running"]["p50_ms"].as_f64().unwrap() >= 100.0,
        "{v}"
    );
    assert!(
        v["promotion_to_completed_ms"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}

/// The real-agent variant: both update modes end with every member on the new model (the
/// bench checks etcd before it prints), and bad settings are refused before anything starts.
#[test]
fn bench_rollout_on_real_agents_prints_its_figures_and_refuses_bad_settings() {
    for update in ["reload", "rolling-restart"] {
        let v = bench(&[
            "rollout",
            "--agents",
            "2",
            "--update",
            update,
            "--input-mib",
            "1",
        ]);
        assert_eq!(v["scenario"], "rollout", "{v}");
        spread_ok(&v["promotion_to_member_on_new"], 2);
        assert_eq!(
            v["promotion_to_all_on_new_ms"].as_f64().unwrap(),
            v["promotion_to_member_on_new"]["max_ms"].as_f64().unwrap(),
            "{v}"
        );
        assert!(
            v["promotion_to_completed_ms"].as_f64().unwrap() > 0.0,
            "{v}"
        );
    }
    for (args, says) in [
        (&["--update", "reload"][..], "needs real agents"),
        (&["--agents", "2", "--input-mib", "0"][..], "--input-mib 0"),
        (
            &["--agents", "2", "--max-unavailable", "0"][..],
            "--max-unavailable",
        ),
        (&["--concurrency", "0"][..], "1..=4096"),
        (&["--concurrency", "100000"][..], "1..=4096"),
        (&["--etcd-gogc", "1"][..], "25..=10000"),
    ] {
        let out = Command::new(rift_bin())
            .args(["bench", "rollout"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// `rift bench --hollow-processes` runs its hollow nodes in `rift sim` children; SIGKILL of the
/// bench (no chance to clean up) must not leave one of them running.
#[test]
fn no_rift_sim_child_outlives_a_sigkilled_bench() {
    let mut bench = Sim(Command::new(rift_bin())
        .args(["bench", "schedule", "--nodes", "4", "--jobs", "8"])
        .args([
            "--hollow-processes",
            "2",
            "--repeat",
            "50",
            "--limit-seconds",
            "1",
        ])
        .env_remove("RIFT_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let pid = bench.0.id();
    let sims = |all: &[(u32, String)]| -> Vec<u32> {
        all.iter()
            .filter(|(_, cmd)| cmd.contains(" sim "))
            .map(|(p, _)| *p)
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let children = loop {
        let children = support::proc::children_of(pid);
        if sims(&children).len() == 2 {
            break children;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bench started no 2 `rift sim` children within 60 s: {children:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    bench.0.kill().unwrap(); // SIGKILL
    bench.0.wait().unwrap();
    let orphans = sims(&children);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while orphans.iter().any(|p| support::proc::is_alive(*p))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let survivors: Vec<u32> = orphans
        .iter()
        .copied()
        .filter(|p| support::proc::is_alive(*p))
        .collect();
    // The bench's etcd and leader agent are not under test here: end them, and remove the
    // directories the killed bench could not.
    for (p, _) in &children {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for root in [std::path::PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("rift-bench-") && name.contains(&format!("-{pid}-")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    assert!(
        survivors.is_empty(),
        "rift sim children {survivors:?} outlived the SIGKILLed bench"
    );
}
