//! Limits under hostile input, with real etcd and a real agent: half-sent requests and floods
//! of connections or log followers leave the agent responsive and its memory bounded; hostile
//! YAML and oversized applies are refused quickly, with a message, changing nothing.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rift::api::JobPhase;
use support::agent::{eventually, TestAgent};
use support::cli::rift;
use support::etcd::EtcdCluster;
use support::jobs::{bind, create_job, wait_phase};
use support::proc::rss_kib;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `to` from the loopback address `from` (another "client machine").
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// `(status, body)` of `GET path` sent from `from`, or why not, within 5 s.
async fn get_from(from: &str, to: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut s = connect_from(from, to).await.map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let code = raw
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not HTTP: {raw:?}"))?;
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

/// True once the peer has closed `s` (EOF or reset), waiting at most `within`.
async fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a 503 before the close
            Err(_) => return false,
        }
    }
}

/// Sends a follow request from `from` and reads the answer's head (the stream stays open).
async fn follow(from: &str, to: SocketAddr, path: &str) -> (String, TcpStream) {
    let mut s = connect_from(from, to).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut head))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    (String::from_utf8_lossy(&head[..n]).into_owned(), s)
}

fn agent_with_config(eps: &str, yaml: &str) -> (TestAgent, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.yaml");
    std::fs::write(&config, yaml).unwrap();
    let agent = TestAgent::start("n1", eps, &["--config", &config.display().to_string()]);
    (agent, dir)
}

