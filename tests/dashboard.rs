//! `rift dashboard` in a real headless Chromium against real clusters: every page loads with
//! no console error (CSP enforced), the nodes page lists every node, a job applied with
//! `rift apply` shows up without a reload within 3 s, a promotion shows on the training chart,
//! a job's output streams from its agent, a phone screen fits; etcd going away is said on the
//! page and recovered from; 10,000 jobs stay paginated; a browser that vanishes leaves the
//! server's connections and memory as they were.
//!
//! Screenshots land in `target/dashboard-screenshots/` (look at them).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rift::api::{JobSpec, Object};
use support::agent::{eventually, TestAgent};
use support::browser::Browser;
use support::cli::rift_stdin;
use support::dashboard::TestDashboard;
use support::etcd::EtcdCluster;
use support::http;
use support::proc::rss_kib;

const CLUSTER: &str = r#"apiVersion: rift/v1
kind: Pool
metadata: {name: selfplay}
spec:
  replicas: 1
  template:
    metadata:
      labels: {board: hex8, players: "2"}
    spec:
      type: selfplay
      command: [sh, -c, 'i=0; while true; do i=$((i+25)); echo "{\"games\": $i}" >> "$RIFT_PROGRESS_FILE"; sleep 0.2; done']
---
apiVersion: rift/v1
kind: TrainingTarget
metadata: {name: hex8-2p}
spec:
  board: hex8
  players: 2
  selfplaySelector: {board: hex8, players: "2"}
  firstTrainingGames: 100
  retrainGames: 100000
  cooldownSeconds: 3600
  training:
    spec:
      type: training
      command: [sh, -c, 'sleep 1; echo weights > "$RIFT_OUTPUTS/model/model.pt"']
  evaluation:
    promoteWinRate: 0.55
    template:
      spec:
        type: evaluation
        command: [sh, -c, 'echo "{\"winRate\": 0.61}" > "$RIFT_RESULT_FILE"']
---
apiVersion: rift/v1
kind: Job
metadata: {name: talker}
spec:
  command: [sh, -c, 'i=0; while true; do i=$((i+1)); echo "line $i <b>not bold</b>"; sleep 0.2; done']
"#;

const PAGES: [(&str, &str); 8] = [
    ("/", "overview"),
    ("/nodes", "nodes"),
    ("/jobs", "jobs"),
    ("/jobs/talker", "job"),
    ("/training", "training"),
    ("/events", "events"),
    ("/voters", "voters"),
    ("/tunnels", "tunnels"),
];

/// The live updates of the page are connected (the header says `live`).
const LIVE: &str = "(document.getElementById('conn') || {}).textContent === 'live'";

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots")
}

