//! Which relay a tunnel runs through, and which of the relay's addresses to dial. Pure
//! functions of the Tunnel's spec, the Nodes as last listed and the supervisor's own counts.
//!
//! - A named relay is used as given (its Node supplies only the addresses).
//! - `relay: auto` uses a relay that is Ready, has the `relay` role and whose host key is pinned
//!   in `spec.hostKeys`, the least loaded (Node status `loadScore`, then name); it stays on
//!   the relay in use until that relay is no longer eligible or has failed
//!   `spec.switchAfterFailures` times in a row, then moves to the least loaded other one (and
//!   stays put when there is no other).
//! - Addresses: the one that last worked first, then the rest in the Node's order; each
//!   consecutive failure moves on to the next.

use crate::api::node::NodeRole;
use crate::api::tunnel::{TunnelSpec, AUTO_RELAY};
use crate::api::Node;
use crate::net::dial::ordered;

/// What relay selection needs to know about one Node.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub ready: bool,
    pub relay_role: bool,
    pub load_score: f64,
    pub addresses: Vec<String>,
}

impl From<&Node> for Candidate {
    fn from(n: &Node) -> Self {
        let status = n.status.clone().unwrap_or_default();
        Candidate {
            name: n.name().to_string(),
            ready: status.is_ready(),
            relay_role: n.spec.roles.contains(&NodeRole::Relay),
            load_score: status.load_score,
            addresses: n.spec.addresses.clone(),
        }
    }
}

/// The relay to use now.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub relay: String,
    /// The pinned host key line (`ssh-ed25519 AAAA...`).
    pub host_key: String,
    /// The relay Node's addresses, in its order.
    pub addresses: Vec<String>,
}

/// Why no relay can be used now (the supervisor reports it and tries again later).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum NoRelay {
    #[error("relay {0}: no Node of that name (it supplies the relay's addresses)")]
    UnknownNode(String),
    #[error("relay {0}: its Node lists no addresses to reach it at")]
    NoAddresses(String),
    #[error("relay {0}: no host key pinned for it (spec.hostKey / spec.hostKeys)")]
    Unpinned(String),
    #[error("relay auto: no Ready node with the relay role and a pinned host key (pinned: {pinned}); {why}")]
    NoneEligible { pinned: String, why: String },
}

/// Whether `c` may serve as an automatically chosen relay for `spec`.
fn eligible(spec: &TunnelSpec, c: &Candidate) -> bool {
    c.ready
        && c.relay_role
        && c.name != spec.node
        && !c.addresses.is_empty()
        && spec.host_keys.contains_key(&c.name)
}

/// Chooses the relay, given the relay in use (`current`) and its consecutive `failures`.
pub fn choose_relay(
    spec: &TunnelSpec,
    nodes: &[Candidate],
    current: Option<&str>,
    failures: u32,
) -> Result<Choice, NoRelay> {
    let choice = |c: &Candidate| Choice {
        relay: c.name.clone(),
        host_key: spec
            .host_key_for(&c.name)
            .expect("only pinned relays are chosen")
            .to_string(),
        addresses: c.addresses.clone(),
    };
    if spec.relay != AUTO_RELAY {
        let name = spec.relay.as_str();
        let node = nodes
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| NoRelay::UnknownNode(name.into()))?;
        if node.addresses.is_empty() {
            return Err(NoRelay::NoAddresses(name.into()));
        }
        if spec.host_key_for(name).is_none() {
            return Err(NoRelay::Unpinned(name.into()));
        }
        return Ok(choice(node));
    }
    let in_use = current.and_then(|cur| nodes.iter().find(|c| c.name == cur && eligible(spec, c)));
    if let Some(c) = in_use {
        if failures < spec.switch_after_failures {
            return Ok(choice(c));
        }
    }
    let best = nodes
        .iter()
        .filter(|c| eligible(spec, c) && Some(c.name.as_str()) != current)
        .min_by(|a, b| {
            a.load_score
                .total_cmp(&b.load_score)
                .then_with(|| a.name.cmp(&b.name))
        });
    match best.or(in_use) {
        Some(c) => Ok(choice(c)),
        None => Err(NoRelay::NoneEligible {
            pinned: spec
                .host_keys
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            why: explain_none(spec, nodes),
        }),
    }
}

/// Why each pinned relay is out, for the status message.
fn explain_none(spec: &TunnelSpec, nodes: &[Candidate]) -> String {
    let reasons: Vec<String> = spec
        .host_keys
        .keys()
        .map(|name| match nodes.iter().find(|c| &c.name == name) {
            None => format!("{name}: no such Node"),
            Some(c) if !c.relay_role => format!("{name}: lacks the relay role"),
            Some(c) if !c.ready => format!("{name}: not Ready"),
            Some(c) if c.addresses.is_empty() => format!("{name}: no addresses"),
            Some(_) => format!("{name}: is this node"),
        })
        .collect();
    reasons.join("; ")
}

