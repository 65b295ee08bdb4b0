//! Tables for people (`rift get`), with columns chosen per kind like kubectl's printer
//! columns. Other formats are in [`super::output`].
//!
//! A row is computed [`At`] a time (ages relative to now) or [`At::Raw`] (timestamps as
//! stored): a watch compares raw rows, so it prints only when a shown value changed, never
//! because an age ticked.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::columns::Columns;
use super::output::number_cell;
use crate::api::kinds::KindInfo;
use crate::store::objects::UNDECODABLE_ANNOTATION;

/// When a row is rendered: ages relative to a time, or the raw timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    Time(DateTime<Utc>),
    Raw,
}

impl At {
    pub fn now() -> At {
        At::Time(Utc::now())
    }

    fn age(self, t: Option<DateTime<Utc>>) -> String {
        match self {
            At::Time(now) => age(t, now),
            At::Raw => t.map_or_else(|| "-".into(), |t| t.to_rfc3339()),
        }
    }
}

/// What a row needs besides the object: who leads and who votes (a Node's ROLES).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    pub leader: Option<String>,
    /// etcd voting members by name.
    pub voters: Vec<String>,
    /// etcd learners by name.
    pub learners: Vec<String>,
}

impl Context {
    /// Reads the leader record and the VoterSet's member list (for Nodes only; other kinds
    /// need nothing).
    pub async fn read(kind: &KindInfo, store: &crate::store::Store) -> Context {
        if kind.kind != "Node" {
            return Context::default();
        }
        let leader = crate::store::leader::current_leader(store)
            .await
            .ok()
            .flatten()
            .map(|l| l.record.node);
        let members = store
            .get::<crate::api::VoterSetSpec>(crate::api::voter_set::VOTER_SET_NAME)
            .await
            .ok()
            .flatten()
            .and_then(|v| v.status)
            .map(|s| s.members)
            .unwrap_or_default();
        let names = |learner: bool| {
            members
                .iter()
                .filter(|m| m.learner == learner && !m.name.is_empty())
                .map(|m| m.name.clone())
                .collect()
        };
        Context {
            leader,
            voters: names(false),
            learners: names(true),
        }
    }
}

