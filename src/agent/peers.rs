//! Which peers this agent can reach over HTTP, and at which address: every
//! [`PROBE_INTERVAL`], each other Ready node's agent is probed (`GET /healthz`) at its
//! addresses in order — the endpoint it advertises (through a relay for a NAT-blocked node),
//! then `spec.addresses` with its agent port — each with a short connect timeout, over TLS
//! verified as `<node>.node.rift` (see [`crate::net::tls`]). The address
//! that answered is remembered and tried first next time; when it fails, the others are tried
//! again in order. The result is served in `/status` as `reachable_peers`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::AgentState;
use crate::api::selector::LabelSelector;
use crate::api::NodeSpec;
use crate::net::{agent_addresses, AgentStream, AgentTls, Dialer};
use crate::store::Store;

/// How often peers are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a connected peer may take to answer `/healthz`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `GET /healthz` and succeeds on a 200 answer.
async fn healthz(mut stream: AgentStream) -> Result<(), String> {
    let exchange = async {
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: peer\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 12 {
            let n = stream
                .read(&mut buf[got..])
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let head = String::from_utf8_lossy(&buf[..got]);
        let mut parts = head.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(v), Some("200")) if v.starts_with("HTTP/") => Ok(()),
            _ => Err(format!(
                "answered {:?}, not a rift agent's 200",
                head.lines().next().unwrap_or("")
            )),
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| "connected, but no answer".to_string())?
}

/// Probes peers for good: run it under [`crate::tasks::Tasks::spawn_until_stopped`].
pub async fn run(store: Store, state: Arc<AgentState>, tls: AgentTls) {
    let dialer = Dialer::default();
    loop {
        if let Ok((nodes, _)) = store.list::<NodeSpec>(&LabelSelector::everything()).await {
            let probes = nodes
                .iter()
                .filter(|n| n.name() != state.node)
                .filter(|n| n.status.as_ref().is_some_and(|s| s.is_ready()))
                .map(|n| {
                    let addrs = agent_addresses(n);
                    let dialer = &dialer;
                    let tls = &tls;
                    async move {
                        let name = n.name().to_string();
                        let check = |tcp| {
                            let name = name.clone();
                            async move { healthz(tls.open(&name, tcp).await?).await }
                        };
                        match dialer.reach(&name, &addrs, check).await {
                            Ok(((), addr)) => Some((name, addr)),
                            Err(e) => {
                                tracing::debug!(peer = %name, %e, "peer unreachable");
                                None
                            }
                        }
                    }
                });
            let reachable: BTreeMap<String, String> = futures::future::join_all(probes)
                .await
                .into_iter()
                .flatten()
                .collect();
            *state.reachable_peers.write().expect("lock") = reachable;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}
