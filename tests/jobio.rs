//! Job inputs and outputs through real agents, a real S3-compatible store (s3s-fs) and real
//! job processes: inputs staged verified, read-only and from the node cache; sealed outputs
//! recorded as Artifacts with their lineage; and the faults — damaged stored bytes, an unknown
//! input, the store down while an agent is SIGKILLed with uploads queued.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use rift::api::artifact::ArtifactSpec;
use rift::api::job_io::{JobInput, JobOutput};
use rift::api::{Job, JobPhase, JobSpec, Object};
use support::agent::eventually;
use support::agent::LogOnPanic;
use support::cli::rift;
use support::cluster::{artifact_name, create_job, sh, Cluster};
use support::s3::S3Server;

async fn finished(cluster: &Cluster, job: &str, within: u64) -> Job {
    let deadline = std::time::Instant::now() + Duration::from_secs(within);
    loop {
        let got = cluster.job(job).await;
        if let Some(j) = got
            .as_ref()
            .filter(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished()))
        {
            return j.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{job} did not finish within {within} s; last status: {:?}",
            got.and_then(|j| j.status)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn phase(job: &Job) -> (JobPhase, String, String) {
    let s = job.status.clone().unwrap_or_default();
    (s.phase, s.reason, s.message)
}

fn with_io(inputs: Vec<JobInput>, outputs: Vec<JobOutput>) -> impl FnOnce(&mut JobSpec) {
    move |spec| {
        spec.inputs = inputs;
        spec.outputs = outputs;
    }
}

fn games_output() -> JobOutput {
    JobOutput {
        name: "games".into(),
        labels: [("type".to_string(), "games".to_string())].into(),
        format: Some("npz".into()),
    }
}

/// A job script that checks its input, then seals `content` as `shard.npz` with 500 games.
fn producer(input: &str, content: &str, marker: &Path) -> Vec<String> {
    sh(&format!(
        r#"set -e
touch {marker}
f="$RIFT_INPUTS/games/{input}"
test -f "$f"
cp "$f" "$RIFT_OUTPUTS/games/.shard.tmp"
printf '%s' '{content}' >> "$RIFT_OUTPUTS/games/.shard.tmp"
echo '{{"games": 500}}' > "$RIFT_OUTPUTS/games/shard.npz.counts.json"
mv "$RIFT_OUTPUTS/games/.shard.tmp" "$RIFT_OUTPUTS/games/shard.npz""#,
        marker = marker.display()
    ))
}

async fn artifacts_labelled(cluster: &Cluster, job: &str) -> Vec<Object<ArtifactSpec>> {
    let sel: rift::api::selector::LabelSelector = format!("rift.dev/job={job}").parse().unwrap();
    cluster.store.list::<ArtifactSpec>(&sel).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_staged_verified_and_outputs_become_artifacts_with_lineage() {
    let cluster = Cluster::start().await;
    let server = S3Server::start();
    cluster.use_s3(&server, "  partSize: 5242880\n");
    let worker = cluster.worker("w1", &[]);
    let _log = LogOnPanic(worker.state.join("agent.log"));
    let seed = pattern(6 * 1024 * 1024 + 3, 1);
    let input = cluster.push(&seed, "seed.bin", "type=seed");
    let marks = tempfile::tempdir().unwrap();

    // 1. A job reading an input and sealing an output, in a Pool's name.
    let mut spec = JobSpec::with_command(producer(&input, "one", &marks.path().join("p1")));
    spec.node_selector.insert("worker".into(), "yes".into());
    spec.inputs = vec![JobInput::of("games", [input.clone()])];
    spec.outputs = vec![games_output()];
    let mut job = Object::new("p1", spec);
    job.metadata
        .labels
        .insert("rift.dev/pool".into(), "selfplay".into());
    cluster.store.create(&job).await.unwrap();
    let done = finished(&cluster, "p1", 60).await;
    assert_eq!(phase(&done).0, JobPhase::Succeeded, "{:?}", phase(&done));

    let mut expected = seed.clone();
    expected.extend_from_slice(b"one");
    let name = artifact_name(&expected);
    let art = cluster
        .store
        .get::<ArtifactSpec>(&name)
        .await
        .unwrap()
        .expect("Succeeded only once the output is an Artifact");
    let producer_rec = art.spec.producer.clone().unwrap();
    assert_eq!(
        (
            producer_rec.job.as_str(),
            producer_rec.node.as_str(),
            producer_rec.attempt
        ),
        ("p1", "w1", 1)
    );
    assert_eq!(art.spec.parents, vec![input.clone()]);
    assert_eq!(art.spec.counts.get("games"), Some(&500));
    assert_eq!(art.spec.format.as_deref(), Some("npz"));
    assert_eq!(art.spec.size, expected.len() as u64);
    for (k, v) in [
        ("type", "games"),
        ("rift.dev/job", "p1"),
        ("rift.dev/output", "games"),
        ("rift.dev/pool", "selfplay"),
    ] {
        assert_eq!(
            art.metadata.labels.get(k).map(String::as_str),
            Some(v),
            "{k}"
        );
    }
    assert_eq!(std::fs::read(server.cas_path(&name)).unwrap(), expected);
    let described = rift(&cluster.etcd.endpoints_csv(), &["describe", "job", "p1"]);
    assert!(
        described.stdout.contains(&format!("games: {input}"))
            && described
                .stdout
                .contains("games (format npz; labels type=games)"),
        "{}",
        described.stdout
    );

    // The input: a read-only hard link of the node cache's verified copy.
    let staged = worker.job_dir("p1").join("inputs/games").join(&input);
    let cached = worker
        .state
        .join("cache/sha256")
        .join(input.trim_start_matches("sha256-"));
    let (s, c) = (
        std::fs::metadata(&staged).unwrap(),
        std::fs::metadata(&cached).unwrap(),
    );
    assert_eq!((s.ino(), s.mode() & 0o777), (c.ino(), 0o444));
    assert_eq!(std::fs::read(&cached).unwrap(), seed);
    // Local output files go once recorded; nothing is left in the upload journal.
    let out_dir = worker.job_dir("p1").join("outputs/games");
    assert!(!out_dir.join("shard.npz").exists());
    assert!(!out_dir.join("shard.npz.counts.json").exists());
    eventually(
        Duration::from_secs(10),
        "the upload journal empties",
        || async {
            let left = std::fs::read_dir(worker.state.join("uploads"))
                .map(|d| d.count())
                .unwrap_or(0);
            (left == 0).then_some(())
        },
    )
    .await;

    // 2. A second job on the node: a cache hit (the store's copy is gone, and not needed), and
    // identical output bytes: still one Artifact, the first producer's.
    std::fs::remove_file(server.cas_path(&input)).unwrap();
    create_job(
        &cluster.store,
        "p2",
        producer(&input, "one", &marks.path().join("p2")),
        with_io(
            vec![JobInput::of("games", [input.clone()])],
            vec![games_output()],
        ),
    )
    .await;
    let done = finished(&cluster, "p2", 60).await;
    assert_eq!(phase(&done).0, JobPhase::Succeeded, "{:?}", phase(&done));
    let again = cluster
        .store
        .get::<ArtifactSpec>(&name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.spec.producer.unwrap().job,
        "p1",
        "one Artifact, first producer"
    );
    assert_eq!(again.metadata.uid, art.metadata.uid);
    assert!(artifacts_labelled(&cluster, "p2").await.is_empty());

    // 3. Damaged bytes in the store: detected, retried, never run on; the job fails saying so.
    let other = pattern(1024 * 1024, 9);
    let damaged = cluster.push(&other, "other.bin", "type=seed");
    let mut flipped = other.clone();
    flipped[4096] ^= 0xff;
    std::fs::write(server.cas_path(&damaged), &flipped).unwrap();
    let marker = marks.path().join("p3");
    create_job(
        &cluster.store,
        "p3",
        producer(&damaged, "x", &marker),
        with_io(
            vec![JobInput::of("games", [damaged.clone()])],
            vec![games_output()],
        ),
    )
    .await;
    let done = finished(&cluster, "p3", 60).await;
    let (ph, _, message) = phase(&done);
    assert_eq!(ph, JobPhase::Failed, "{message}");
    assert!(message.contains("gave up after 3"), "{message}");
    assert!(message.contains("damaged"), "{message}");
    assert!(!marker.exists(), "the job never ran on damaged bytes");
    let cache_copy = worker
        .state
        .join("cache/sha256")
        .join(damaged.trim_start_matches("sha256-"));
    assert!(!cache_copy.exists(), "damaged bytes never enter the cache");

    // 4. An input naming an artifact that does not exist: the job fails and says what to do.
    let unknown = artifact_name(b"never pushed");
    let marker = marks.path().join("p4");
    create_job(
        &cluster.store,
        "p4",
        producer(&unknown, "x", &marker),
        with_io(vec![JobInput::of("games", [unknown.clone()])], vec![]),
    )
    .await;
    let done = finished(&cluster, "p4", 60).await;
    let (ph, _, message) = phase(&done);
    assert_eq!(ph, JobPhase::Failed, "{message}");
    assert!(
        message.contains(&unknown) && message.contains("does not exist"),
        "{message}"
    );
    assert!(!marker.exists());
    worker.kill_shims();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_queued_while_the_store_is_down_survive_an_agent_sigkill_and_are_recorded_once() {
    let cluster = Cluster::start().await;
    let mut server = S3Server::start();
    cluster.use_s3(&server, "  partSize: 5242880\n");
    let mut worker = cluster.worker("w1", &[]);
    let _log = LogOnPanic(worker.state.join("agent.log"));
    server.stop();
    // A job that seals three shards and exits while the store is down.
    create_job(
        &cluster.store,
        "sp",
        sh(r#"echo '{"a_count_name_longer_than_sixty_three_characters_is_refused_by_artifacts": 1}' > "$RIFT_OUTPUTS/games/s1.npz.counts.json"
for i in 1 2 3; do printf "shard $i" > "$RIFT_OUTPUTS/games/.s$i"; mv "$RIFT_OUTPUTS/games/.s$i" "$RIFT_OUTPUTS/games/s$i.npz"; done"#),
        with_io(vec![], vec![games_output()]),
    )
    .await;
    // The process is over, but the job is not finished: its outputs wait for the store.
    let waiting = eventually(Duration::from_secs(60), "sp uploading", || async {
        cluster.job("sp").await.filter(|j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.reason == "Uploading" && s.phase == JobPhase::Running)
        })
    })
    .await;
    assert!(
        phase(&waiting).2.contains("3 output file(s)"),
        "{:?}",
        phase(&waiting)
    );
    let journal = |w: &support::agent::TestAgent| {
        std::fs::read_dir(w.state.join("uploads"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "json")
                })
                .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(journal(&worker), 3);

    // SIGKILL the agent with the uploads queued, bring the store back, restart the agent.
    worker.kill();
    server.restart();
    worker.respawn();
    let done = finished(&cluster, "sp", 60).await;
    assert_eq!(phase(&done).0, JobPhase::Succeeded, "{:?}", phase(&done));
    let arts = artifacts_labelled(&cluster, "sp").await;
    assert_eq!(arts.len(), 3, "one Artifact per shard, none twice");
    for a in &arts {
        let bytes = std::fs::read(server.cas_path(a.name())).unwrap();
        assert_eq!(artifact_name(&bytes), a.name(), "stored bytes are whole");
        assert!(bytes.starts_with(b"shard "));
        // A sidecar whose counts make no valid Artifact costs the counts, never the bytes.
        assert!(a.spec.counts.is_empty(), "{:?}", a.spec.counts);
    }
    assert_eq!(journal(&worker), 0);
    worker.kill_shims();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sigkilled_mid_download_resumes_and_the_job_runs_on_verified_bytes() {
    let cluster = Cluster::start().await;
    let server = S3Server::start();
    cluster.use_s3(&server, "  partSize: 5242880\n");
    let mut worker = cluster.worker("w1", &[]);
    let _log = LogOnPanic(worker.state.join("agent.log"));
    let big = pattern(48 * 1024 * 1024 + 11, 5);
    let input = cluster.push(&big, "big.bin", "type=seed");
    let hex = artifact_name(&big)["sha256-".len()..].to_string();
    create_job(
        &cluster.store,
        "tr",
        sh(&format!(
            r#"test "$(sha256sum "$RIFT_INPUTS/model/{input}" | cut -d' ' -f1)" = {hex}"#
        )),
        with_io(vec![JobInput::of("model", [input.clone()])], vec![]),
    )
    .await;
    // Freeze the store once part of the download is on disk (the download stalls mid-way),
    // see the Job say it is staging, then SIGKILL the agent and let the store go on.
    let partial = worker.state.join(format!("cache/sha256/{hex}.partial"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::metadata(&partial).is_ok_and(|m| m.len() > 0) {
        assert!(std::time::Instant::now() < deadline, "no partial download");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.pause();
    let shown = eventually(Duration::from_secs(30), "staging shown", || async {
        let status = cluster.job("tr").await.and_then(|j| j.status)?;
        let s = status.staging.clone()?;
        (status.reason == "Staging" && s.total_bytes > 0).then_some(s)
    })
    .await;
    worker.kill();
    server.resume();
    let had = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(
        had > 0 && had < big.len() as u64,
        "killed mid-download ({had} bytes on disk)"
    );
    worker.respawn();
    let done = finished(&cluster, "tr", 90).await;
    assert_eq!(phase(&done).0, JobPhase::Succeeded, "{:?}", phase(&done));
    let cached = worker.state.join(format!("cache/sha256/{hex}"));
    assert_eq!(
        artifact_name(&std::fs::read(&cached).unwrap())["sha256-".len()..],
        hex
    );
    assert!(!partial.exists());
    // While it was staging, the Job said so with its bytes.
    assert_eq!(shown.total_bytes, big.len() as u64);
    assert!(shown.done_bytes <= shown.total_bytes);
    worker.kill_shims();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_high_watermark_only_cache_entries_no_job_uses_are_evicted() {
    let cluster = Cluster::start().await;
    let server = S3Server::start();
    cluster.use_s3(&server, "  partSize: 5242880\n");
    let worker = cluster.worker("w1", &[]);
    let _log = LogOnPanic(worker.state.join("agent.log"));
    let (old, used) = (pattern(100_000, 1), pattern(100_000, 2));
    let (old_name, used_name) = (
        cluster.push(&old, "old.bin", "type=seed"),
        cluster.push(&used, "used.bin", "type=seed"),
    );
    let cached = |name: &str| {
        worker
            .state
            .join("cache/sha256")
            .join(name.trim_start_matches("sha256-"))
    };
    create_job(
        &cluster.store,
        "done",
        sh("true"),
        with_io(vec![JobInput::of("m", [old_name.clone()])], vec![]),
    )
    .await;
    assert_eq!(
        phase(&finished(&cluster, "done", 60).await).0,
        JobPhase::Succeeded
    );
    create_job(
        &cluster.store,
        "running",
        sh("sleep 120"),
        with_io(vec![JobInput::of("m", [used_name.clone()])], vec![]),
    )
    .await;
    cluster.wait_running("running", 60).await;
    let r = rift(&cluster.etcd.endpoints_csv(), &["delete", "job", "done"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(cached(&old_name).exists() && cached(&used_name).exists());

    // Any disk is above 1 %: everything unpinned goes, the running job's input stays.
    cluster.use_s3(
        &server,
        "  partSize: 5242880\n  cache: {highPercent: 1, lowPercent: 0}\n",
    );
    eventually(
        Duration::from_secs(40),
        "the unused entry evicted",
        || async { (!cached(&old_name).exists()).then_some(()) },
    )
    .await;
    assert!(
        cached(&used_name).exists(),
        "a running job's input is pinned"
    );
    let staged = worker.job_dir("running").join("inputs/m").join(&used_name);
    assert_eq!(std::fs::read(staged).unwrap(), used);
    let job = cluster.job("running").await.unwrap();
    assert_eq!(phase(&job).0, JobPhase::Running);
    worker.kill_shims();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sigkilled_mid_upload_resumes_after_restart_with_one_whole_artifact() {
    let cluster = Cluster::start().await;
    let server = S3Server::start();
    cluster.use_s3(&server, "  partSize: 5242880\n");
    let mut worker = cluster.worker("w1", &[]);
    let _log = LogOnPanic(worker.state.join("agent.log"));
    // 48 MiB of one byte repeated: ten 5 MiB parts.
    create_job(
        &cluster.store,
        "tr",
        sh(r#"head -c 50331648 /dev/zero | tr '\0' 'm' > "$RIFT_OUTPUTS/games/.m" && mv "$RIFT_OUTPUTS/games/.m" "$RIFT_OUTPUTS/games/model.pt""#),
        with_io(vec![], vec![games_output()]),
    )
    .await;
    // Freeze the store once the agent has journaled a finished part (the multipart upload is
    // under way and cannot complete), SIGKILL the agent, let the store go on, start it again.
    let uploads = worker.state.join("uploads");
    let journaled_parts = || -> usize {
        std::fs::read_dir(&uploads)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".parts"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|j| j["parts"].as_object().map_or(0, |p| p.len()))
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while journaled_parts() == 0 {
        assert!(std::time::Instant::now() < deadline, "no part journaled");
        std::thread::sleep(Duration::from_millis(2));
    }
    server.pause();
    worker.kill();
    server.resume();
    let had = journaled_parts();
    assert!(
        (1..10).contains(&had),
        "killed mid-upload ({had} of 10 parts journaled)"
    );
    let expected = vec![b'm'; 50331648];
    let name = artifact_name(&expected);
    assert!(
        !server.cas_path(&name).exists(),
        "killed before the upload completed"
    );
    worker.respawn();
    let done = finished(&cluster, "tr", 90).await;
    assert_eq!(phase(&done).0, JobPhase::Succeeded, "{:?}", phase(&done));
    let arts = artifacts_labelled(&cluster, "tr").await;
    assert_eq!(arts.len(), 1, "one Artifact");
    assert_eq!(arts[0].name(), name);
    let stored = std::fs::read(server.cas_path(&name)).unwrap();
    assert!(stored == expected, "the stored bytes are whole");
    // The restarted agent sent only the parts the store did not have.
    let log = std::fs::read_to_string(worker.state.join("agent.log")).unwrap();
    let resumed: u64 = log
        .lines()
        .find(|l| l.contains("output upload resumed from its journal"))
        .and_then(|l| l.split("resumed_bytes=").nth(1))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the upload was not resumed:\n{log}"));
    assert!(
        resumed > 0 && resumed < expected.len() as u64,
        "resumed after {resumed} of {} bytes",
        expected.len()
    );
    assert!(
        std::fs::read_dir(&uploads).unwrap().next().is_none(),
        "journal and spooled bytes removed once recorded"
    );
    worker.kill_shims();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_s_bandwidth_limit_holds_both_directions_to_at_least_size_over_rate() {
    let cluster = Cluster::start().await;
    let server = S3Server::start();
    cluster.use_s3(&server, "  partSize: 5242880\n");
    let input_bytes = pattern(6 * 1024 * 1024, 9);
    let input = cluster.push(&input_bytes, "in.bin", "type=seed");
    // The first entry matches no node here (it would stall everything at 1 byte/s); the
    // second matches the worker (labelled worker=yes): 2 MiB/s each way.
    let rate = 2 * 1024 * 1024u64;
    cluster.use_s3(
        &server,
        &format!("  partSize: 5242880\n  bandwidth:\n  - nodeSelector: {{provider: elsewhere}}\n    uploadBytesPerSecond: 1\n    downloadBytesPerSecond: 1\n  - nodeSelector: {{worker: \"yes\"}}\n    uploadBytesPerSecond: {rate}\n    downloadBytesPerSecond: {rate}\n"),
    );
    let worker = cluster.worker("w1", &[]);
    let _log = LogOnPanic(worker.state.join("agent.log"));
    let marks = tempfile::tempdir().unwrap();
    let started = marks.path().join("started");
    let out_size = 6 * 1024 * 1024u64;
    let created = std::time::Instant::now();
    create_job(
        &cluster.store,
        "bw",
        sh(&format!(
            r#"set -e
touch {started}
head -c {out_size} /dev/urandom > "$RIFT_OUTPUTS/games/.o"
mv "$RIFT_OUTPUTS/games/.o" "$RIFT_OUTPUTS/games/out.npz""#,
            started = started.display()
        )),
        with_io(
            vec![JobInput::of("m", [input.clone()])],
            vec![games_output()],
        ),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let ran = std::time::Instant::now();
    let done = finished(&cluster, "bw", 60).await;
    let uploaded = std::time::Instant::now();
    assert_eq!(phase(&done).0, JobPhase::Succeeded, "{:?}", phase(&done));
    // Lower bounds only: a bucket may have saved up one burst (50 ms of its rate)
    // while idle.
    let least = |bytes: u64| {
        Duration::from_secs_f64(bytes as f64 / rate as f64) - rift::artifacts::bandwidth::BURST
    };
    let staging = ran - created;
    assert!(
        staging >= least(input_bytes.len() as u64),
        "the 6 MiB input was staged in {staging:?}, faster than 2 MiB/s"
    );
    let upload = uploaded - ran;
    assert!(
        upload >= least(out_size),
        "the 6 MiB output was uploaded in {upload:?}, faster than 2 MiB/s"
    );
    assert_eq!(artifacts_labelled(&cluster, "bw").await.len(), 1);
}