fn text(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A VoterSet's real members, e.g. `a,b,c(learner),d(down)`.
fn members_summary(v: &Value) -> String {
    let Some(members) = v.pointer("/status/members").and_then(Value::as_array) else {
        return String::new();
    };
    members
        .iter()
        .map(|m| {
            let name = m["name"].as_str().filter(|n| !n.is_empty());
            let mut s = name.map_or_else(
                || m["id"].as_str().unwrap_or("?").to_string(),
                str::to_string,
            );
            if m["learner"] == true {
                s += "(learner)";
            } else if m["healthy"] != true {
                s += "(down)";
            }
            s
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// `5s`, `3m`, `2h`, `4d` since `t`.
pub fn age(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else { return "-".into() };
    let s = (now - t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn timestamp(v: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    v.pointer(pointer)?.as_str()?.parse().ok()
}

fn node_state(v: &Value) -> String {
    let condition = |ty: &str| {
        v.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
            .map(|c| c["status"].as_str().unwrap_or("Unknown"))
    };
    let ready = condition("Ready");
    let mut s = match ready {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if v.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        s.push_str(",SchedulingDisabled");
    }
    if condition(crate::api::node::DISK_PRESSURE) == Some("True") {
        s.push_str(",DiskPressure");
    }
    s
}

/// `leader,voter,relay`: what the node is now (leader, etcd voter or learner), then the roles
/// its spec allows that are not already said.
fn roles(v: &Value, ctx: &Context) -> String {
    let name = text(v, "/metadata/name");
    let mut out: Vec<String> = Vec::new();
    if ctx.leader.as_deref() == Some(name.as_str()) {
        out.push("leader".into());
    }
    if ctx.voters.contains(&name) {
        out.push("voter".into());
    } else if ctx.learners.contains(&name) {
        out.push("learner".into());
    }
    for r in list(v, "/spec/roles").split(',').filter(|r| !r.is_empty()) {
        if !out.iter().any(|o| o == r) {
            out.push(r.to_string());
        }
    }
    or_dash(out.join(","))
}

/// Labels as `k=v,k2=v2` (`<none>` when there are none), for `--show-labels`.
pub fn labels_cell(v: &Value) -> String {
    let l = labels(v, "/metadata/labels");
    if l.is_empty() {
        "<none>".into()
    } else {
        l
    }
}

fn gpu_summary(v: &Value) -> String {
    let observed = v
        .pointer("/status/capacity/gpus")
        .and_then(Value::as_array)
        .filter(|g| !g.is_empty());
    if let Some(gpus) = observed {
        // `2x H100,1x RTX 4090`, models in order of first appearance.
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for g in gpus {
            let model = g["model"].as_str().unwrap_or("?");
            match counts.iter_mut().find(|(m, _)| *m == model) {
                Some((_, n)) => *n += 1,
                None => counts.push((model, 1)),
            }
        }
        return counts
            .iter()
            .map(|(m, n)| format!("{n}x {m}"))
            .collect::<Vec<_>>()
            .join(",");
    }
    let declared: Vec<String> = v
        .pointer("/spec/gpus")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|g| format!("{}x {}", g["count"], g["model"].as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    or_dash(declared.join(","))
}

/// `532 B`, `4.0 KiB`, `1.9 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn list(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn labels(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    // Counters arrive as floats; `games=120`, not `games=120.0`.
                    Value::Number(n)
                        if n.as_f64()
                            .is_some_and(|f| f.fract() == 0.0 && f.abs() < 1e15) =>
                    {
                        format!("{k}={}", n.as_f64().unwrap_or_default() as i64)
                    }
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// An artifact name cut to `sha256-` and 12 hex digits (enough to tell models apart in a
/// table; `-o yaml` shows it whole).
fn short_artifact(name: &str) -> String {
    name.chars().take("sha256-".len() + 12).collect()
}

/// Column headers for `kind`.
pub fn headers(kind: &KindInfo, wide: bool) -> Vec<&'static str> {
    let (base, extra): (&[&str], &[&str]) = match kind.kind {
        "Node" => (
            &["NAME", "STATUS", "ROLES", "GPUS", "PROVIDER", "AGE"],
            &["ADDRESSES", "ENDPOINT", "LOAD", "JOBS", "VERSION"],
        ),
        "Job" => (
            &["NAME", "TYPE", "PHASE", "NODE", "GPUS", "ATTEMPTS", "AGE"],
            &["GPU-IDS", "PRIORITY", "PROGRESS", "MESSAGE"],
        ),
        "Pool" => (
            &[
                "NAME",
                "DESIRED",
                "SCHEDULED",
                "RUNNING",
                "MODEL",
                "UPDATED",
                "AGE",
            ],
            &["TYPE", "PER-GPU", "SELECTOR", "MESSAGE"],
        ),
        "TrainingTarget" => (
            &[
                "NAME",
                "BOARD",
                "PLAYERS",
                "NEW-GAMES",
                "LAST-TRAINED",
                "ACTIVE-JOB",
                "AGE",
            ],
            &["MODEL", "PRIORITY"],
        ),
        "VoterSet" => (
            &[
                "NAME", "VOTERS", "MEMBERS", "PHASE", "QUORUM", "AGE", "MESSAGE",
            ],
            &[],
        ),
        "Tunnel" => (
            &["NAME", "NODE", "RELAY", "CONNECTED", "RESTARTS", "AGE"],
            &["ENDPOINT", "LAST-ERROR"],
        ),
        "Notifier" => (
            &["NAME", "URL", "EVENTS", "DELIVERED", "FAILURES", "AGE"],
            &["FORMAT", "LAST-ERROR"],
        ),
        "Artifact" => (
            &["NAME", "SIZE", "FORMAT", "PRODUCER", "GAMES", "AGE"],
            &["NODE", "PARENTS"],
        ),
        "ArtifactStore" => (
            &["NAME", "URL", "ENDPOINT", "PART-SIZE", "AGE"],
            &["CREDENTIALS"],
        ),
        "Event" => (
            &["LAST-SEEN", "TYPE", "REASON", "OBJECT", "COUNT", "MESSAGE"],
            &["SOURCE"],
        ),
        _ => (&["NAME", "AGE"], &[]),
    };
    let mut h = base.to_vec();
    if wide {
        h.extend_from_slice(extra);
    }
    h
}

/// One table row for `v`, matching [`headers`]. An object this build cannot decode (see
/// [`UNDECODABLE_ANNOTATION`]) shows `Undecodable` as its Job phase or Node status.
pub fn row(kind: &KindInfo, v: &Value, wide: bool, at: At, ctx: &Context) -> Vec<String> {
    let mut r = row_of(kind, v, wide, at, ctx);
    if v.pointer("/metadata/annotations")
        .and_then(|a| a.get(UNDECODABLE_ANNOTATION))
        .is_some()
    {
        match kind.kind {
            "Job" => r[2] = "Undecodable".into(),
            "Node" => r[1] = "Undecodable".into(),
            _ => {}
        }
    }
    r
}

/// A Job's PHASE cell: its phase, or what it waits on while its data moves (`Staging 45%`,
/// `Uploading`).
fn job_phase(v: &Value) -> String {
    let phase = v
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    let staging = v.pointer("/status/staging").and_then(|s| {
        serde_json::from_value::<crate::api::job_io::StagingProgress>(s.clone()).ok()
    });
    match (text(v, "/status/reason").as_str(), staging) {
        ("Staging", Some(s)) => format!("Staging {}%", s.percent()),
        ("Uploading", _) => "Uploading".into(),
        _ => phase.to_string(),
    }
}

fn row_of(kind: &KindInfo, v: &Value, wide: bool, at: At, ctx: &Context) -> Vec<String> {
    let name = text(v, "/metadata/name");
    let created = at.age(timestamp(v, "/metadata/creationTimestamp"));
    let (base, extra): (Vec<String>, Vec<String>) = match kind.kind {
        "Node" => (
            vec![
                name,
                node_state(v),
                roles(v, ctx),
                gpu_summary(v),
                or_dash(text(v, "/spec/provider")),
                created,
            ],
            vec![
                or_dash(list(v, "/spec/addresses")),
                or_dash(text(v, "/status/endpoint")),
                or_dash(
                    v.pointer("/status/loadScore")
                        .map(number_cell)
                        .unwrap_or_default(),
                ),
                v.pointer("/status/runningJobs")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
                    .to_string(),
                or_dash(text(v, "/status/agentVersion")),
            ],
        ),
        "Job" => (
            vec![
                name,
                text(v, "/spec/type"),
                job_phase(v),
                or_dash(text(v, "/status/node")),
                // How many GPUs it uses; which ones is GPU-IDS (`0` there is GPU 0).
                v.pointer("/spec/resources/gpus")
                    .map_or("0".into(), number_cell),
                v.pointer("/status/attempts")
                    .map_or("0".into(), Value::to_string),
                created,
            ],
            vec![
                or_dash(list(v, "/status/gpus")),
                text(v, "/spec/priority"),
                or_dash(labels(v, "/status/progress")),
                or_dash(text(v, "/status/message")),
            ],
        ),
        "Pool" => (
            vec![
                name,
                or_dash(text(v, "/status/desired")),
                or_dash(text(v, "/status/scheduled")),
                or_dash(text(v, "/status/running")),
                or_dash(short_artifact(&text(v, "/status/currentModel"))),
                match v.pointer("/status/rollout") {
                    Some(r) => format!(
                        "{}/{}",
                        r["updated"].as_u64().unwrap_or(0),
                        r["total"].as_u64().unwrap_or(0)
                    ),
                    None => "-".into(),
                },
                created,
            ],
            vec![
                text(v, "/spec/template/spec/type"),
                text(v, "/spec/perGpu"),
                or_dash(labels(v, "/spec/nodeSelector")),
                or_dash(text(v, "/status/message")),
            ],
        ),
        "TrainingTarget" => (
            vec![
                name,
                text(v, "/spec/board"),
                text(v, "/spec/players"),
                or_dash(
                    v.pointer("/status/gamesSinceLastTraining")
                        .map(number_cell)
                        .unwrap_or_default(),
                ),
                at.age(timestamp(v, "/status/lastTrainedAt")),
                or_dash(text(v, "/status/activeJob")),
                created,
            ],
            vec![
                or_dash(text(v, "/status/currentModel")),
                or_dash(text(v, "/status/priority")),
            ],
        ),
        "VoterSet" => (
            vec![
                name,
                list(v, "/spec/voters"),
                or_dash(members_summary(v)),
                or_dash(text(v, "/status/phase")),
                or_dash(text(v, "/status/quorum")),
                created,
                or_dash(text(v, "/status/message")),
            ],
            vec![],
        ),
        "Tunnel" => (
            vec![
                name,
                text(v, "/spec/node"),
                Some(text(v, "/status/relay"))
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| text(v, "/spec/relay")),
                or_dash(text(v, "/status/connected")),
                or_dash(text(v, "/status/restarts")),
                created,
            ],
            vec![
                or_dash(text(v, "/status/endpoint")),
                or_dash(text(v, "/status/lastError")),
            ],
        ),
        "Notifier" => (
            vec![
                name,
                text(v, "/spec/url"),
                if list(v, "/spec/events").is_empty() {
                    "*".into()
                } else {
                    list(v, "/spec/events")
                },
                or_dash(text(v, "/status/delivered")),
                or_dash(text(v, "/status/failures")),
                created,
            ],
            vec![
                text(v, "/spec/format"),
                or_dash(text(v, "/status/lastError")),
            ],
        ),
        "Artifact" => (
            vec![
                name,
                v.pointer("/spec/size")
                    .and_then(Value::as_u64)
                    .map_or_else(|| "-".into(), human_bytes),
                or_dash(text(v, "/spec/format")),
                match text(v, "/spec/producer/job") {
                    job if job.is_empty() => "push".into(),
                    job => format!("{job}#{}", text(v, "/spec/producer/attempt")),
                },
                or_dash(text(v, "/spec/counts/games")),
                created,
            ],
            vec![
                or_dash(text(v, "/spec/producer/node")),
                v.pointer("/spec/parents")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
                    .to_string(),
            ],
        ),
        "ArtifactStore" => (
            vec![
                name,
                text(v, "/spec/url"),
                or_dash(text(v, "/spec/endpoint")),
                v.pointer("/spec/partSize")
                    .and_then(Value::as_u64)
                    .map_or_else(|| "-".into(), human_bytes),
                created,
            ],
            vec![or_dash(text(v, "/spec/credentialsFile"))],
        ),
        "Event" => (
            vec![
                at.age(timestamp(v, "/spec/lastSeen")),
                text(v, "/spec/type"),
                text(v, "/spec/reason"),
                format!(
                    "{}/{}",
                    text(v, "/spec/involvedObject/kind").to_lowercase(),
                    text(v, "/spec/involvedObject/name")
                ),
                text(v, "/spec/count"),
                text(v, "/spec/message"),
            ],
            vec![text(v, "/spec/source")],
        ),
        _ => (vec![name, created], vec![]),
    };
    let mut r = base;
    if wide {
        r.extend(extra);
    }
    r
}

/// Writes rows aligned in columns.
pub fn write_table(
    out: &mut impl Write,
    headers: Option<&[&str]>,
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let columns = Columns::fit(headers.unwrap_or_default(), rows);
    if let Some(h) = headers {
        let h: Vec<String> = h.iter().map(|s| s.to_string()).collect();
        writeln!(out, "{}", columns.line(&h))?;
    }
    for r in rows {
        writeln!(out, "{}", columns.line(r))?;
    }
    out.flush()
}

#[cfg(test)]
mod tests;
