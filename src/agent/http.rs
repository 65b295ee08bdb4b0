//! The agent's HTTP surface: liveness, readiness, status, metrics, job logs, and on
//! controllers the join and renewal endpoints.
//!
//! Who may call what (a TLS agent; a plaintext one, `--insecure`, is open as before):
//!
//! | path | who |
//! |---|---|
//! | `/healthz`, `/readyz` | anyone |
//! | `/v1/join/ca`, `/v1/join` | anyone (a join is authenticated by its token; controllers only) |
//! | `/status`, `/v1/jobs/{name}/logs` | a client certificate of the cluster CA (an operator or a node) |
//! | `/metrics` | the same, or `Authorization: Bearer <scrape token>` (`scrapeTokenFile`) |
//! | `/v1/renew` | a node's own certificate (controllers only) |

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::https::Caller;
use super::AgentState;
use crate::join::server::Refusal;
use crate::join::{CertificateRequests, JoinRequest, MAX_BODY_BYTES};
use crate::pki::names::Principal;

pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/jobs/{name}/logs", get(super::logs::job_logs))
        .route("/v1/join/ca", get(join_ca))
        .route("/v1/join", post(join))
        .route("/v1/renew", post(renew))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Paths anyone may call.
const OPEN: &[&str] = &["/healthz", "/readyz", "/v1/join/ca", "/v1/join"];

/// Refuses callers that proved too little for the path (see the module docs).
async fn authorize(State(state): State<Arc<AgentState>>, request: Request, next: Next) -> Response {
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous);
    let path = request.uri().path();
    let allowed = match &caller {
        Caller::Insecure => true,
        _ if OPEN.contains(&path) => true,
        Caller::Certified(p) => p.is_cluster_member(),
        Caller::Anonymous => path == "/metrics" && scrape_token_matches(&state, &request),
    };
    if allowed {
        return next.run(request).await;
    }
    let why = match caller {
        Caller::Certified(Principal::Other(cn)) => {
            format!("the certificate `{cn}` is no operator's or node's")
        }
        _ => "no client certificate".into(),
    };
    (
        StatusCode::UNAUTHORIZED,
        format!(
            "{why}: {path} needs a client certificate of this cluster's CA (`rift` presents the \
             one in RIFT_CONFIG); Prometheus may use a bearer token instead for /metrics (the \
             node config's scrapeTokenFile)\n"
        ),
    )
        .into_response()
}

/// `Authorization: Bearer <token>` matching the node's scrape token (compared as digests).
fn scrape_token_matches(state: &AgentState, request: &Request) -> bool {
    let Some(expected) = state.scrape_token.as_deref() else {
        return false;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    !given.is_empty() && Sha256::digest(given.trim()) == Sha256::digest(expected)
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

fn refusal(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, format!("{}\n", r.message)).into_response()
}

fn not_a_controller() -> Response {
    refusal(Refusal {
        status: 404,
        message: "this agent serves no joins: join through a controller's agent".into(),
    })
}

/// `GET /v1/join/ca`: the cluster CA, for a joining node to check against its token.
async fn join_ca(State(state): State<Arc<AgentState>>) -> Response {
    match (&state.join, &state.ca_pem) {
        (Some(_), Some(ca)) => ca.clone().into_response(),
        _ => not_a_controller(),
    }
}

/// `POST /v1/join`.
async fn join(State(state): State<Arc<AgentState>>, body: axum::body::Bytes) -> Response {
    let Some(service) = &state.join else {
        return not_a_controller();
    };
    let request: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refusal(Refusal {
                status: 400,
                message: format!("not a join request: {e}"),
            })
        }
    };
    match service.join(request).await {
        Ok(answer) => Json(answer).into_response(),
        Err(r) => refusal(r),
    }
}

/// `POST /v1/renew`: new certificates for the node whose certificate was presented.
async fn renew(
    State(state): State<Arc<AgentState>>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let Some(service) = &state.join else {
        return not_a_controller();
    };
    let Caller::Certified(Principal::Node { name, role }) = caller else {
        return refusal(Refusal {
            status: 403,
            message: "renewal needs the node's own current certificate".into(),
        });
    };
    let requests: CertificateRequests = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refusal(Refusal {
                status: 400,
                message: format!("not a renewal request: {e}"),
            })
        }
    };
    match service.renew(&name, role, requests).await {
        Ok(certs) => Json(certs).into_response(),
        Err(r) => refusal(r),
    }
}
