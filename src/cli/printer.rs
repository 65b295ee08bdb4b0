//! Tables for people (`rift get`), with columns chosen per kind like kubectl's printer
//! columns, and YAML/JSON for programs.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::api::kinds::KindInfo;
use crate::api::API_VERSION;
use crate::store::objects::UNDECODABLE_ANNOTATION;

/// `-o` formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Yaml,
    Json,
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
    let ready = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].as_str().unwrap_or("Unknown"));
    let mut s = match ready {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if v.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        s.push_str(",SchedulingDisabled");
    }
    s
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

/// Column headers for `kind`.
pub fn headers(kind: &KindInfo, wide: bool) -> Vec<&'static str> {
    let (base, extra): (&[&str], &[&str]) = match kind.kind {
        "Node" => (
            &["NAME", "STATUS", "ROLES", "GPUS", "PROVIDER", "AGE"],
            &["ADDRESSES", "ENDPOINT", "LOAD", "JOBS", "VERSION"],
        ),
        "Job" => (
            &["NAME", "TYPE", "PHASE", "NODE", "GPUS", "ATTEMPTS", "AGE"],
            &["PRIORITY", "PROGRESS", "MESSAGE"],
        ),
        "Pool" => (
            &["NAME", "DESIRED", "SCHEDULED", "RUNNING", "AGE"],
            &["TYPE", "PER-GPU", "SELECTOR"],
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
/// [`UNDECODABLE_ANNOTATION`]) shows `Undecodable` as its Job phase or Node state.
pub fn row(kind: &KindInfo, v: &Value, wide: bool, now: DateTime<Utc>) -> Vec<String> {
    let mut r = row_of(kind, v, wide, now);
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

fn row_of(kind: &KindInfo, v: &Value, wide: bool, now: DateTime<Utc>) -> Vec<String> {
    let name = text(v, "/metadata/name");
    let created = age(timestamp(v, "/metadata/creationTimestamp"), now);
    let (base, extra): (Vec<String>, Vec<String>) = match kind.kind {
        "Node" => (
            vec![
                name,
                node_state(v),
                or_dash(list(v, "/spec/roles")),
                gpu_summary(v),
                or_dash(text(v, "/spec/provider")),
                created,
            ],
            vec![
                or_dash(list(v, "/spec/addresses")),
                or_dash(text(v, "/status/endpoint")),
                or_dash(text(v, "/status/loadScore")),
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
                v.pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("Pending")
                    .to_string(),
                or_dash(text(v, "/status/node")),
                or_dash(list(v, "/status/gpus")),
                v.pointer("/status/attempts")
                    .map_or("0".into(), Value::to_string),
                created,
            ],
            vec![
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
                created,
            ],
            vec![
                text(v, "/spec/template/spec/type"),
                text(v, "/spec/perGpu"),
                or_dash(labels(v, "/spec/nodeSelector")),
            ],
        ),
        "TrainingTarget" => (
            vec![
                name,
                text(v, "/spec/board"),
                text(v, "/spec/players"),
                or_dash(text(v, "/status/gamesSinceLastTraining")),
                age(timestamp(v, "/status/lastTrainedAt"), now),
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
        "Event" => (
            vec![
                age(timestamp(v, "/spec/lastSeen"), now),
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
    let mut tw = tabwriter::TabWriter::new(Vec::new()).padding(3);
    if let Some(h) = headers {
        writeln!(tw, "{}", h.join("\t"))?;
    }
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| c.replace(['\t', '\n'], " ")).collect();
        writeln!(tw, "{}", cells.join("\t"))?;
    }
    tw.flush()?;
    out.write_all(
        &tw.into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?,
    )?;
    out.flush()
}

/// The `List` wrapper kubectl prints for several objects.
pub fn list_object(items: Vec<Value>) -> Value {
    serde_json::json!({ "apiVersion": API_VERSION, "kind": "List", "items": items })
}

pub fn to_yaml(v: &Value) -> String {
    serde_norway::to_string(v).expect("JSON values serialize as YAML")
}

pub fn to_json(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::lookup;

    #[test]
    fn every_kind_has_as_many_cells_as_headers() {
        let now = Utc::now();
        let empty = serde_json::json!({"metadata": {"name": "x"}});
        for k in &crate::api::kinds::KINDS {
            for wide in [false, true] {
                assert_eq!(
                    headers(k, wide).len(),
                    row(k, &empty, wide, now).len(),
                    "{}",
                    k.kind
                );
            }
        }
    }

    #[test]
    fn mixed_gpus_are_counted_per_model_and_progress_shows_numbers() {
        let node = serde_json::json!({"metadata": {"name": "n"}, "status": {"capacity": {"gpus": [
            {"index": 0, "model": "H100"}, {"index": 1, "model": "H100"}, {"index": 2, "model": "RTX 4090"}]}}});
        assert_eq!(gpu_summary(&node), "2x H100,1x RTX 4090");
        let job = serde_json::json!({"status": {"progress": {"games": 120.0}}});
        assert_eq!(labels(&job, "/status/progress"), "games=120");
    }

    #[test]
    fn job_without_status_is_pending() {
        let v = serde_json::json!({"metadata": {"name": "j"}, "spec": {"type": "selfplay"}});
        let r = row(lookup("jobs").unwrap(), &v, false, Utc::now());
        assert_eq!(r[2], "Pending");
    }

    #[test]
    fn ages_are_short() {
        let now: DateTime<Utc> = "2026-11-22T12:00:00Z".parse().unwrap();
        let t = |s: &str| Some(s.parse().unwrap());
        assert_eq!(age(t("2026-11-22T11:59:30Z"), now), "30s");
        assert_eq!(age(t("2026-11-22T11:00:00Z"), now), "60m");
        assert_eq!(age(t("2026-11-20T12:00:00Z"), now), "2d");
        assert_eq!(age(None, now), "-");
    }
}
