//! Micro-benchmark: `cargo test --release --lib controllers::placement -- --ignored --nocapture`.

use std::time::Instant;

use super::*;

const MODELS: [(&str, u32); 10] = [
    ("NVIDIA GH200 480GB", 1),
    ("NVIDIA H100 80GB HBM3", 8),
    ("NVIDIA H100 80GB HBM3", 8),
    ("NVIDIA H100 80GB HBM3", 8),
    ("NVIDIA A100-SXM4-80GB", 8),
    ("NVIDIA A100-SXM4-80GB", 8),
    ("NVIDIA GeForce RTX 4090", 1),
    ("NVIDIA GeForce RTX 5090", 2),
    ("NVIDIA L40S", 4),
    ("", 0),
];

/// A fleet of `n` nodes: mixed models, 1 in 50 not ready, 1 in 40 overloaded, and priority-0
/// selfplay from 20 Pools on every GPU (`full`) or on half the GPUs of every other node.
fn fleet(n: usize, full: bool) -> Vec<NodeView> {
    (0..n)
        .map(|i| {
            let (model, gpus) = MODELS[i % MODELS.len()];
            let mut v = node(&format!("node-{i:05}"), model, gpus);
            let s = v.status.as_mut().unwrap();
            s.load_score = (i % 7) as f64 / 7.0;
            s.overloaded = i % 40 == 39;
            if i % 50 == 49 {
                s.conditions.clear();
            }
            v.labels.insert(
                "provider".into(),
                ["lambda", "vast", "runpod"][i % 3].into(),
            );
            if full || i % 2 == 0 {
                for g in 0..if full { gpus } else { gpus / 2 } {
                    let mut b = bound(&format!("sp-{i}-{g}"), &[g], 0, JobType::Selfplay);
                    b.pool = Some(format!("pool-{}", (i + g as usize) % 20));
                    b.cpus = 1.0;
                    b.memory_gb = 4.0;
                    v.bound.push(b);
                }
            }
            v
        })
        .collect()
}

/// 70% one-GPU selfplay Pool members, 10% one-GPU training on H100/GH200 (priority 100), 5%
/// eight-GPU training with minGpuPower 0.8 (priority 100), 15% CPU sync jobs.
fn backlog(n: usize) -> Vec<PendingJob> {
    (0..n)
        .map(|i| {
            let mut j = match i % 20 {
                0..=13 => PendingJob {
                    pool: Some(format!("pool-{}", i % 20)),
                    ..job(&format!("sp-new-{i}"), 1)
                },
                14 | 15 => {
                    let mut t = training(&format!("train-{i}"), 1, 100);
                    t.resources.gpu_models = vec!["H100".into(), "GH200".into()];
                    t
                }
                16 => {
                    let mut t = training(&format!("big-{i}"), 8, 100);
                    t.resources.min_gpu_power = Some(0.8);
                    t
                }
                _ => {
                    let mut s = job(&format!("sync-{i}"), 0);
                    s.job_type = JobType::Sync;
                    s.resources.cpus = Some(2.0);
                    s
                }
            };
            j.created = at(i as i64);
            j.resources.memory_gb = Some(8.0);
            j
        })
        .collect()
}

#[test]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
fn placement_throughput() {
    let config = PlacementConfig::default();
    let cases = [(50, false), (1_000, false), (5_000, false)];
    let full = [(50, true), (1_000, true), (5_000, true)];
    for (nodes, full) in cases.into_iter().chain(full) {
        let jobs = 2_000;
        let fleet = fleet(nodes, full);
        let pending = backlog(jobs);
        let mut best = f64::INFINITY;
        let mut kinds = (0, 0, 0);
        for _ in 0..5 {
            let t = Instant::now();
            let d = schedule(&fleet, &pending, &config);
            best = best.min(t.elapsed().as_secs_f64());
            kinds = d.iter().fold((0, 0, 0), |(p, e, u), d| match d {
                Decision::Place { .. } => (p + 1, e, u),
                Decision::Preempt { .. } => (p, e + 1, u),
                Decision::Unschedulable { .. } => (p, e, u + 1),
            });
        }
        println!(
            "{nodes:>5} nodes{}, {jobs} pending: {:>9.0} decisions/s ({:.2} ms; {} placed, {} \
             preempting, {} unschedulable)",
            if full { " (all GPUs busy)" } else { "" },
            jobs as f64 / best,
            best * 1e3,
            kinds.0,
            kinds.1,
            kinds.2
        );
    }
}
