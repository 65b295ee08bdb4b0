//! `rift logs JOB [-f] [--tail N] [--attempt N]`: a job's output, streamed from the agent of
//! the node it is placed on.
//!
//! The node comes from the job's placement; the agent is tried at the node's reported endpoint
//! first (for a NAT-blocked node, its tunnel's relay endpoint), then at each of its addresses
//! (with its `agentPort`) in order, each with a short connect timeout
//! ([`crate::net::dial::agent_addresses`]). A CLI run is one process, so what worked is not
//! remembered across runs; the endpoint the agent advertises comes first. The request is
//! [`crate::net::agent_http`]'s HTTP/1.0 GET over TLS (the agent verified as `<node>.node.rift`,
//! this side presenting the certificate of RIFT_CONFIG), whose body ends when the agent closes it.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::CliError;
use crate::api::placement::Placement;
use crate::api::validation::dns1123_problem;
use crate::api::{JobPhase, JobSpec, NodeSpec};
use crate::net::agent_http::{self, Response};
use crate::net::dial::agent_addresses;
use crate::net::AgentTls;
use crate::store::{keys, Store};

/// How long one address may take to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Without `-f`: the longest silence in the body before giving up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// With `-f` on a job that is placed but not yet started: how long to wait for the agent to
/// start it.
const START_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The job.
    pub job: String,
    /// Keep streaming output as it is written, across restarts, until the job ends (or Ctrl-C).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Show attempt N (default: the latest).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub attempt: Option<u32>,
}

pub async fn run(args: LogsArgs, store: &Store) -> Result<(), CliError> {
    if let Some(problem) = dns1123_problem(&args.job) {
        return Err(CliError::Usage(format!(
            "invalid job name {:?}: {problem}",
            args.job
        )));
    }
    // With -f, a job that is not placed yet (Pending, e.g. preempted) is waited for.
    let mut said = String::new();
    let (node_name, phase) = loop {
        match job_node(store, &args.job).await? {
            Located::Placed(node, phase) => break (node, phase),
            Located::Unplaced(why) if args.follow => {
                if why != said {
                    eprintln!("waiting for job {} to be placed: {why}", args.job);
                    said = why;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
            Located::Unplaced(why) => {
                return Err(CliError::Usage(format!(
                    "job {} is {why} (rift logs -f waits for it)",
                    args.job
                )))
            }
        }
    };
    let node = store.get::<NodeSpec>(&node_name).await?.ok_or_else(|| {
        CliError::Usage(format!(
            "job {} is placed on node {node_name}, but there is no Node {node_name} to find its agent by",
            args.job
        ))
    })?;
    let addresses = agent_addresses(&node);
    if addresses.is_empty() {
        return Err(CliError::Usage(format!(
            "node {node_name} (where job {} runs) has no endpoint and no addresses",
            args.job
        )));
    }
    let path = request_path(&args);
    let wait_for_start = args.follow && phase == Some(JobPhase::Scheduled);
    let tls = AgentTls::for_identity(store.access().identity())
        .map_err(|e| CliError::Usage(e.to_string()))?;
    tokio::select! {
        r = fetch(&tls, &node_name, &addresses, &path, args.follow, wait_for_start) => r,
        // Ctrl-C ends a follow quietly.
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Where a job's output is.
enum Located {
    /// On this node; the job's phase (`None` when the Job object is gone but its placement is
    /// not: its output still lies on that node).
    Placed(String, Option<JobPhase>),
    /// Not placed anywhere: its phase and why, e.g. `Pending: 0/1 nodes: ...`.
    Unplaced(String),
}

async fn job_node(store: &Store, job: &str) -> Result<Located, CliError> {
    if let Some(obj) = store.get::<JobSpec>(job).await? {
        let status = obj.status.unwrap_or_default();
        return Ok(match status.node {
            Some(node) => Located::Placed(node, Some(status.phase)),
            None => {
                let why = [status.message, status.reason]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .unwrap_or_else(|| "the scheduler has not placed it yet".into());
                Located::Unplaced(format!("{:?}: {why}", status.phase))
            }
        });
    }
    store
        .get_raw(&keys::placement(job))
        .await?
        .and_then(|kv| serde_json::from_slice::<Placement>(&kv.value).ok())
        .and_then(|p| p.node)
        .map(|node| Located::Placed(node, None))
        .ok_or_else(|| CliError::NotFound {
            kind: "job".into(),
            name: job.into(),
        })
}

fn request_path(args: &LogsArgs) -> String {
    let mut query = Vec::new();
    if args.follow {
        query.push("follow=true".to_string());
    }
    if let Some(n) = args.tail {
        query.push(format!("tail={n}"));
    }
    if let Some(n) = args.attempt {
        query.push(format!("attempt={n}"));
    }
    let mut path = format!("/v1/jobs/{}/logs", args.job);
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    path
}

/// Tries each address until one answers, then streams its body to stdout.
async fn fetch(
    tls: &AgentTls,
    node: &str,
    addresses: &[String],
    path: &str,
    follow: bool,
    wait_for_start: bool,
) -> Result<(), CliError> {
    let mut tried = Vec::new();
    for addr in addresses {
        let started = Instant::now();
        loop {
            let mut resp = match agent_http::get(tls, node, addr, path, CONNECT_TIMEOUT).await {
                Ok(r) => r,
                Err(why) => {
                    tracing::debug!(%addr, %why, "agent address did not answer");
                    tried.push(format!("{addr} ({why})"));
                    break;
                }
            };
            if resp.status == 200 {
                return copy_to_stdout(&mut resp, !follow).await;
            }
            // Placed but not started yet: the agent has no state for it for a moment.
            if resp.status == 404 && wait_for_start && started.elapsed() < START_WAIT {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let body = resp.error_body().await;
            return Err(CliError::Usage(format!(
                "the agent of node {node} ({addr}) answered {}: {body}",
                resp.status
            )));
        }
    }
    Err(CliError::Usage(format!(
        "no address of node {node} answered; tried {}",
        tried.join(", ")
    )))
}

/// Streams the body to stdout until the agent closes the connection; with `idle_limit`, gives
/// up after [`IDLE_TIMEOUT`] without a byte.
async fn copy_to_stdout(resp: &mut Response, idle_limit: bool) -> Result<(), CliError> {
    let stdout_err = |source| CliError::Io {
        path: "stdout".into(),
        source,
    };
    let mut out = tokio::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = resp.read(&mut buf);
        let n = if idle_limit {
            match tokio::time::timeout(IDLE_TIMEOUT, read).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(CliError::Usage(format!(
                        "the agent sent nothing for {}s; giving up",
                        IDLE_TIMEOUT.as_secs()
                    )))
                }
            }
        } else {
            read.await
        };
        let n = n.map_err(|source| CliError::Io {
            path: "the agent's connection".into(),
            source,
        })?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n]).await.map_err(stdout_err)?;
        out.flush().await.map_err(stdout_err)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_carry_only_what_was_asked() {
        let args = |follow, tail, attempt| LogsArgs {
            job: "train".into(),
            follow,
            tail,
            attempt,
        };
        assert_eq!(
            request_path(&args(false, None, None)),
            "/v1/jobs/train/logs"
        );
        assert_eq!(
            request_path(&args(true, Some(3), Some(2))),
            "/v1/jobs/train/logs?follow=true&tail=3&attempt=2"
        );
    }
}
