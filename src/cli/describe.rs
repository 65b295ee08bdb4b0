//! `rift describe KIND NAME`: one object for people: identity, spec, status, recent events.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::api::kinds;
use crate::api::selector::LabelSelector;
use crate::store::Store;

use super::error::resolve_kind;
use super::output;
use super::printer;
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    pub kind: String,
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
    let events = events_for(store, kind.kind, &args.name).await?;
    print!("{}", render(kind.kind, &obj, &events, Utc::now()));
    Ok(())
}

/// Events about `kind/name`, oldest first: controllers' (`/rift/v1/events/`) and every
/// agent's (`/rift/v1/agents/<node>/events/`), which the store lists together.
async fn events_for(store: &Store, kind: &str, name: &str) -> Result<Vec<Value>, CliError> {
    let event_kind = kinds::by_kind("Event").expect("Event is registered");
    let (mut events, _) = store
        .list_objects(event_kind, &LabelSelector::everything())
        .await?;
    events.retain(|e| {
        e.pointer("/spec/involvedObject/kind")
            .and_then(Value::as_str)
            == Some(kind)
            && e.pointer("/spec/involvedObject/name")
                .and_then(Value::as_str)
                == Some(name)
    });
    events.sort_by(|a, b| {
        a.pointer("/spec/lastSeen")
            .and_then(Value::as_str)
            .cmp(&b.pointer("/spec/lastSeen").and_then(Value::as_str))
    });
    Ok(events)
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

fn field(label: &str, value: impl std::fmt::Display) -> String {
    format!("{:<14}{value}\n", format!("{label}:"))
}

/// The text `describe` prints. Pure, for tests.
pub fn render(kind: &str, obj: &Value, events: &[Value], now: DateTime<Utc>) -> String {
    let meta = &obj["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out = String::new();
    out += &field("Name", s(&meta["name"]));
    out += &field("Kind", kind);
    let labels = meta["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "<none>".into());
    out += &field("Labels", labels);
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
            .map(|o| format!("{}/{}", s(&o["kind"]), s(&o["name"])))
            .collect();
        out += &field("Owned by", o.join(", "));
    }
    if let Some(t) = meta["deletionTimestamp"].as_str() {
        out += &field("Deleting", format!("since {t}, waiting for finalizers"));
    }
    out += "Spec:\n";
    out += &indent(&output::to_yaml(&obj["spec"]), 2);
    out += "Status:\n";
    match obj.get("status") {
        Some(st) if !st.is_null() => out += &indent(&output::to_yaml(st), 2),
        _ => out += "  <not reported yet>\n",
    }
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
        let mut buf = Vec::new();
        printer::write_table(
            &mut buf,
            Some(&["LAST-SEEN", "TYPE", "REASON", "COUNT", "FROM", "MESSAGE"]),
            &rows,
        )
        .expect("writing to memory cannot fail");
        out += &indent(&String::from_utf8_lossy(&buf), 2);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shows_identity_spec_status_and_events() {
        let now: DateTime<Utc> = "2026-11-22T12:00:00Z".parse().unwrap();
        let obj = json!({
            "metadata": {"name": "selfplay", "labels": {"tier": "a"}, "generation": 2,
                         "uid": "u1", "creationTimestamp": "2026-11-22T11:58:00Z"},
            "spec": {"replicas": 3},
            "status": {"running": 2}
        });
        let events = vec![
            json!({"spec": {"type": "Normal", "reason": "scaled", "count": 2,
            "message": "scaled to 3", "lastSeen": "2026-11-22T11:59:00Z",
            "source": "agent/n1"}}),
        ];
        let text = render("Pool", &obj, &events, now);
        for part in [
            "Name:         selfplay",
            "Labels:       tier=a",
            "(2m ago)",
            "Generation:   2",
            "  replicas: 3",
            "  running: 2",
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
        let text = render("Node", &obj, &[], Utc::now());
        assert!(text.contains("<not reported yet>"));
        assert!(text.contains("Events:\n  <none>"));
    }
}
