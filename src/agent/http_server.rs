//! Serving the agent's HTTP router with limits, whatever carries the bytes.
//!
//! Guarantees, for every connection however it is wrapped ([`Transport`]: plain TCP on a
//! plaintext cluster, TLS ([`super::https::Tls`]) otherwise):
//!
//! - **A connection must send a complete request head within
//!   [`HttpLimits::header_read_timeout`]** of being accepted, and again of its previous
//!   response when kept alive; otherwise it is closed. The transport's handshake has a deadline
//!   of the same length before that. Half-sent requests (slowloris) are dropped, not kept.
//! - **At most [`HttpLimits::max_connections`] connections are served at once, and at most
//!   [`HttpLimits::max_connections_per_peer`] from one address**, so one client cannot take
//!   every slot. A connection over either limit is answered `503 Service Unavailable` with a
//!   message saying which limit and closed, a few hundred milliseconds after its handshake; at
//!   most [`MAX_REJECTING`] such answers are in progress at a time, beyond which connections
//!   are closed at once.
//! - Request heads are capped at [`MAX_HEAD_BYTES`], so each connection's buffers stay small:
//!   memory is bounded by the connection limit.
//! - On shutdown the listener closes, idle connections close at once, and requests in flight
//!   or half-sent get [`SHUTDOWN_GRACE`] before their connection is dropped (log followers end
//!   on the same signal, see [`super::logs`]).
//!
//! Caveat: a connection that has sent its request and then stops reading a long response holds
//! its slot until the response ends; followed logs, the only endless responses, have a cap of
//! their own ([`HttpLimits::max_follow_streams`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::https::Caller;
use super::metrics::Metrics;
use crate::tasks::CancellationToken;

/// The largest request head (request line and headers) read from a client.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How many refused connections are answered with a 503 at once; more are closed unanswered.
pub const MAX_REJECTING: usize = 32;
/// How long a refused connection's handshake may take before it is closed unanswered.
const REJECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request in flight may still take once the agent shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long a refused connection is read from before and after its answer.
const LINGER: Duration = Duration::from_millis(100);

/// The agent's HTTP limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time allowed for a request head (and the transport's handshake).
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections served at once from one client address.
    pub max_connections_per_peer: usize,
    /// Followed logs (`?follow=true`) streamed at once; see [`super::logs`].
    pub max_follow_streams: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_connections_per_peer: 128,
            max_follow_streams: 64,
        }
    }
}

/// What carries the HTTP bytes of an accepted TCP connection: the connection itself, or a
/// TLS session over it. `wrap` runs in the connection's own task, under the header deadline
/// and holding the connection's slot, so a slow handshake can neither stall the accept loop
/// nor escape the limits.
/// `caller` says what the wrapped connection proved about its client; every request on it
/// carries that as an extension (see [`super::http`]).
pub trait Transport: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn wrap(&self, tcp: TcpStream) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
    fn caller(&self, io: &Self::Io) -> Caller;
}

/// Plain TCP (a plaintext cluster, `--insecure`; TLS is [`super::https::Tls`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

impl Transport for Plain {
    type Io = TcpStream;
    async fn wrap(&self, tcp: TcpStream) -> std::io::Result<TcpStream> {
        Ok(tcp)
    }
    fn caller(&self, _: &TcpStream) -> Caller {
        Caller::Insecure
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every one of the agent's connection slots is taken.
    Full { max: usize },
    /// The client's address holds its share of the slots.
    PeerFull { max: usize },
}

impl Refusal {
    /// The body of the 503 answer.
    pub fn message(self, peer: IpAddr) -> String {
        match self {
            Refusal::Full { max } => format!(
                "this agent is serving {max} connections, its limit; try again in a few seconds\n"
            ),
            Refusal::PeerFull { max } => format!(
                "{peer} has {max} connections open to this agent, the limit per address; \
                 close some or try again in a few seconds\n"
            ),
        }
    }
}

/// Connection slots: a total and a count per client address.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    per_peer: usize,
    taken: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One taken slot; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    peer: IpAddr,
}

