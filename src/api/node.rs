//! `Node`: one machine of the fleet, registered by its agent or declared by an operator.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{Condition, ConditionStatus, ObjectMeta};
use super::object::{Object, Spec};
use super::validation::FieldErrors;

pub type Node = Object<NodeSpec>;

/// Set by `rift drain` on a Node whose jobs the scheduler must move elsewhere.
pub const DRAIN_ANNOTATION: &str = "rift.dev/drain";

/// The port every agent serves HTTP on unless told otherwise.
pub const DEFAULT_AGENT_PORT: u16 = 8770;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Addresses in the order peers should try them (e.g. tailscale first, then public).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Where the machine is rented: `lambda`, `vast`, `runpod`, `nebius`, `hetzner`, `aws`, ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<NodeRole>,
    /// Behind NAT: reachable only through a `Tunnel`; never an etcd voter.
    #[serde(default)]
    pub nat_blocked: bool,
    /// Cordoned: the scheduler places no new jobs here.
    #[serde(default)]
    pub unschedulable: bool,
    /// GPUs declared by hand, for machines whose GPUs NVML cannot see (Apple, AMD) or for tests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuDeclaration>,
    /// The agent's HTTP port.
    #[serde(default = "default_agent_port")]
    pub agent_port: u16,
}

fn default_agent_port() -> u16 {
    DEFAULT_AGENT_PORT
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    /// Meant to be an etcd voter. Informational: the VoterSet decides who votes, and the voters
    /// controller refuses nodes that are NAT-blocked, not Ready or offer no etcd member.
    Voter,
    /// May run the controllers (one elected leader at a time).
    Controller,
    /// Accepts reverse tunnels from NAT-blocked nodes.
    Relay,
}

/// `model` × `count`, e.g. `{model: H100, count: 8}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuDeclaration {
    pub model: String,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gb: Option<f64>,
}

fn one() -> u32 {
    1
}

impl Spec for NodeSpec {
    type Status = NodeStatus;
    const KIND: &'static str = "Node";
    const PLURAL: &'static str = "nodes";
    const SINGULAR: &'static str = "node";
    const SHORT_NAMES: &'static [&'static str] = &["no"];

    fn validate(&self, _meta: &ObjectMeta, errors: &mut FieldErrors) {
        for (i, a) in self.addresses.iter().enumerate() {
            if a.trim().is_empty() || a.contains(char::is_whitespace) {
                errors.push(format!("spec.addresses[{i}]"), "must be a host name or IP");
            }
        }
        for (i, g) in self.gpus.iter().enumerate() {
            if g.model.trim().is_empty() {
                errors.push(format!("spec.gpus[{i}].model"), "must not be empty");
            }
            if g.count == 0 {
                errors.push(format!("spec.gpus[{i}].count"), "must be at least 1");
            }
        }
        if self.nat_blocked && self.roles.contains(&NodeRole::Voter) {
            errors.push(
                "spec.roles",
                "a NAT-blocked node cannot be voter-eligible (peers cannot reach its etcd)",
            );
        }
        if self.agent_port == 0 {
            errors.push("spec.agentPort", "must be a port number (1-65535)");
        }
    }
}

/// What the node's agent observes, composed from `/rift/v1/agents/<node>/...`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub capacity: Capacity,
    #[serde(default)]
    pub usage: Usage,
    /// Weighted load in [0, 1]; lower is less busy.
    #[serde(default)]
    pub load_score: f64,
    /// Any resource above its threshold: the scheduler avoids the node.
    #[serde(default)]
    pub overloaded: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running_jobs: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_version: String,
    /// Where peers reach the agent (`host:port`), through a relay for NAT-blocked nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// The etcd member this node can host or hosts (from `/rift/v1/agents/<node>/etcd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<NodeEtcd>,
}

/// The etcd member a node's agent can run, as its agent reports it. The voters controller adds
/// a node as a member with these URLs; the agent then starts and supervises the process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeEtcd {
    /// The peer URL the member is (or would be) registered with.
    pub peer_urls: Vec<String>,
    /// Client URLs, in address order (e.g. tailscale first, then public).
    pub client_urls: Vec<String>,
    #[serde(default)]
    pub state: LocalMemberState,
    /// Times the agent restarted a member process that had died.
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// What the agent is doing with its local etcd member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LocalMemberState {
    /// Not a member: nothing runs (the node can be added by the VoterSet).
    #[default]
    Idle,
    /// The process runs.
    Running,
    /// The process died; the agent restarts it after a backoff.
    Restarting,
    /// The agent cannot run the member (see the message).
    Failed,
}

/// The node condition its agent sets while the disk holding its state directory is above the
/// ArtifactStore's high watermark (and clears below the low one): the scheduler places nothing
/// new there.
pub const DISK_PRESSURE: &str = "DiskPressure";

impl NodeStatus {
    /// True when the [`DISK_PRESSURE`] condition is `True`.
    pub fn has_disk_pressure(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == DISK_PRESSURE && c.status == ConditionStatus::True)
    }

    /// True when the `Ready` condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capacity {
    #[serde(default)]
    pub cpus: u32,
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub disk_bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
}

/// One GPU as the agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gpu {
    pub index: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uuid: String,
    pub model: String,
    #[serde(default)]
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Usage {
    #[serde(default)]
    pub cpu_percent: f64,
    #[serde(default)]
    pub memory_percent: f64,
    #[serde(default)]
    pub disk_percent: f64,
    /// Bytes an unprivileged writer can still put on that disk; absent from agents that do not
    /// report it (placement then does not check that inputs fit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_available_bytes: Option<u64>,
    #[serde(default)]
    pub gpu_memory_percent: f64,
    #[serde(default)]
    pub gpu_util_percent: f64,
    /// Each GPU the agent can measure (through NVML), by index; declared GPUs have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuUsage>,
}

/// One GPU's utilisation and memory in use, as the agent last measured them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuUsage {
    pub index: u32,
    /// Utilisation in percent; absent when the GPU does not report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub util_percent: Option<f64>,
    #[serde(default)]
    pub memory_percent: f64,
}

/// Labels selecting nodes or jobs: every pair must match.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
