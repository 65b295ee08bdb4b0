//! The voters controller's decision: given the VoterSet, the Nodes and the real member list,
//! the one next safe membership step. Pure: no I/O, so every rule is a unit test.
//!
//! Rules, in order:
//! 1. A desired node that is not yet a member must exist, be Ready, not be NAT-blocked and
//!    offer an etcd member (its agent reports peer URLs); otherwise nothing changes (Blocked).
//! 2. At most one learner at a time: a learner that is still desired is promoted once it is
//!    healthy (etcd itself refuses until it has caught up); one no longer desired is removed.
//! 3. A member no longer desired that is dead is removed first (when the cluster is at its size,
//!    the dead member goes before its replacement is added).
//! 4. A desired node that is not a member is added as a learner.
//! 5. A member no longer desired that is healthy is removed last.
//!
//! No step is taken after which the voting members that are healthy would be fewer than a
//! quorum of the new voting set.

use std::collections::BTreeMap;

use crate::api::voter_set::VoterSetPhase;
use crate::store::members::MemberInfo;

/// What the plan needs to know of one Node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Candidate {
    pub ready: bool,
    pub nat_blocked: bool,
    /// The peer URLs its agent offers; empty when it cannot host a member.
    pub peer_urls: Vec<String>,
}

/// One membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    AddLearner {
        node: String,
        peer_urls: Vec<String>,
    },
    Promote {
        node: String,
        id: u64,
    },
    Remove {
        node: String,
        id: u64,
        reason: String,
    },
}

/// The decision: the step to take (if any) and the status to show meanwhile.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub step: Option<Step>,
    pub phase: VoterSetPhase,
    pub message: String,
}

impl Plan {
    fn step(step: Step, message: String) -> Plan {
        Plan {
            step: Some(step),
            phase: VoterSetPhase::Progressing,
            message,
        }
    }
    fn wait(message: String) -> Plan {
        Plan {
            step: None,
            phase: VoterSetPhase::Progressing,
            message,
        }
    }
    fn blocked(message: String) -> Plan {
        Plan {
            step: None,
            phase: VoterSetPhase::Blocked,
            message,
        }
    }
}

/// The smallest majority of `n` voters.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// The node a member belongs to: its name once started, else the node offering its peer URL.
pub fn member_node(m: &MemberInfo, nodes: &BTreeMap<String, Candidate>) -> Option<String> {
    if !m.name.is_empty() {
        return Some(m.name.clone());
    }
    nodes
        .iter()
        .find(|(_, c)| c.peer_urls.iter().any(|u| m.peer_urls.contains(u)))
        .map(|(name, _)| name.clone())
}

