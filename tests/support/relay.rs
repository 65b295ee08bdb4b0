//! Fault proxies (relays) for tests, run on a runtime of their own.
//!
//! A test's own runtime is often blocked for a moment: synchronous fixtures
//! (`TestAgent::start`, `rift(..)`) wait on threads or processes that talk through the relay.
//! A relay spawned on the test's runtime would then stop forwarding, and the client on the
//! other side would time out (a TLS handshake first). Relays therefore live on one
//! background runtime per test binary.

use std::net::SocketAddr;
use std::sync::OnceLock;

use rift::faults::FaultProxy;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RELAYS: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RELAYS.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-relay")
            .enable_all()
            .build()
            .expect("a runtime for test relays")
    })
}

/// A fault proxy on a loopback port forwarding to `upstream`, healthy until told otherwise.
pub async fn relay_to(upstream: SocketAddr) -> FaultProxy {
    runtime()
        .spawn(FaultProxy::start("127.0.0.1:0".parse().unwrap(), upstream))
        .await
        .expect("the relay task")
        .expect("start a relay")
}
