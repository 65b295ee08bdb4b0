//! `rift dashboard` (and `rift up`): a read-only, live web view of the cluster served by the
//! `rift` binary itself, reading etcd with the operator's credentials.
//!
//! Pieces: [`source`] (the one watch-fed view of etcd every page reads), [`cluster`] (the
//! typed snapshot), [`history`] (what the charts plot), [`health`] (what needs attention,
//! decided purely), [`pages`] (server-rendered HTML, escaped by maud), [`live`] (a page's
//! fragment pushed again over server-sent events when it changes), [`logs`] (a job's output
//! from its node's agent), [`assets`] (htmx, its SSE extension and uPlot, vendored and
//! embedded) and [`server`] (routes, Content-Security-Policy, limits).
//!
//! It is served with the agent's HTTP limits ([`crate::agent::http_server`]: header timeout,
//! connection caps). Caveat: a browser opens at most six HTTP/1.1 connections to one host and
//! each dashboard tab holds one (two on a job's page) for its live updates, so more than about
//! five tabs of one dashboard in one browser wait for each other.

pub mod assets;
pub mod cluster;
pub mod health;
pub mod history;
pub mod live;
pub mod logs;
pub mod pages;
pub mod server;
pub mod source;

#[cfg(test)]
mod fixtures;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use server::Limits;
pub use source::Source;

use crate::agent::http_server::{self, HttpLimits, Plain};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("the dashboard cannot listen on {addr}: {source}; pick another address with --listen")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the dashboard's address (before anything is announced, so a taken port is an error
/// at once).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, DashboardError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DashboardError::Listen { addr, source })
}

/// Serves the dashboard on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let listen = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    // Job logs come from the agents, over TLS with this operator's certificate.
    let agent_tls = match crate::net::AgentTls::for_identity(store.access().identity()) {
        Ok(tls) => tls,
        Err(e) => {
            tracing::warn!(%e, "cannot use these credentials with agents; job logs will not load");
            crate::net::AgentTls::insecure()
        }
    };
    let source = Source::start(store, shutdown.clone());
    let router = server::router(source, agent_tls, listen, limits, shutdown.clone());
    http_server::serve(
        listener,
        router,
        HttpLimits::default(),
        Plain,
        Arc::new(crate::agent::metrics::Metrics::default()),
        shutdown,
    )
    .await;
}