/// The next safe step toward `desired` (the VoterSet's node names).
pub fn plan(
    desired: &[String],
    nodes: &BTreeMap<String, Candidate>,
    members: &[MemberInfo],
) -> Plan {
    if desired.is_empty() {
        return Plan::blocked("the VoterSet names no voter; at least 1 is required".into());
    }
    let named: Vec<(Option<String>, &MemberInfo)> =
        members.iter().map(|m| (member_node(m, nodes), m)).collect();
    let is_member = |node: &str| named.iter().any(|(n, _)| n.as_deref() == Some(node));
    let wanted = |n: &Option<String>| n.as_ref().is_some_and(|n| desired.contains(n));
    let label = |n: &Option<String>, m: &MemberInfo| {
        n.clone()
            .unwrap_or_else(|| format!("member {}", m.hex_id()))
    };

    // 1. Every node still to be added must be able to serve as a voter.
    let problems: Vec<String> = desired
        .iter()
        .filter(|d| !is_member(d))
        .filter_map(|d| candidate_problem(d, nodes.get(d.as_str())))
        .collect();
    if !problems.is_empty() {
        return Plan::blocked(format!("membership unchanged: {}", problems.join("; ")));
    }

    let voters: Vec<&(Option<String>, &MemberInfo)> =
        named.iter().filter(|(_, m)| !m.learner).collect();
    let healthy = voters.iter().filter(|(_, m)| m.healthy).count();
    let n = voters.len();
    if n > 0 && healthy < quorum(n) {
        return Plan::blocked(format!(
            "quorum lost: {healthy} of {n} voting members healthy; no membership change is \
             possible until a majority is back (see the README playbook \"etcd lost quorum\")"
        ));
    }

    // 2. The learner, if any.
    if let Some((node, m)) = named.iter().find(|(_, m)| m.learner) {
        let who = label(node, m);
        if !wanted(node) {
            return Plan::step(
                Step::Remove {
                    node: who.clone(),
                    id: m.id,
                    reason: "a learner no longer in the VoterSet".into(),
                },
                format!("removing learner {who} (no longer desired)"),
            );
        }
        if !m.healthy {
            return Plan::wait(format!(
                "learner {who} added; waiting for its agent to start its etcd member"
            ));
        }
        return Plan::step(
            Step::Promote {
                node: who.clone(),
                id: m.id,
            },
            format!("promoting learner {who} once it has caught up"),
        );
    }

    // 3. Dead members no longer desired.
    if let Some((node, m)) = voters.iter().find(|(n, m)| !wanted(n) && !m.healthy) {
        let who = label(node, m);
        if n > 1 && healthy >= quorum(n - 1) {
            return Plan::step(
                Step::Remove {
                    node: who.clone(),
                    id: m.id,
                    reason: "dead and no longer in the VoterSet".into(),
                },
                format!("removing dead member {who}"),
            );
        }
    }

    // 4. Desired nodes that are not members yet, in VoterSet order.
    if let Some(d) = desired.iter().find(|d| !is_member(d)) {
        let peer_urls = nodes[d.as_str()].peer_urls.clone();
        return Plan::step(
            Step::AddLearner {
                node: d.clone(),
                peer_urls,
            },
            format!("adding {d} as a learner"),
        );
    }

    // 5. Healthy members no longer desired.
    if let Some((node, m)) = voters.iter().find(|(n, _)| !wanted(n)) {
        let who = label(node, m);
        let after = if m.healthy { healthy - 1 } else { healthy };
        if n > 1 && after >= quorum(n - 1) {
            return Plan::step(
                Step::Remove {
                    node: who.clone(),
                    id: m.id,
                    reason: "no longer in the VoterSet".into(),
                },
                format!("removing {who} (no longer desired)"),
            );
        }
        return Plan::blocked(format!(
            "removing {who} now would leave {after} healthy of {} voters, short of a quorum of \
             {}; bring the unhealthy voters back first",
            n - 1,
            quorum(n - 1)
        ));
    }

    Plan {
        step: None,
        phase: VoterSetPhase::Converged,
        message: converged_message(desired.len(), &voters),
    }
}

fn candidate_problem(name: &str, node: Option<&Candidate>) -> Option<String> {
    let Some(c) = node else {
        return Some(format!("node {name} does not exist"));
    };
    if c.nat_blocked {
        return Some(format!(
            "node {name} is NAT-blocked: peers cannot reach its etcd, so it can never be a voter"
        ));
    }
    if !c.ready {
        return Some(format!(
            "node {name} is not Ready (its agent is down or cannot reach etcd)"
        ));
    }
    if c.peer_urls.is_empty() {
        return Some(format!(
            "node {name}'s agent offers no etcd member (etcd not installed, or `etcd.enabled: \
             false` in its config)"
        ));
    }
    None
}

fn converged_message(size: usize, voters: &[&(Option<String>, &MemberInfo)]) -> String {
    let mut notes = Vec::new();
    if size % 2 == 0 {
        notes.push(format!(
            "warning: {size} voters tolerate {} failure(s), no more than {}; an odd count is \
             better",
            (size - 1) / 2,
            size - 1
        ));
    }
    let sick: Vec<String> = voters
        .iter()
        .filter(|(_, m)| !m.healthy)
        .map(|(n, m)| n.clone().unwrap_or_else(|| m.hex_id()))
        .collect();
    if !sick.is_empty() {
        notes.push(format!(
            "unhealthy: {} (its agent restarts it)",
            sick.join(", ")
        ));
    }
    notes.join("; ")
}

#[cfg(test)]
mod tests;
