//! `rift cordon NODE`, `rift uncordon NODE`, `rift drain NODE [--wait]`.
//!
//! Placements and bindings have one writer, the scheduler. So `drain` does not evict anything
//! itself: it cordons the Node and marks it with the [`DRAIN_ANNOTATION`]; the leader's
//! scheduler evicts the node's jobs (they go back to Pending and are placed elsewhere), and
//! `--wait` watches the node's bindings until none are left.

use std::time::Duration;

use chrono::Utc;

use crate::api::NodeSpec;
use crate::store::{keys, Store, StoreError};

use super::CliError;

pub use crate::api::node::DRAIN_ANNOTATION;

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's name.
    pub node: String,
}

#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The node's name.
    pub node: String,
    /// Wait, showing progress, until no job is bound to the node.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (0: wait forever).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
}

/// Sets `unschedulable` (and the drain mark) with compare-and-swap, retrying on conflict.
async fn set_node(store: &Store, name: &str, cordon: bool, drain: bool) -> Result<bool, CliError> {
    for _ in 0..10 {
        let mut node = store
            .get::<NodeSpec>(name)
            .await?
            .ok_or_else(|| CliError::NotFound {
                kind: "node".into(),
                name: name.into(),
            })?;
        let had_drain = node.metadata.annotations.contains_key(DRAIN_ANNOTATION);
        if node.spec.unschedulable == cordon && had_drain == drain {
            return Ok(false);
        }
        node.spec.unschedulable = cordon;
        if drain {
            node.metadata
                .annotations
                .insert(DRAIN_ANNOTATION.into(), Utc::now().to_rfc3339());
        } else {
            node.metadata.annotations.remove(DRAIN_ANNOTATION);
        }
        match store.update(&node).await {
            Ok(_) => return Ok(true),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CliError::Usage(format!(
        "node/{name} keeps changing under us; try again"
    )))
}

pub async fn cordon(args: NodeArgs, store: &Store) -> Result<(), CliError> {
    let changed = set_node(store, &args.node, true, false).await?;
    println!(
        "node/{} {}",
        args.node,
        if changed {
            "cordoned"
        } else {
            "already cordoned"
        }
    );
    Ok(())
}

pub async fn uncordon(args: NodeArgs, store: &Store) -> Result<(), CliError> {
    let changed = set_node(store, &args.node, false, false).await?;
    println!(
        "node/{} {}",
        args.node,
        if changed {
            "uncordoned"
        } else {
            "already schedulable"
        }
    );
    Ok(())
}

/// Jobs bound to `node` that have not finished (what a drain still has to move).
pub async fn bound_jobs(store: &Store, node: &str) -> Result<Vec<String>, StoreError> {
    let prefix = keys::bindings_prefix(node);
    let (kvs, _) = store.list_raw(&prefix, None).await?;
    let bound: Vec<String> = kvs
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(&prefix).map(str::to_string))
        .collect();
    if bound.is_empty() {
        return Ok(bound);
    }
    // A finished job stays bound (its record is there) but has nothing left to move.
    let (jobs, _) = store
        .list::<crate::api::JobSpec>(&crate::api::selector::LabelSelector::everything())
        .await?;
    let finished: std::collections::HashSet<&str> = jobs
        .iter()
        .filter(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished()))
        .map(|j| j.name())
        .collect();
    Ok(bound
        .into_iter()
        .filter(|j| !finished.contains(j.as_str()))
        .collect())
}

/// What became of a job that left a draining node, as a drain's progress line says it:
/// `deleted`, `moved to NODE`, `evicted: Pending (why-not)`, or its phase.
async fn where_it_went(store: &Store, job: &str, drained: &str) -> String {
    let found = match store.get::<crate::api::JobSpec>(job).await {
        Ok(found) => found,
        Err(e) => return format!("left the node (cannot read it now: {e})"),
    };
    let Some(obj) = found else {
        return "deleted".to_string();
    };
    let status = obj.status.unwrap_or_default();
    match status.node.as_deref() {
        Some(node) if node != drained => format!("moved to {node} ({})", status.phase.as_str()),
        _ if status.phase == crate::api::JobPhase::Pending => {
            if status.message.is_empty() {
                "evicted: Pending".to_string()
            } else {
                format!("evicted: Pending ({})", status.message)
            }
        }
        _ => format!("evicted: {}", status.phase.as_str()),
    }
}

pub async fn drain(args: DrainArgs, store: &Store) -> Result<(), CliError> {
    set_node(store, &args.node, true, true).await?;
    let jobs = bound_jobs(store, &args.node).await?;
    println!(
        "node/{} cordoned and marked for draining; {} job(s) to move: {}",
        args.node,
        jobs.len(),
        if jobs.is_empty() {
            "-".into()
        } else {
            jobs.join(", ")
        }
    );
    if !args.wait {
        return Ok(());
    }
    let start = std::time::Instant::now();
    let mut last = jobs;
    while !last.is_empty() {
        if args.timeout > 0 && start.elapsed() > Duration::from_secs(args.timeout) {
            return Err(CliError::Usage(format!(
                "node/{} still has {} job(s) after {} s: {} (is a leader running the scheduler?)",
                args.node,
                last.len(),
                args.timeout,
                last.join(", ")
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let now = bound_jobs(store, &args.node).await?;
        let gone: Vec<&String> = last.iter().filter(|j| !now.contains(j)).collect();
        let mut left = now.len() + gone.len();
        for job in gone {
            left -= 1;
            let what = where_it_went(store, job, &args.node).await;
            println!("  job/{job} {what} ({left} left)");
        }
        last = now;
    }
    println!("node/{} drained", args.node);
    Ok(())
}
