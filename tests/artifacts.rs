//! `rift artifact push/pull` against a real etcd and a real S3-compatible server (s3s-fs):
//! bytes and records, and the faults the data plane must survive — damaged stored bytes, the
//! store down, wrong credentials, bad input — and the transfer layer itself against the same
//! server: uploads resumed from their journal, or started over when the store forgot them.

mod support;

use std::path::Path;

use support::cli::{rift, rift_stdin, Run};
use support::etcd::EtcdCluster;
use support::s3::{S3Server, BUCKET, SECRET_KEY};

/// Applies an ArtifactStore `default` on `server`, reading credentials from `creds` (a file
/// name in the secrets dir the commands are given).
fn use_s3(endpoints: &str, server: &S3Server, creds: &str) {
    let yaml = format!(
        "apiVersion: rift/v1\nkind: ArtifactStore\nmetadata: {{name: default}}\nspec:\n  url: s3://{BUCKET}\n  endpoint: {}\n  credentialsFile: {creds}\n  partSize: 5242880\n",
        server.endpoint()
    );
    let r = rift_stdin(endpoints, &["apply", "-f", "-"], &yaml);
    assert!(r.ok, "{}", r.stderr);
}

/// One etcd member and one S3 server, the ArtifactStore pointing at it with the right
/// credentials (`s3.env` in the returned secrets directory).
fn s3_cluster() -> (EtcdCluster, String, S3Server, tempfile::TempDir) {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    S3Server::write_credentials(dir.path(), "s3.env", SECRET_KEY);
    use_s3(&ep, &server, "s3.env");
    (cluster, ep, server, dir)
}

