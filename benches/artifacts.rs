//! Artifact transfer throughput through rift beside a plain client, against the same real
//! S3-compatible server (s3s-fs on loopback, tests/support/s3.rs) in the same run, and the
//! memory of the `rift artifact` process during the transfer.
//!
//! `cargo bench --bench artifacts` prints a table and one JSON line. Settings (environment):
//! `RIFT_BENCH_MIB` (file size, default 1024), `RIFT_BENCH_TRIALS` (default 3; the best of each
//! is reported, so page-cache warm-up and other load on the machine count least).
//!
//! - **plain upload / download**: the `object_store` crate alone, in this process: a
//!   multipart upload of the file in the same part size (16 MiB, 2 parts in flight), and a
//!   streamed GET written to a file — no hashing, no verification, no record.
//! - **rift push / pull**: the release `rift artifact push FILE` / `pull NAME -o FILE` as an
//!   operator runs them: hash the file, skip bytes already stored (never the case here: each
//!   trial pushes different bytes), multipart upload while hashing again, create the Artifact
//!   in etcd; pull reads the record, streams to `FILE.partial` while hashing, fsyncs, renames.
//! - **peak RSS** is the process's VmHWM at exit (read from /proc while it runs), beside the
//!   same binary's VmHWM for `rift version` (startup alone).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, WriteMultipart};
use support::cli::rift_command;
use support::etcd::EtcdCluster;
use support::proc::env_or;
use support::s3::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PART: usize = 16 * 1024 * 1024;

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Runs `rift ARGS` to the end; its wall time and peak RSS (MiB).
fn timed_rift(endpoints: &str, args: &[&str]) -> (Duration, f64) {
    let start = Instant::now();
    let mut child = rift_command(endpoints, args)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "rift {args:?} failed");
            break;
        }
        peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(10));
    }
    (start.elapsed(), peak as f64 / 1024.0)
}

fn write_file(path: &Path, mib: u64, seed: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = vec![0u8; 1024 * 1024];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

async fn plain_upload(store: &Arc<dyn ObjectStore>, path: &Path, key: &str) -> Duration {
    let start = Instant::now();
    let upload = store.put_multipart(&Key::from(key)).await.unwrap();
    let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
    let mut file = tokio::fs::File::open(path).await.unwrap();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        w.wait_for_capacity(2).await.unwrap();
        w.write(&buf[..n]);
    }
    w.finish().await.unwrap();
    start.elapsed()
}

async fn plain_download(store: &Arc<dyn ObjectStore>, key: &str, path: &Path) -> Duration {
    let start = Instant::now();
    let mut stream = store.get(&Key::from(key)).await.unwrap().into_stream();
    let file = tokio::fs::File::create(path).await.unwrap();
    let mut out = tokio::io::BufWriter::with_capacity(1024 * 1024, file);
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk.unwrap()).await.unwrap();
    }
    out.flush().await.unwrap();
    out.into_inner().sync_all().await.unwrap();
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let mib = env_or("RIFT_BENCH_MIB", 1024);
    let trials = env_or("RIFT_BENCH_TRIALS", 3).max(1);
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    S3Server::write_credentials(d, "s3.env", SECRET_KEY);
    let yaml = format!(
        "apiVersion: rift/v1\nkind: ArtifactStore\nmetadata: {{name: default}}\nspec:\n  url: s3://{BUCKET}\n  endpoint: {}\n  credentialsFile: s3.env\n",
        server.endpoint()
    );
    let r = support::cli::rift_stdin(&ep, &["apply", "-f", "-"], &yaml);
    assert!(r.ok, "{}", r.stderr);
    let plain: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(server.endpoint())
            .with_allow_http(true)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .unwrap(),
    );
    let secrets = d.to_str().unwrap().to_string();
    let (mut best_pu, mut best_pd, mut best_ru, mut best_rd) =
        (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    let (mut rss_push, mut rss_pull) = (0f64, 0f64);
    for trial in 0..trials {
        // Fresh bytes per trial and per path, so nothing is ever already stored.
        let (a, b) = (d.join("plain.bin"), d.join("rift.bin"));
        write_file(&a, mib, 2 * trial + 1);
        write_file(&b, mib, 2 * trial + 2);
        let key = format!("plain/{trial}");
        let pu = plain_upload(&plain, &a, &key).await;
        let pd = plain_download(&plain, &key, &d.join("plain.out")).await;
        let (ru, push_rss) = timed_rift(
            &ep,
            &[
                "artifact",
                "--secrets-dir",
                &secrets,
                "push",
                b.to_str().unwrap(),
            ],
        );
        let hex = {
            let (digest, _) = rift::artifacts::hash_file(&b).await.unwrap();
            digest.artifact_name()
        };
        let out = d.join("rift.out");
        let (rd, pull_rss) = timed_rift(
            &ep,
            &[
                "artifact",
                "--secrets-dir",
                &secrets,
                "pull",
                &hex,
                "-o",
                out.to_str().unwrap(),
            ],
        );
        eprintln!(
            "trial {trial}: plain up {pu:?} down {pd:?}; rift push {ru:?} ({push_rss:.1} MiB) pull {rd:?} ({pull_rss:.1} MiB)"
        );
        best_pu = best_pu.min(pu);
        best_pd = best_pd.min(pd);
        best_ru = best_ru.min(ru);
        best_rd = best_rd.min(rd);
        rss_push = rss_push.max(push_rss);
        rss_pull = rss_pull.max(pull_rss);
        for f in [&a, &b, &d.join("plain.out"), &out] {
            let _ = std::fs::remove_file(f);
        }
        for key in [
            server.object_path(&key),
            server.object_path(&rift::api::Digest::parse(&hex).unwrap().cas_key()),
        ] {
            let _ = std::fs::remove_file(key);
        }
    }
    let (_, idle_rss) = timed_rift(&ep, &["version", "--client"]);
    let rate = |t: Duration| mib as f64 / t.as_secs_f64();
    println!("{mib} MiB, best of {trials}, s3s-fs on loopback");
    println!("| figure | plain client | rift | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| upload | {:.0} MiB/s | {:.0} MiB/s (push) | {:.2} |",
        rate(best_pu),
        rate(best_ru),
        rate(best_ru) / rate(best_pu)
    );
    println!(
        "| download | {:.0} MiB/s | {:.0} MiB/s (pull) | {:.2} |",
        rate(best_pd),
        rate(best_rd),
        rate(best_rd) / rate(best_pd)
    );
    println!(
        "| peak RSS | - | push {rss_push:.1} MiB, pull {rss_pull:.1} MiB, `rift version` {idle_rss:.1} MiB | |"
    );
    println!(
        "{}",
        serde_json::json!({
            "mib": mib, "trials": trials,
            "plain_upload_mib_s": rate(best_pu), "rift_push_mib_s": rate(best_ru),
            "plain_download_mib_s": rate(best_pd), "rift_pull_mib_s": rate(best_rd),
            "push_peak_rss_mib": rss_push, "pull_peak_rss_mib": rss_pull,
            "startup_rss_mib": idle_rss,
        })
    );
}
