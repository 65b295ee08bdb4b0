//! The dashboard's cost and speed against a big cluster, measured in a real headless browser.
//!
//! `cargo bench --bench dashboard` prints a table and one JSON line. Settings (environment):
//! `RIFT_BENCH_NODES` (default 1000 hollow nodes), `RIFT_BENCH_JOBS` (10000 jobs, placed and
//! Running on them), `RIFT_BENCH_SECS` (60, each measuring window), `RIFT_BENCH_CHANGES` (100).
//!
//! - the `rift dashboard` process's CPU (% of one core) and RSS: with no browser, then with a
//!   browser on the live nodes page;
//! - change in etcd → visible in the browser: a Job is created; the page (jobs filtered to the
//!   probes, live) notes with a MutationObserver when its row appears; p50/p99 over
//!   `RIFT_BENCH_CHANGES` changes one at a time. Both clocks are this machine's wall clock;
//! - page weight: each page's HTML, and the assets a first visit loads (cached afterwards).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use rift::api::{JobPhase, JobSpec, NodeSpec, Object};
use rift::bench::env::{cpu_seconds, rss_mib, TempDir};
use rift::bench::schedule::{hollow, quiet_settings};
use rift::store::Store;
use support::agent::TestAgent;
use support::browser::Browser;
use support::dashboard::TestDashboard;
use support::etcd::EtcdCluster;
use support::proc::{env_or, percentile};

const PAGES: [&str; 7] = [
    "/",
    "/nodes",
    "/jobs",
    "/training",
    "/events",
    "/voters",
    "/tunnels",
];

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// CPU (% of one core) and RSS (MiB) of `pid` over `secs`.
async fn measure(pid: u32, secs: u64) -> (f64, f64) {
    let before = cpu_seconds(pid).unwrap();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let used = cpu_seconds(pid).unwrap() - before;
    (100.0 * used / secs as f64, rss_mib(pid).unwrap())
}

async fn running(store: &Store) -> usize {
    let all = rift::api::selector::LabelSelector::everything();
    store
        .list::<JobSpec>(&all)
        .await
        .map(|(jobs, _)| {
            jobs.iter()
                .filter(|j| {
                    j.status
                        .as_ref()
                        .is_some_and(|s| s.phase == JobPhase::Running)
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let nodes = env_or("RIFT_BENCH_NODES", 1000) as usize;
    let jobs = env_or("RIFT_BENCH_JOBS", 10_000) as usize;
    let secs = env_or("RIFT_BENCH_SECS", 60);
    let changes = env_or("RIFT_BENCH_CHANGES", 100) as usize;

    let etcd = EtcdCluster::single();
    let ep = etcd.endpoints_csv();
    let store = etcd.store().await;
    let dir = TempDir::new("dashboard").unwrap();
    let setup = Instant::now();
    let (cluster, register_s) = hollow(
        &etcd.access(),
        nodes,
        quiet_settings(8, 5),
        dir.path(),
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    // The leader runs no jobs itself: its Node is cordoned before it starts.
    let cordoned = NodeSpec {
        unschedulable: true,
        ..NodeSpec::default()
    };
    store.create(&Object::new("ctl", cordoned)).await.unwrap();
    let _leader = TestAgent::start("ctl", &ep, &["--controllers", "--lease-ttl", "5"]);
    futures::stream::iter(0..jobs)
        .map(|i| {
            let store = store.clone();
            async move {
                let job = Object::new(format!("job-{i:05}"), JobSpec::with_command(["true"]));
                store.create(&job).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let deadline = Instant::now() + Duration::from_secs(900);
    while running(&store).await < jobs {
        assert!(
            Instant::now() < deadline,
            "the jobs did not all run within 15 min"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "{nodes} hollow nodes (alive in {register_s:.0} s) and {jobs} jobs Running after {:.0} s",
        setup.elapsed().as_secs_f64()
    );

    let dash = TestDashboard::start(&ep);
    let pid = dash.pid();
    // Let it list, build its first snapshots and settle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (cpu_alone, rss_alone) = measure(pid, secs).await;

    let mut b = Browser::launch(1400, 900).await;
    b.goto(&dash.url("/nodes")).await;
    b.wait_for(
        "(document.getElementById('conn') || {}).textContent === 'live'",
        Duration::from_secs(30),
    )
    .await
    .expect("the nodes page goes live");
    let (cpu_watched, rss_watched) = measure(pid, secs).await;

    // Change → visible, on a live page that lists the probes.
    b.goto(&dash.url("/jobs?q=probe-")).await;
    b.wait_for(
        "(document.getElementById('conn') || {}).textContent === 'live'",
        Duration::from_secs(30),
    )
    .await
    .expect("the jobs page goes live");
    b.eval(
        "window.seen = {}; new MutationObserver(() => { \
           for (const r of document.querySelectorAll('tr[id^=\"job-probe-\"]')) \
             if (!window.seen[r.id]) window.seen[r.id] = Date.now(); \
         }).observe(document.getElementById('live'), {childList: true, subtree: true}); true",
    )
    .await;
    let mut latencies = Vec::new();
    for i in 0..changes {
        let name = format!("probe-{i:04}");
        let at = now_ms();
        store
            .create(&Object::new(name.as_str(), JobSpec::with_command(["true"])))
            .await
            .unwrap();
        let seen = b
            .wait_for(
                &format!("window.seen['job-{name}']"),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|| panic!("{name} never appeared"));
        latencies.push(seen.as_f64().unwrap() - at);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );

    // Page weight: each page's HTML, and the assets a first visit loads once.
    let mut weights = Vec::new();
    for path in PAGES {
        let (_, body) = support::http::get(&dash.addr, path, Duration::from_secs(30)).unwrap();
        weights.push((path, body.len()));
    }
    let assets: usize = rift::dashboard::assets::ASSETS
        .iter()
        .map(|a| a.bytes.len())
        .sum();
    drop(b);

    println!(
        "dashboard: {nodes} hollow nodes x 8 GPUs, {jobs} Running jobs, 1 etcd member, release build"
    );
    println!("dashboard process, no browser ({secs} s):        CPU {cpu_alone:.1} % of one core, RSS {rss_alone:.0} MiB");
    println!("dashboard process, browser on /nodes ({secs} s): CPU {cpu_watched:.1} % of one core, RSS {rss_watched:.0} MiB");
    println!(
        "change in etcd -> visible in the browser ({} changes): p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms",
        latencies.len()
    );
    for (path, bytes) in &weights {
        println!("page {path:<10} HTML {:>7.1} KiB", *bytes as f64 / 1024.0);
    }
    println!(
        "assets loaded once per visit (then cached): {:.1} KiB",
        assets as f64 / 1024.0
    );
    println!(
        "{}",
        serde_json::json!({
            "nodes": nodes, "jobs": jobs,
            "cpu_percent_alone": cpu_alone, "rss_mib_alone": rss_alone,
            "cpu_percent_watched": cpu_watched, "rss_mib_watched": rss_watched,
            "change_visible_p50_ms": p50, "change_visible_p99_ms": p99, "change_visible_max_ms": max,
            "page_bytes": weights.iter().map(|(p, b)| (p.to_string(), *b)).collect::<std::collections::BTreeMap<_, _>>(),
            "asset_bytes": assets,
        })
    );
    cluster.stop().await;
}
