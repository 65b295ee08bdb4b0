//! Reading the old orchestrator's `distributed_hosts.yaml` into typed [`Host`]s.
//!
//! Every field is checked for its type and meaning; all problems are collected (with the line
//! of the field when it can be found) and returned together. Unknown host fields and unknown
//! top-level sections are collected, not refused.

use std::collections::BTreeMap;

use serde_norway::Value;

use super::gpu::parse_gpu;
use super::locate::{item_line, key_line};
use super::{ImportError, Problem};
use crate::api::node::GpuDeclaration;
use crate::api::validation::dns1123_problem;

/// Fields of the old format that have no rift equivalent and are dropped on purpose.
pub const DROPPED_FIELDS: &[&str] = &[
    "ssh_key",
    "ringrift_path",
    "venv_activate",
    "max_parallel_jobs",
];

/// Provider instance-id fields → the provider they imply.
pub const PROVIDER_ID_FIELDS: &[(&str, &str)] = &[
    ("vast_instance_id", "vast"),
    ("vast_id", "vast"),
    ("runpod_pod_id", "runpod"),
    ("runpod_id", "runpod"),
    ("lambda_instance_id", "lambda"),
    ("nebius_instance_id", "nebius"),
    ("hetzner_server_id", "hetzner"),
    ("vultr_instance_id", "vultr"),
    ("aws_instance_id", "aws"),
];

const KNOWN_FIELDS: &[&str] = &[
    "ssh_host",
    "ssh_port",
    "ssh_user",
    "tailscale_ip",
    "cpus",
    "memory_gb",
    "gpu",
    "gpu_vram_gb",
    "role",
    "status",
    "p2p_enabled",
    "selfplay_enabled",
    "training_enabled",
    "nat_blocked",
    "relay_capable",
    "relay_primary",
    "relay_secondary",
    "is_container",
    "provider",
];

/// The old `status:`, an open string: the old orchestrator gives work only to `ready` hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostStatus {
    /// `ready` (or no status at all): imported as a schedulable Node.
    Ready,
    /// Any status that is neither ready nor retirement-like (`offline`, `setup`,
    /// `needs_tailscale_auth`, `disabled`, ...), as written: imported cordoned, the status kept
    /// as an annotation.
    NotReady(String),
    /// A retirement-like status (`retired`, `terminated`, `archived`, ...), as written: the
    /// machine is gone for good; left out.
    Retired(String),
}

/// Statuses that mean the machine is gone for good.
pub const RETIRED_STATUSES: &[&str] = &[
    "retired",
    "destroyed",
    "terminated",
    "archived",
    "decommissioned",
    "deleted",
    "removed",
];

impl HostStatus {
    /// Reads a status as written (any text; case and `-`/`_`/space differences ignored).
    pub fn parse(text: &str) -> HostStatus {
        let t = text.trim();
        let norm: String = t
            .to_ascii_lowercase()
            .chars()
            .map(|c| if matches!(c, '-' | ' ') { '_' } else { c })
            .collect();
        if norm.is_empty() || norm == "ready" {
            HostStatus::Ready
        } else if RETIRED_STATUSES.contains(&norm.as_str()) {
            HostStatus::Retired(t.to_string())
        } else {
            HostStatus::NotReady(t.to_string())
        }
    }
}

/// `relay_primary:` is either a flag on a relay (`true`) or, on a NAT-blocked host, the name of
/// its relay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RelayPrimary {
    #[default]
    Unset,
    /// `relay_primary: true` on a relay host.
    IsPrimary,
    /// `relay_primary: <host>` on a NAT-blocked host.
    Via(String),
}

/// One host entry, typed.
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    /// The key as written in the file.
    pub key: String,
    /// The rift node name (`key` lowercased, `_` and `.` as `-`).
    pub name: String,
    /// `ssh_host` without any `user@`.
    pub ssh_host: Option<String>,
    pub ssh_user: Option<String>,
    pub ssh_port: Option<u16>,
    pub tailscale_ip: Option<String>,
    pub cpus: Option<u64>,
    pub memory_gb: Option<f64>,
    /// `gpu` with `gpu_vram_gb` folded in.
    pub gpu: Option<GpuDeclaration>,
    pub role: Option<String>,
    pub status: HostStatus,
    pub p2p_enabled: Option<bool>,
    pub selfplay_enabled: Option<bool>,
    pub training_enabled: Option<bool>,
    pub nat_blocked: bool,
    pub relay_capable: bool,
    pub relay_primary: RelayPrimary,
    pub relay_secondary: Option<String>,
    pub is_container: bool,
    pub provider: Option<String>,
    /// `vast_instance_id` → `12345`, ...
    pub provider_ids: BTreeMap<String, String>,
}

