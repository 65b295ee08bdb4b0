//! Serving the agent's HTTP: over TLS with the node's certificate (a client certificate of
//! the cluster CA is verified when presented; handlers decide what needs one, see
//! [`super::http`]), or plain on a plaintext cluster (`--insecure`).
//!
//! Every request carries a [`Caller`] extension saying what its connection proved. A TLS
//! handshake runs in the connection's own task with a time limit, so a client that never
//! finishes one holds no more than its socket. On shutdown the listener closes and open
//! connections are asked to finish (followed logs end on the agent's shutdown).

use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::pki::names::Principal;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(5);

/// What a request's connection proved about its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A plaintext agent (`--insecure`): nobody is identified; everything is open, as before
    /// TLS.
    Insecure,
    /// TLS without a client certificate.
    Anonymous,
    /// TLS with a client certificate of the cluster CA.
    Certified(Principal),
}

/// The caller of a TLS connection, from its verified client certificate.
fn caller_of(conn: &rustls::ServerConnection) -> Caller {
    match conn.peer_certificates().and_then(|c| c.first()) {
        None => Caller::Anonymous,
        Some(der) => match crate::pki::inspect::inspect_der(der) {
            Ok(info) => Caller::Certified(Principal::from_common_name(&info.common_name)),
            Err(_) => Caller::Anonymous,
        },
    }
}

/// Serves `router` on `listener` until `shutdown`: TLS with `tls`, else plain.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(tls) = tls else {
        let router = router.layer(Extension(Caller::Insecure));
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
        return;
    };
    let acceptor = TlsAcceptor::from(tls);
    let builder = Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = super::stopped(&mut shutdown) => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(%e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%e, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let caller = caller_of(stream.get_ref().1);
            let service = TowerToHyperService::new(router.layer(Extension(caller)));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
}
