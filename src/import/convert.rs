//! The typed hosts file → rift objects: a `Node` per kept host, a `Tunnel` per NAT-blocked one,
//! the `VoterSet` from `p2p_voters`.
//!
//! Decisions (documented in the README's import playbook):
//!
//! * `status` is an open string, as in the old orchestrator (which gives work only to `ready`
//!   hosts). Left out, with the reason in a comment: retirement-like statuses (`retired`,
//!   `destroyed`, `terminated`, `archived`, ...) and `p2p_enabled: false`. Any other status
//!   that is not `ready` (`offline`, `setup`, `needs_tailscale_auth`, `disabled`, ...) is
//!   imported cordoned (`unschedulable: true`), the old status kept in the annotation
//!   [`IMPORTED_STATUS`], all such hosts named in one warning.
//! * Roles: `voter` and `controller` for every host in `p2p_voters`; `relay` for hosts with
//!   `relay_capable: true` or `relay_primary: true`, and for any host another names as its
//!   `relay_primary`/`relay_secondary`.
//! * Labels (what Pools select on): `provider`, `gpu` (the class, e.g. `rtx-4090`), `role` (the
//!   old role), `selfplay` (`"true"` unless `selfplay_enabled: false`), `training` (`"true"` when
//!   `training_enabled: true`, or when absent and the old role mentions training), `container`.
//! * Annotations keep what rift does not act on: `rift.dev/imported-from`, the ssh user and
//!   port, the old file's cpus and memory, and provider ids (`rift.dev/vast-instance-id`).
//! * Tunnels: `relay_primary: <host>` → that relay (and `relay_secondary`'s key pinned too);
//!   otherwise `relay: auto` over every relay. The relay's host key comes from
//!   `--known-hosts` (ssh-keyscan output); when it is missing, the Tunnel pins
//!   [`PLACEHOLDER_HOST_KEY`]: it validates, so the fleet can be reviewed and applied, but it
//!   never matches a real key, so that tunnel stays down (fails closed) until the real key is
//!   pinned, and a warning names every relay concerned. Tunnels log in as `rift` (the Tunnel
//!   default), never as the old file's ssh user: the key lives on a rented machine, so the
//!   relay account should be one that may only forward ports.
//! * A voter that is not a host, is left out, is not `ready` or is NAT-blocked is left out of
//!   the VoterSet with a warning; it is an error only when no voter remains.
//! * A `relay_primary`/`relay_secondary` naming a host that cannot relay (not a host, left
//!   out, NAT-blocked, itself) is ignored with a warning; the other named relay, or
//!   `relay: auto`, is used.

use std::collections::{BTreeMap, BTreeSet};

use super::gpu::gpu_class;
use super::hosts::{self, Host, HostStatus, RelayPrimary, PROVIDER_ID_FIELDS};
use super::known_hosts::KnownHosts;
use super::locate::{item_line, key_line};
use super::{ImportError, Problem};
use crate::api::node::{NodeRole, DEFAULT_AGENT_PORT};
use crate::api::tunnel::{PortForward, AUTO_RELAY};
use crate::api::voter_set::VOTER_SET_NAME;
use crate::api::{Node, NodeSpec, Object, Tunnel, TunnelSpec, VoterSet, VoterSetSpec};

/// A syntactically valid ed25519 key whose bytes spell `REPLACE-ME-with-ssh-keyscan-key!`.
pub const PLACEHOLDER_HOST_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJFUExBQ0UtTUUtd2l0aC1zc2gta2V5c2Nhbi1rZXkh rift-import-placeholder";

/// Where imported Tunnels expect the node's private key for the relay.
pub const DEFAULT_IDENTITY_FILE: &str = "/etc/rift/tunnel_ed25519";

/// Where each imported object came from: `distributed_hosts.yaml: hosts.vast-1`.
pub const IMPORTED_FROM: &str = "rift.dev/imported-from";

/// The old `status:` of a host imported cordoned because it was not `ready`.
pub const IMPORTED_STATUS: &str = "rift.dev/imported-status";

