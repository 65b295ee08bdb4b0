//! `Tunnel`: a reverse SSH tunnel from a NAT-blocked node to a relay, supervised by the node's
//! agent, with the relay's host key pinned.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::ObjectMeta;
use super::object::{Object, Spec};
use super::validation::{validate_name_ref, FieldErrors};

pub type Tunnel = Object<TunnelSpec>;

/// `relay: auto` lets the agent pick a Ready relay node.
pub const AUTO_RELAY: &str = "auto";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSpec {
    /// The NAT-blocked node whose agent runs the tunnel.
    pub node: String,
    /// A relay node name, or `auto`.
    #[serde(default = "default_relay")]
    pub relay: String,
    /// Ports forwarded from the relay back to the node.
    pub ports: Vec<PortForward>,
    #[serde(default = "default_ssh_user")]
    pub ssh_user: String,
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    /// Path of the private key on the NAT-blocked node (never read by anything but ssh).
    pub identity_file: String,
    /// Pinned host key of the named relay (`ssh-ed25519 AAAA...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// Pinned host keys by relay node name; with `relay: auto` only these relays are used.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_keys: BTreeMap<String, String>,
    /// Consecutive failures before `auto` moves to another relay.
    #[serde(default = "default_switch_after")]
    pub switch_after_failures: u32,
}

fn default_relay() -> String {
    AUTO_RELAY.to_string()
}
fn default_ssh_user() -> String {
    "rift".to_string()
}
fn default_ssh_port() -> u16 {
    22
}
fn default_switch_after() -> u32 {
    3
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortForward {
    /// Port opened on the relay.
    pub remote_port: u16,
    /// Port on the NAT-blocked node it leads to.
    pub local_port: u16,
}

impl TunnelSpec {
    /// The pinned host key for `relay`, if any.
    pub fn host_key_for(&self, relay: &str) -> Option<&str> {
        self.host_keys
            .get(relay)
            .map(String::as_str)
            .or(if self.relay == relay {
                self.host_key.as_deref()
            } else {
                None
            })
    }
}

fn host_key_problem(key: &str) -> Option<&'static str> {
    let mut parts = key.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(t), Some(b)) if (t.starts_with("ssh-") || t.starts_with("ecdsa-")) && b.len() > 16 => None,
        _ => Some("must be an OpenSSH public key line, e.g. `ssh-ed25519 AAAAC3Nza...` (from ssh-keyscan)"),
    }
}

impl Spec for TunnelSpec {
    type Status = TunnelStatus;
    const KIND: &'static str = "Tunnel";
    const PLURAL: &'static str = "tunnels";
    const SINGULAR: &'static str = "tunnel";
    const SHORT_NAMES: &'static [&'static str] = &["tun"];

    fn validate(&self, _meta: &ObjectMeta, errors: &mut FieldErrors) {
        validate_name_ref("spec.node", &self.node, errors);
        if self.relay != AUTO_RELAY {
            validate_name_ref("spec.relay", &self.relay, errors);
            if self.relay == self.node {
                errors.push("spec.relay", "a node cannot relay for itself");
            }
            if self.host_key_for(&self.relay).is_none() {
                errors.push(
                    "spec.hostKey",
                    format!(
                        "required: pin relay `{}`'s host key (ssh-keyscan it once); rift never trusts an unknown host key",
                        self.relay
                    ),
                );
            }
        } else if self.host_keys.is_empty() {
            errors.push(
                "spec.hostKeys",
                "required with `relay: auto`: pin the host key of every relay it may use",
            );
        }
        if let Some(k) = &self.host_key {
            if let Some(p) = host_key_problem(k) {
                errors.push("spec.hostKey", p);
            }
        }
        for (relay, k) in &self.host_keys {
            validate_name_ref(&format!("spec.hostKeys.{relay}"), relay, errors);
            if let Some(p) = host_key_problem(k) {
                errors.push(format!("spec.hostKeys.{relay}"), p);
            }
        }
        if self.ports.is_empty() {
            errors.push("spec.ports", "must forward at least one port");
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.remote_port == 0 || p.local_port == 0 {
                errors.push(format!("spec.ports[{i}]"), "ports must be 1-65535");
            }
        }
        if self.identity_file.trim().is_empty() {
            errors.push(
                "spec.identityFile",
                "must be the path of the private key on the node",
            );
        }
        if self.switch_after_failures == 0 {
            errors.push("spec.switchAfterFailures", "must be at least 1");
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelStatus {
    #[serde(default)]
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// `relay-host:remote-port` where the node is reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}