async fn wait_healthy(addr: SocketAddr) {
    eventually(Duration::from_secs(20), "the agent answers", || async {
        get_from("127.0.0.1", addr, "/healthz")
            .await
            .ok()
            .filter(|(c, _)| *c == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_dropped_after_the_header_timeout_and_others_are_still_served() {
    // Plain HTTP: these probes speak raw HTTP/1.1 from chosen source addresses. The limits
    // are the transport's as much as TLS's (a handshake must finish within the same
    // deadline), but this measures them without TLS.
    let cluster = EtcdCluster::plaintext(1);
    let (agent, _dir) =
        agent_with_config(&cluster.endpoints_csv(), "http: {headerReadTimeout: 2s}\n");
    let addr: SocketAddr = agent.addr().parse().unwrap();
    wait_healthy(addr).await;
    let pid = agent.pid().unwrap();
    let rss_before = rss_kib(pid).unwrap();

    // 1,000 requests from one address that never finish their headers (and some that send
    // nothing at all).
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut s = connect_from("127.0.0.1", addr).await.unwrap();
        if i % 4 != 0 {
            s.write_all(b"GET /status HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                .await
                .unwrap();
        }
        held.push(s);
    }
    let opened = Instant::now();
    // Other clients are served at once; the flooding address is told why it is not.
    let (code, body) = get_from("127.0.0.2", addr, "/healthz").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    // (Answers to refused connections are capped too: this one may need a try or two.)
    let body = eventually(
        Duration::from_millis(1500),
        "a 503 for the flooding address",
        || async {
            get_from("127.0.0.1", addr, "/healthz")
                .await
                .ok()
                .filter(|(c, _)| *c == 503)
        },
    )
    .await
    .1;
    assert!(body.contains("limit per address"), "{body}");
    let rss_during = rss_kib(pid).unwrap();

    // Every half-sent request is closed by the agent within the timeout (and some slack).
    let mut still_open = 0;
    for s in &mut held {
        let left = Duration::from_secs(8).saturating_sub(opened.elapsed());
        if !closed_by_peer(s, left.max(Duration::from_millis(10))).await {
            still_open += 1;
        }
    }
    eprintln!(
        "1,000 half-sent requests: all closed by the agent {:.1} s after they were opened; \
         agent RSS {rss_before} KiB before, {rss_during} KiB during",
        opened.elapsed().as_secs_f64()
    );
    assert_eq!(
        still_open, 0,
        "connections the agent kept past its header timeout"
    );
    let (code, _) = get_from("127.0.0.1", addr, "/healthz").await.unwrap();
    assert_eq!(
        code, 200,
        "the flooding address is served again once its requests are gone"
    );
    assert!(
        rss_during < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_during} KiB under 1,000 half-sent requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_followers_are_capped_with_a_clear_503_and_a_place_frees_when_one_leaves() {
    // Plain HTTP: these probes speak raw HTTP/1.1 from chosen source addresses. The limits
    // are the transport's as much as TLS's (a handshake must finish within the same
    // deadline), but this measures them without TLS.
    let cluster = EtcdCluster::plaintext(1);
    let eps = cluster.endpoints_csv();
    let store = cluster.store().await;
    let mut client = cluster.client().await;
    let (agent, _dir) = agent_with_config(&eps, "http: {maxFollowStreams: 16}\n");
    let addr: SocketAddr = agent.addr().parse().unwrap();
    create_job(
        &store,
        "chatty",
        "while true; do echo tick; sleep 0.1; done",
        |_| {},
    )
    .await;
    bind(&mut client, "chatty", "n1").await;
    wait_phase(
        &client,
        "n1",
        "chatty",
        JobPhase::Running,
        Duration::from_secs(30),
    )
    .await;
    let pid = agent.pid().unwrap();
    let rss_before = rss_kib(pid).unwrap();

    // 2,000 follow requests from 20 addresses: 16 stream, every other one gets a 503 that
    // says which limit it hit.
    let mut streams = Vec::new();
    let mut refused_follow = 0;
    let mut refused_other = 0;
    for i in 0..2000 {
        let from = format!("127.0.0.{}", 10 + i % 20);
        let (head, s) = follow(&from, addr, "/v1/jobs/chatty/logs?follow=true").await;
        if head.starts_with("HTTP/1.1 200") {
            streams.push(s);
        } else if head.starts_with("HTTP/1.1 503") && head.contains("followed logs, its limit") {
            refused_follow += 1;
        } else if head.starts_with("HTTP/1.1 503") {
            refused_other += 1;
        } else {
            panic!("unexpected answer: {head:?}");
        }
    }
    let rss_during = rss_kib(pid).unwrap();
    eprintln!(
        "2,000 follow requests: {} streamed, {refused_follow} refused by the follow cap, \
         {refused_other} by a connection cap; agent RSS {rss_before} KiB before, {rss_during} KiB \
         during",
        streams.len()
    );
    assert_eq!(streams.len(), 16, "exactly the cap streams");
    assert_eq!(refused_follow + refused_other, 2000 - 16);
    assert!(refused_follow > 0);
    // Everything else is still served, and memory stayed bounded.
    let (code, _) = get_from("127.0.0.2", addr, "/status").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        rss_during < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_during} KiB with 16 followers and 2,000 requests"
    );

    // A follower that leaves frees its place (noticed at the next line written to it).
    drop(streams.pop());
    let (_, again) = eventually(Duration::from_secs(10), "a freed follow place", || async {
        let (head, s) = follow("127.0.0.3", addr, "/v1/jobs/chatty/logs?follow=true&tail=1").await;
        head.starts_with("HTTP/1.1 200").then_some((head, s))
    })
    .await;

    // Shutting down is held up neither by followers nor by a half-sent request (the header
    // timeout is 10 s here).
    let mut half = connect_from("127.0.0.4", addr).await.unwrap();
    half.write_all(b"GET /status HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let stopping = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    eventually(Duration::from_secs(6), "the agent exits", || async {
        (!support::agent::process_alive(pid)).then_some(())
    })
    .await;
    eprintln!(
        "SIGTERM with {} followers and a half-sent request open: exited in {:.1} s",
        streams.len() + 1,
        stopping.elapsed().as_secs_f64()
    );
    drop((again, streams, half));
}

/// 200 KB of nested flow collections (this took about a minute to refuse before).
fn nested_job() -> String {
    format!(
        "apiVersion: rift/v1\nkind: Job\nmetadata: {{name: x}}\nspec:\n  command: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    )
}

#[test]
fn hostile_nested_yaml_is_refused_fast_by_every_reader_of_user_files() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("nested.yaml");
    std::fs::write(&nested, nested_job()).unwrap();
    let nested = nested.display().to_string();
    let hosts = dir.path().join("hosts.yaml");
    std::fs::write(
        &hosts,
        format!("hosts: {}{}\n", "{a: ".repeat(50_000), "}".repeat(50_000)),
    )
    .unwrap();
    let hosts = hosts.display().to_string();
    let state = dir.path().join("state").display().to_string();
    for args in [
        vec!["apply", "--dry-run", "-f", &nested],
        vec!["delete", "-f", &nested],
        vec!["import", "hosts", &hosts],
        vec![
            "agent",
            "--name",
            "n1",
            "--state-dir",
            &state,
            "--config",
            &nested,
        ],
    ] {
        let started = Instant::now();
        let run = rift("http://127.0.0.1:1", &args);
        assert!(!run.ok, "{args:?}");
        assert!(
            run.stderr.contains("nest more than 64 deep") && run.stderr.contains("line "),
            "{args:?}: {}",
            run.stderr
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn an_apply_larger_than_etcd_takes_is_refused_whole_with_its_size() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let dir = tempfile::tempdir().unwrap();
    let jobs = |n: usize| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "apiVersion: rift/v1\nkind: Job\nmetadata: {{name: big-{i}}}\nspec:\n  command: [sh]\n  env: {{BLOB: {}}}\n",
                    "x".repeat(70_000)
                )
            })
            .collect::<Vec<_>>()
            .join("---\n")
    };
    // 1.7 MB trips etcd's own request limit; 2.8 MB trips gRPC's, which etcd sets above it.
    for n in [25, 40] {
        let path = dir.path().join(format!("{n}.yaml"));
        std::fs::write(&path, jobs(n)).unwrap();
        let run = rift(&eps, &["apply", "-f", &path.display().to_string()]);
        assert!(!run.ok, "{n} jobs applied?");
        for part in [
            "MiB in one transaction",
            "nothing was written",
            "smaller groups",
            "--max-request-bytes",
        ] {
            assert!(run.stderr.contains(part), "{part}: {}", run.stderr);
        }
    }
    let mut client = cluster.client().await;
    let stored = client
        .get(
            "/rift/v1/jobs/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(stored.count(), 0, "all or nothing: nothing");

    // Larger than rift reads at all: refused before reading, and etcd is never asked.
    let huge = dir.path().join("huge.yaml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let run = rift(
        "http://127.0.0.1:1",
        &["apply", "-f", &huge.display().to_string()],
    );
    assert!(!run.ok);
    assert!(
        run.stderr.contains("larger than rift reads"),
        "{}",
        run.stderr
    );
}

/// `rift apply` reads what it applies in transactions of up to 128 gets: stored objects that
/// are large together (here 6 Jobs of ~1 MB, more than gRPC's default 4 MiB answer) are read
/// whole, so applying them again is answered "unchanged", not refused.
#[tokio::test]
async fn applying_again_over_large_stored_objects_reads_them_whole() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let dir = tempfile::tempdir().unwrap();
    let blob = "x".repeat(1_000_000);
    let files: Vec<String> = (0..6)
        .map(|i| {
            let path = dir.path().join(format!("large-{i}.yaml"));
            std::fs::write(
                &path,
                format!(
                    "apiVersion: rift/v1\nkind: Job\nmetadata: {{name: large-{i}}}\nspec:\n  command: [sh]\n  env: {{BLOB: {blob}}}\n"
                ),
            )
            .unwrap();
            path.display().to_string()
        })
        .collect();
    for f in &files {
        let run = rift(&eps, &["apply", "-f", f]);
        assert!(run.ok, "{}", run.stderr);
    }
    let mut args = vec!["apply"];
    for f in &files {
        args.extend(["-f", f.as_str()]);
    }
    let run = rift(&eps, &args);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.matches("unchanged").count(), 6, "{}", run.stdout);
}