/// The whole file, typed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostsFile {
    pub hosts: Vec<Host>,
    /// `p2p_voters` as written, when present.
    pub voters: Option<Vec<String>>,
    /// Top-level sections other than `hosts` and `p2p_voters`.
    pub ignored_sections: Vec<String>,
    /// `(host as written, field)` for every field this importer does not know, in file order.
    pub unknown_fields: Vec<(String, String)>,
}

/// The rift node name for a host key: lowercase, `_`, `.` and spaces as `-`.
pub fn node_name(key: &str) -> String {
    key.trim()
        .to_lowercase()
        .chars()
        .map(|c| if matches!(c, '_' | '.' | ' ') { '-' } else { c })
        .collect()
}

/// Parses the text of a `distributed_hosts.yaml`; `source` names it in messages.
pub fn parse(source: &str, text: &str) -> Result<HostsFile, ImportError> {
    crate::api::input::check_flow_depth(source, text)?;
    let root: Value = serde_norway::from_str(text).map_err(|e| ImportError::Syntax {
        source_name: source.to_string(),
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    })?;
    let mut r = Reader {
        text,
        problems: Vec::new(),
    };
    let mut file = HostsFile::default();
    let Value::Mapping(top) = root else {
        r.problem(
            &[],
            "(top level)",
            "expected a mapping with a `hosts:` section",
        );
        return Err(r.into_error(source));
    };
    let mut hosts = None;
    for (k, v) in &top {
        match scalar_text(k).as_deref() {
            Some("hosts") => hosts = Some(v),
            Some("p2p_voters") => file.voters = r.voters(v),
            Some(other) => file.ignored_sections.push(other.to_string()),
            None => r.problem(&[], "(top level)", "keys must be plain names"),
        }
    }
    match hosts {
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let Some(key) = scalar_text(k) else {
                    r.problem(&["hosts"], "hosts", "host names must be plain names");
                    continue;
                };
                if let Some(h) = r.host(&key, v, &mut file.unknown_fields) {
                    file.hosts.push(h);
                }
            }
        }
        Some(Value::Null) | None => r.problem(
            &["hosts"],
            "hosts",
            "required: the `hosts:` mapping of host name → settings",
        ),
        Some(_) => r.problem(
            &["hosts"],
            "hosts",
            "must be a mapping of host name → settings",
        ),
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let mut dup = Vec::new();
    for h in &file.hosts {
        if let Some(first) = seen.insert(&h.name, &h.key) {
            dup.push((h.key.clone(), first.to_string(), h.name.clone()));
        }
    }
    for (key, first, name) in dup {
        r.problem(
            &["hosts", &key],
            &format!("hosts.{key}"),
            &format!("becomes node `{name}`, as `{first}` does; rename one of them"),
        );
    }
    if r.problems.is_empty() {
        Ok(file)
    } else {
        Err(r.into_error(source))
    }
}