fn artifact(endpoints: &str, secrets: &Path, args: &[&str]) -> Run {
    let mut all = vec!["artifact", "--secrets-dir", secrets.to_str().unwrap()];
    all.extend_from_slice(args);
    rift(endpoints, &all)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn names(endpoints: &str) -> Vec<String> {
    let r = rift(endpoints, &["get", "artifacts", "-o", "name"]);
    assert!(r.ok, "{}", r.stderr);
    r.stdout.lines().map(str::to_string).collect()
}

#[test]
fn pushed_bytes_pull_back_identical_once_per_content_with_lineage() {
    let (_cluster, ep, server, dir) = s3_cluster();
    let d = dir.path();

    // 12 MiB + 5: three parts of 5 MiB, the last one short.
    let bytes = pattern(12 * 1024 * 1024 + 5, 3);
    std::fs::write(d.join("games.npz"), &bytes).unwrap();
    let games = d.join("games.npz");
    let r = artifact(
        &ep,
        d,
        &[
            "push",
            games.to_str().unwrap(),
            "-l",
            "type=games",
            "--format",
            "npz",
            "--count",
            "games=5000",
        ],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("created"), "{}", r.stdout);
    assert!(r.stderr.contains("100%"), "progress is shown: {}", r.stderr);
    let listed = names(&ep);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let name = listed[0].trim_start_matches("artifact/").to_string();
    let hex = name.trim_start_matches("sha256-");
    let stored = server.object_path(&format!("cas/sha256/{}/{hex}", &hex[..2]));
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        bytes,
        "stored under its digest"
    );

    // The same bytes from another file: nothing new.
    std::fs::write(d.join("again.npz"), &bytes).unwrap();
    let again = d.join("again.npz");
    let r = artifact(&ep, d, &["push", again.to_str().unwrap()]);
    assert!(
        r.ok && r.stdout.contains("unchanged"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert_eq!(names(&ep).len(), 1);

    let out = d.join("copy.npz");
    let r = artifact(&ep, d, &["pull", &name, "-o", out.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);

    // Lineage: a model made from the games.
    std::fs::write(d.join("model.pt"), pattern(4096, 9)).unwrap();
    let model = d.join("model.pt");
    let r = artifact(
        &ep,
        d,
        &[
            "push",
            model.to_str().unwrap(),
            "--parent",
            &name,
            "-l",
            "type=model",
        ],
    );
    assert!(r.ok, "{}", r.stderr);
    let r = rift(&ep, &["describe", "artifact", &name]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("used by (1)") && r.stdout.contains("type=model"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("games=5000"), "{}", r.stdout);
}

#[test]
fn damaged_bytes_in_the_store_are_retried_then_refused_and_never_written() {
    let (_cluster, ep, server, dir) = s3_cluster();
    let d = dir.path();
    let bytes = pattern(3 * 1024 * 1024, 5);
    std::fs::write(d.join("m.pt"), &bytes).unwrap();
    let r = artifact(&ep, d, &["push", d.join("m.pt").to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    let name = names(&ep)[0].trim_start_matches("artifact/").to_string();
    let hex = name.trim_start_matches("sha256-").to_string();
    let stored = server.object_path(&format!("cas/sha256/{}/{hex}", &hex[..2]));
    let mut damaged = std::fs::read(&stored).unwrap();
    damaged[2_000_000] ^= 0x20;
    std::fs::write(&stored, &damaged).unwrap();

    let out = d.join("pulled.pt");
    let r = artifact(&ep, d, &["pull", &name, "-o", out.to_str().unwrap()]);
    assert!(!r.ok, "a damaged artifact must not pull: {}", r.stdout);
    assert!(r.stderr.contains("gave up after 3 tries"), "{}", r.stderr);
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    assert!(!out.exists(), "damaged bytes never land under the name");
    assert!(!d.join("pulled.pt.partial").exists());
}

#[test]
fn wrong_credentials_a_store_that_is_down_and_bad_input_record_nothing() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let mut server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    S3Server::write_credentials(d, "wrong.env", "not-the-secret");
    S3Server::write_credentials(d, "s3.env", SECRET_KEY);
    std::fs::write(d.join("f.bin"), pattern(100_000, 1)).unwrap();
    let file = d.join("f.bin");
    let file = file.to_str().unwrap();

    // No ArtifactStore at all.
    let r = artifact(&ep, d, &["push", file]);
    assert!(
        !r.ok && r.stderr.contains("no ArtifactStore"),
        "{}",
        r.stderr
    );

    // Wrong secret: refused by the server, clearly, nothing recorded, no value echoed.
    use_s3(&ep, &server, "wrong.env");
    let r = artifact(&ep, d, &["push", file]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr.contains(&server.endpoint()) || r.stderr.contains("s3://"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("not-the-secret"),
        "the secret leaked: {}",
        r.stderr
    );
    assert!(names(&ep).is_empty());

    // A credentials file that is not there.
    use_s3(&ep, &server, "missing.env");
    let r = artifact(&ep, d, &["push", file]);
    assert!(
        !r.ok && r.stderr.contains("credentials file"),
        "{}",
        r.stderr
    );

    // The store down: the push fails, nothing recorded; back up: it goes through.
    use_s3(&ep, &server, "s3.env");
    server.stop();
    let r = artifact(&ep, d, &["push", file]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(names(&ep).is_empty());
    server.restart();
    let r = artifact(&ep, d, &["push", file]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(names(&ep).len(), 1);

    // Bad input: an unknown parent, a name that is no digest, an unknown artifact.
    let r = artifact(
        &ep,
        d,
        &[
            "push",
            file,
            "--parent",
            &format!("sha256-{}", "ab".repeat(32)),
        ],
    );
    assert!(!r.ok && r.stderr.contains("does not exist"), "{}", r.stderr);
    let r = artifact(
        &ep,
        d,
        &["pull", "my-model", "-o", d.join("x").to_str().unwrap()],
    );
    assert!(
        !r.ok && r.stderr.contains("not a sha256 digest"),
        "{}",
        r.stderr
    );
    let r = artifact(
        &ep,
        d,
        &[
            "pull",
            &format!("sha256-{}", "cd".repeat(32)),
            "-o",
            d.join("x").to_str().unwrap(),
        ],
    );
    assert!(!r.ok && r.stderr.contains("not found"), "{}", r.stderr);
    assert!(!d.join("x").exists());
    assert_eq!(names(&ep).len(), 1);
}

/// Waits until `path` holds at least `bytes`, or panics after 60 s.
fn wait_for_size(path: &Path, bytes: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::metadata(path).map_or(0, |m| m.len()) < bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never reached {bytes} bytes",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_pull_killed_mid_transfer_resumes_and_a_killed_push_leaves_nothing_behind() {
    let (_cluster, ep, server, dir) = s3_cluster();
    let d = dir.path();
    let bytes = pattern(96 * 1024 * 1024, 11);
    let src = d.join("big.npz");
    std::fs::write(&src, &bytes).unwrap();
    let secrets = d.to_str().unwrap();

    // Push killed mid-way: no object under the digest's key, no record.
    let mut push = support::cli::rift_command(
        &ep,
        &[
            "artifact",
            "--secrets-dir",
            secrets,
            "push",
            src.to_str().unwrap(),
        ],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    let mut err = std::io::BufReader::new(push.stderr.take().unwrap());
    // Wait for the first progress line of the upload itself (after the hash pass).
    while !line.contains("uploading") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(n > 0, "the push ended before it uploaded");
    }
    push.kill().unwrap();
    push.wait().unwrap();
    assert!(names(&ep).is_empty(), "a killed push records nothing");
    let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let key = format!("cas/sha256/{}/{hex}", &hex[..2]);
    assert!(
        !server.object_path(&key).exists(),
        "no object under the key of a killed upload"
    );
    let r = artifact(&ep, d, &["push", src.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    let name = names(&ep)[0].trim_start_matches("artifact/").to_string();
    assert_eq!(names(&ep).len(), 1, "no duplicate artifact");

    // Pull killed once 8 MiB have arrived: the rerun continues from the partial file.
    let out = d.join("copy.npz");
    let partial = d.join("copy.npz.partial");
    let mut pull = support::cli::rift_command(
        &ep,
        &[
            "artifact",
            "--secrets-dir",
            secrets,
            "pull",
            &name,
            "-o",
            out.to_str().unwrap(),
        ],
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    wait_for_size(&partial, 8 * 1024 * 1024);
    pull.kill().unwrap();
    pull.wait().unwrap();
    assert!(!out.exists(), "killed before it finished");
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < bytes.len() as u64);
    let r = artifact(&ep, d, &["pull", &name, "-o", out.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("resuming an interrupted pull"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(&out).unwrap(), bytes, "no corrupt file");
    assert!(!partial.exists());
}

/// The store `server` opened as the agent opens it, 5 MiB parts.
fn open_s3(server: &S3Server, secrets: &Path) -> rift::artifacts::Store {
    S3Server::write_credentials(secrets, "s3.env", SECRET_KEY);
    let spec: rift::api::artifact_store::ArtifactStoreSpec = serde_json::from_value(
        serde_json::json!({"url": format!("s3://{BUCKET}/some/prefix"), "endpoint": server.endpoint(),
            "credentialsFile": "s3.env", "partSize": 5242880}),
    )
    .unwrap();
    rift::artifacts::open(&spec, secrets).unwrap()
}

/// Parts journaled in `journal` (0 when there is none).
fn journaled(journal: &Path) -> usize {
    std::fs::read(journal)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|j| j["parts"].as_object().map(|p| p.len()))
        .unwrap_or(0)
}

/// Runs a journaled upload of `file` until `journal` holds a finished part, then drops it
/// (the in-process equivalent of a kill: nothing after the last journaled part is kept).
async fn interrupted_upload(store: &rift::artifacts::Store, file: &Path, journal: &Path) {
    let upload = rift::artifacts::upload_journaled(
        store,
        file,
        Some(journal),
        &rift::artifacts::transfer::quiet,
    );
    tokio::select! {
        r = upload => panic!("finished before it was interrupted: {r:?}"),
        _ = async { while journaled(journal) == 0 { tokio::time::sleep(std::time::Duration::from_millis(1)).await } } => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_from_its_journal_and_one_the_store_forgot_starts_over() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let store = open_s3(&server, dir.path());
    // Slow enough to interrupt between parts on any machine: 40 MiB at 20 MiB/s.
    store.limits.upload.set_rate(Some(20 * 1024 * 1024));
    let bytes = pattern(40 * 1024 * 1024 + 9, 4);
    let file = dir.path().join("big.npz");
    std::fs::write(&file, &bytes).unwrap();
    let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let key = format!("some/prefix/cas/sha256/{}/{hex}", &hex[..2]);
    let journal = dir.path().join("big.parts");

    // Interrupted, then resumed: only the parts the store lacked are sent.
    interrupted_upload(&store, &file, &journal).await;
    let had = journaled(&journal);
    assert!(!server.object_path(&key).exists());
    let up = rift::artifacts::upload_journaled(
        &store,
        &file,
        Some(&journal),
        &rift::artifacts::transfer::quiet,
    )
    .await
    .unwrap();
    assert!(
        up.resumed_bytes >= had as u64 * 5242880 && up.resumed_bytes < bytes.len() as u64,
        "{up:?}"
    );
    assert!(
        std::fs::read(server.object_path(&key)).unwrap() == bytes,
        "whole and right"
    );
    assert!(
        !journal.exists(),
        "the journal goes once the upload completes"
    );

    // Interrupted, then the store aborts the upload (lifecycle rule, GC): the next run finds
    // the upload gone, starts over from byte 0 and still stores the right bytes once.
    std::fs::remove_file(server.object_path(&key)).unwrap();
    interrupted_upload(&store, &file, &journal).await;
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
    let mp = store.multipart.clone().expect("S3 has upload ids");
    mp.parts
        .abort_multipart(
            &key.as_str().into(),
            &j["uploadId"].as_str().unwrap().to_string(),
        )
        .await
        .unwrap();
    let up = rift::artifacts::upload_journaled(
        &store,
        &file,
        Some(&journal),
        &rift::artifacts::transfer::quiet,
    )
    .await
    .unwrap();
    assert_eq!(up.resumed_bytes, 0, "started over");
    assert!(
        std::fs::read(server.object_path(&key)).unwrap() == bytes,
        "whole and right"
    );
    assert!(!journal.exists());

    // A journal that names other bytes (the file was replaced) is never resumed onto.
    let other = pattern(12 * 1024 * 1024, 5);
    std::fs::write(&file, &other).unwrap();
    std::fs::write(&journal, serde_json::to_vec(&j).unwrap()).unwrap();
    let up = rift::artifacts::upload_journaled(
        &store,
        &file,
        Some(&journal),
        &rift::artifacts::transfer::quiet,
    )
    .await
    .unwrap();
    assert_eq!(up.resumed_bytes, 0);
    let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&other));
    let key = format!("some/prefix/cas/sha256/{}/{hex}", &hex[..2]);
    assert!(std::fs::read(server.object_path(&key)).unwrap() == other);
}