async fn open(b: &mut Browser, url: &str) {
    b.goto(url).await;
    if b.wait_for(LIVE, Duration::from_secs(10)).await.is_none() {
        let at = b.eval("location.href + ' ' + document.title").await;
        panic!(
            "{url}: live updates never connected (showing {at}); errors: {:?}",
            b.take_errors()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_real_cluster_in_a_real_browser() {
    let etcd = EtcdCluster::single();
    let ep = etcd.endpoints_csv();
    let leader = TestAgent::start(
        "ctl",
        &ep,
        &["--controllers", "--lease-ttl", "2", "--gpus", "H100x2"],
    );
    let worker = TestAgent::start("w1", &ep, &["--gpus", "H100x1"]);
    // The trained model goes through the real data plane: uploaded by the agent into a local
    // store, recorded as an Artifact by the leader, staged into the evaluation.
    let objects = tempfile::tempdir().unwrap();
    let store = format!(
        "apiVersion: rift/v1\nkind: ArtifactStore\nmetadata: {{name: default}}\nspec:\n  url: file://{}\n  cache: {{highPercent: 99, lowPercent: 98}}\n---\n{CLUSTER}",
        objects.path().display()
    );
    let applied = rift_stdin(&ep, &["apply", "-f", "-"], &store);
    assert!(applied.ok, "{}", applied.stderr);
    let dash = TestDashboard::start(&ep);
    let mut b = Browser::launch(1400, 900).await;

    // Every page loads, connects its live updates, and reports no error (CSP included).
    let t0 = Instant::now();
    for (path, name) in PAGES {
        open(&mut b, &dash.url(path)).await;
        println!("{path} live after {:?}", t0.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let errors = b.take_errors();
        assert!(errors.is_empty(), "{path}: {errors:?}");
        b.screenshot(&screenshot_dir().join(format!("{name}.png")))
            .await;
    }

    // The nodes page lists every node.
    open(&mut b, &dash.url("/nodes")).await;
    let nodes = b
        .wait_for(
            "[...document.querySelectorAll('tr[id^=node-]')].map(r => r.id).join(',') === 'node-ctl,node-w1'",
            Duration::from_secs(10),
        )
        .await;
    assert!(nodes.is_some(), "the nodes page lists ctl and w1");

    // A job applied with `rift apply` appears on the jobs page within 3 s, without a reload.
    open(&mut b, &dash.url("/jobs")).await;
    b.eval("window.notReloaded = true").await;
    let job = "apiVersion: rift/v1\nkind: Job\nmetadata: {name: fresh}\nspec: {command: [sh, -c, 'sleep 60']}\n";
    let applied_at = Instant::now();
    assert!(rift_stdin(&ep, &["apply", "-f", "-"], job).ok);
    let shown = b
        .wait_for(
            "window.notReloaded === true && !!document.getElementById('job-fresh')",
            Duration::from_secs(3),
        )
        .await;
    assert!(
        shown.is_some(),
        "the job did not appear within 3 s of rift apply"
    );
    println!("apply -> visible: {:?}", applied_at.elapsed());

    // A promotion shows on the training chart (pushed to the open page).
    open(&mut b, &dash.url("/training")).await;
    b.eval("window.notReloaded = true").await;
    let promoted = b
        .wait_for(
            "window.notReloaded === true && (() => { const c = document.querySelector('[data-name=chart-elo-hex8-2p]'); \
             return c && c.dataset.drawn === '1' && Number(c.dataset.points) >= 1 \
             && !!c.querySelector('canvas'); })()",
            Duration::from_secs(90),
        )
        .await;
    assert!(
        promoted.is_some(),
        "no promotion on the Elo chart within 90 s"
    );
    println!("promotion shown after {:?}", applied_at.elapsed());
    let row = b
        .eval("document.querySelector('table.runs tr.promoted').textContent")
        .await;
    assert!(
        row.as_str().unwrap().contains("+78"),
        "ΔElo of a 0.61 win rate: {row}"
    );
    b.wait_for(
        "[...document.querySelectorAll('.chart')].every(c => c.dataset.drawn === '1')",
        Duration::from_secs(5),
    )
    .await;
    b.screenshot(&screenshot_dir().join("training-promoted.png"))
        .await;

    // A job's output streams from its agent, escaped, and keeps coming.
    open(&mut b, &dash.url("/jobs/talker")).await;
    let first = b
        .wait_for(
            "(document.getElementById('log').textContent.match(/line (\\d+)/g) || []).length",
            Duration::from_secs(15),
        )
        .await
        .expect("the talker's output reaches the page");
    let more = b
        .wait_for(
            &format!(
                "(document.getElementById('log').textContent.match(/line (\\d+)/g) || []).length > {first}"
            ),
            Duration::from_secs(5),
        )
        .await;
    assert!(more.is_some(), "new lines keep arriving");
    let bold = b.eval("document.querySelectorAll('#log b').length").await;
    assert_eq!(bold, 0, "a job's output is text, never markup");

    // A phone: the page fits its width (tables scroll inside their box).
    b.viewport(390, 844, true).await;
    for (path, name) in [
        ("/", "overview"),
        ("/nodes", "nodes"),
        ("/jobs", "jobs"),
        ("/training", "training"),
    ] {
        open(&mut b, &dash.url(path)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fits = b
            .eval("document.documentElement.scrollWidth <= window.innerWidth + 1")
            .await;
        assert_eq!(fits, true, "{path} is wider than a phone");
        b.screenshot(&screenshot_dir().join(format!("phone-{name}.png")))
            .await;
    }
    let errors = b.take_errors();
    assert!(errors.is_empty(), "{errors:?}");

    // An unknown page is a 404 that says what exists.
    let (code, body) = http::get(&dash.addr, "/nope/%3Cx%3E", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 404);
    assert!(
        body.contains("There is no page at") && body.contains("/nope/%3Cx%3E"),
        "{body}"
    );
    drop(b);
    leader.kill_shims();
    worker.kill_shims();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_says_on_the_page_when_etcd_is_unreachable_and_catches_up_after() {
    // Started with nothing at its endpoint: it runs, and says so.
    let nowhere = format!("http://127.0.0.1:{}", support::proc::free_port());
    let blind = TestDashboard::start(&nowhere);
    let page = eventually(
        Duration::from_secs(10),
        "the unreachable banner",
        || async {
            let (_, body) = http::get(&blind.addr, "/", Duration::from_secs(5))?;
            body.contains("etcd unreachable").then_some(body)
        },
    )
    .await;
    assert!(page.contains("Nothing has been read yet"), "{page}");
    drop(blind);

    // Watching a live cluster whose etcd then dies: the open page says so, then recovers.
    let mut etcd = EtcdCluster::single();
    let ep = etcd.endpoints_csv();
    let applied = rift_stdin(
        &ep,
        &["apply", "-f", "-"],
        "apiVersion: rift/v1\nkind: Job\nmetadata: {name: before}\nspec: {command: ['true']}\n",
    );
    assert!(applied.ok, "{}", applied.stderr);
    let dash = TestDashboard::start(&ep);
    let mut b = Browser::launch(1400, 900).await;
    open(&mut b, &dash.url("/jobs")).await;
    assert!(b
        .wait_for(
            "!!document.getElementById('job-before')",
            Duration::from_secs(5)
        )
        .await
        .is_some());
    b.eval("window.notReloaded = true").await;
    etcd.kill(0);
    let banner = b
        .wait_for(
            "window.notReloaded && !!document.getElementById('etcd-unreachable')",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        banner.is_some(),
        "the open page never said etcd is unreachable"
    );
    let still = b.eval("!!document.getElementById('job-before')").await;
    assert_eq!(still, true, "the last known state stays on the page");
    b.screenshot(&screenshot_dir().join("etcd-unreachable.png"))
        .await;
    etcd.start(0);
    assert!(
        rift_stdin(
            &ep,
            &["apply", "-f", "-"],
            "apiVersion: rift/v1\nkind: Job\nmetadata: {name: after}\nspec: {command: ['true']}\n",
        )
        .ok
    );
    let back = b
        .wait_for(
            "window.notReloaded && !document.getElementById('etcd-unreachable') \
             && !!document.getElementById('job-after')",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        back.is_some(),
        "the page did not catch up once etcd answered"
    );
    let errors = b.take_errors();
    assert!(errors.is_empty(), "{errors:?}");
}

/// Open sockets of `pid`.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_stay_paginated_and_a_vanished_browser_leaves_the_server_as_it_was() {
    let etcd = EtcdCluster::single();
    let ep = etcd.endpoints_csv();
    let store = etcd.store().await;
    let names: Vec<String> = (0..10_000).map(|i| format!("job-{i:05}")).collect();
    futures::stream::iter(names.iter())
        .map(|n| {
            let store = store.clone();
            async move {
                let job = Object::new(n.as_str(), JobSpec::with_command(["true"]));
                store.create(&job).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let dash = TestDashboard::start(&ep);
    let mut b = Browser::launch(1400, 900).await;
    open(&mut b, &dash.url("/jobs")).await;
    let listed = b
        .wait_for(
            "document.querySelectorAll('tr[id^=job-]').length === 100 \
             && document.querySelector('.pager-range').textContent.includes('10\u{202f}000')",
            Duration::from_secs(30),
        )
        .await;
    assert!(listed.is_some(), "100 rows of 10,000");
    let (code, page) = http::get(&dash.addr, "/jobs?page=73", Duration::from_secs(10)).unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("id=\"job-job-07200\"") && page.contains("page 73 of 100"));
    assert!(
        page.len() < 200_000,
        "a page of 10,000 jobs stays small: {} bytes",
        page.len()
    );
    b.screenshot(&screenshot_dir().join("jobs-10000.png")).await;

    // The browser vanishes (SIGKILL) with its live page open, and 50 more clients ask for the
    // live page and then never read: while thousands of changes reach page 1, the server's
    // sockets and memory stay as they were.
    let pid = dash.pid();
    let sockets_open = sockets(pid);
    b.kill();
    drop(b);
    let stalled: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(&dash.addr).unwrap();
            write!(
                s,
                "GET /jobs?live=1 HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
                dash.addr
            )
            .unwrap();
            s
        })
        .collect();
    let kv = etcd.client().await;
    let addr = dash.addr.clone();
    let churn = || {
        let mut kv = kv.clone();
        let addr = addr.clone();
        async move {
            // Jobs named aaa-* sort first: every change alters what page 1 shows.
            for i in 0..300 {
                let job = Object::new(format!("aaa-{i:03}"), JobSpec::with_command(["true"]));
                let key = format!("/rift/v1/jobs/aaa-{i:03}");
                kv.put(key, serde_json::to_vec(&job).unwrap(), None)
                    .await
                    .unwrap();
            }
            for i in 0..300 {
                kv.delete(format!("/rift/v1/jobs/aaa-{i:03}"), None)
                    .await
                    .unwrap();
            }
            // Measured once the dashboard has caught up (no snapshot being built).
            eventually(
                Duration::from_secs(30),
                "the dashboard caught up",
                || async {
                    let (_, body) = http::get(&addr, "/jobs", Duration::from_secs(10))?;
                    (!body.contains("aaa-")).then_some(())
                },
            )
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            rss_kib(pid).unwrap()
        }
    };
    // The first rounds warm the allocator up: RSS steps up once or twice to a plateau (a
    // table growing to its peak capacity, two snapshots alive while streams move to the new
    // one) at a round that depends on timing. After that, more changes must not mean more
    // memory: over the last three rounds (1,800 more changes) the median stays within 32 MiB
    // of the median of rounds 5-7. (Measured: a step of ~50 MiB at round 2-4, then within
    // ±10 MiB for 14 rounds here, and +18 MiB between those medians in one fresh-clone run on
    // a busy machine: not traced. A leak of 11 MiB a round or more fails.)
    let mut rounds = Vec::new();
    for _ in 0..10 {
        rounds.push(churn().await);
    }
    let median = |r: &[u64]| {
        let mut r = r.to_vec();
        r.sort_unstable();
        r[r.len() / 2]
    };
    println!(
        "sockets {sockets_open} -> {} (+50 stalled), RSS after each round of 600 changes: {:?} MiB",
        sockets(pid),
        rounds.iter().map(|r| r / 1024).collect::<Vec<_>>()
    );
    assert!(
        median(&rounds[7..10]) < median(&rounds[4..7]) + 32 * 1024,
        "RSS keeps growing round after round: {rounds:?} KiB"
    );
    assert!(
        sockets(pid) <= sockets_open + stalled.len(),
        "the vanished browser's streams stay open"
    );
    drop(stalled);
}