/// Collects problems, each located in the text.
struct Reader<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    fn problem(&mut self, at: &[&str], path: &str, message: &str) {
        self.problems.push(Problem {
            line: if at.is_empty() {
                None
            } else {
                key_line(self.text, at)
            },
            path: path.to_string(),
            message: message.to_string(),
        });
    }

    fn into_error(self, source: &str) -> ImportError {
        ImportError::Invalid {
            source_name: source.to_string(),
            problems: self.problems,
        }
    }

    fn voters(&mut self, v: &Value) -> Option<Vec<String>> {
        let Value::Sequence(items) = v else {
            self.problem(
                &["p2p_voters"],
                "p2p_voters",
                "must be a list of host names",
            );
            return None;
        };
        let mut names = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match scalar_text(item) {
                Some(n) => names.push(n),
                None => self.problems.push(Problem {
                    line: item_line(self.text, &["p2p_voters"], ""),
                    path: format!("p2p_voters[{i}]"),
                    message: "must be a host name".into(),
                }),
            }
        }
        Some(names)
    }

    fn host(&mut self, key: &str, v: &Value, unknown: &mut Vec<(String, String)>) -> Option<Host> {
        let name = node_name(key);
        let at = ["hosts", key];
        let before = self.problems.len();
        if let Some(p) = dns1123_problem(&name) {
            self.problem(
                &at,
                &format!("hosts.{key}"),
                &format!("cannot be a rift node name: {p}"),
            );
        }
        let fields = match v {
            Value::Mapping(m) => m,
            _ => {
                self.problem(
                    &at,
                    &format!("hosts.{key}"),
                    "must be a mapping of settings",
                );
                return None;
            }
        };
        let mut h = Host {
            key: key.to_string(),
            name,
            ssh_host: None,
            ssh_user: None,
            ssh_port: None,
            tailscale_ip: None,
            cpus: None,
            memory_gb: None,
            gpu: None,
            role: None,
            status: HostStatus::Ready,
            p2p_enabled: None,
            selfplay_enabled: None,
            training_enabled: None,
            nat_blocked: false,
            relay_capable: false,
            relay_primary: RelayPrimary::Unset,
            relay_secondary: None,
            is_container: false,
            provider: None,
            provider_ids: BTreeMap::new(),
        };
        let mut vram = None;
        for (fk, fv) in fields {
            let Some(field) = scalar_text(fk) else {
                continue;
            };
            let f = Field {
                at: ["hosts", key, field.as_str()],
                path: format!("hosts.{key}.{field}"),
            };
            if matches!(fv, Value::Null) {
                continue; // `field:` with no value: as if absent
            }
            match field.as_str() {
                "ssh_host" => {
                    if let Some(s) = self.word(&f, fv) {
                        match s.rsplit_once('@') {
                            Some((user, host)) => {
                                h.ssh_user.get_or_insert_with(|| user.to_string());
                                h.ssh_host = Some(host.to_string());
                            }
                            None => h.ssh_host = Some(s),
                        }
                    }
                }
                "ssh_user" => h.ssh_user = self.word(&f, fv),
                "ssh_port" => {
                    h.ssh_port = self.uint(&f, fv).and_then(|p| match u16::try_from(p) {
                        Ok(p) if p > 0 => Some(p),
                        _ => {
                            self.field_problem(&f, "must be a port number (1-65535)");
                            None
                        }
                    })
                }
                // `none`, `pending`, `-`: no tailscale address yet.
                "tailscale_ip" => h.tailscale_ip = self.word(&f, fv).filter(|ip| !is_no_value(ip)),
                "cpus" => h.cpus = self.uint(&f, fv),
                // 0 is how real files say "not known" (memory) and "no GPU" (vram).
                "memory_gb" => h.memory_gb = self.size_gb(&f, fv),
                "gpu_vram_gb" => vram = self.size_gb(&f, fv),
                "gpu" => match scalar_text(fv).map(|t| parse_gpu(&t)) {
                    Some(Ok(g)) => h.gpu = g,
                    Some(Err(e)) => self.field_problem(&f, &e),
                    None => self.field_problem(&f, "must be text such as \"8x RTX 4090\""),
                },
                "role" => h.role = self.text(&f, fv),
                "provider" => h.provider = self.word(&f, fv).map(|p| p.to_lowercase()),
                "status" => match scalar_text(fv) {
                    Some(t) => h.status = HostStatus::parse(&t),
                    None => self.field_problem(&f, "must be text such as `ready` or `offline`"),
                },
                "p2p_enabled" => h.p2p_enabled = self.flag(&f, fv),
                "selfplay_enabled" => h.selfplay_enabled = self.flag(&f, fv),
                "training_enabled" => h.training_enabled = self.flag(&f, fv),
                "nat_blocked" => h.nat_blocked = self.flag(&f, fv).unwrap_or(false),
                "relay_capable" => h.relay_capable = self.flag(&f, fv).unwrap_or(false),
                "is_container" => h.is_container = self.flag(&f, fv).unwrap_or(false),
                "relay_primary" => {
                    h.relay_primary = match fv {
                        Value::Bool(true) => RelayPrimary::IsPrimary,
                        Value::Bool(false) => RelayPrimary::Unset,
                        _ => match self.word(&f, fv) {
                            Some(s) => RelayPrimary::Via(node_name(&s)),
                            None => RelayPrimary::Unset,
                        },
                    }
                }
                "relay_secondary" => h.relay_secondary = self.word(&f, fv).map(|s| node_name(&s)),
                other if is_provider_id(other) => match scalar_text(fv) {
                    Some(id) if !id.trim().is_empty() => {
                        h.provider_ids
                            .insert(other.to_string(), id.trim().to_string());
                    }
                    _ => self.field_problem(&f, "must be an id (text or number)"),
                },
                other if DROPPED_FIELDS.contains(&other) => {}
                other => {
                    debug_assert!(!KNOWN_FIELDS.contains(&other));
                    unknown.push((key.to_string(), other.to_string()));
                }
            }
        }
        if let (Some(g), Some(gb)) = (h.gpu.as_mut(), vram) {
            g.memory_gb = Some(gb);
        }
        (self.problems.len() == before).then_some(h)
    }

    fn field_problem(&mut self, f: &Field, message: &str) {
        self.problem(&f.at, &f.path, message);
    }

    /// Text without spaces (a host, user, IP, role, ...).
    fn word(&mut self, f: &Field, v: &Value) -> Option<String> {
        match scalar_text(v) {
            Some(s) if !s.trim().is_empty() && !s.trim().contains(char::is_whitespace) => {
                Some(s.trim().to_string())
            }
            Some(s) if s.trim().is_empty() => None,
            _ => {
                self.field_problem(f, "must be a single word (no spaces)");
                None
            }
        }
    }

    fn uint(&mut self, f: &Field, v: &Value) -> Option<u64> {
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if n.is_none() {
            self.field_problem(f, "must be a whole number");
        }
        n
    }

    /// Any non-empty scalar text (`None` when empty).
    fn text(&mut self, f: &Field, v: &Value) -> Option<String> {
        match scalar_text(v) {
            Some(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
            None => {
                self.field_problem(f, "must be text");
                None
            }
        }
    }

    /// Gigabytes (`24`, `24.5`, `"24 GB"`); 0 means not known (`None`).
    fn size_gb(&mut self, f: &Field, v: &Value) -> Option<f64> {
        let n = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s
                .trim()
                .trim_end_matches(['G', 'B', 'g', 'b'])
                .trim()
                .parse()
                .ok(),
            _ => None,
        };
        match n {
            Some(0.0) => None,
            Some(n) if n.is_finite() && n > 0.0 => Some(n),
            _ => {
                self.field_problem(f, "must be a number of gigabytes (0 when not known)");
                None
            }
        }
    }

    fn flag(&mut self, f: &Field, v: &Value) -> Option<bool> {
        let b = match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" => Some(true),
                "false" | "no" | "off" => Some(false),
                _ => None,
            },
            _ => None,
        };
        if b.is_none() {
            self.field_problem(f, "must be true or false");
        }
        b
    }
}

/// A host field: where to look for its line, and its path for messages.
struct Field<'a> {
    at: [&'a str; 3],
    path: String,
}

/// `vast_instance_id`, `runpod_pod_id`, and any other `*_instance_id` / `*_pod_id` /
/// `*_server_id`.
fn is_provider_id(field: &str) -> bool {
    PROVIDER_ID_FIELDS.iter().any(|(f, _)| *f == field)
        || ["_instance_id", "_pod_id", "_server_id"]
            .iter()
            .any(|s| field.ends_with(s))
}

/// Text that real files write for "no value": `none`, `n/a`, `pending`, `-`, ...
fn is_no_value(text: &str) -> bool {
    matches!(
        text.trim().to_ascii_lowercase().as_str(),
        "none" | "null" | "n/a" | "na" | "-" | "pending" | "unknown" | "tbd"
    )
}

/// A scalar as text (`12345` → `"12345"`); `None` for mappings, lists and null.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
