//! Least privilege on a node, with real etcd, a real agent, real shims and real job processes:
//! jobs run as the configured user and cannot read the agent's state; everything rift writes
//! there is private, but for a job's own inputs and outputs, which its user (and no other)
//! reaches; secrets reach a job from files on the node and from nowhere else.
//!
//! The run-as user is `nobody` (present on every Debian system, so the test creates no user).
//! Switching users needs root: run as another user, the first test checks instead that the
//! agent refuses a `runAs` it could not honour.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use rift::api::job::EnvFromSource;
use rift::api::job_io::{JobInput, JobOutput};
use rift::api::{ArtifactSpec, JobPhase, JobSpec, Object};
use support::agent::{eventually, TestAgent};
use support::cli::{rift, rift_stdin};
use support::cluster::{agent_config, Cluster};
use support::etcd::EtcdCluster;
use support::fs::{files_containing, not_private_except};
use support::jobs::{bind, create_job, wait_phase};

fn attempt_log(agent: &TestAgent, job: &str) -> String {
    std::fs::read_to_string(agent.job_dir(job).join("attempts/1/output.log")).unwrap_or_default()
}

#[tokio::test]
async fn jobs_run_as_the_configured_user_and_cannot_read_the_agents_state() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    if !nix::unistd::Uid::effective().is_root() {
        // Without root no user can be switched to: the agent says so and does not start.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().display().to_string();
        let run = rift(
            &eps,
            &[
                "agent",
                "--name",
                "n1",
                "--state-dir",
                &state,
                "--run-as",
                "nobody",
            ],
        );
        assert!(!run.ok);
        assert!(run.stderr.contains("cannot switch users"), "{}", run.stderr);
        return;
    }
    let store = cluster.store().await;
    let mut client = cluster.client().await;
    let agent = TestAgent::start("n1", &eps, &["--run-as", "nobody"]);
    let state = agent.state.display().to_string();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();

    // What the job sees of itself and of the agent's files (it may not list the state
    // directory nor read a file in it; the directory is traverse-only, 0711, so that jobs reach
    // their data); its progress and result written the usual way (the result by a write to a
    // temporary file and a rename).
    let who = r#"
        echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) user=$USER home=$HOME umask=$(umask)"
        if ls "$STATE" >/dev/null 2>&1; then echo "READ $STATE"; else echo "denied $STATE"; fi
        for f in "$STATE/jobs/who/run.json" "$STATE/agent.heartbeat" "$STATE/jobs/who/attempts/1/output.log"; do
            if cat "$f" >/dev/null 2>&1; then echo "READ $f"; else echo "denied $f"; fi
        done
        echo '{"games": 7}' >> "$RIFT_PROGRESS_FILE"
        echo '{"model": "m1"}' > "$RIFT_RESULT_FILE.tmp" && mv "$RIFT_RESULT_FILE.tmp" "$RIFT_RESULT_FILE"
    "#;
    create_job(&store, "who", who, |s| {
        s.env.insert("STATE".into(), state.clone());
    })
    .await;
    // A hostile job: its result "file" is a link to a root-only file it cannot read itself.
    let swap = r#"ln -s "$STATE/jobs/who/run.json" "$RIFT_RESULT_FILE"; sleep 1"#;
    create_job(&store, "swap", swap, |s| {
        s.env.insert("STATE".into(), state.clone());
    })
    .await;
    bind(&mut client, "who", "n1").await;
    let r = wait_phase(
        &client,
        "n1",
        "who",
        JobPhase::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    let log = attempt_log(&agent, "who");
    let uid = nobody.uid.as_raw();
    let gid = nobody.gid.as_raw();
    assert!(
        log.starts_with(&format!(
            "uid={uid} gid={gid} groups={gid} user=nobody home={} umask=0022\n",
            nobody.dir.display()
        )),
        "{log}"
    );
    assert!(
        !log.contains("READ"),
        "the job read the agent's state:\n{log}"
    );
    assert_eq!(log.matches("denied").count(), 4, "{log}");
    assert_eq!(r.progress.get("games"), Some(&7.0), "progress is copied in");
    assert_eq!(r.result, Some(serde_json::json!({"model": "m1"})));

    // A workdir the job's user may not enter (the agent's keys) fails the start, saying so.
    let keys = agent.state.join("pki").display().to_string();
    create_job(&store, "private-dir", "pwd", |s| s.workdir = Some(keys)).await;
    bind(&mut client, "private-dir", "n1").await;
    let r = wait_phase(
        &client,
        "n1",
        "private-dir",
        JobPhase::Failed,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        r.message.contains("as user nobody in workdir") && r.message.contains("Permission denied"),
        "{}",
        r.message
    );

    bind(&mut client, "swap", "n1").await;
    let r = wait_phase(
        &client,
        "n1",
        "swap",
        JobPhase::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        r.result, None,
        "a link to a root-only file is never published"
    );
    let shim_log =
        std::fs::read_to_string(agent.job_dir("swap").join("attempts/1/shim.log")).unwrap();
    assert!(
        shim_log.contains("not a regular file owned by the job's user"),
        "{shim_log}"
    );

    // Every directory rift made is 0700 and every file 0600, job records and logs included
    // (`agent.log` is the test harness's capture of the agent's stderr, not rift's file); the
    // state directory itself is traverse-only (0711) for jobs' data, and these jobs have none.
    let harness_log = agent.state.join("agent.log").display().to_string();
    let bad: Vec<String> = not_private_except(&agent.state, &[("", 0o711)])
        .into_iter()
        .filter(|p| !p.starts_with(&harness_log))
        .collect();
    assert_eq!(bad, Vec::<String>::new());
    // The jobs' private exchange directories went with their attempts.
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rift-who-1-") || n.starts_with("rift-swap-1-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn env_from_values_reach_the_job_and_no_etcd_key_log_or_report() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let store = cluster.store().await;
    let mut client = cluster.client().await;
    let secrets = tempfile::tempdir().unwrap();
    let wandb = format!("wandb-{}", uuid::Uuid::new_v4());
    let hf = format!("hf-{}", uuid::Uuid::new_v4());
    std::fs::write(
        secrets.path().join("wandb.env"),
        format!("# W&B\nWANDB_API_KEY={wandb}\nexport HF_TOKEN='{hf}'\nPLAIN=from-file\n"),
    )
    .unwrap();
    let secrets_dir = secrets.path().display().to_string();
    let agent = TestAgent::start("n1", &eps, &["--secrets-dir", &secrets_dir]);

    // The job proves it got the values by their hashes, never printing them.
    let script = r#"printf %s "$WANDB_API_KEY" | sha256sum; printf %s "$HF_TOKEN" | sha256sum; echo "PLAIN=$PLAIN""#;
    create_job(&store, "envs", script, |s| {
        s.env_from = vec![EnvFromSource {
            file: "wandb.env".into(),
        }];
        s.env.insert("PLAIN".into(), "from-env".into());
    })
    .await;
    create_job(&store, "missing", "true", |s| {
        s.env_from = vec![EnvFromSource {
            file: "missing.env".into(),
        }];
    })
    .await;
    create_job(&store, "outside", "true", |s| {
        s.env_from = vec![EnvFromSource {
            file: agent.state.join("agent.heartbeat").display().to_string(),
        }];
    })
    .await;
    for job in ["envs", "missing", "outside"] {
        bind(&mut client, job, "n1").await;
    }
    wait_phase(
        &client,
        "n1",
        "envs",
        JobPhase::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    let sha = |v: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(v.as_bytes()))
    };
    let log = attempt_log(&agent, "envs");
    assert_eq!(
        log,
        format!("{}  -\n{}  -\nPLAIN=from-env\n", sha(&wandb), sha(&hf)),
        "envFrom values reach the job; `env` wins for a name in both"
    );

    let missing = wait_phase(
        &client,
        "n1",
        "missing",
        JobPhase::Failed,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        missing.message.contains("missing.env")
            && missing.message.contains("create it on this node"),
        "{}",
        missing.message
    );
    let outside = wait_phase(
        &client,
        "n1",
        "outside",
        JobPhase::Failed,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        outside
            .message
            .contains("outside this node's secrets directory"),
        "{}",
        outside.message
    );

    // Neither value is in any etcd key or value, the agent's log, or the state directory.
    let all = client
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    for kv in all.kvs() {
        let text = format!(
            "{} {}",
            String::from_utf8_lossy(kv.key()),
            String::from_utf8_lossy(kv.value())
        );
        assert!(
            !text.contains(&wandb) && !text.contains(&hf),
            "in etcd: {text}"
        );
    }
    for secret in [&wandb, &hf] {
        assert_eq!(
            files_containing(&agent.state, secret),
            Vec::<PathBuf>::new()
        );
    }
}

