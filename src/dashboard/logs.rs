//! The live tail of one job's output, as server-sent events: the last [`TAIL_LINES`] lines and
//! then what the job writes, fetched from the agent of its node exactly as `rift logs -f`
//! does (`GET /v1/jobs/NAME/logs?follow=true` over [`crate::net::agent_http`], trying the
//! node's endpoint and addresses in order and remembering the one that answered).
//!
//! Events: `log` carries escaped lines (HTML-safe: a job's output is never markup), `end`
//! says the output ended or cannot be had and why; the page then closes the stream. A job not
//! placed yet is waited for (the stream says so) and followed once it runs.
//!
//! Bounded: lines longer than [`MAX_PIECE`] bytes are sent in pieces; at most one piece is
//! buffered (the channel to the browser holds [`QUEUE`] events, and a full channel stops the
//! reading from the agent); the agent connection is closed as soon as the browser goes away,
//! even while the job is silent; at most the dashboard's log-stream limit run at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use maud::html;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::source::Source;
use crate::api::JobPhase;
use crate::net::agent_http::{self, Response};
use crate::net::{agent_addresses, AgentTls, Dialer};

/// Lines of output already written that a new viewer sees.
pub const TAIL_LINES: usize = 200;
/// The largest piece of output sent in one event.
pub const MAX_PIECE: usize = 16 * 1024;
/// Events waiting for the browser.
const QUEUE: usize = 16;
/// How long a job placed but not yet started may take to appear on its agent.
const START_WAIT: Duration = Duration::from_secs(15);

/// The log stream of job `name` (a valid name: the caller checked).
pub fn stream(
    source: Source,
    dialer: Arc<Dialer>,
    tls: Arc<AgentTls>,
    name: String,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let out = Out { tx };
        tokio::select! {
            _ = follow(&source, &dialer, &tls, &name, &out) => {}
            _ = out.tx.closed() => {}
            _ = shutdown.cancelled() => {}
        }
        drop(permit);
    });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|ev| (Ok(ev), rx))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(super::live::KEEP_ALIVE))
}

struct Out {
    tx: mpsc::Sender<Event>,
}

impl Out {
    /// Sends `text` as escaped output; false once the browser is gone.
    async fn text(&self, text: &str) -> bool {
        self.send("log", text).await
    }

    /// Says why the output ends; the page closes the stream on it.
    async fn end(&self, why: &str) {
        self.send("end", &format!("\n— {why} —\n")).await;
    }

    async fn send(&self, event: &str, text: &str) -> bool {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        // Escaped, and every newline as an entity: the event's data stays one line, so no
        // trailing newline is lost between events.
        let data = html! { (text) }.into_string().replace('\n', "&#10;");
        self.tx
            .send(Event::default().event(event).data(data))
            .await
            .is_ok()
    }
}

/// Waits until job `name` is placed, then streams its output until it ends.
async fn follow(source: &Source, dialer: &Dialer, tls: &AgentTls, name: &str, out: &Out) {
    let mut views = source.subscribe();
    let mut said_waiting = false;
    let (node, phase) = loop {
        let view = views.borrow_and_update().clone();
        match view.cluster.job(name) {
            None if view.cluster.revision > 0 => {
                out.end(&format!("there is no job {name}")).await;
                return;
            }
            Some(job) => {
                let status = job.status.clone().unwrap_or_default();
                if let Some(node) = status.node {
                    break (node, status.phase);
                }
                if !said_waiting {
                    let why = [status.message, status.reason]
                        .into_iter()
                        .find(|s| !s.is_empty())
                        .unwrap_or_else(|| "not placed yet".into());
                    out.text(&format!(
                        "(job {name} is {:?}: {why}; its output follows once it runs)\n",
                        status.phase
                    ))
                    .await;
                    said_waiting = true;
                }
            }
            None => {}
        }
        if views.changed().await.is_err() {
            return;
        }
    };
    let Some(node_obj) = source.view().cluster.node(&node).cloned() else {
        out.end(&format!(
            "job {name} is placed on node {node}, but there is no Node {node} to find its agent by"
        ))
        .await;
        return;
    };
    let addresses = agent_addresses(&node_obj);
    let path = format!("/v1/jobs/{name}/logs?follow=true&tail={TAIL_LINES}");
    let started = tokio::time::Instant::now();
    let mut resp = loop {
        let answer = dialer
            .reach(&node, &addresses, |tcp| {
                agent_http::get_on(tls, &node, tcp, &node, &path)
            })
            .await;
        let mut resp = match answer {
            Ok((resp, _addr)) => resp,
            Err(e) => {
                out.end(&format!("the agent of node {node} cannot be reached: {e}"))
                    .await;
                return;
            }
        };
        if resp.status == 200 {
            break resp;
        }
        // Placed but not started yet: the agent has no state for it for a moment.
        if resp.status == 404 && phase == JobPhase::Scheduled && started.elapsed() < START_WAIT {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let body = resp.error_body().await;
        out.end(&format!(
            "the agent of node {node} answered {}: {body}",
            resp.status
        ))
        .await;
        return;
    };
    match pump(&mut resp, out).await {
        Ok(true) => out.end("end of output").await,
        Ok(false) => {}
        Err(e) => {
            out.end(&format!("the connection to node {node}'s agent broke: {e}"))
                .await
        }
    }
}

/// Copies the body to the browser in whole lines (a line over [`MAX_PIECE`] in pieces);
/// `Ok(true)` at the end of the output, `Ok(false)` when the browser went away.
async fn pump(resp: &mut Response, out: &Out) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = resp.read(&mut buf).await?;
        if n == 0 {
            if !pending.is_empty() {
                return Ok(out.text(&String::from_utf8_lossy(&pending)).await);
            }
            return Ok(true);
        }
        pending.extend_from_slice(&buf[..n]);
        // Whole lines go now; a partial line waits for its end unless it is already long.
        let cut = match pending.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if pending.len() >= MAX_PIECE => pending.len(),
            None => continue,
        };
        let rest = pending.split_off(cut);
        for piece in pending.chunks(MAX_PIECE) {
            if !out.text(&String::from_utf8_lossy(piece)).await {
                return Ok(false);
            }
        }
        pending = rest;
    }
}
