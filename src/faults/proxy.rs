//! A TCP proxy whose link can be cut, partitioned, blackholed or delayed while connections are
//! open: the network faults of a fleet (a NAT box losing its uplink, a provider's router
//! dropping replies, a congested link) reproduced on loopback.
//!
//! Put one between a client and a server (an agent and its etcd endpoint, say) and change its
//! [`LinkFault`] at any moment; the change applies to every open connection at once and to
//! every later one.
//!
//! | fault | new connections | bytes client → server | bytes server → client |
//! |---|---|---|---|
//! | [`LinkFault::None`] | accepted | forwarded | forwarded |
//! | [`LinkFault::Cut`] | reset | — (open ones are closed) | — |
//! | [`LinkFault::Partition`] | accepted, not connected upstream until it heals | held | held |
//! | [`LinkFault::BlackholeReplies`] | accepted | forwarded | dropped |
//! | [`LinkFault::Delay`] | accepted | forwarded after the delay | forwarded after the delay |
//!
//! `Partition` is the hard case for a client: nothing is refused, nothing answers, and only its
//! own timeouts and keep-alives can tell; held bytes are delivered when it heals, as TCP's
//! retransmissions would deliver them. `BlackholeReplies` is worse still for anything that
//! retries a write: the server acts on every request and the client learns of none.
//!
//! Caveats: replies dropped by `BlackholeReplies` are gone (TCP itself never loses bytes, so the
//! stream is corrupt for the application afterwards; real clients reset their connection, as
//! they do after a real loss of replies). Delays apply per chunk read, in order; throughput
//! under a delay is one chunk per delay per direction.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the link does to traffic; see the module table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkFault {
    #[default]
    None,
    /// Every open connection is closed and new ones are reset on accept.
    Cut,
    /// Connections stay open but nothing passes either way until it heals.
    Partition,
    /// Requests reach the server; its replies are dropped.
    BlackholeReplies,
    /// Every chunk waits this long before it is forwarded.
    Delay(Duration),
}

/// Counters of what the proxy did, for tests that must know a fault really bit.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub resets: AtomicU64,
    pub bytes_forwarded: AtomicU64,
    pub bytes_dropped: AtomicU64,
}

