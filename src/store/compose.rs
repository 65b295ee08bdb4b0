//! Status as people see it, composed from the keys its writers own (docs/architecture.md,
//! "Keys in etcd"): a Job's from the scheduler's placement and the runtime report of the node
//! it is placed on, a Node's from its agent's status and alive keys.
//!
//! Pure: the store reads the keys (listing each prefix once, at one revision) and this module
//! joins them in memory, so a list costs the same few round trips however many objects it holds.

use std::collections::{HashMap, HashSet};

use serde::de::DeserializeOwned;

use super::client::{KeyValue, Store};
use super::error::StoreError;
use super::keys;
use crate::api::meta::{Condition, ConditionStatus};
use crate::api::node::NodeEtcd;
use crate::api::placement::{compose_job_status, Placement, RuntimeReport};
use crate::api::tunnel::TunnelStatus;
use crate::api::{JobPhase, JobStatus, NodeStatus};

/// The condition type the alive key decides.
pub const READY: &str = "Ready";
/// Ready=True: the agent's alive key is present (its lease is kept alive).
pub const REASON_AGENT_ALIVE: &str = "AgentAlive";
/// Ready=False: the agent reported once, but its alive key is gone (lease expired or revoked).
pub const REASON_LEASE_EXPIRED: &str = "AgentLeaseExpired";
/// Ready=False: no agent has ever written a status for this node.
pub const REASON_NEVER_REGISTERED: &str = "NeverRegistered";

/// The name directly below `prefix` in `key`: `Some("a")` for `/rift/v1/jobs/a` under
/// `/rift/v1/jobs/`; `None` when the key is not below it, is the prefix itself or has a further
/// `/` (`/rift/v1/jobs/a/b` is no object).
pub fn direct_child<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(prefix)
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
}

/// The job a `/rift/v1/placements/<job>` key belongs to.
pub fn placement_job(key: &str) -> Option<&str> {
    direct_child(keys::PLACEMENTS_PREFIX, key)
}

/// What a key under `/rift/v1/agents/<node>/` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentKey<'a> {
    /// `alive`: the heartbeat, attached to the agent's lease.
    Alive { node: &'a str },
    /// `status`: the NodeStatus the agent observes.
    Status { node: &'a str },
    /// `etcd`: the node's local etcd member.
    Etcd { node: &'a str },
    /// `jobs/<job>`: the runtime report of one job.
    Job { node: &'a str, job: &'a str },
    /// `tunnels/<tunnel>`: a tunnel's status.
    Tunnel { node: &'a str, tunnel: &'a str },
    /// `events/<id>`: an event the agent recorded.
    Event { node: &'a str, id: &'a str },
}

/// The nodes whose agent is alive: whose `alive` key (on the agent's lease) exists. One
/// keys-only read.
pub async fn alive_nodes(store: &Store) -> Result<Vec<String>, StoreError> {
    let keys = store.list_keys(keys::AGENTS_PREFIX).await?;
    Ok(keys
        .iter()
        .filter_map(|key| match parse_agent_key(key) {
            Some(AgentKey::Alive { node }) => Some(node.to_string()),
            _ => None,
        })
        .collect())
}

/// Parses a key under `/rift/v1/agents/`; `None` for anything not in the layout.
pub fn parse_agent_key(key: &str) -> Option<AgentKey<'_>> {
    let rest = key.strip_prefix(keys::AGENTS_PREFIX)?;
    let (node, what) = rest.split_once('/')?;
    if node.is_empty() {
        return None;
    }
    match what {
        "alive" => Some(AgentKey::Alive { node }),
        "status" => Some(AgentKey::Status { node }),
        "etcd" => Some(AgentKey::Etcd { node }),
        _ => {
            let (dir, name) = what.split_once('/')?;
            if name.is_empty() || name.contains('/') {
                return None;
            }
            match dir {
                "jobs" => Some(AgentKey::Job { node, job: name }),
                "tunnels" => Some(AgentKey::Tunnel { node, tunnel: name }),
                "events" => Some(AgentKey::Event { node, id: name }),
                _ => None,
            }
        }
    }
}

/// The keys among `kvs` that are agent events (`/rift/v1/agents/<node>/events/<id>`).
pub fn agent_events(kvs: &[KeyValue]) -> impl Iterator<Item = &KeyValue> {
    kvs.iter()
        .filter(|kv| matches!(parse_agent_key(&kv.key), Some(AgentKey::Event { .. })))
}

/// Decodes a JSON value, or warns and gives `None`: one bad key must not hide the rest.
fn decode_or_warn<T: DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    serde_json::from_slice(&kv.value)
        .inspect_err(|e| tracing::warn!(key = %kv.key, error = %e, "ignoring undecodable value"))
        .ok()
}

