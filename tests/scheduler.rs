//! The scheduler, pools, drain and lost nodes with real etcd and real agents
//! ([`support::cluster`]): one agent runs the controllers (label `role: ctl`, no GPUs), the
//! others are workers (`worker: "yes"`) with declared GPUs.

mod support;

use std::time::{Duration, Instant};

use rift::api::job::OnNodeLost;
use rift::api::{JobPhase, JobSpec};
use support::agent::{eventually, process_alive};
use support::cli::rift;
use support::cluster::{agent_pid, create_job, sh, Cluster};

#[tokio::test]
async fn a_per_gpu_pool_fills_every_gpu_and_only_those() {
    let c = Cluster::start().await;
    let _w1 = c.worker("w1", &["H100x2"]);
    let _w2 = c.worker("w2", &["RTX 4090x1"]);
    let _w3 = c.worker("w3", &[]);
    c.apply(
        "apiVersion: rift/v1\nkind: Pool\nmetadata: {name: sp}\nspec:\n  perGpu: true\n  nodeSelector: {worker: \"yes\"}\n  template:\n    spec:\n      type: selfplay\n      command: [sleep, \"60\"]\n",
    );
    let jobs = eventually(Duration::from_secs(30), "3 members running", || async {
        let (jobs, _) = c
            .store
            .list::<JobSpec>(&"rift.dev/pool=sp".parse().unwrap())
            .await
            .ok()?;
        let running = jobs
            .iter()
            .filter(|j| {
                j.status
                    .as_ref()
                    .is_some_and(|s| s.phase == JobPhase::Running)
            })
            .count();
        (jobs.len() == 3 && running == 3).then_some(jobs)
    })
    .await;
    let mut placed: Vec<(String, Vec<u32>)> = jobs
        .iter()
        .map(|j| {
            let s = j.status.as_ref().unwrap();
            (s.node.clone().unwrap(), s.gpus.clone())
        })
        .collect();
    // Each member holds the GPU its name says: sp-<node>-<gpu>.
    for j in &jobs {
        let s = j.status.as_ref().unwrap();
        let wanted = format!("sp-{}-{}", s.node.as_deref().unwrap(), s.gpus[0]);
        assert_eq!(j.metadata.name, wanted, "a member's name names its GPU");
    }
    placed.sort();
    assert_eq!(
        placed,
        [
            ("w1".to_string(), vec![0]),
            ("w1".to_string(), vec![1]),
            ("w2".to_string(), vec![0])
        ]
    );
    // The Pool's status is written on the scheduler's next pass: it follows within a second.
    let ep = c.etcd.endpoints_csv();
    eventually(
        Duration::from_secs(10),
        "pool status desired 3, running 3",
        || async {
            let pool = rift(&ep, &["get", "pool", "sp", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_str(&pool.stdout).ok()?;
            (v["status"]["desired"].as_u64() == Some(3)
                && v["status"]["running"].as_u64() == Some(3))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_job_that_fits_nowhere_says_why() {
    let c = Cluster::start().await;
    let _w1 = c.worker("w1", &["H100x2"]);
    let _w2 = c.worker("w2", &[]);
    create_job(&c.store, "huge", sh("true"), |s| s.resources.gpus = 8).await;
    // The why-not is rewritten as nodes register and report (a node is "not ready" until its
    // first status arrives): wait for the one over all three, each as it settles.
    let job = eventually(
        Duration::from_secs(30),
        "a why-not over 3 settled nodes",
        || async {
            c.job("huge").await.filter(|j| {
                j.status.as_ref().is_some_and(|s| {
                    s.message.starts_with("0/3 nodes:")
                        && s.message.contains("insufficient GPUs")
                        && s.message.contains("node selector mismatch")
                })
            })
        },
    )
    .await;
    let s = job.status.unwrap();
    assert_eq!(s.phase, JobPhase::Pending);
    assert!(s.message.starts_with("0/3 nodes:"), "{}", s.message);
    assert!(s.message.contains("insufficient GPUs"), "{}", s.message);
    assert!(
        s.message.contains("node selector mismatch"),
        "the ctl node: {}",
        s.message
    );
}

#[tokio::test]
async fn drain_moves_every_job_off_a_node() {
    let c = Cluster::start().await;
    let _w1 = c.worker("w1", &[]);
    c.apply("apiVersion: rift/v1\nkind: Pool\nmetadata: {name: cpu}\nspec:\n  replicas: 3\n  nodeSelector: {worker: \"yes\"}\n  template:\n    spec:\n      command: [sleep, \"60\"]\n      terminationGracePeriod: 2s\n");
    for i in 0..3 {
        c.wait_running(&format!("cpu-{i}"), 30).await;
    }
    let _w2 = c.worker("w2", &[]);
    let out = rift(
        &c.etcd.endpoints_csv(),
        &["drain", "w1", "--wait", "--timeout", "40"],
    );
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("node/w1 drained"), "{}", out.stdout);
    // One progress line per job, counting down, each saying where it went.
    let progress: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("  job/"))
        .collect();
    assert_eq!(progress.len(), 3, "{}", out.stdout);
    for (line, left) in progress.iter().zip(["(2 left)", "(1 left)", "(0 left)"]) {
        assert!(line.ends_with(left), "{line}: {}", out.stdout);
        assert!(
            line.contains(" moved to w2 ") || line.contains(" evicted: Pending"),
            "{line}"
        );
    }
    for i in 0..3 {
        let j = c.wait_running(&format!("cpu-{i}"), 30).await;
        assert_eq!(j.status.unwrap().node.as_deref(), Some("w2"));
    }
}

#[tokio::test]
async fn a_killed_nodes_reschedule_jobs_run_elsewhere_and_its_wait_jobs_stay() {
    let c = Cluster::start().await;
    let mut w1 = c.worker("w1", &[]);
    let lost_after = rift::api::duration::HumanDuration::from_secs(2);
    create_job(&c.store, "mover", sh("sleep 120"), |s| {
        s.on_node_lost = OnNodeLost::Reschedule;
        s.lost_after = lost_after;
    })
    .await;
    create_job(&c.store, "stayer", sh("sleep 120"), |s| {
        s.lost_after = lost_after
    })
    .await;
    c.wait_running("mover", 30).await;
    c.wait_running("stayer", 30).await;
    let _w2 = c.worker("w2", &[]);
    w1.kill();
    let killed = Instant::now();
    let moved = eventually(Duration::from_secs(40), "mover running on w2", || async {
        c.job("mover").await.filter(|j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.phase == JobPhase::Running && s.node.as_deref() == Some("w2"))
        })
    })
    .await;
    // Node TTL 2 s + lostAfter 2 s + margin 2 s, at the least.
    assert!(
        killed.elapsed() >= Duration::from_secs(4),
        "moved too early: {:?}",
        killed.elapsed()
    );
    assert!(moved.status.unwrap().epoch.unwrap() >= 2);
    let stayer = c.job("stayer").await.unwrap().status.unwrap();
    assert_eq!(
        stayer.node.as_deref(),
        Some("w1"),
        "a wait job is never moved"
    );
}

/// Each instance appends `start <pid> <ns>` and, when stopped, `stop <pid> <ns>`.
const RECORDING_JOB: &str = "echo \"start $$ $(date +%s%N)\" >> \"$LOG\"; trap 'echo \"stop $$ $(date +%s%N)\" >> \"$LOG\"; exit 0' TERM; while true; do sleep 0.1; done";

#[tokio::test]
async fn a_cut_off_node_never_runs_a_job_at_the_same_time_as_its_replacement() {
    let c = Cluster::start().await;
    let w1 = c.worker("w1", &[]);
    let log = c.dir.path().join("instances.log");
    create_job(&c.store, "solo", sh(RECORDING_JOB), |s| {
        s.on_node_lost = OnNodeLost::Reschedule;
        s.lost_after = rift::api::duration::HumanDuration::from_secs(3);
        s.env.insert("LOG".into(), log.to_string_lossy().into());
    })
    .await;
    let first = c.wait_running("solo", 30).await.status.unwrap();
    assert_eq!(first.node.as_deref(), Some("w1"));
    let _w2 = c.worker("w2", &[]);
    // Cut w1's agent off: it stops renewing its lease; its shims keep running on their own.
    let agent_pid = agent_pid(&w1);
    nix::sys::signal::kill(agent_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    eventually(Duration::from_secs(40), "solo running on w2", || async {
        c.job("solo").await.filter(|j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.phase == JobPhase::Running && s.node.as_deref() == Some("w2"))
        })
    })
    .await;
    nix::sys::signal::kill(agent_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !process_alive(first.pid.unwrap()),
        "the old instance is gone"
    );

    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<(&str, &str, u128)> = text
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((p.next()?, p.next()?, p.next()?.parse().ok()?))
        })
        .collect();
    // Replay the log: never more than one instance between its start and its stop.
    let mut running = std::collections::BTreeSet::new();
    let mut sorted = events.clone();
    sorted.sort_by_key(|e| e.2);
    for (what, pid, _) in &sorted {
        match *what {
            "start" => {
                running.insert(*pid);
                assert!(running.len() <= 1, "two instances ran at once: {text}");
            }
            _ => {
                running.remove(pid);
            }
        }
    }
    assert_eq!(
        events.iter().filter(|e| e.0 == "start").count(),
        2,
        "{text}"
    );
    assert!(
        text.contains(&format!("stop {}", first.pid.unwrap())),
        "the old instance was stopped: {text}"
    );
}