/// The address to dial after `failures` consecutive failures on this relay: the remembered
/// address first, then the others in order, moving one further per failure.
pub fn pick_address(addresses: &[String], remembered: Option<&str>, failures: u32) -> String {
    let order = ordered(addresses, remembered);
    order[failures as usize % order.len()].clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tunnel::PortForward;
    use std::collections::BTreeMap;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample";

    fn spec(relay: &str, pinned: &[&str]) -> TunnelSpec {
        TunnelSpec {
            node: "vast-1".into(),
            relay: relay.into(),
            ports: vec![PortForward {
                remote_port: 18770,
                local_port: 8770,
            }],
            ssh_user: "rift".into(),
            ssh_port: 22,
            identity_file: "/etc/rift/id".into(),
            host_key: None,
            host_keys: pinned
                .iter()
                .map(|n| (n.to_string(), format!("{KEY}{n}")))
                .collect::<BTreeMap<_, _>>(),
            switch_after_failures: 3,
        }
    }

    fn relay(name: &str, load: f64) -> Candidate {
        Candidate {
            name: name.into(),
            ready: true,
            relay_role: true,
            load_score: load,
            addresses: vec![format!("100.64.0.{}", name.len()), "203.0.113.9".into()],
        }
    }

    #[test]
    fn auto_picks_the_least_loaded_ready_pinned_relay() {
        let s = spec("auto", &["r1", "r2", "r3"]);
        let mut not_ready = relay("r0", 0.0);
        not_ready.ready = false;
        let mut no_role = relay("r4", 0.0);
        no_role.relay_role = false;
        let unpinned = relay("r5", 0.0);
        let nodes = [
            not_ready,
            relay("r1", 0.5),
            relay("r2", 0.2),
            relay("r3", 0.2),
            no_role,
            unpinned,
        ];
        let c = choose_relay(&s, &nodes, None, 0).unwrap();
        assert_eq!(c.relay, "r2", "least loaded, ties by name");
        assert_eq!(c.host_key, format!("{KEY}r2"));
    }

    #[test]
    fn auto_stays_until_the_failure_limit_then_switches() {
        let s = spec("auto", &["r1", "r2"]);
        let nodes = [relay("r1", 0.9), relay("r2", 0.1)];
        // r1 is in use: a less loaded relay is no reason to move a working tunnel.
        assert_eq!(choose_relay(&s, &nodes, Some("r1"), 0).unwrap().relay, "r1");
        assert_eq!(choose_relay(&s, &nodes, Some("r1"), 2).unwrap().relay, "r1");
        assert_eq!(choose_relay(&s, &nodes, Some("r1"), 3).unwrap().relay, "r2");
        // r2 fails as often: back to r1, the least loaded other one.
        assert_eq!(choose_relay(&s, &nodes, Some("r2"), 3).unwrap().relay, "r1");
    }

    #[test]
    fn auto_stays_on_a_failing_relay_when_there_is_no_other() {
        let s = spec("auto", &["r1", "r2"]);
        let mut down = relay("r2", 0.0);
        down.ready = false;
        let nodes = [relay("r1", 0.5), down];
        assert_eq!(choose_relay(&s, &nodes, Some("r1"), 7).unwrap().relay, "r1");
    }

    #[test]
    fn auto_leaves_a_relay_that_is_no_longer_ready_at_once() {
        let s = spec("auto", &["r1", "r2"]);
        let mut r1 = relay("r1", 0.0);
        r1.ready = false;
        let nodes = [r1, relay("r2", 0.9)];
        assert_eq!(choose_relay(&s, &nodes, Some("r1"), 0).unwrap().relay, "r2");
    }

    #[test]
    fn auto_without_eligible_relays_says_why_for_each_pinned_one() {
        let s = spec("auto", &["r1", "r2", "r3", "vast-1"]);
        let mut r1 = relay("r1", 0.0);
        r1.ready = false;
        let mut r2 = relay("r2", 0.0);
        r2.relay_role = false;
        let me = relay("vast-1", 0.0);
        let err = choose_relay(&s, &[r1, r2, me], None, 0).unwrap_err();
        let text = err.to_string();
        for part in [
            "r1: not Ready",
            "r2: lacks the relay role",
            "r3: no such Node",
            "vast-1: is this node",
        ] {
            assert!(text.contains(part), "`{part}` not in {text}");
        }
    }

    #[test]
    fn a_named_relay_is_used_as_given() {
        let mut s = spec("r1", &[]);
        s.host_key = Some(format!("{KEY}named"));
        let mut r1 = relay("r1", 0.99);
        r1.ready = false;
        r1.relay_role = false;
        let nodes = [r1, relay("r2", 0.0)];
        let c = choose_relay(&s, &nodes, Some("r1"), 50).unwrap();
        assert_eq!(
            (c.relay.as_str(), c.host_key.as_str()),
            ("r1", &*format!("{KEY}named"))
        );
        assert_eq!(
            choose_relay(&spec("r9", &["r9"]), &nodes, None, 0),
            Err(NoRelay::UnknownNode("r9".into()))
        );
        let mut bare = relay("r1", 0.0);
        bare.addresses.clear();
        assert_eq!(
            choose_relay(&s, &[bare], None, 0),
            Err(NoRelay::NoAddresses("r1".into()))
        );
    }

    #[test]
    fn addresses_start_from_the_one_that_worked_and_rotate_on_failures() {
        let a: Vec<String> = ["ts", "pub"].map(String::from).into();
        assert_eq!(pick_address(&a, None, 0), "ts");
        assert_eq!(pick_address(&a, None, 1), "pub");
        assert_eq!(pick_address(&a, None, 2), "ts");
        assert_eq!(pick_address(&a, Some("pub"), 0), "pub");
        assert_eq!(pick_address(&a, Some("pub"), 1), "ts");
    }
}
