//! `rift bench detect`: `--kill` of `--nodes` hollow nodes die at once (as a crashed host: no
//! lease revoke); timed from the kill to a watcher seeing each node's alive key deleted, the
//! moment the node reads NotReady (its Ready condition comes from that key alone).

use std::time::{Duration, Instant};

use serde_json::json;

use super::observe::Observed;
use super::report::{Report, Spread};
use super::schedule::{hollow_bed, HollowBed};
use super::{BenchError, Common};
use crate::sim::Life;

pub async fn run(nodes: usize, kill: usize, common: &Common) -> Result<Report, BenchError> {
    // Bound in this order so they drop in reverse: observer and nodes first, etcd last.
    let HollowBed {
        etcd: _etcd,
        store: _store,
        dir: _dir,
        cluster,
        register_s,
        observed,
    } = hollow_bed("detect", nodes, common).await?;
    // Let renewals spread over the TTL as they would in a running fleet.
    tokio::time::sleep(Duration::from_secs(common.lease_ttl)).await;
    let kill = kill.clamp(1, nodes);
    let step = nodes / kill;
    let mut killed = Vec::new();
    for k in 0..kill {
        let name = cluster.end(k * step, Life::Crash).to_string();
        killed.push((name, Instant::now()));
    }
    let deadline = Instant::now() + Duration::from_secs(common.lease_ttl * 3 + 30);
    while killed
        .iter()
        .any(|(n, _)| Observed::get(&observed.not_ready, n).is_none())
    {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "{} of {kill} killed nodes seen NotReady",
                killed
                    .iter()
                    .filter(|(n, _)| Observed::get(&observed.not_ready, n).is_some())
                    .count()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let times = killed
        .iter()
        .filter_map(|(n, at)| {
            Some(
                Observed::get(&observed.not_ready, n)?
                    .saturating_duration_since(*at)
                    .as_secs_f64()
                    * 1000.0,
            )
        })
        .collect();
    let s = Spread::of(times);
    let target = (common.lease_ttl * 1000 + 1000) as f64;
    let mut r = Report::new("detect");
    r.add(
        "setup",
        format!("{nodes} hollow nodes (alive in {register_s:.1} s), {kill} crashed at once, node lease TTL {} s", common.lease_ttl),
        json!({"nodes": nodes, "killed": kill, "ttl_s": common.lease_ttl}),
    );
    r.add(
        "not_ready",
        format!(
            "kill -> NotReady observed: {} (target p99 <= {target:.0} ms)",
            s.show()
        ),
        s.json(),
    );
    cluster.crash().await;
    Ok(r)
}
