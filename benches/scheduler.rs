//! Scheduling throughput against a real etcd member: how fast pending jobs become committed
//! placement + binding pairs.
//!
//! `cargo bench --bench scheduler` registers `RIFT_BENCH_NODES` nodes (default 100, each with
//! 8 declared GPUs, Ready through a leased alive key, as agents do), creates `RIFT_BENCH_JOBS`
//! pending jobs (default 1000; one GPU each when `RIFT_BENCH_GPU_JOBS=1`, else CPU-only), and
//! times scheduler passes until every job is bound. Prints a table and one JSON line.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use etcd_client::{PutOptions, Txn, TxnOp};
use rift::api::node::{Capacity, Gpu, NodeStatus};
use rift::api::{JobSpec, NodeSpec, Object};
use rift::controllers::housekeeping::Housekeeping;
use rift::controllers::placement::PlacementConfig;
use rift::controllers::scheduler::Scheduler;
use rift::store::keys;
use support::etcd::EtcdCluster;
use support::proc::env_or;

#[tokio::main]
async fn main() {
    let nodes = env_or("RIFT_BENCH_NODES", 100);
    let jobs = env_or("RIFT_BENCH_JOBS", 1000);
    let gpu_jobs = env_or("RIFT_BENCH_GPU_JOBS", 0) == 1;
    // Enough GPUs for every job, so the figure is the placing, not the waiting.
    let nodes = if gpu_jobs {
        nodes.max(jobs.div_ceil(8))
    } else {
        nodes
    };
    let etcd = EtcdCluster::single();
    let store = etcd.store().await;
    let mut client = etcd.client().await;
    let lease = client.lease_grant(3600, None).await.unwrap().id();

    for i in 0..nodes {
        let name = format!("node-{i:04}");
        store
            .create(&Object::new(name.clone(), NodeSpec::default()))
            .await
            .unwrap();
        let status = NodeStatus {
            capacity: Capacity {
                cpus: 64,
                memory_bytes: 512 << 30,
                disk_bytes: 4 << 40,
                gpus: (0..8)
                    .map(|g| Gpu {
                        index: g,
                        model: "H100".into(),
                        ..Gpu::default()
                    })
                    .collect(),
            },
            ..NodeStatus::default()
        };
        let txn = Txn::new().and_then([
            TxnOp::put(
                keys::agent_status(&name),
                serde_json::to_vec(&status).unwrap(),
                None,
            ),
            TxnOp::put(
                keys::agent_alive(&name),
                "{}",
                Some(PutOptions::new().with_lease(lease)),
            ),
        ]);
        client.txn(txn).await.unwrap();
    }
    for i in 0..jobs {
        let mut spec = JobSpec::with_command(["selfplay"]);
        if gpu_jobs {
            spec.resources.gpus = 1;
        }
        store
            .create(&Object::new(format!("job-{i:05}"), spec))
            .await
            .unwrap();
    }

    let mut scheduler = Scheduler::new(
        store.clone(),
        PlacementConfig::default(),
        Housekeeping::default(),
    );
    let start = Instant::now();
    let mut passes = 0;
    let mut placed = 0;
    while placed < jobs as usize {
        let stats = scheduler.pass().await.unwrap();
        placed += stats.placed;
        passes += 1;
        assert!(passes < 100, "not converging: {placed}/{jobs} placed");
    }
    let took = start.elapsed().as_secs_f64();
    let (bindings, _) = store
        .list_raw(&format!("{}bindings/", keys::ROOT), None)
        .await
        .unwrap();
    assert_eq!(
        bindings.len(),
        jobs as usize,
        "every job has exactly one binding"
    );
    let rate = jobs as f64 / took;
    println!(
        "scheduler: {nodes} nodes x 8 GPUs, {jobs} pending {} jobs, 1 etcd member",
        if gpu_jobs { "1-GPU" } else { "CPU-only" }
    );
    println!("committed {jobs} placements + bindings in {:.0} ms over {passes} pass(es): {rate:.0} jobs/s", took * 1000.0);
    println!(
        "{}",
        serde_json::json!({"nodes": nodes, "jobs": jobs, "gpu_jobs": gpu_jobs, "seconds": took, "passes": passes, "jobs_per_second": rate})
    );
}