/// What one node's agent has written, as far as status composition needs it.
#[derive(Clone, Debug, Default)]
struct AgentKeys {
    alive: bool,
    /// The status key exists (even if it did not decode).
    status_present: bool,
    status: Option<NodeStatus>,
    etcd: Option<NodeEtcd>,
    reports: HashMap<String, RuntimeReport>,
    tunnels: HashMap<String, TunnelStatus>,
}

/// Placements and agent keys read at one revision, joined on demand.
#[derive(Clone, Debug, Default)]
pub struct StatusSources {
    placements: HashMap<String, Placement>,
    /// Jobs whose placement key exists but did not decode.
    bad_placements: HashSet<String>,
    agents: HashMap<String, AgentKeys>,
}

impl StatusSources {
    /// Sources from any mix of keys; keys that are neither placements nor agent keys that
    /// status needs are ignored.
    pub fn from_kvs<'a>(kvs: impl IntoIterator<Item = &'a KeyValue>) -> Self {
        let mut s = Self::default();
        for kv in kvs {
            s.add(kv);
        }
        s
    }

    /// Takes in one key.
    pub fn add(&mut self, kv: &KeyValue) {
        if let Some(job) = placement_job(&kv.key) {
            let placement = decode_or_warn::<Placement>(kv);
            self.set_placement(job, placement);
            return;
        }
        match parse_agent_key(&kv.key) {
            Some(AgentKey::Alive { node }) => self.agent(node).alive = true,
            Some(AgentKey::Status { node }) => {
                let status = decode_or_warn::<NodeStatus>(kv);
                let a = self.agent(node);
                a.status_present = true;
                a.status = status;
            }
            Some(AgentKey::Etcd { node }) => {
                self.agent(node).etcd = decode_or_warn::<NodeEtcd>(kv);
            }
            Some(AgentKey::Job { node, job }) => {
                if let Some(r) = decode_or_warn::<RuntimeReport>(kv) {
                    self.agent(node).reports.insert(job.to_string(), r);
                }
            }
            Some(AgentKey::Tunnel { node, tunnel }) => {
                if let Some(t) = decode_or_warn::<TunnelStatus>(kv) {
                    self.agent(node).tunnels.insert(tunnel.to_string(), t);
                }
            }
            _ => {}
        }
    }

    /// Forgets one key (deleted, or its lease expired); the counterpart of [`Self::add`].
    pub fn remove(&mut self, key: &str) {
        if let Some(job) = placement_job(key) {
            self.forget_placement(job);
            return;
        }
        let Some(parsed) = parse_agent_key(key) else {
            return;
        };
        let node = match parsed {
            AgentKey::Alive { node }
            | AgentKey::Status { node }
            | AgentKey::Etcd { node }
            | AgentKey::Job { node, .. }
            | AgentKey::Tunnel { node, .. }
            | AgentKey::Event { node, .. } => node,
        };
        let Some(a) = self.agents.get_mut(node) else {
            return;
        };
        match parsed {
            AgentKey::Alive { .. } => a.alive = false,
            AgentKey::Status { .. } => {
                a.status_present = false;
                a.status = None;
            }
            AgentKey::Etcd { .. } => a.etcd = None,
            AgentKey::Job { job, .. } => {
                a.reports.remove(job);
            }
            AgentKey::Tunnel { tunnel, .. } => {
                a.tunnels.remove(tunnel);
            }
            AgentKey::Event { .. } => {}
        }
    }

    /// Sets `job`'s placement as already decoded by the caller (`None`: it exists but does not
    /// decode), so a cache that holds placements decodes each only once.
    pub fn set_placement(&mut self, job: &str, placement: Option<Placement>) {
        match placement {
            Some(p) => {
                self.bad_placements.remove(job);
                self.placements.insert(job.to_string(), p);
            }
            None => {
                self.placements.remove(job);
                self.bad_placements.insert(job.to_string());
            }
        }
    }

    /// Forgets `job`'s placement (deleted).
    pub fn forget_placement(&mut self, job: &str) {
        self.placements.remove(job);
        self.bad_placements.remove(job);
    }

    /// Whether `node`'s alive key exists.
    pub fn alive(&self, node: &str) -> bool {
        self.agents.get(node).is_some_and(|a| a.alive)
    }

    fn agent(&mut self, node: &str) -> &mut AgentKeys {
        self.agents.entry(node.to_string()).or_default()
    }

    /// The placement of `job`, if one decoded.
    pub fn placement(&self, job: &str) -> Option<&Placement> {
        self.placements.get(job)
    }

    /// The report of `job` by `node`'s agent, if one decoded.
    pub fn report(&self, node: &str, job: &str) -> Option<&RuntimeReport> {
        self.agents.get(node)?.reports.get(job)
    }

    /// `job`'s status: [`compose_job_status`] of its placement and the report of the node it
    /// is placed on.
    pub fn job_status(&self, job: &str) -> JobStatus {
        self.job_status_for(job, None)
    }

    /// [`Self::job_status`] of the Job of `uid`: a placement made for another Job of the same
    /// name (deleted and created again) says nothing about this one, which is Pending until the
    /// old instance is stopped and it is placed itself.
    pub fn job_status_for(&self, job: &str, uid: Option<&str>) -> JobStatus {
        let placement = self.placement(job);
        if let (Some(p), Some(uid)) = (placement, uid) {
            if !p.uid.is_empty() && p.uid != uid {
                return JobStatus {
                    phase: JobPhase::Pending,
                    reason: "Replacing".into(),
                    message: "an earlier Job of this name is still placed; it is stopped first"
                        .into(),
                    ..JobStatus::default()
                };
            }
        }
        let report = placement
            .and_then(|p| p.node.as_deref())
            .and_then(|node| self.report(node, job));
        let mut status = compose_job_status(placement, report);
        if placement.is_none() && self.bad_placements.contains(job) {
            status.reason = "InvalidPlacement".into();
            status.message = format!(
                "the placement at {} does not decode; the scheduler will rewrite it",
                keys::placement(job)
            );
        }
        status
    }

    /// `node`'s status: see [`compose_node_status`].
    pub fn node_status(&self, node: &str) -> NodeStatus {
        match self.agents.get(node) {
            Some(a) => {
                let mut status = compose_node_status(a.status.clone(), a.status_present, a.alive);
                status.etcd = a.etcd.clone();
                status
            }
            None => compose_node_status(None, false, false),
        }
    }
}

