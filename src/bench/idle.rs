//! `rift bench idle`: real `rift agent` processes doing nothing for `--seconds`: the leader
//! (`--controllers`) and a plain node agent; CPU as a % of one core, and RSS at the end.

use std::time::Duration;

use serde_json::json;

use super::env::{self, LocalEtcd, TempDir};
use super::report::{round, Report};
use super::{BenchError, Common};

pub async fn run(seconds: u64, common: &Common) -> Result<Report, BenchError> {
    let etcd = LocalEtcd::start(common.tls, common.etcd_gogc).await?;
    let store = etcd.store().await?;
    let dir = TempDir::new("idle")?;
    let leader = super::schedule::start_leader(&etcd, &store, &dir, common).await?;
    let agent = env::spawn_agent(
        &etcd,
        &store,
        "idle-agent",
        dir.path(),
        false,
        common.lease_ttl,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = [leader.pid(), agent.pid()].map(|p| env::cpu_seconds(p).unwrap_or(0.0));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let mut r = Report::new("idle");
    r.field("seconds", json!(seconds));
    for (i, (label, p)) in [("leader", &leader), ("agent", &agent)]
        .into_iter()
        .enumerate()
    {
        let cpu = 100.0 * (env::cpu_seconds(p.pid()).unwrap_or(0.0) - before[i]) / seconds as f64;
        let rss = env::rss_mib(p.pid()).unwrap_or(0.0);
        r.add(
            label,
            format!("CPU {cpu:.2} % of one core, RSS {rss:.1} MiB over {seconds} s"),
            json!({"cpu_percent": (cpu * 100.0).round() / 100.0, "rss_mib": round(rss)}),
        );
    }
    Ok(r)
}