/// Relay ports for tunnels are chosen in `[BASE, BASE + SPAN)`.
const REMOTE_PORT_BASE: u16 = 20000;
const REMOTE_PORT_SPAN: u16 = 10000;

#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub known_hosts: KnownHosts,
    pub identity_file: String,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            known_hosts: KnownHosts::default(),
            identity_file: DEFAULT_IDENTITY_FILE.into(),
        }
    }
}

/// One kept host: its Node, its Tunnel when NAT-blocked, and comments for the reader.
#[derive(Clone, Debug)]
pub struct ImportedNode {
    pub node: Node,
    pub tunnel: Option<Tunnel>,
    /// Comment lines written above the Tunnel (e.g. which keys are placeholders).
    pub tunnel_notes: Vec<String>,
}

/// The conversion's result.
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    pub voter_set: Option<VoterSet>,
    pub nodes: Vec<ImportedNode>,
    /// `(host as written, why)` for hosts not imported.
    pub left_out: Vec<(String, String)>,
    /// Things the operator must look at (stderr).
    pub warnings: Vec<String>,
    /// Things worth knowing (stderr and the output's header).
    pub notes: Vec<String>,
}

/// Converts the text of a `distributed_hosts.yaml`; `source` names it in messages.
pub fn convert(source: &str, text: &str, opts: &ImportOptions) -> Result<Fleet, ImportError> {
    let file = hosts::parse(source, text)?;
    let mut c = Converter {
        text,
        source,
        opts,
        all: file.hosts.iter().map(|h| (h.name.clone(), h)).collect(),
        problems: Vec::new(),
        fleet: Fleet::default(),
        placeholder_relays: BTreeSet::new(),
        named_relays: BTreeMap::new(),
    };
    if !file.unknown_fields.is_empty() {
        c.fleet
            .warnings
            .push(unknown_fields_warning(&file.unknown_fields));
    }
    if !file.ignored_sections.is_empty() {
        c.fleet.notes.push(format!(
            "top-level section(s) with no rift equivalent, ignored: {}",
            file.ignored_sections.join(", ")
        ));
    }
    let kept: Vec<&Host> = file
        .hosts
        .iter()
        .filter(|h| match left_out_reason(h) {
            Some(why) => {
                c.fleet.left_out.push((h.key.clone(), why));
                false
            }
            None => true,
        })
        .collect();
    let relays = c.relays(&kept);
    let voters = c.voters(file.voters.as_deref().unwrap_or_default(), &kept);
    let mut ports = BTreeSet::new();
    for h in &kept {
        let node = c.node(h, &voters, &relays);
        let (tunnel, tunnel_notes) = if h.nat_blocked {
            c.tunnel(h, &relays, &mut ports)
        } else {
            (None, Vec::new())
        };
        c.fleet.nodes.push(ImportedNode {
            node,
            tunnel,
            tunnel_notes,
        });
    }
    if let Some(w) = not_ready_warning(&kept) {
        c.fleet.warnings.push(w);
    }
    if !voters.is_empty() {
        c.fleet.voter_set = Some(Object::new(VOTER_SET_NAME, VoterSetSpec { voters }));
    } else if file.voters.as_ref().is_none_or(Vec::is_empty) {
        c.fleet.notes.push(
            "no p2p_voters section: no VoterSet written (write one naming 1, 3 or 5 stable nodes)"
                .into(),
        );
    }
    if !c.placeholder_relays.is_empty() {
        let relays: Vec<&str> = c.placeholder_relays.iter().map(String::as_str).collect();
        c.fleet.warnings.push(format!(
            "no host key for relay(s) {}: their Tunnels pin a placeholder key that never matches, so \
             those tunnels stay down until the real key is pinned. Run `ssh-keyscan -t ed25519 {} > relays.keys` \
             and import again with `--known-hosts relays.keys` (or paste each key into hostKeys)",
            relays.join(", "),
            relays
                .iter()
                .map(|r| c.reachable_name(r))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if kept.is_empty() && c.problems.is_empty() {
        c.problems.push(Problem {
            line: key_line(text, &["hosts"]),
            path: "hosts".into(),
            message: "no host is left to import (every host is retired, destroyed or p2p-disabled)"
                .into(),
        });
    }
    c.check_objects();
    if c.problems.is_empty() {
        Ok(c.fleet)
    } else {
        Err(ImportError::Invalid {
            source_name: source.to_string(),
            problems: c.problems,
        })
    }
}

fn left_out_reason(h: &Host) -> Option<String> {
    match &h.status {
        HostStatus::Retired(status) => Some(format!("status: {status}")),
        _ if h.p2p_enabled == Some(false) => Some("p2p_enabled: false".into()),
        _ => None,
    }
}

/// One warning for every host field this importer does not know, grouped by field:
/// `status_note (vast-1), gpu_type (32 hosts)`.
fn unknown_fields_warning(unknown: &[(String, String)]) -> String {
    let mut by_field: Vec<(&str, Vec<&str>)> = Vec::new();
    for (host, field) in unknown {
        match by_field.iter_mut().find(|(f, _)| f == field) {
            Some((_, hosts)) => hosts.push(host),
            None => by_field.push((field, vec![host])),
        }
    }
    let listed: Vec<String> = by_field
        .iter()
        .map(|(field, hosts)| match hosts.len() {
            1..=3 => format!("{field} ({})", hosts.join(", ")),
            n => format!("{field} ({n} hosts)"),
        })
        .collect();
    format!(
        "{} unknown host field(s) ignored: {}",
        by_field.len(),
        listed.join(", ")
    )
}

/// One warning naming every host imported cordoned because its status is not `ready`.
fn not_ready_warning(kept: &[&Host]) -> Option<String> {
    let mut by_status: Vec<(&str, Vec<&str>)> = Vec::new();
    for h in kept {
        if let HostStatus::NotReady(status) = &h.status {
            match by_status.iter_mut().find(|(s, _)| s == status) {
                Some((_, hosts)) => hosts.push(&h.name),
                None => by_status.push((status, vec![&h.name])),
            }
        }
    }
    if by_status.is_empty() {
        return None;
    }
    let n: usize = by_status.iter().map(|(_, h)| h.len()).sum();
    let listed: Vec<String> = by_status
        .iter()
        .map(|(status, hosts)| format!("{status}: {}", hosts.join(", ")))
        .collect();
    Some(format!(
        "{n} host(s) imported cordoned because their status is not `ready` (the old status is \
         kept in the annotation {IMPORTED_STATUS}; `rift uncordon NODE` once one is ready): {}",
        listed.join("; ")
    ))
}

struct Converter<'a> {
    text: &'a str,
    source: &'a str,
    opts: &'a ImportOptions,
    all: BTreeMap<String, &'a Host>,
    problems: Vec<Problem>,
    fleet: Fleet,
    placeholder_relays: BTreeSet<String>,
    /// NAT-blocked host name → the relays its file names that can relay (primary first).
    named_relays: BTreeMap<String, Vec<String>>,
}

impl Converter<'_> {
    fn problem(&mut self, line: Option<usize>, path: String, message: String) {
        self.problems.push(Problem {
            line,
            path,
            message,
        });
    }

    /// A warning located at `path` (and its line when known).
    fn warn(&mut self, line: Option<usize>, path: &str, message: String) {
        let at = line.map(|l| format!(":{l}")).unwrap_or_default();
        self.fleet
            .warnings
            .push(format!("{}{at}: {path}: {message}", self.source));
    }

    /// Relay node names. Every `relay_primary`/`relay_secondary` reference is checked; one that
    /// cannot relay is ignored with a warning, the others are kept in `named_relays`.
    fn relays(&mut self, kept: &[&Host]) -> BTreeSet<String> {
        let mut relays: BTreeSet<String> = kept
            .iter()
            .filter(|h| !h.nat_blocked)
            .filter(|h| h.relay_capable || h.relay_primary == RelayPrimary::IsPrimary)
            .map(|h| h.name.clone())
            .collect();
        for h in kept {
            let named = [
                ("relay_primary", named_relay(h)),
                ("relay_secondary", h.relay_secondary.as_deref()),
            ];
            for (field, relay) in named {
                let Some(relay) = relay else { continue };
                let path = format!("hosts.{}.{field}", h.key);
                let line = key_line(self.text, &["hosts", &h.key, field]);
                if !h.nat_blocked {
                    self.warn(
                        line,
                        &path,
                        format!("`{relay}` ignored: only NAT-blocked hosts use a relay"),
                    );
                    continue;
                }
                let why_not = match self.all.get(relay) {
                    None => Some("it is not a host in this file".to_string()),
                    Some(r) if left_out_reason(r).is_some() => Some(format!(
                        "it is left out ({})",
                        left_out_reason(r).unwrap_or_default()
                    )),
                    Some(r) if r.nat_blocked => Some("it is NAT-blocked itself".to_string()),
                    Some(r) if r.name == h.name => Some("a host cannot relay for itself".into()),
                    Some(_) => None,
                };
                match why_not {
                    Some(why) => self.warn(
                        line,
                        &path,
                        format!("relay `{relay}` ignored: {why}; the tunnel uses another relay"),
                    ),
                    None => {
                        relays.insert(relay.to_string());
                        let named = self.named_relays.entry(h.name.clone()).or_default();
                        if !named.iter().any(|r| r == relay) {
                            named.push(relay.to_string());
                        }
                    }
                }
            }
        }
        relays
    }

    /// The voters' node names. A listed voter that cannot be one (not a host, left out, not
    /// `ready`, NAT-blocked, listed twice) is left out with a warning; an error only when the
    /// list names voters and none remains.
    fn voters(&mut self, listed: &[String], kept: &[&Host]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (i, v) in listed.iter().enumerate() {
            let name = hosts::node_name(v);
            let line = item_line(self.text, &["p2p_voters"], v);
            let path = format!("p2p_voters[{i}]");
            let why_not = match self.all.get(&name) {
                None => Some("it is not a host in this file".to_string()),
                Some(h) if !kept.iter().any(|k| k.name == name) => Some(format!(
                    "it is left out ({})",
                    left_out_reason(h).unwrap_or_default()
                )),
                Some(h) if h.nat_blocked => {
                    Some("it is NAT-blocked: peers cannot reach its etcd".to_string())
                }
                Some(Host {
                    status: HostStatus::NotReady(status),
                    ..
                }) => Some(format!("its status is `{status}`, not ready")),
                Some(_) if out.contains(&name) => Some("it is listed twice".to_string()),
                Some(_) => None,
            };
            match why_not {
                Some(why) => self.warn(
                    line,
                    &path,
                    format!("`{v}` left out of the VoterSet: {why}"),
                ),
                None => out.push(name),
            }
        }
        if out.is_empty() && !listed.is_empty() {
            self.problem(
                key_line(self.text, &["p2p_voters"]),
                "p2p_voters".into(),
                "no listed voter can be one (see the warnings); name at least one ready host \
                 that is not NAT-blocked"
                    .into(),
            );
        }
        if out.len() % 2 == 0 && !out.is_empty() {
            self.fleet.warnings.push(format!(
                "the VoterSet has {} voters: an even count tolerates no more failures than one fewer; use 3 or 5",
                out.len()
            ));
        }
        out
    }

    fn node(&mut self, h: &Host, voters: &[String], relays: &BTreeSet<String>) -> Node {
        let mut addresses: Vec<String> = Vec::new();
        for a in [&h.tailscale_ip, &h.ssh_host].into_iter().flatten() {
            if !addresses.contains(a) {
                addresses.push(a.clone());
            }
        }
        let mut roles = Vec::new();
        if voters.contains(&h.name) {
            roles.extend([NodeRole::Voter, NodeRole::Controller]);
        }
        if relays.contains(&h.name) {
            roles.push(NodeRole::Relay);
        }
        roles.sort();
        let provider = provider_of(h);
        let mut node = Object::new(
            h.name.clone(),
            NodeSpec {
                addresses,
                provider: provider.clone(),
                roles,
                nat_blocked: h.nat_blocked,
                unschedulable: matches!(h.status, HostStatus::NotReady(_)),
                gpus: h.gpu.iter().cloned().collect(),
                agent_port: DEFAULT_AGENT_PORT,
            },
        );
        let labels = &mut node.metadata.labels;
        if !provider.is_empty() {
            labels.insert("provider".into(), provider);
        }
        if let Some(g) = &h.gpu {
            labels.insert("gpu".into(), gpu_class(&g.model));
        }
        if let Some(role) = &h.role {
            labels.insert("role".into(), gpu_class(role));
        }
        let training = h.training_enabled.unwrap_or_else(|| {
            h.role
                .as_deref()
                .is_some_and(|r| r.to_lowercase().contains("train"))
        });
        labels.insert(
            "selfplay".into(),
            (h.selfplay_enabled != Some(false)).to_string(),
        );
        labels.insert("training".into(), training.to_string());
        if h.is_container {
            labels.insert("container".into(), "true".into());
        }
        let notes = &mut node.metadata.annotations;
        notes.insert(
            IMPORTED_FROM.into(),
            format!("{}: hosts.{}", self.source, h.key),
        );
        if let Some(u) = &h.ssh_user {
            notes.insert("rift.dev/ssh-user".into(), u.clone());
        }
        if let Some(p) = h.ssh_port {
            notes.insert("rift.dev/ssh-port".into(), p.to_string());
        }
        if let Some(n) = h.cpus {
            notes.insert("rift.dev/declared-cpus".into(), n.to_string());
        }
        if let Some(n) = h.memory_gb {
            notes.insert("rift.dev/declared-memory-gb".into(), n.to_string());
        }
        for (field, id) in &h.provider_ids {
            notes.insert(format!("rift.dev/{}", field.replace('_', "-")), id.clone());
        }
        if let HostStatus::NotReady(status) = &h.status {
            notes.insert(IMPORTED_STATUS.into(), status.clone());
        }
        node
    }

    fn tunnel(
        &mut self,
        h: &Host,
        relays: &BTreeSet<String>,
        ports: &mut BTreeSet<u16>,
    ) -> (Option<Tunnel>, Vec<String>) {
        let named = self.named_relays.get(&h.name).cloned().unwrap_or_default();
        let (relay, candidates): (String, Vec<String>) = match named.first() {
            Some(first) => (first.clone(), named.clone()),
            None => (
                AUTO_RELAY.to_string(),
                relays.iter().filter(|r| **r != h.name).cloned().collect(),
            ),
        };
        let candidates: Vec<String> = candidates
            .into_iter()
            .filter(|r| self.all.contains_key(r))
            .collect();
        if candidates.is_empty() {
            self.fleet.warnings.push(format!(
                "hosts.{}: NAT-blocked but no relay exists (set relay_primary, or relay_capable: true on a reachable host): no Tunnel written",
                h.key
            ));
            return (None, Vec::new());
        }
        let mut notes = Vec::new();
        let mut host_keys = BTreeMap::new();
        for r in &candidates {
            let rh = self.all[r];
            let names = [
                Some(r.as_str()),
                rh.tailscale_ip.as_deref(),
                rh.ssh_host.as_deref(),
            ];
            let key = match self.opts.known_hosts.find(names.into_iter().flatten()) {
                Some(k) => k.to_string(),
                None => {
                    notes.push(format!(
                        "hostKeys.{r} is a PLACEHOLDER: replace it with `ssh-keyscan -t ed25519 {}`",
                        self.reachable_name(r)
                    ));
                    self.placeholder_relays.insert(r.clone());
                    PLACEHOLDER_HOST_KEY.to_string()
                }
            };
            host_keys.insert(r.clone(), key);
        }
        // Log in as the Tunnel default user `rift`, never the operator's login (often root): the
        // key sits on a rented machine, so the relay account should allow port forwarding only.
        let ports_seen: BTreeSet<Option<u16>> =
            candidates.iter().map(|r| self.all[r].ssh_port).collect();
        let port = match ports_seen.iter().next() {
            Some(p) if ports_seen.len() == 1 => *p,
            _ => {
                notes.push(
                    "the relays listen for ssh on different ports: sshPort is 22; check it".into(),
                );
                None
            }
        };
        let spec = TunnelSpec {
            node: h.name.clone(),
            relay,
            ports: vec![PortForward {
                remote_port: remote_port(&h.name, ports),
                local_port: DEFAULT_AGENT_PORT,
            }],
            ssh_user: "rift".into(),
            ssh_port: port.unwrap_or(22),
            identity_file: self.opts.identity_file.clone(),
            host_key: None,
            host_keys,
            switch_after_failures: 3,
        };
        let mut t = Object::new(h.name.clone(), spec);
        t.metadata.annotations.insert(
            IMPORTED_FROM.into(),
            format!("{}: hosts.{}", self.source, h.key),
        );
        (Some(t), notes)
    }

    /// The address to ssh-keyscan for relay `r`: its tailscale IP, else its ssh host, else
    /// its name.
    fn reachable_name(&self, r: &str) -> String {
        self.all
            .get(r)
            .and_then(|h| h.tailscale_ip.clone().or_else(|| h.ssh_host.clone()))
            .unwrap_or_else(|| r.to_string())
    }

    /// Runs rift's own validation on every object, so the output always applies.
    fn check_objects(&mut self) {
        let mut found = Vec::new();
        for n in &self.fleet.nodes {
            let key = n.node.metadata.annotations.get(IMPORTED_FROM).cloned();
            let errors = n.node.validate();
            if !errors.is_empty() {
                found.push((key.clone(), format!("would be an invalid Node: {errors}")));
            }
            if let Some(t) = &n.tunnel {
                let errors = t.validate();
                if !errors.is_empty() {
                    found.push((key, format!("would be an invalid Tunnel: {errors}")));
                }
            }
        }
        if let Some(vs) = &self.fleet.voter_set {
            let errors = vs.validate();
            if !errors.is_empty() {
                found.push((None, format!("would be an invalid VoterSet: {errors}")));
            }
        }
        for (origin, message) in found {
            let path = origin
                .and_then(|o| o.rsplit_once(": ").map(|(_, p)| p.to_string()))
                .unwrap_or_else(|| "p2p_voters".into());
            let at: Vec<&str> = path.split('.').collect();
            let line = key_line(self.text, &at);
            self.problem(line, path, message);
        }
    }
}

fn named_relay(h: &Host) -> Option<&str> {
    match &h.relay_primary {
        RelayPrimary::Via(r) => Some(r),
        _ => None,
    }
}

/// The provider: written, implied by an instance id, or guessed from the name, address or GPU.
fn provider_of(h: &Host) -> String {
    if let Some(p) = &h.provider {
        return p.clone();
    }
    for (field, provider) in PROVIDER_ID_FIELDS {
        if h.provider_ids.contains_key(*field) {
            return provider.to_string();
        }
    }
    const KNOWN: &[&str] = &[
        "lambda", "vast", "runpod", "nebius", "hetzner", "vultr", "aws", "gcp", "oracle", "mac",
    ];
    let first = h.name.split('-').next().unwrap_or_default();
    if let Some(p) = KNOWN.iter().find(|p| **p == first) {
        return p.to_string();
    }
    if ["macbook", "macstudio", "mbp", "studio", "macmini"].contains(&first) {
        return "mac".into();
    }
    let ssh = h.ssh_host.as_deref().unwrap_or_default().to_lowercase();
    if ssh.ends_with("vast.ai") {
        return "vast".into();
    }
    if ssh.contains("runpod") {
        return "runpod".into();
    }
    let apple = h.gpu.as_ref().is_some_and(|g| {
        let m = g.model.to_lowercase();
        m.starts_with("apple")
            || (m.starts_with('m') && m[1..].starts_with(|c: char| c.is_ascii_digit()))
    });
    if apple {
        return "mac".into();
    }
    String::new()
}

/// A relay port for `node`'s tunnel: stable for a name (FNV-1a), the next free one on a clash.
fn remote_port(node: &str, used: &mut BTreeSet<u16>) -> u16 {
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut offset = (hash % REMOTE_PORT_SPAN as u64) as u16;
    loop {
        let port = REMOTE_PORT_BASE + offset;
        if used.insert(port) {
            return port;
        }
        offset = (offset + 1) % REMOTE_PORT_SPAN;
    }
}

#[cfg(test)]
#[path = "convert/tests.rs"]
mod tests;
