//! The agent's HTTP surface: liveness, readiness, status, metrics and job logs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AgentState;

pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/jobs/{name}/logs", get(super::logs::job_logs))
        .with_state(state)
}

/// Ready while etcd answers; liveness (`/healthz`) never depends on etcd.
async fn readyz(State(state): State<Arc<AgentState>>) -> (StatusCode, &'static str) {
    if state.etcd_ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "etcd unreachable\n")
    }
}

/// Status in rift's terms, plus the old orchestrator's field names so existing scripts work.
async fn status(State(state): State<Arc<AgentState>>) -> Json<serde_json::Value> {
    let leader = state.leader.read().expect("lock").clone();
    let is_leader = state.is_leader.load(Ordering::Relaxed);
    let peers = state.alive_peers.read().expect("lock").clone();
    let voters = state.voters_alive.read().expect("lock").clone();
    let reachable = state.reachable_peers.read().expect("lock").clone();
    Json(json!({
        "node_id": state.node,
        "role": if is_leader { "leader" } else { "follower" },
        "leader_id": leader,
        "controllers": state.controllers,
        // The old orchestrator reported counts; the names come beside them.
        "alive_peers": peers.len(),
        "alive_peer_names": peers,
        "voters_alive": voters.len(),
        "voters_alive_names": voters,
        // Peers whose agent answered over HTTP, and the address (of their ordered ones) that did.
        "reachable_peers": reachable,
        "etcd_ready": state.etcd_ready.load(Ordering::Relaxed),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn metrics(State(state): State<Arc<AgentState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
}
