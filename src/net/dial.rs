//! Address fallback: try a node's addresses in order, with a short connect timeout each,
//! remember the one that worked, and start from it next time; when it fails, fall back to the
//! rest in their declared order.
//!
//! Caveat: an address that accepts the TCP connection but then does not answer is only known to
//! be bad once the caller's own check fails; [`Dialer::reach`] takes that check, so a wrong
//! service on an address (or a dead tunnel whose relay still accepts) also falls through.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::api::Node;

/// How long one address may take to accept a connection before the next one is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Every address failed; `tried` says how each one failed, in the order tried.
#[derive(Debug, thiserror::Error)]
#[error("no address answered; tried {}", .tried.join(", "))]
pub struct DialError {
    pub tried: Vec<String>,
}

/// Where to try a node's agent, in order: the endpoint its agent reports (for a NAT-blocked
/// node, the relay endpoint of its tunnel), then each address with the agent's port; without
/// repeats.
pub fn agent_addresses(node: &Node) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let endpoint = node.status.as_ref().and_then(|s| s.endpoint.clone());
    let from_spec = node
        .spec
        .addresses
        .iter()
        .map(|a| with_port(a.trim(), node.spec.agent_port));
    for addr in endpoint.into_iter().chain(from_spec) {
        if !addr.is_empty() && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// `host:port` for an address that is a host name or IP; an address that already names a port
/// (`host:port`, `[v6]:port`) is kept as it is.
pub fn with_port(host: &str, port: u16) -> String {
    let colons = host.matches(':').count();
    if host.starts_with('[') {
        if host.contains("]:") {
            host.to_string()
        } else {
            format!("{host}:{port}")
        }
    } else if colons == 1 {
        host.to_string()
    } else if colons > 1 {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host part of an address that may carry a port: `h:22` → `h`, `[fd7a::1]:22` → `fd7a::1`,
/// `fd7a::1` and `h` unchanged.
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.matches(':').count() {
        1 => addr.split(':').next().unwrap_or(addr),
        _ => addr,
    }
}

/// `addresses` with `remembered` (when it is one of them) moved to the front.
pub fn ordered(addresses: &[String], remembered: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(addresses.len());
    if let Some(r) = remembered.filter(|r| addresses.iter().any(|a| a == r)) {
        out.push(r.to_string());
    }
    for a in addresses {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

/// Connects to `addr` within `timeout`; the error says why in a few words.
pub async fn connect_one(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(format!(
            "no connection within {:.1}s",
            timeout.as_secs_f64()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// Dials nodes by their ordered addresses and remembers, per node, the address that worked.
#[derive(Debug)]
pub struct Dialer {
    timeout: Duration,
    remembered: Mutex<HashMap<String, String>>,
}

impl Default for Dialer {
    fn default() -> Self {
        Self::new(CONNECT_TIMEOUT)
    }
}

impl Dialer {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            remembered: Mutex::new(HashMap::new()),
        }
    }

    /// The address that last worked for `key`.
    pub fn remembered(&self, key: &str) -> Option<String> {
        self.remembered.lock().expect("lock").get(key).cloned()
    }

    /// Tries `addresses` for `key` (the remembered one first, then the rest in order): connects
    /// within the timeout, then runs `check` on the connection; the first address whose check
    /// passes is remembered and returned with the check's value. A remembered address that
    /// fails is forgotten.
    pub async fn reach<T, F, Fut>(
        &self,
        key: &str,
        addresses: &[String],
        mut check: F,
    ) -> Result<(T, String), DialError>
    where
        F: FnMut(TcpStream) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let remembered = self.remembered(key);
        let mut tried = Vec::new();
        for addr in ordered(addresses, remembered.as_deref()) {
            let outcome = match connect_one(&addr, self.timeout).await {
                Ok(stream) => check(stream).await,
                Err(why) => Err(why),
            };
            match outcome {
                Ok(v) => {
                    self.remembered
                        .lock()
                        .expect("lock")
                        .insert(key.to_string(), addr.clone());
                    return Ok((v, addr));
                }
                Err(why) => {
                    tracing::debug!(%key, %addr, %why, "address did not answer");
                    if remembered.as_deref() == Some(addr.as_str()) {
                        self.remembered.lock().expect("lock").remove(key);
                    }
                    tried.push(format!("{addr} ({why})"));
                }
            }
        }
        Err(DialError { tried })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NodeSpec, NodeStatus, Object};

    #[test]
    fn endpoint_first_then_addresses_with_the_agent_port_without_repeats() {
        let mut node = Object::new(
            "n1",
            NodeSpec {
                addresses: vec![
                    "100.64.0.1".into(),
                    "fd7a::1".into(),
                    "10.0.0.1:9000".into(),
                    "[fd7a::2]".into(),
                    "box.example".into(),
                    "127.0.0.1".into(),
                ],
                agent_port: 8771,
                ..NodeSpec::default()
            },
        );
        node.status = Some(NodeStatus {
            endpoint: Some("127.0.0.1:8771".into()),
            ..NodeStatus::default()
        });
        assert_eq!(
            agent_addresses(&node),
            [
                "127.0.0.1:8771",
                "100.64.0.1:8771",
                "[fd7a::1]:8771",
                "10.0.0.1:9000",
                "[fd7a::2]:8771",
                "box.example:8771",
            ]
        );
    }

    #[test]
    fn hosts_lose_their_ports() {
        assert_eq!(host_of("10.0.0.1:22"), "10.0.0.1");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
        assert_eq!(host_of("[fd7a::1]:22"), "fd7a::1");
        assert_eq!(host_of("fd7a::1"), "fd7a::1");
        assert_eq!(host_of("relay.example"), "relay.example");
    }

    #[test]
    fn the_remembered_address_goes_first_and_the_rest_keep_their_order() {
        let a: Vec<String> = ["t", "p", "q"].map(String::from).into();
        assert_eq!(ordered(&a, None), ["t", "p", "q"]);
        assert_eq!(ordered(&a, Some("p")), ["p", "t", "q"]);
        assert_eq!(ordered(&a, Some("gone")), ["t", "p", "q"]);
    }

    #[tokio::test]
    async fn a_refusing_first_address_falls_through_and_the_working_one_is_remembered() {
        let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good_addr = good.local_addr().unwrap().to_string();
        // A port that was free a moment ago: connecting is refused.
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let dialer = Dialer::new(Duration::from_millis(500));
        let addrs = vec![refused.clone(), good_addr.clone()];
        let (_, used) = dialer
            .reach("n", &addrs, |_s| async { Ok::<_, String>(()) })
            .await
            .unwrap();
        assert_eq!(used, good_addr);
        assert_eq!(dialer.remembered("n"), Some(good_addr.clone()));
        // The remembered one fails its check: it is forgotten, and the others are tried.
        let err = dialer
            .reach("n", &addrs, |_s| async {
                Err::<(), _>("wrong service".into())
            })
            .await
            .unwrap_err();
        assert_eq!(err.tried.len(), 2);
        assert!(err.tried[0].starts_with(&good_addr), "{:?}", err.tried);
        assert_eq!(dialer.remembered("n"), None);
        drop(good);
    }
}