/// A running proxy from [`FaultProxy::listen_addr`] to a fixed upstream. Dropping it stops
/// the proxy and closes every connection.
pub struct FaultProxy {
    listen: SocketAddr,
    upstream: SocketAddr,
    fault: watch::Sender<LinkFault>,
    stats: Arc<ProxyStats>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `listen` (port 0 for a free one) and forwards to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await?;
        let listen = listener.local_addr()?;
        let (fault, faults) = watch::channel(LinkFault::None);
        let stats = Arc::new(ProxyStats::default());
        let task = tokio::spawn(accept_loop(listener, upstream, faults, stats.clone()));
        Ok(FaultProxy {
            listen,
            upstream,
            fault,
            stats,
            task,
        })
    }

    /// The address clients connect to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Changes the fault for every open and later connection.
    pub fn set(&self, fault: LinkFault) {
        self.fault.send_replace(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> LinkFault {
        *self.fault.borrow()
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: watch::Receiver<LinkFault>,
    stats: Arc<ProxyStats>,
) {
    // Connections live in this set so that aborting the accept loop (dropping the proxy)
    // aborts them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                stats.connections.fetch_add(1, Ordering::Relaxed);
                connections.spawn(serve(client, upstream, faults.clone(), stats.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Resets `stream` (RST, not FIN), so the peer sees what a dropped route or a restarted NAT
/// box gives it.
fn reset(stream: TcpStream, stats: &ProxyStats) {
    let _ = stream.set_zero_linger();
    stats.resets.fetch_add(1, Ordering::Relaxed);
    drop(stream);
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    mut faults: watch::Receiver<LinkFault>,
    stats: Arc<ProxyStats>,
) {
    // Under a partition the proxy does not even connect upstream: the server sees nothing.
    loop {
        match *faults.borrow_and_update() {
            LinkFault::Cut => return reset(client, &stats),
            LinkFault::Partition => {}
            _ => break,
        }
        if faults.changed().await.is_err() {
            return;
        }
    }
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => return reset(client, &stats),
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(
        client_read,
        server_write,
        Direction::Request,
        faults.clone(),
        stats.clone(),
    );
    let down = pump(
        server_read,
        client_write,
        Direction::Reply,
        faults.clone(),
        stats.clone(),
    );
    let cut = async {
        let _ = faults.wait_for(|f| *f == LinkFault::Cut).await;
    };
    tokio::select! {
        // Both directions ended on their own (EOF or error).
        _ = async { tokio::join!(up, down) } => {}
        // Dropping the pumps closes both sockets: each peer sees its connection end at once.
        _ = cut => {
            stats.resets.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Reply,
}

/// Copies one direction until its source ends, applying the fault in force to each chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    direction: Direction,
    mut faults: watch::Receiver<LinkFault>,
    stats: Arc<ProxyStats>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let healed = |f: &LinkFault| *f != LinkFault::Partition;
    loop {
        if faults.wait_for(healed).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // A chunk read just as a partition began waits for it to heal, like the rest.
        let Ok(fault) = faults.wait_for(healed).await.map(|f| *f) else {
            return;
        };
        let forward = match fault {
            LinkFault::None => true,
            LinkFault::Delay(d) => {
                tokio::time::sleep(d).await;
                true
            }
            LinkFault::BlackholeReplies => direction == Direction::Request,
            LinkFault::Partition | LinkFault::Cut => false,
        };
        if !forward {
            stats.bytes_dropped.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        stats.bytes_forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn proxy() -> (FaultProxy, SocketAddr) {
        let upstream = echo_server().await;
        let p = FaultProxy::start("127.0.0.1:0".parse().unwrap(), upstream)
            .await
            .unwrap();
        let addr = p.listen_addr();
        (p, addr)
    }

    async fn echo(s: &mut TcpStream, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut got = vec![0u8; msg.len()];
        match tokio::time::timeout(wait, s.read_exact(&mut got)).await {
            Ok(Ok(_)) => Some(got),
            _ => None,
        }
    }

    const SHORT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn a_healthy_link_forwards_both_ways() {
        let (_p, addr) = proxy().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echo(&mut s, b"ping", SHORT).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn blackholed_replies_reach_the_server_but_never_the_client() {
        let (p, addr) = proxy().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(echo(&mut s, b"one", SHORT).await.is_some());
        p.set(LinkFault::BlackholeReplies);
        assert!(echo(&mut s, b"two", SHORT).await.is_none());
        assert!(p.stats().bytes_dropped.load(Ordering::Relaxed) >= 3);
        // Healed, the connection carries traffic again (what was dropped stays dropped).
        p.set(LinkFault::None);
        assert_eq!(echo(&mut s, b"three", SHORT).await.unwrap(), b"three");
    }

    #[tokio::test]
    async fn a_partition_stalls_open_and_new_connections_without_refusing_then_delivers() {
        let (p, addr) = proxy().await;
        let mut open = TcpStream::connect(addr).await.unwrap();
        p.set(LinkFault::Partition);
        assert!(echo(&mut open, b"x", SHORT).await.is_none());
        let mut fresh = TcpStream::connect(addr).await.unwrap();
        assert!(echo(&mut fresh, b"y", SHORT).await.is_none());
        // Healed: what was held arrives, as TCP's retransmissions would deliver it.
        p.set(LinkFault::None);
        let mut got = [0u8; 1];
        open.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"x");
        fresh.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"y");
    }

    #[tokio::test]
    async fn a_cut_resets_open_connections_and_refuses_new_ones() {
        let (p, addr) = proxy().await;
        let mut open = TcpStream::connect(addr).await.unwrap();
        assert!(echo(&mut open, b"a", SHORT).await.is_some());
        p.set(LinkFault::Cut);
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(SHORT, open.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "open connection not closed: {r:?}"
        );
        if let Ok(mut s) = TcpStream::connect(addr).await {
            assert!(echo(&mut s, b"b", SHORT).await.is_none());
        }
        p.set(LinkFault::None);
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echo(&mut s, b"c", SHORT).await.unwrap(), b"c");
    }

    #[tokio::test]
    async fn a_delay_holds_every_chunk_back() {
        let (p, addr) = proxy().await;
        p.set(LinkFault::Delay(Duration::from_millis(150)));
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t = std::time::Instant::now();
        assert!(echo(&mut s, b"slow", Duration::from_secs(2))
            .await
            .is_some());
        // One delay each way.
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }
}
