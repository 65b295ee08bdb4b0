//! Voter membership changes with a real database behind them: real etcd members run by real
//! `rift agent`s on 127.0.0.1-4, the leader's voters controller doing the steps.
//!
//! `cargo bench --bench voters` prints a table and one JSON line. Settings (environment):
//! `RIFT_BENCH_TRIALS` (default 3), `RIFT_BENCH_DB_MB` (default 50).
//!
//! - `add+promote`: a one-voter cluster holding the database; a new node joins; time from
//!   applying the VoterSet `[a, b]` until it is Converged with both voting and healthy (learner
//!   added, its agent starts etcd, it receives the snapshot and catches up, it is promoted).
//! - `replace`: from three voters `[a, b, c]`, apply `[a, b, d]`: time until Converged with
//!   d voting and c gone (add d, catch up, promote, remove c).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::proc::{env_or, percentile};
use support::voters::{
    apply_voters, bootstrap_one, grow_to_three, member_client, wait_converged,
    wait_node_offers_etcd, VoterNode,
};

const CONVERGE: Duration = Duration::from_secs(300);

/// Writes `mb` MiB in 100 KiB values.
async fn fill(url: &str, mb: u64) {
    let mut c = member_client(url).await.expect("connect");
    let value = vec![b'x'; 100 * 1024];
    for i in 0..mb * 10 {
        c.put(format!("/bench/blob/{i:06}"), value.clone(), None)
            .await
            .expect("put");
    }
}

async fn add_and_promote(mb: u64) -> f64 {
    let a = bootstrap_one("a").await;
    fill(&a.client_url, mb).await;
    let b = VoterNode::start("b", "127.0.0.2", Some(&a.client_url), false);
    wait_node_offers_etcd(&a.client_url, "b").await;
    let t = Instant::now();
    apply_voters(&a.client_url, &["a", "b"]);
    wait_converged(&a.client_url, &["a", "b"], CONVERGE).await;
    let secs = t.elapsed().as_secs_f64();
    drop((a, b));
    secs
}

async fn replace(mb: u64) -> f64 {
    let a = bootstrap_one("a").await;
    fill(&a.client_url, mb).await;
    let (b, c) = grow_to_three(&a, CONVERGE).await;
    let d = VoterNode::start("d", "127.0.0.4", Some(&a.client_url), false);
    wait_node_offers_etcd(&a.client_url, "d").await;
    let t = Instant::now();
    apply_voters(&a.client_url, &["a", "b", "d"]);
    wait_converged(&a.client_url, &["a", "b", "d"], CONVERGE).await;
    let secs = t.elapsed().as_secs_f64();
    drop((a, b, c, d));
    secs
}

fn summary(name: &str, mut v: Vec<f64>) -> (String, serde_json::Value) {
    v.sort_by(f64::total_cmp);
    let (p50, max) = (percentile(&v, 0.5), v[v.len() - 1]);
    (
        format!("{name:<12} {:>6} {p50:>8.2} {max:>8.2}", v.len()),
        serde_json::json!({"trials": v.len(), "p50_s": p50, "max_s": max}),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let trials = env_or("RIFT_BENCH_TRIALS", 3) as usize;
    let mb = env_or("RIFT_BENCH_DB_MB", 50);
    let mut adds = Vec::new();
    let mut replaces = Vec::new();
    for i in 0..trials {
        adds.push(add_and_promote(mb).await);
        replaces.push(replace(mb).await);
        eprintln!(
            "trial {}: add+promote {:.2} s, replace {:.2} s",
            i + 1,
            adds[i],
            replaces[i]
        );
    }
    println!("voter changes with a {mb} MiB database ({trials} trials; seconds)");
    println!("{:<12} {:>6} {:>8} {:>8}", "change", "trials", "p50", "max");
    let (row_a, json_a) = summary("add+promote", adds);
    let (row_r, json_r) = summary("replace", replaces);
    println!("{row_a}\n{row_r}");
    println!(
        "{}",
        serde_json::json!({"bench": "voters", "db_mib": mb, "add_promote": json_a, "replace": json_r})
    );
}