/// The scheduler's binding write is guarded by the Job as its pass read it: a Job edited, or
/// deleted and created again under its name, after the read is neither bound nor carried in a
/// binding from that read (the next pass decides from the Job as it is).
#[tokio::test]
async fn a_job_changed_after_the_pass_read_it_is_not_bound_from_that_read() {
    use rift::api::placement::{Binding, EmbeddedJob, LossTerms};
    use rift::api::Object;
    use rift::controllers::writes::{self, Write};

    let etcd = support::etcd::EtcdCluster::single();
    let store = etcd.store().await;
    let client = etcd.client().await;
    let place = |job: &rift::api::Job| Write::Place {
        job: job.name().to_string(),
        node: "n1".into(),
        gpus: vec![],
        epoch: 1,
        uid: job.metadata.uid.clone().unwrap_or_default(),
        terms: LossTerms::of(&job.spec),
        embedded: EmbeddedJob::of(job),
        expect: None,
        job_revision: job.metadata.revision(),
    };
    let binding = |mut c: etcd_client::Client| async move {
        let got = c.get("/rift/v1/bindings/n1/j", None).await.unwrap();
        got.kvs()
            .first()
            .map(|kv| serde_json::from_slice::<Binding>(kv.value()).unwrap())
    };

    let read = store
        .create(&Object::new("j", JobSpec::with_command(["echo", "old"])))
        .await
        .unwrap();
    let mut edited = read.clone();
    edited.spec.command = vec!["echo".into(), "new".into()];
    store.update(&edited).await.unwrap();
    let applied = writes::apply(&store, &[place(&read)]).await.unwrap();
    assert_eq!((applied.written, applied.conflicts), (0, 1));
    assert!(
        binding(client.clone()).await.is_none(),
        "bound from a stale read"
    );

    // Deleted and created again: another uid under the same name.
    let kind = rift::api::kinds::by_kind("Job").unwrap();
    store.delete_object(kind, "j").await.unwrap();
    let again = store
        .create(&Object::new("j", JobSpec::with_command(["echo", "again"])))
        .await
        .unwrap();
    let applied = writes::apply(&store, &[place(&edited)]).await.unwrap();
    assert_eq!((applied.written, applied.conflicts), (0, 1));
    assert!(
        binding(client.clone()).await.is_none(),
        "bound a deleted Job"
    );

    // Read as it is, it is bound, and the binding carries it as it is.
    let applied = writes::apply(&store, &[place(&again)]).await.unwrap();
    assert_eq!((applied.written, applied.conflicts), (1, 0));
    let b = binding(client.clone()).await.expect("bound");
    assert_eq!(b.uid, again.metadata.uid.clone().unwrap());
    let carried: rift::api::Job = b.job.expect("carried").decode().unwrap();
    assert_eq!(carried.spec.command, ["echo", "again"]);
}
