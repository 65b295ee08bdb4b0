//! `rift bench failover`: the leader process is killed (SIGKILL) or stopped (SIGTERM) while
//! `--nodes` hollow nodes are registered; timed from the signal to (a) etcd naming a new
//! leader, (b) a Job created at the signal being bound by the new leader (its first full
//! scheduler pass over the whole cluster). Three candidate agents; the taken-down one is
//! replaced before the next trial.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use super::env;
use super::observe::Observed;
use super::report::{Report, Spread};
use super::schedule::{hollow_bed, HollowBed};
use super::{BenchError, Common};
use crate::api::{JobSpec, Object};

pub async fn run(nodes: usize, trials: usize, common: &Common) -> Result<Report, BenchError> {
    // Bound in this order so they drop in reverse: observer and nodes first, etcd last.
    let HollowBed {
        etcd,
        store,
        dir,
        cluster,
        register_s: _,
        observed,
    } = hollow_bed("failover", nodes, common).await?;
    let mut agents: Vec<(String, env::Proc)> = Vec::new();
    let mut next_id = 0;
    let mut r = Report::new("failover");
    r.add(
        "setup",
        format!("{nodes} hollow nodes, 3 `rift agent --controllers` candidates, lease TTL {} s, {trials} trials per signal", common.lease_ttl),
        json!({"nodes": nodes, "trials": trials, "ttl_s": common.lease_ttl}),
    );
    for (label, sig) in [("sigkill", Signal::SIGKILL), ("sigterm", Signal::SIGTERM)] {
        let (mut takeover, mut bound) = (Vec::new(), Vec::new());
        for t in 0..trials {
            while agents.len() < 3 {
                let name = format!("cand-{next_id}");
                next_id += 1;
                agents.push((
                    name.clone(),
                    env::spawn_agent(&etcd, &store, &name, dir.path(), true, common.lease_ttl)
                        .await?,
                ));
            }
            // A leader of ours, settled (standbys watching it), and done with its first pass.
            let current = loop {
                let l = env::wait_for_leader(&store, None, common.timeout)
                    .await
                    .ok_or_else(|| BenchError::Timeout("no leader".into()))?;
                if agents.iter().any(|(n, _)| *n == l) {
                    break l;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let i = agents
                .iter()
                .position(|(n, _)| *n == current)
                .expect("ours");
            let probe = format!("probe-{label}-{t}");
            let start = Instant::now();
            agents[i].1.signal(sig);
            store
                .create(&Object::new(
                    probe.clone(),
                    JobSpec::with_command(["selfplay"]),
                ))
                .await?;
            env::wait_for_leader(&store, Some(&current), common.timeout)
                .await
                .ok_or_else(|| BenchError::Timeout("no new leader".into()))?;
            takeover.push(start.elapsed().as_secs_f64() * 1000.0);
            let deadline = Instant::now() + common.timeout;
            let at = loop {
                if let Some(at) = Observed::get(&observed.bound, &probe) {
                    break at;
                }
                if Instant::now() > deadline {
                    return Err(BenchError::Timeout(format!("{probe} never bound")));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            bound.push(at.saturating_duration_since(start).as_secs_f64() * 1000.0);
            let (_, old) = agents.swap_remove(i);
            drop(old);
        }
        let (t, b) = (Spread::of(takeover), Spread::of(bound));
        r.add(
            &format!("{label}_takeover"),
            format!("{label}: new leader named: {}", t.show()),
            t.json(),
        );
        r.add(
            &format!("{label}_first_binding"),
            format!("{label}: job created at the signal bound: {}", b.show()),
            b.json(),
        );
    }
    drop(agents);
    cluster.crash().await;
    Ok(r)
}
