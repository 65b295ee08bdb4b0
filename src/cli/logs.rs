//! `rift logs JOB [-f] [--tail N] [--attempt N]`: a job's output, streamed from the agent of
//! the node it is placed on.
//!
//! The node comes from the job's placement; the agent is tried at the node's reported endpoint
//! first (for a NAT-blocked node, its tunnel's relay endpoint), then at each of its addresses
//! (with its `agentPort`) in order, each with a short connect timeout
//! ([`crate::net::dial::agent_addresses`]). A CLI run is one process, so what worked is not
//! remembered across runs; the endpoint the agent advertises comes first. The request is
//! HTTP/1.0 over TLS (the agent verified as `<node>.node.rift`, this side presenting the
//! certificate of RIFT_CONFIG), so the agent answers with an unchunked body that ends when it
//! closes the connection.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CliError;
use crate::api::placement::Placement;
use crate::api::validation::dns1123_problem;
use crate::api::{JobPhase, JobSpec, NodeSpec};
use crate::net::dial::{agent_addresses, connect_one};
use crate::net::{AgentStream, AgentTls};
use crate::store::{keys, Store};

/// How long one address may take to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a connected agent may take to answer with its status line and headers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Without `-f`: the longest silence in the body before giving up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// With `-f` on a job that is placed but not yet started: how long to wait for the agent to
/// start it.
const START_WAIT: Duration = Duration::from_secs(15);
/// The most of an error body shown.
const MAX_ERROR_BODY: usize = 4096;

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
            let mut resp = match request(tls, node, addr, path).await {
                Ok(r) => r,
                Err(why) => {
                    tracing::debug!(%addr, %why, "agent address did not answer");
                    tried.push(format!("{addr} ({why})"));
                    break;
                }
            };
            if resp.status == 200 {
                return resp.copy_to_stdout(!follow).await;
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

/// A response whose status line and headers were read; `body` holds what came after them.
struct Response {
    status: u16,
    body: Vec<u8>,
    stream: AgentStream,
}

/// Connects to node `node`'s agent at `addr` (over TLS in a TLS cluster) and sends `GET path`
/// as HTTP/1.0; an error says why in a few words.
async fn request(tls: &AgentTls, node: &str, addr: &str, path: &str) -> Result<Response, String> {
    let tcp = connect_one(addr, CONNECT_TIMEOUT).await?;
    let mut stream = tls.open(node, tcp).await?;
    let head = async {
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: rift/{}\r\nAccept: text/plain\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let status = parse_status(&buf[..end])
                    .ok_or_else(|| "answered, but not with HTTP".to_string())?;
                return Ok((status, buf.split_off(end + 4)));
            }
            if buf.len() > 64 * 1024 {
                return Err("answered with oversized headers".to_string());
            }
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed the connection without answering".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let (status, body) = tokio::time::timeout(RESPONSE_TIMEOUT, head)
        .await
        .map_err(|_| {
            format!(
                "connected, but no answer within {}s",
                RESPONSE_TIMEOUT.as_secs()
            )
        })??;
    Ok(Response {
        status,
        body,
        stream,
    })
}

impl Response {
    /// Streams the body to stdout until the agent closes the connection; with `idle_limit`,
    /// gives up after [`IDLE_TIMEOUT`] without a byte.
    async fn copy_to_stdout(&mut self, idle_limit: bool) -> Result<(), CliError> {
        let stdout_err = |source| CliError::Io {
            path: "stdout".into(),
            source,
        };
        let mut out = tokio::io::stdout();
        out.write_all(&self.body).await.map_err(stdout_err)?;
        out.flush().await.map_err(stdout_err)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let read = self.stream.read(&mut buf);
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

    /// The first line of an error answer's body (bounded, and briefly waited for).
    async fn error_body(&mut self) -> String {
        let mut body = std::mem::take(&mut self.body);
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while body.len() < MAX_ERROR_BODY {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&body);
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if line.is_empty() {
            "(no message)".into()
        } else {
            line.trim().to_string()
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The status code of `HTTP/1.x CODE REASON`.
fn parse_status(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head).ok()?;
    let mut parts = text.lines().next()?.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
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

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.0 404 Not Found\r\nx: y"), Some(404));
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
    }
}
