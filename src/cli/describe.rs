//! `rift describe KIND NAME`: one object for people: who it is, its state in words and the
//! figures that matter ([`sections`]), and its recent events, oldest first.
//!
//! Events are matched to the object by kind and name, and then to this very object: an event
//! that names a uid must name the object's; one recorded without a uid must have been seen
//! after the object was created. So a Job re-created under an old name does not show its
//! predecessor's events.

mod sections;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::api::kinds;
use crate::api::selector::LabelSelector;
use crate::store::Store;

use super::error::resolve_kind;
use super::printer;
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    /// Kind: nodes (no), jobs, pools, trainingtargets (tt), voterset (vs), tunnels (tun),
    /// notifiers, events (ev), artifacts (art), artifactstores (as).
    pub kind: String,
    /// The object's name.
    pub name: String,
}

pub async fn run(args: DescribeArgs, store: &Store) -> Result<(), CliError> {
    let kind = resolve_kind(&args.kind)?;
    let obj = store
        .get_object(kind, &args.name)
        .await?
        .ok_or_else(|| CliError::NotFound {
            kind: kind.singular.into(),
            name: args.name.clone(),
        })?;
    let events = events_for(store, kind.kind, &obj).await?;
    let members = match kind.kind {
        "Pool" => pool_members(store, &args.name).await?,
        "Artifact" => artifact_children(store, &args.name).await?,
        _ => Vec::new(),
    };
    print!("{}", render(kind.kind, &obj, &members, &events, Utc::now()));
    Ok(())
}

/// The jobs a Pool owns, by name.
async fn pool_members(store: &Store, pool: &str) -> Result<Vec<Value>, CliError> {
    let jobs = kinds::by_kind("Job").expect("Job is registered");
    let (all, _) = store
        .list_objects(jobs, &LabelSelector::everything())
        .await?;
    Ok(all
        .into_iter()
        .filter(|j| {
            j.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|r| r["kind"] == "Pool" && r["name"] == pool))
        })
        .collect())
}

/// The artifacts made from artifact `name` (those that list it among their parents).
async fn artifact_children(store: &Store, name: &str) -> Result<Vec<Value>, CliError> {
    let artifacts = kinds::by_kind("Artifact").expect("Artifact is registered");
    let (all, _) = store
        .list_objects(artifacts, &LabelSelector::everything())
        .await?;
    Ok(all
        .into_iter()
        .filter(|a| {
            a.pointer("/spec/parents")
                .and_then(Value::as_array)
                .is_some_and(|p| p.iter().any(|x| x == name))
        })
        .collect())
}

/// Events about this very object (see the module docs), oldest first: controllers' and every
/// agent's, which the store lists together.
async fn events_for(store: &Store, kind: &str, obj: &Value) -> Result<Vec<Value>, CliError> {
    let event_kind = kinds::by_kind("Event").expect("Event is registered");
    let (mut events, _) = store
        .list_objects(event_kind, &LabelSelector::everything())
        .await?;
    events.retain(|e| about(e, kind, obj));
    events.sort_by(|a, b| {
        a.pointer("/spec/lastSeen")
            .and_then(Value::as_str)
            .cmp(&b.pointer("/spec/lastSeen").and_then(Value::as_str))
    });
    Ok(events)
}

/// Whether event `e` is about `obj` of `kind` (not an earlier object of the same name).
fn about(e: &Value, kind: &str, obj: &Value) -> bool {
    let involved = &e["spec"]["involvedObject"];
    if involved["kind"].as_str() != Some(kind) || involved["name"] != obj["metadata"]["name"] {
        return false;
    }
    match involved["uid"].as_str().filter(|u| !u.is_empty()) {
        Some(uid) => obj["metadata"]["uid"].as_str() == Some(uid),
        None => {
            let time = |v: &Value, p: &str| -> Option<DateTime<Utc>> {
                v.pointer(p)
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse().ok())
            };
            match (
                time(e, "/spec/lastSeen"),
                time(obj, "/metadata/creationTimestamp"),
            ) {
                (Some(seen), Some(created)) => seen >= created,
                _ => true,
            }
        }
    }
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

fn field(label: &str, value: impl std::fmt::Display) -> String {
    format!("{:<14}{value}\n", format!("{label}:"))
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_string()
}

/// An indented table.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut buf = Vec::new();
    printer::write_table(&mut buf, Some(headers), rows).expect("writing to memory cannot fail");
    indent(&String::from_utf8_lossy(&buf), 2)
}