#[test]
fn apply_warns_about_secret_looking_env_and_applies_anyway() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let manifest = "apiVersion: rift/v1\nkind: Job\nmetadata: {name: train}\nspec:\n  command: [python3, train.py]\n  env: {HF_TOKEN: hf_abc, BOARD: hex8}\n---\napiVersion: rift/v1\nkind: Pool\nmetadata: {name: sp}\nspec:\n  replicas: 1\n  template:\n    spec:\n      command: [selfplay]\n      env: {WANDB_API_KEY: k}\n";
    let run = rift_stdin(&eps, &["apply", "-f", "-"], manifest);
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("job/train created"), "{}", run.stdout);
    for field in ["spec.env.HF_TOKEN", "spec.template.spec.env.WANDB_API_KEY"] {
        assert!(
            run.stderr.contains("warning: <stdin>: document") && run.stderr.contains(field),
            "{field}: {}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("BOARD"), "{}", run.stderr);
    assert!(run.stderr.contains("envFrom"), "{}", run.stderr);
}

/// `cat`s `path` as user `uid` (group `gid`, no other groups): whether it could.
fn reads_as(uid: u32, gid: u32, path: &std::path::Path) -> bool {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("cat")
        .arg(path)
        .uid(uid)
        .gid(gid)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_as_job_reads_inputs_and_writes_outputs_no_other_user_reaches() {
    if !nix::unistd::Uid::effective().is_root() {
        // Without root there is no runAs (the test above checks the agent refuses one).
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let cluster = Cluster::start().await;
    let ep = cluster.etcd.endpoints_csv();
    let objects = cluster.dir.path().join("objects");
    cluster.apply(&format!(
        "apiVersion: rift/v1\nkind: ArtifactStore\nmetadata: {{name: default}}\nspec:\n  url: file://{}\n  cache: {{highPercent: 99, lowPercent: 98}}\n",
        objects.display()
    ));
    let seed_file = cluster.dir.path().join("seed.bin");
    let seed = b"seed bytes only the job's user may read".to_vec();
    std::fs::write(&seed_file, &seed).unwrap();
    let r = rift(&ep, &["artifact", "push", seed_file.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    let hex = |b: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b))
    };
    let input = format!("sha256-{}", hex(&seed));
    let cfg = agent_config(cluster.dir.path(), "w1", "{worker: \"yes\"}");
    let worker = TestAgent::start("w1", &ep, &["--config", &cfg, "--run-as", "nobody"]);

    // The job, as `nobody`: reads its input into a sealed output, keeps an unsealed file, and
    // tries to change the cache's bytes (write, chmod, unlink) and to move its outputs away.
    let script = r#"set -u
f="$RIFT_INPUTS/seed/$INPUT"
cat "$f" > "$RIFT_OUTPUTS/out/.r.tmp" || echo CANNOT-READ
printf ' and more' >> "$RIFT_OUTPUTS/out/.r.tmp"
echo unsealed > "$RIFT_OUTPUTS/out/.kept.tmp"
if (echo x >> "$f") 2>/dev/null; then echo WROTE-INPUT; fi
if chmod 666 "$f" 2>/dev/null; then echo CHMODDED-INPUT; fi
if rm -f "$f" 2>/dev/null; then echo REMOVED-INPUT; fi
if mv "$RIFT_OUTPUTS/out" "$RIFT_OUTPUTS/moved" 2>/dev/null; then echo MOVED-OUTPUT; fi
mv "$RIFT_OUTPUTS/out/.r.tmp" "$RIFT_OUTPUTS/out/result.bin" && echo sealed"#;
    let mut spec = JobSpec::with_command(["sh", "-c", script]);
    spec.node_selector.insert("worker".into(), "yes".into());
    spec.env.insert("INPUT".into(), input.clone());
    spec.inputs = vec![JobInput::of("seed", [input.clone()])];
    spec.outputs = vec![JobOutput {
        name: "out".into(),
        labels: Default::default(),
        format: None,
    }];
    cluster
        .store
        .create(&Object::new("reader", spec))
        .await
        .unwrap();
    let status = eventually(Duration::from_secs(60), "reader finished", || async {
        let status = cluster.job("reader").await?.status?;
        status.phase.is_finished().then_some(status)
    })
    .await;
    assert_eq!(
        status.phase,
        JobPhase::Succeeded,
        "{}: {}\n{}",
        status.message,
        attempt_log(&worker, "reader"),
        worker.log()
    );
    // Succeeded only once the output is an Artifact.
    let mut expected = seed.clone();
    expected.extend_from_slice(b" and more");
    let made = format!("sha256-{}", hex(&expected));
    let art = cluster
        .store
        .get::<ArtifactSpec>(&made)
        .await
        .unwrap()
        .expect("the job's output is an Artifact");
    assert_eq!(art.spec.producer.unwrap().job, "reader");
    assert_eq!(art.spec.parents, vec![input.clone()]);
    assert_eq!(attempt_log(&worker, "reader"), "sealed\n", "as nobody");

    // The cache entry is the root-owned read-only inode it was, bytes unchanged.
    let cached = worker.state.join("cache/sha256").join(hex(&seed));
    let meta = std::fs::metadata(&cached).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o444));
    assert_eq!(std::fs::read(&cached).unwrap(), seed);

    // The job's user reads its data; another user (`daemon`, not in nobody's group) reads
    // none of it, though every path is known.
    let job = worker.job_dir("reader");
    let staged = job.join("inputs/seed").join(&input);
    let kept = job.join("outputs/out/.kept.tmp");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let daemon = nix::unistd::User::from_name("daemon").unwrap().unwrap();
    for path in [&staged, &kept] {
        assert!(
            reads_as(nobody.uid.as_raw(), nobody.gid.as_raw(), path),
            "{}",
            path.display()
        );
        assert!(
            !reads_as(daemon.uid.as_raw(), daemon.gid.as_raw(), path),
            "{}",
            path.display()
        );
    }
    assert!(!reads_as(
        daemon.uid.as_raw(),
        daemon.gid.as_raw(),
        &job.join("run.json")
    ));

    // What is open is exactly the chain to the job's data and the data, nothing else.
    let harness_log = worker.state.join("agent.log").display().to_string();
    let open = [
        ("", 0o711),
        ("jobs", 0o711),
        ("jobs/reader", 0o711),
        ("jobs/reader/inputs", 0o750),
        ("jobs/reader/inputs/seed", 0o750),
        ("jobs/reader/outputs", 0o750),
        ("jobs/reader/outputs/out", 0o750),
    ];
    let bad: Vec<String> = not_private_except(&worker.state, &open)
        .into_iter()
        .filter(|p| !p.starts_with(&harness_log))
        .collect();
    assert_eq!(bad, Vec::<String>::new());
    let out = std::fs::metadata(job.join("outputs/out")).unwrap();
    assert_eq!(
        (out.uid(), out.gid()),
        (nobody.uid.as_raw(), nobody.gid.as_raw())
    );
    let inputs = std::fs::metadata(job.join("inputs")).unwrap();
    assert_eq!((inputs.uid(), inputs.gid()), (0, nobody.gid.as_raw()));
    worker.kill_shims();
}