impl StatusSources {
    /// The status of Tunnel `tunnel` run by `node`'s agent: see [`compose_tunnel_status`].
    pub fn tunnel_status(&self, node: &str, tunnel: &str) -> Option<TunnelStatus> {
        let agent = self.agents.get(node);
        compose_tunnel_status(
            agent.and_then(|a| a.tunnels.get(tunnel).cloned()),
            agent.is_some_and(|a| a.alive),
            node,
        )
    }
}

/// A Tunnel's status: what the agent of its node last wrote, except that while that agent's
/// alive key is gone nobody keeps the tunnel up, so it shows not connected and says why.
/// `None` while a live agent has not reported yet.
pub fn compose_tunnel_status(
    reported: Option<TunnelStatus>,
    agent_alive: bool,
    node: &str,
) -> Option<TunnelStatus> {
    if agent_alive {
        return reported;
    }
    let mut status = reported.unwrap_or_default();
    status.connected = false;
    status.endpoint = None;
    status.last_error = format!(
        "no agent is running on node {node} (its heartbeat lease is gone); nothing keeps the tunnel up"
    );
    Some(status)
}

/// A Node's status: what its agent reported (`reported`, the default when absent), with the
/// `Ready` condition decided by the alive key alone, replacing any `Ready` the agent wrote:
/// alive → True (`AgentAlive`); not alive → False (`AgentLeaseExpired` when the agent has
/// written a status key, `NeverRegistered` when it never has).
pub fn compose_node_status(
    reported: Option<NodeStatus>,
    status_key_exists: bool,
    alive: bool,
) -> NodeStatus {
    let mut status = reported.unwrap_or_default();
    let (state, reason, message) = if alive {
        (
            ConditionStatus::True,
            REASON_AGENT_ALIVE,
            "the agent holds its heartbeat lease",
        )
    } else if status_key_exists {
        (
            ConditionStatus::False,
            REASON_LEASE_EXPIRED,
            "the agent's heartbeat lease expired: the agent is down or cut off from etcd",
        )
    } else {
        (
            ConditionStatus::False,
            REASON_NEVER_REGISTERED,
            "no agent has reported for this node",
        )
    };
    // Keep the agent's transition time only when it agrees on the state.
    let since = status
        .conditions
        .iter()
        .find(|c| c.type_ == READY && c.status == state)
        .and_then(|c| c.last_transition_time);
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.insert(
        0,
        Condition {
            type_: READY.into(),
            status: state,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: since,
        },
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::JobPhase;
    use serde_json::json;

    fn kv(key: &str, value: serde_json::Value) -> KeyValue {
        KeyValue::json(key, value, 1)
    }

    fn raw(key: &str, value: &str) -> KeyValue {
        KeyValue {
            value: value.as_bytes().to_vec(),
            ..kv(key, json!(null))
        }
    }

    fn ready(s: &NodeStatus) -> &Condition {
        s.conditions.iter().find(|c| c.type_ == READY).unwrap()
    }

    #[test]
    fn keys_parse_by_layout() {
        assert_eq!(direct_child("/rift/v1/jobs/", "/rift/v1/jobs/a"), Some("a"));
        assert_eq!(direct_child("/rift/v1/jobs/", "/rift/v1/jobs/a/b"), None);
        assert_eq!(direct_child("/rift/v1/jobs/", "/rift/v1/jobs/"), None);
        assert_eq!(direct_child("/rift/v1/jobs/", "/rift/v1/pools/a"), None);
        assert_eq!(placement_job("/rift/v1/placements/j"), Some("j"));
        assert_eq!(
            parse_agent_key("/rift/v1/agents/n1/alive"),
            Some(AgentKey::Alive { node: "n1" })
        );
        assert_eq!(
            parse_agent_key("/rift/v1/agents/n1/status"),
            Some(AgentKey::Status { node: "n1" })
        );
        assert_eq!(
            parse_agent_key("/rift/v1/agents/n1/jobs/j"),
            Some(AgentKey::Job {
                node: "n1",
                job: "j"
            })
        );
        assert_eq!(
            parse_agent_key("/rift/v1/agents/n1/events/e1"),
            Some(AgentKey::Event {
                node: "n1",
                id: "e1"
            })
        );
        assert_eq!(
            parse_agent_key("/rift/v1/agents/n1/tunnels/t"),
            Some(AgentKey::Tunnel {
                node: "n1",
                tunnel: "t"
            })
        );
        for bad in [
            "/rift/v1/agents/n1",
            "/rift/v1/agents//alive",
            "/rift/v1/agents/n1/jobs/",
            "/rift/v1/agents/n1/jobs/a/b",
            "/rift/v1/agents/n1/other/x",
            "/rift/v1/agents/n1/alive/x",
            "/rift/v1/jobs/j",
        ] {
            assert_eq!(parse_agent_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn job_status_joins_placement_with_the_report_of_its_node_and_epoch() {
        let kvs = vec![
            kv(
                "/rift/v1/placements/a",
                json!({"node": "n1", "gpus": [1], "epoch": 2}),
            ),
            kv("/rift/v1/placements/b", json!({"node": "n1", "epoch": 5})),
            kv(
                "/rift/v1/placements/c",
                json!({"pending": "0/3 nodes: 3 insufficient GPUs"}),
            ),
            kv(
                "/rift/v1/agents/n1/jobs/a",
                json!({"phase": "Failed", "epoch": 2, "exitCode": 3}),
            ),
            // b's report is from an older epoch; the one on n2 is for a node b is not on.
            kv(
                "/rift/v1/agents/n1/jobs/b",
                json!({"phase": "Running", "epoch": 4}),
            ),
            kv(
                "/rift/v1/agents/n2/jobs/b",
                json!({"phase": "Succeeded", "epoch": 5}),
            ),
        ];
        let s = StatusSources::from_kvs(&kvs);
        let a = s.job_status("a");
        assert_eq!(a.phase, JobPhase::Failed);
        assert_eq!(a.exit_code, Some(3));
        assert_eq!(a.node.as_deref(), Some("n1"));
        assert_eq!(a.gpus, vec![1]);
        let b = s.job_status("b");
        assert_eq!(
            (b.phase, b.node.as_deref()),
            (JobPhase::Scheduled, Some("n1"))
        );
        let c = s.job_status("c");
        assert_eq!(c.phase, JobPhase::Pending);
        assert_eq!(c.message, "0/3 nodes: 3 insufficient GPUs");
        assert_eq!(s.job_status("unplaced"), JobStatus::default());
    }

    #[test]
    fn undecodable_values_are_skipped_without_hiding_the_rest() {
        let kvs = vec![
            raw("/rift/v1/placements/a", "{not json"),
            kv("/rift/v1/placements/b", json!({"node": "n1", "epoch": 1})),
            raw("/rift/v1/agents/n1/jobs/b", "[]"),
            raw("/rift/v1/agents/n1/status", "\"?\""),
        ];
        let s = StatusSources::from_kvs(&kvs);
        let a = s.job_status("a");
        assert_eq!(a.phase, JobPhase::Pending);
        assert_eq!(a.reason, "InvalidPlacement");
        assert_eq!(s.job_status("b").phase, JobPhase::Scheduled);
        // The status key exists, so the node did register once.
        assert_eq!(ready(&s.node_status("n1")).reason, REASON_LEASE_EXPIRED);
    }

    #[test]
    fn node_ready_comes_from_the_alive_key_only() {
        let reported = json!({
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Self"},
                {"type": "Degraded", "status": "False"}
            ],
            "capacity": {"cpus": 64},
            "agentVersion": "0.1.0"
        });
        let kvs = vec![
            kv("/rift/v1/agents/up/status", reported.clone()),
            kv("/rift/v1/agents/up/alive", json!("x")),
            kv("/rift/v1/agents/gone/status", reported),
            raw("/rift/v1/agents/bare/alive", ""),
            kv("/rift/v1/agents/up/events/e", json!({})),
        ];
        let s = StatusSources::from_kvs(&kvs);

        let up = s.node_status("up");
        assert!(up.is_ready());
        assert_eq!(up.capacity.cpus, 64);
        assert_eq!(up.agent_version, "0.1.0");
        assert_eq!(ready(&up).reason, REASON_AGENT_ALIVE);
        assert_eq!(up.conditions.len(), 2, "{:?}", up.conditions);
        assert_eq!(up.conditions[1].type_, "Degraded");

        let gone = s.node_status("gone");
        assert!(!gone.is_ready());
        assert_eq!(ready(&gone).status, ConditionStatus::False);
        assert_eq!(ready(&gone).reason, REASON_LEASE_EXPIRED);
        assert_eq!(gone.capacity.cpus, 64, "the last report is still shown");
        assert_eq!(
            gone.conditions.iter().filter(|c| c.type_ == READY).count(),
            1
        );

        let bare = s.node_status("bare");
        assert!(bare.is_ready(), "alive without a status yet");
        assert_eq!(bare.capacity.cpus, 0);

        let never = s.node_status("never");
        assert!(!never.is_ready());
        assert_eq!(ready(&never).reason, REASON_NEVER_REGISTERED);
    }

    #[test]
    fn tunnel_status_comes_from_its_nodes_agent_and_is_down_without_it() {
        let up = json!({"connected": true, "relay": "r1", "restarts": 2,
                        "endpoint": "100.64.0.7:18770"});
        let kvs = vec![
            kv("/rift/v1/agents/vast-1/alive", json!("x")),
            kv("/rift/v1/agents/vast-1/tunnels/t1", up.clone()),
            kv("/rift/v1/agents/vast-2/tunnels/t2", up),
        ];
        let s = StatusSources::from_kvs(&kvs);
        let t1 = s.tunnel_status("vast-1", "t1").unwrap();
        assert!(t1.connected);
        assert_eq!(t1.endpoint.as_deref(), Some("100.64.0.7:18770"));
        assert_eq!(s.tunnel_status("vast-1", "other"), None, "not reported yet");
        assert_eq!(
            s.tunnel_status("vast-2", "t1"),
            s.tunnel_status("vast-2", "none")
        );
        let t2 = s.tunnel_status("vast-2", "t2").unwrap();
        assert!(!t2.connected, "the agent of vast-2 is gone");
        assert_eq!(t2.restarts, 2);
        assert_eq!(t2.endpoint, None);
        assert!(t2.last_error.contains("no agent is running on node vast-2"));
    }

    #[test]
    fn agent_events_are_picked_out_of_an_agents_listing() {
        let kvs = vec![
            kv("/rift/v1/agents/n1/alive", json!("x")),
            kv("/rift/v1/agents/n1/events/e1", json!({})),
            kv("/rift/v1/agents/n2/events/e2", json!({})),
            kv("/rift/v1/agents/n2/events/e2/x", json!({})),
        ];
        let keys: Vec<&str> = agent_events(&kvs).map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "/rift/v1/agents/n1/events/e1",
                "/rift/v1/agents/n2/events/e2"
            ]
        );
    }
}