impl Slots {
    pub fn new(max: usize, per_peer: usize) -> Arc<Self> {
        Arc::new(Slots {
            max,
            per_peer,
            taken: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a connection from `peer`, or why there is none.
    pub fn take(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let mut taken = self.taken.lock().expect("lock");
        if taken.0 >= self.max {
            return Err(Refusal::Full { max: self.max });
        }
        let mine = taken.1.entry(peer).or_default();
        if *mine >= self.per_peer {
            return Err(Refusal::PeerFull { max: self.per_peer });
        }
        *mine += 1;
        taken.0 += 1;
        Ok(Slot {
            slots: self.clone(),
            peer,
        })
    }

    /// Connections holding a slot.
    pub fn in_use(&self) -> usize {
        self.taken.lock().expect("lock").0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.slots.taken.lock().expect("lock");
        taken.0 -= 1;
        if let Some(n) = taken.1.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                taken.1.remove(&self.peer);
            }
        }
    }
}

/// Serves `router` on `listener` over `transport` until `shutdown` turns true, then waits for
/// the requests in flight.
pub async fn serve<T: Transport>(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    transport: T,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let slots = Slots::new(limits.max_connections, limits.max_connections_per_peer);
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    // Every connection task holds a receiver; `closed()` resolves when the last one ends.
    let (open_tx, open_rx) = watch::channel(());
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let peer = peer.ip();
        match slots.take(peer) {
            Ok(slot) => {
                let (router, transport, stop, open) = (
                    router.clone(),
                    transport.clone(),
                    shutdown.clone(),
                    open_rx.clone(),
                );
                tokio::spawn(async move {
                    serve_connection(tcp, router, transport, limits, stop).await;
                    drop((slot, open));
                });
            }
            Err(refusal) => {
                metrics.http_refused.inc();
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_warned = Some(tokio::time::Instant::now());
                    tracing::warn!(
                        %peer,
                        open = slots.in_use(),
                        "refusing HTTP connections: {}",
                        refusal.message(peer).trim_end()
                    );
                }
                // Answer while few answers are in progress; beyond that, close at once.
                if let Ok(permit) = rejecting.clone().try_acquire_owned() {
                    let transport = transport.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            REJECT_TIMEOUT * 2,
                            reject(tcp, transport, refusal.message(peer)),
                        )
                        .await;
                        drop(permit);
                    });
                }
            }
        }
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
}

/// Serves one connection until it closes, its header deadline passes, or shutdown.
async fn serve_connection<T: Transport>(
    tcp: TcpStream,
    router: Router,
    transport: T,
    limits: HttpLimits,
    stop: CancellationToken,
) {
    let io = match tokio::time::timeout(limits.header_read_timeout, transport.wrap(tcp)).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => {
            tracing::debug!(%e, "connection handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("connection handshake timed out");
            return;
        }
    };
    let router = router.layer(axum::Extension(transport.caller(&io)));
    let mut conn = pin!(http1_builder(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router)));
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%e, "connection ended");
            }
            return;
        }
        _ = stop.cancelled() => {}
    }
    // Shutting down: no new request on this connection; one in flight (or still being sent)
    // gets a moment, then the connection is dropped.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
}

/// Answers a refused connection `503` with `message` and closes it, in well under a second
/// whatever the client does: what it already sent (its request, normally) is read first and
/// whatever follows the answer briefly, so closing does not reset the connection under the
/// answer; a client that sends nothing gets the answer all the same.
async fn reject<T: Transport>(tcp: TcpStream, transport: T, message: String) {
    let Ok(Ok(mut io)) = tokio::time::timeout(REJECT_TIMEOUT, transport.wrap(tcp)).await else {
        return;
    };
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, io.read(&mut buf)).await;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Retry-After: 5\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{message}",
        message.len()
    );
    if io.write_all(answer.as_bytes()).await.is_err() || io.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

fn http1_builder(header_read_timeout: Duration) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_in_total_and_per_address_and_come_back_when_dropped() {
        let slots = Slots::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), Refusal::PeerFull { max: 2 });
        let _b1 = slots.take(b).unwrap();
        assert_eq!(slots.take(b).unwrap_err(), Refusal::Full { max: 3 });
        assert_eq!(slots.in_use(), 3);
        drop(a1);
        assert_eq!(slots.in_use(), 2);
        let _b2 = slots.take(b).unwrap();
        let by_peer = slots.taken.lock().unwrap().1.clone();
        assert_eq!((by_peer[&a], by_peer[&b]), (1, 2));
        drop(_a2);
        assert!(
            !slots.taken.lock().unwrap().1.contains_key(&a),
            "emptied entries go"
        );
    }

    #[test]
    fn refusals_say_which_limit() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(Refusal::Full { max: 512 }
            .message(peer)
            .contains("512 connections"));
        let m = Refusal::PeerFull { max: 128 }.message(peer);
        assert!(
            m.contains("10.0.0.9") && m.contains("limit per address"),
            "{m}"
        );
    }
}
