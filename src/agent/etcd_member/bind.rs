//! Which addresses the local etcd member listens on.
//!
//! Rule: the node's own addresses that exist on this machine — never `0.0.0.0` unless the
//! node config asks for it (`etcd.bindAddresses: [0.0.0.0]`). Clients also get 127.0.0.1 when
//! none of those addresses is a loopback one, so tools on the voter itself keep working.
//! Addresses that are not on this machine (a cloud's 1:1 NAT public address) are left out and
//! named, so the operator can bind the private address they forward to.

use std::net::IpAddr;

/// The hosts for `--listen-client-urls` and `--listen-peer-urls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub client: Vec<String>,
    pub peer: Vec<String>,
    /// Node addresses left out because they are not on this machine.
    pub not_local: Vec<String>,
}

/// Decides where to listen from the node's `addresses`, the configured `bind_addresses`
/// (which win when given) and which addresses are on this machine. Pure.
pub fn decide(
    addresses: &[String],
    bind_addresses: &[String],
    is_local: impl Fn(&str) -> bool,
) -> Result<Bind, String> {
    if !bind_addresses.is_empty() {
        return Ok(Bind {
            client: bind_addresses.to_vec(),
            peer: bind_addresses.to_vec(),
            not_local: Vec::new(),
        });
    }
    let (local, not_local): (Vec<String>, Vec<String>) =
        addresses.iter().cloned().partition(|a| is_local(a));
    if local.is_empty() {
        return Err(format!(
            "none of this node's addresses ({}) is on this machine, so etcd has nothing to \
             listen on: set etcd.bindAddresses in the node config (the private address the \
             others forward to, or [0.0.0.0] to listen everywhere)",
            addresses.join(", ")
        ));
    }
    let mut client = local.clone();
    if !local.iter().any(|a| is_loopback(a)) {
        client.push("127.0.0.1".into());
    }
    Ok(Bind {
        client,
        peer: local,
        not_local,
    })
}

fn is_loopback(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// True when `host` is an IP address of this machine (a socket can be bound to it).
pub fn is_local(host: &str) -> bool {
    let Ok(ip) = host.parse::<IpAddr>() else {
        return false;
    };
    std::net::TcpListener::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_the_nodes_own_local_addresses_are_bound_never_every_interface() {
        let local = |a: &str| a.starts_with("100.64.") || a.starts_with("10.");
        let b = decide(&strings(&["100.64.0.20", "203.0.113.20"]), &[], local).unwrap();
        assert_eq!(b.peer, ["100.64.0.20"]);
        assert_eq!(b.client, ["100.64.0.20", "127.0.0.1"]);
        assert_eq!(b.not_local, ["203.0.113.20"]);
        assert!(!b.client.iter().chain(&b.peer).any(|h| h == "0.0.0.0"));
    }

    #[test]
    fn loopback_nodes_bind_only_their_own_loopback_address() {
        // Several "machines" on one host (tests, `rift up`): no extra 127.0.0.1 that would
        // collide with another member's port.
        let b = decide(&strings(&["127.0.0.2"]), &[], |_| true).unwrap();
        assert_eq!(
            (b.client, b.peer),
            (strings(&["127.0.0.2"]), strings(&["127.0.0.2"]))
        );
    }

    #[test]
    fn configured_bind_addresses_win_and_everywhere_must_be_asked_for() {
        let b = decide(&strings(&["203.0.113.20"]), &strings(&["0.0.0.0"]), |_| {
            false
        })
        .unwrap();
        assert_eq!(
            (b.client, b.peer),
            (strings(&["0.0.0.0"]), strings(&["0.0.0.0"]))
        );
        let err = decide(&strings(&["203.0.113.20"]), &[], |_| false).unwrap_err();
        assert!(err.contains("etcd.bindAddresses"), "{err}");
    }

    #[test]
    fn loopback_is_local_and_a_documentation_address_is_not() {
        assert!(is_local("127.0.0.1"));
        assert!(!is_local("192.0.2.1"));
        assert!(!is_local("not-an-ip"));
    }
}
