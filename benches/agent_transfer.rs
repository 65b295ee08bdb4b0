//! The agent's data plane under a large transfer: agent RSS while it uploads a job's output and
//! stages it back as another job's input, and whether a bandwidth limit is honoured.
//!
//! `cargo bench --bench agent_transfer` prints a table and one JSON line. Settings
//! (environment): `RIFT_BENCH_MIB` (size of the agent transfer, default 2048),
//! `RIFT_BENCH_LIMIT_MIB` (size of each limited transfer, default 256).
//!
//! - **agent RSS**: one etcd member, one real S3-compatible server (s3s-fs on loopback), one
//!   real agent. A job writes `RIFT_BENCH_MIB` of pseudo-random bytes as an output; the agent
//!   hashes, uploads (16 MiB parts, two in flight) and records it. A second job takes that
//!   artifact as its input; the agent downloads it into its node cache, verifying sha256, and
//!   links it in. The agent's VmRSS is sampled every 20 ms: idle (before), peak during each
//!   phase. Each phase's rate is bytes over the time from the job's end (upload: it includes
//!   the hash pass and the record) or creation (download: until the job runs).
//! - **bandwidth**: the same transfer code (`rift::artifacts::upload` / `download`) in this
//!   process against the same server: unlimited, then limited to half the slower unlimited
//!   direction; upload time counts from the `uploading` stage (after the unlimited hash pass).
//!   The limited rate over the limit is reported (it must not exceed 1, and should be close).
//!
//! Disk: the output file, the store's copy (and its parts while a multipart upload completes)
//! and the cache entry: about 3 × `RIFT_BENCH_MIB` at the peak, all removed at the end.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rift::api::job_io::{JobInput, JobOutput};
use support::cluster::{create_job, sh, Cluster};
use support::proc::env_or;
use support::s3::{S3Server, BUCKET};

fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples the agent's VmRSS every 20 ms until `done` says so; returns the peak (KiB).
async fn peak_rss_while<F, Fut>(pid: u32, mut done: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut peak = 0;
    let mut last_check = Instant::now() - Duration::from_secs(1);
    loop {
        peak = peak.max(vm_kib(pid, "VmRSS:"));
        if last_check.elapsed() >= Duration::from_millis(200) {
            if done().await {
                return peak;
            }
            last_check = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Remembers when the `uploading` stage began.
#[derive(Default)]
struct Stages {
    uploading: std::sync::Mutex<Option<Instant>>,
}

impl rift::artifacts::Progress for Stages {
    fn advanced(&self, _done: u64, _total: u64) {}
    fn stage(&self, name: &'static str) {
        if name == "uploading" {
            *self.uploading.lock().unwrap() = Some(Instant::now());
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn finished(cluster: &Cluster, job: &str) -> bool {
    let j = cluster.job(job).await;
    let phase = j.and_then(|j| j.status).map(|s| s.phase);
    match phase {
        Some(p) if p.is_finished() => {
            assert_eq!(p, rift::api::JobPhase::Succeeded, "{job} failed");
            true
        }
        _ => false,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let size_mib: u64 = env_or("RIFT_BENCH_MIB", 2048);
    let limit_mib: u64 = env_or("RIFT_BENCH_LIMIT_MIB", 256);
    let cluster = Cluster::start().await;
    let server = S3Server::start();
    let creds = cluster.use_s3(&server, "");
    let worker = cluster.worker("w1", &[]);
    let pid = support::cluster::agent_pid(&worker).as_raw() as u32;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = (0..50)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            vm_kib(pid, "VmRSS:")
        })
        .max()
        .unwrap_or(0);

    // Upload: a job seals `size_mib` of random bytes (they differ every run, so nothing is
    // already in the store).
    let bytes = size_mib * 1024 * 1024;
    let marks = tempfile::tempdir().unwrap();
    let sealed = marks.path().join("sealed");
    create_job(
        &cluster.store,
        "up",
        sh(&format!(
            r#"set -e
head -c {bytes} /dev/urandom > "$RIFT_OUTPUTS/games/.big"
mv "$RIFT_OUTPUTS/games/.big" "$RIFT_OUTPUTS/games/big.bin"
touch {sealed}"#,
            sealed = sealed.display()
        )),
        |spec| {
            spec.node_selector.insert("worker".into(), "yes".into());
            spec.outputs = vec![JobOutput {
                name: "games".into(),
                labels: Default::default(),
                format: None,
            }]
        },
    )
    .await;
    eprintln!(
        "idle agent: {:.1} MiB; a job writes {size_mib} MiB",
        mib(idle)
    );
    let waiting = Instant::now();
    while !sealed.exists() {
        assert!(
            waiting.elapsed() < Duration::from_secs(120),
            "the job did not seal its output: {:?}",
            cluster.job("up").await.and_then(|j| j.status)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("sealed; the agent uploads it");
    let t0 = Instant::now();
    let up_peak = peak_rss_while(pid, || finished(&cluster, "up")).await;
    let up_secs = t0.elapsed().as_secs_f64();
    let sel: rift::api::selector::LabelSelector = "rift.dev/job=up".parse().unwrap();
    let arts = cluster
        .store
        .list::<rift::api::artifact::ArtifactSpec>(&sel)
        .await
        .unwrap()
        .0;
    let name = arts[0].metadata.name.clone();

    eprintln!("uploaded in {up_secs:.1} s; a job takes it as its input");
    // The agent kept the uploaded bytes in its node cache: drop them, so the input is
    // downloaded (a cache hit would measure nothing).
    let hex = name.trim_start_matches("sha256-").to_string();
    let cached = worker.state.join("cache/sha256").join(&hex);
    std::fs::remove_file(&cached).unwrap_or_else(|e| panic!("{}: {e}", cached.display()));
    // Download: a job takes it as its input.
    let t0 = Instant::now();
    create_job(&cluster.store, "down", sh("true"), |spec| {
        spec.node_selector.insert("worker".into(), "yes".into());
        spec.inputs = vec![JobInput::of("m", [name.clone()])]
    })
    .await;
    let down_peak = peak_rss_while(pid, || finished(&cluster, "down")).await;
    let down_secs = t0.elapsed().as_secs_f64();
    // Free the disk before the next part: the cache entry and the stored copy.
    let state = worker.state.clone();
    drop(worker);
    let _ = std::fs::remove_dir_all(state);
    let _ = std::fs::remove_file(server.cas_path(&name));

    eprintln!("staged in {down_secs:.1} s; bandwidth next");
    // Bandwidth: the transfer code in this process, unlimited then at half that rate.
    let spec: rift::api::artifact_store::ArtifactStoreSpec = serde_json::from_value(
        serde_json::json!({"url": format!("s3://{BUCKET}"), "endpoint": server.endpoint(),
            "credentialsFile": creds.display().to_string()}),
    )
    .unwrap();
    let store = rift::artifacts::open(&spec, cluster.dir.path()).unwrap();
    let file = marks.path().join("limited.bin");
    let q = &rift::artifacts::transfer::quiet;
    let mut rates = Vec::new();
    for (i, limit) in [None, Some(())].into_iter().enumerate() {
        let status = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "head -c {} /dev/urandom > {}",
                    limit_mib * 1024 * 1024,
                    file.display()
                ),
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let rate_limit = limit.map(|_| {
            let (up, down): (f64, f64) = rates[0];
            ((up.min(down) / 2.0) * 1024.0 * 1024.0) as u64
        });
        store.limits.upload.set_rate(rate_limit);
        store.limits.download.set_rate(rate_limit);
        // The hash pass before an upload is not limited: time from the `uploading` stage on.
        let stages = Stages::default();
        let up = rift::artifacts::upload(&store, &file, &stages)
            .await
            .unwrap();
        let up_s = stages
            .uploading
            .lock()
            .unwrap()
            .expect("an uploading stage")
            .elapsed()
            .as_secs_f64();
        let digest = up.digest;
        let dest = marks.path().join(format!("back{i}.bin"));
        let t = Instant::now();
        rift::artifacts::download(&store, &digest, &dest, q)
            .await
            .unwrap();
        let down_s = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&dest);
        let _ = std::fs::remove_file(server.cas_path(&digest.artifact_name()));
        rates.push((limit_mib as f64 / up_s, limit_mib as f64 / down_s));
        if let Some(l) = rate_limit {
            rates.push((l as f64 / 1048576.0, l as f64 / 1048576.0));
        }
    }
    let _ = std::fs::remove_file(&file);
    let (free_up, free_down) = rates[0];
    let (lim_up, lim_down) = rates[1];
    let (limit, _) = rates[2];

    println!("agent transfer, {size_mib} MiB (one real agent, s3s-fs on loopback)");
    println!("| figure | value |\n|---|---|");
    println!("| agent VmRSS idle | {:.1} MiB |", mib(idle));
    println!(
        "| agent VmRSS peak, upload | {:.1} MiB (+{:.1}) |",
        mib(up_peak),
        mib(up_peak.saturating_sub(idle))
    );
    println!(
        "| agent VmRSS peak, download | {:.1} MiB (+{:.1}) |",
        mib(down_peak),
        mib(down_peak.saturating_sub(idle))
    );
    println!(
        "| upload (hash, parts, record) | {:.1} MiB/s |",
        size_mib as f64 / up_secs
    );
    println!(
        "| download (staging until the job ran) | {:.1} MiB/s |",
        size_mib as f64 / down_secs
    );
    println!("bandwidth limit, {limit_mib} MiB each way (rift::artifacts in this process)");
    println!(
        "| direction | unlimited | limit | limited | limited / limit |\n|---|---|---|---|---|"
    );
    println!(
        "| upload | {free_up:.1} MiB/s | {limit:.1} MiB/s | {lim_up:.1} MiB/s | {:.3} |",
        lim_up / limit
    );
    println!(
        "| download | {free_down:.1} MiB/s | {limit:.1} MiB/s | {lim_down:.1} MiB/s | {:.3} |",
        lim_down / limit
    );
    println!(
        "{}",
        serde_json::json!({
            "size_mib": size_mib, "idle_rss_mib": mib(idle),
            "upload_peak_rss_mib": mib(up_peak), "download_peak_rss_mib": mib(down_peak),
            "upload_mib_s": size_mib as f64 / up_secs, "download_mib_s": size_mib as f64 / down_secs,
            "limit_mib_s": limit, "limited_upload_ratio": lim_up / limit,
            "limited_download_ratio": lim_down / limit,
        })
    );
}