/// The text `describe` prints. Pure, for tests.
pub fn render(
    kind: &str,
    obj: &Value,
    members: &[Value],
    events: &[Value],
    now: DateTime<Utc>,
) -> String {
    let meta = &obj["metadata"];
    let mut out = String::new();
    out += &field("Name", s(&meta["name"]));
    out += &field("Kind", kind);
    let pairs = |m: &Value| {
        m.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "<none>".into())
    };
    out += &field("Labels", pairs(&meta["labels"]));
    out += &field("Annotations", pairs(&meta["annotations"]));
    let created: Option<DateTime<Utc>> = meta["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse().ok());
    out += &field(
        "Created",
        match created {
            Some(t) => format!("{} ({} ago)", t.to_rfc3339(), printer::age(Some(t), now)),
            None => "-".into(),
        },
    );
    out += &field("Generation", meta["generation"].as_i64().unwrap_or(0));
    out += &field("UID", s(&meta["uid"]));
    if let Some(owners) = meta["ownerReferences"].as_array() {
        let o: Vec<String> = owners
            .iter()
            .map(|o| format!("{}/{}", s(&o["kind"]).to_lowercase(), s(&o["name"])))
            .collect();
        out += &field("Owned by", o.join(", "));
    }
    if let Some(t) = meta["deletionTimestamp"].as_str() {
        out += &field("Deleting", format!("since {t}, waiting for finalizers"));
    }
    out += &match kind {
        "Job" => sections::job(obj, now),
        "Node" => sections::node(obj),
        "Pool" => sections::pool(obj, members),
        "TrainingTarget" => sections::training_target(obj, now),
        "VoterSet" => sections::voter_set(obj),
        "Artifact" => sections::artifact(obj, members),
        _ => sections::raw(obj),
    };
    out += "Events:\n";
    if events.is_empty() {
        out += "  <none>\n";
    } else {
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                let last = e
                    .pointer("/spec/lastSeen")
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse().ok());
                vec![
                    printer::age(last, now),
                    s(&e["spec"]["type"]),
                    s(&e["spec"]["reason"]),
                    e["spec"]["count"].to_string(),
                    e["spec"]["source"]
                        .as_str()
                        .filter(|f| !f.is_empty())
                        .unwrap_or("-")
                        .to_string(),
                    s(&e["spec"]["message"]),
                ]
            })
            .collect();
        out += &table(
            &["LAST-SEEN", "TYPE", "REASON", "COUNT", "FROM", "MESSAGE"],
            &rows,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shows_identity_state_and_events() {
        let now: DateTime<Utc> = "2026-11-22T12:00:00Z".parse().unwrap();
        let obj = json!({
            "metadata": {"name": "selfplay", "labels": {"tier": "a"}, "generation": 2,
                         "uid": "u1", "creationTimestamp": "2026-11-22T11:58:00Z"},
            "spec": {"replicas": 3},
            "status": {"desired": 3, "running": 2}
        });
        let events = vec![
            json!({"spec": {"type": "Normal", "reason": "scaled", "count": 2,
            "message": "scaled to 3", "lastSeen": "2026-11-22T11:59:00Z",
            "source": "agent/n1"}}),
        ];
        let text = render("Pool", &obj, &[], &events, now);
        for part in [
            "Name:         selfplay",
            "Labels:       tier=a",
            "(2m ago)",
            "Generation:   2",
            "Size:         3 replicas",
            "3 desired, - scheduled, 2 running",
            "scaled to 3",
            "agent/n1",
            "60s",
        ] {
            assert!(text.contains(part), "`{part}` not in:\n{text}");
        }
    }

    #[test]
    fn missing_status_and_events_are_said_plainly() {
        let obj = json!({"metadata": {"name": "n"}, "spec": {}});
        let text = render("Tunnel", &obj, &[], &[], Utc::now());
        assert!(text.contains("<not reported yet>"));
        assert!(text.contains("Events:\n  <none>"));
    }

    #[test]
    fn an_earlier_objects_events_are_not_this_ones() {
        let job = json!({"metadata": {"name": "j", "uid": "new", "creationTimestamp": "2026-11-22T12:00:00Z"}});
        let ev = |uid: &str, seen: &str| json!({"spec": {"involvedObject": {"kind": "Job", "name": "j", "uid": uid}, "lastSeen": seen}});
        assert!(about(&ev("new", "2026-11-22T12:00:05Z"), "Job", &job));
        assert!(
            !about(&ev("old", "2026-11-22T12:00:05Z"), "Job", &job),
            "another uid"
        );
        assert!(
            about(&ev("", "2026-11-22T12:00:05Z"), "Job", &job),
            "no uid, after creation"
        );
        assert!(
            !about(&ev("", "2026-11-22T11:59:00Z"), "Job", &job),
            "no uid, before creation"
        );
        assert!(!about(&ev("new", "2026-11-22T12:00:05Z"), "Pool", &job));
    }
}
