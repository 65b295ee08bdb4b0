//! `rift edit KIND NAME`: the stored object in your editor, written back like kubectl's edit.
//!
//! The object (spec and metadata) opens in `$RIFT_EDITOR`, else `$EDITOR`, else `vi`. When the
//! editor exits, the text is validated as `apply` validates it and written with
//! compare-and-swap on the revision that was opened. Invalid input reopens the editor with the
//! reason as comments at the top and your text below. When someone else changed the object
//! meanwhile, your changes are merged into theirs field by field ([`merge3`]); if you both
//! changed the same field, the editor reopens on the current object, naming the fields, with
//! your version kept in a file beside it. Closing the editor without changing the text
//! cancels: nothing is written.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::api::manifest;
use crate::store::{ApplyOutcome, Store};

use super::error::resolve_kind;
use super::modify::{read, write_if_unchanged, Stored};
use super::output::to_yaml;
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct EditArgs {
    /// Kind of the object (nodes, jobs, pools, trainingtargets, voterset, tunnels, notifiers).
    pub kind: String,
    /// The object's name.
    pub name: String,
}

/// The editor command: `$RIFT_EDITOR`, `$EDITOR`, or `vi`.
fn editor() -> String {
    ["RIFT_EDITOR", "EDITOR"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()))
        .unwrap_or_else(|| "vi".into())
}

/// Runs the editor on `path` (through `sh`, so `EDITOR="code --wait"` works).
fn open(path: &Path) -> Result<(), CliError> {
    let editor = editor();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("rift-edit")
        .arg(path)
        .status()
        .map_err(|e| CliError::Usage(format!("cannot run the editor `{editor}`: {e}")))?;
    if !status.success() {
        return Err(CliError::Usage(format!(
            "the editor `{editor}` failed ({status}); nothing was changed"
        )));
    }
    Ok(())
}

/// `# ...` lines for the top of the file.
fn comments(lines: &[String]) -> String {
    lines.iter().map(|l| format!("# {l}\n")).collect()
}

/// The text without the comment block rift put on top (so an unchanged file is recognised).
fn body(text: &str) -> &str {
    let mut rest = text;
    while let Some(line) = rest.lines().next().filter(|l| l.starts_with('#')) {
        rest = &rest[line.len()..];
        rest = rest.strip_prefix('\n').unwrap_or(rest);
    }
    rest
}

pub async fn run(args: EditArgs, store: &Store) -> Result<(), CliError> {
    let kind = resolve_kind(&args.kind)?;
    if kind.kind == "Event" {
        return Err(CliError::Usage(
            "events are written by rift, not edited".into(),
        ));
    }
    let mut current: Stored = read(store, kind, &args.name).await?;
    let path: PathBuf = std::env::temp_dir().join(format!(
        "rift-edit-{}-{}-{}.yaml",
        std::process::id(),
        kind.singular,
        args.name
    ));
    let io = |e: std::io::Error| CliError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let header = vec![
        format!(
            "Editing {}/{}. Save and close to apply it; close without",
            kind.singular, args.name
        ),
        "saving (or leave it unchanged) to cancel. Status is not editable.".to_string(),
    ];
    let mut presented = to_yaml(&current.object);
    // What the editor was opened on: the base your changes are measured from.
    let mut opened = current.object.clone();
    let mut opened_revision = current.revision;
    std::fs::write(&path, format!("{}{presented}", comments(&header))).map_err(io)?;
    let mut after_error = false;
    loop {
        open(&path)?;
        let text = std::fs::read_to_string(&path).map_err(io)?;
        if body(&text) == presented {
            let _ = std::fs::remove_file(&path);
            if after_error {
                return Err(CliError::Usage(format!(
                    "edit cancelled, no valid changes were saved to {}/{}",
                    kind.singular, args.name
                )));
            }
            println!("edit cancelled, no changes made");
            return Ok(());
        }
        let problem: Vec<String> = match manifest::parse_str(&path.display().to_string(), &text) {
            Err(e) => std::iter::once("The edit is not valid:".to_string())
                .chain(e.to_string().lines().map(str::to_string))
                .collect(),
            Ok(docs) if docs.len() != 1 => vec![format!(
                "Keep exactly one object in the file (found {}).",
                docs.len()
            )],
            Ok(docs) if docs[0].kind.kind != kind.kind || docs[0].name != args.name => {
                vec![format!(
                    "The object must stay {}/{} (found {}/{}): kind and name cannot be edited.",
                    kind.singular, args.name, docs[0].kind.singular, docs[0].name
                )]
            }
            Ok(mut docs) => {
                let mine = docs.pop().expect("one document").object;
                let mut desired = mine.clone();
                loop {
                    match write_if_unchanged(store, kind, &current, desired).await {
                        Ok(Some(outcome)) => {
                            let _ = std::fs::remove_file(&path);
                            let what = if outcome == ApplyOutcome::Unchanged {
                                "unchanged"
                            } else {
                                "edited"
                            };
                            println!("{}/{} {what}", kind.singular, args.name);
                            return Ok(());
                        }
                        Ok(None) => {
                            let theirs = read(store, kind, &args.name).await?;
                            let merged = merge3(
                                &server_free(&opened),
                                &server_free(&mine),
                                &server_free(&theirs.object),
                            );
                            current = theirs;
                            match merged {
                                Ok(m) => desired = m,
                                Err(fields) => {
                                    break conflict(
                                        &path,
                                        &text,
                                        &fields,
                                        kind.singular,
                                        &args.name,
                                    )
                                    .map_err(io)?
                                }
                            }
                        }
                        Err(CliError::Usage(why)) => break vec![why],
                        Err(e) => return Err(e),
                    }
                }
            }
        };
        after_error = true;
        presented = if opened_revision == current.revision {
            body(&text).to_string()
        } else {
            // After a conflict the editor shows the current object.
            opened = current.object.clone();
            opened_revision = current.revision;
            to_yaml(&current.object)
        };
        std::fs::write(&path, format!("{}{}", comments(&problem), presented)).map_err(io)?;
        eprintln!("{}; reopening the editor", problem.join(" "));
    }
}

/// After a real conflict: keeps your text in `<file>.mine` and says which fields clash.
fn conflict(
    path: &Path,
    text: &str,
    fields: &[String],
    kind: &str,
    name: &str,
) -> std::io::Result<Vec<String>> {
    let mine = path.with_extension("yaml.mine");
    std::fs::write(&mine, body(text))?;
    Ok(vec![
        format!(
            "{kind}/{name} was changed by someone else while you edited it, in the same field(s) \
             as you: {}.",
            fields.join(", ")
        ),
        "Below is the object as it is now; make your change again and save, or close".into(),
        format!(
            "without saving to cancel. Your version is kept in {}.",
            mine.display()
        ),
    ])
}

/// Metadata the server sets, which an edit neither changes nor merges.
const SERVER_SET: [&str; 5] = [
    "uid",
    "generation",
    "creationTimestamp",
    "resourceVersion",
    "deletionTimestamp",
];

fn server_free(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in SERVER_SET {
            meta.remove(k);
        }
    }
    if let Some(map) = obj.as_object_mut() {
        map.remove("status");
    }
    obj
}

/// Three-way merge of JSON: your changes (`base` → `mine`) applied to `theirs`, field by
/// field; maps merge key by key, anything else is taken whole. `Err` lists the fields both
/// sides changed differently.
pub fn merge3(base: &Value, mine: &Value, theirs: &Value) -> Result<Value, Vec<String>> {
    let mut clashes = Vec::new();
    let merged = merge_at("", Some(base), Some(mine), Some(theirs), &mut clashes);
    if clashes.is_empty() {
        Ok(merged.unwrap_or(Value::Null))
    } else {
        Err(clashes)
    }
}

fn merge_at(
    path: &str,
    base: Option<&Value>,
    mine: Option<&Value>,
    theirs: Option<&Value>,
    clashes: &mut Vec<String>,
) -> Option<Value> {
    if mine == base {
        return theirs.cloned();
    }
    if theirs == base || theirs == mine {
        return mine.cloned();
    }
    match (base, mine, theirs) {
        (Some(Value::Object(b)), Some(Value::Object(m)), Some(Value::Object(t))) => {
            let mut keys: Vec<&String> = b.keys().chain(m.keys()).chain(t.keys()).collect();
            keys.sort();
            keys.dedup();
            let mut out = serde_json::Map::new();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(v) = merge_at(&sub, b.get(k), m.get(k), t.get(k), clashes) {
                    out.insert(k.clone(), v);
                }
            }
            Some(Value::Object(out))
        }
        _ => {
            clashes.push(if path.is_empty() {
                "(the whole object)".into()
            } else {
                path.to_string()
            });
            mine.cloned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_to_different_fields_merge_and_the_same_field_clashes() {
        let base =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 2, "priority": 0}});
        let mine =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 5, "priority": 0}});
        let theirs = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 2, "priority": 0}});
        assert_eq!(
            merge3(&base, &mine, &theirs),
            Ok(
                json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 5, "priority": 0}})
            )
        );
        let theirs =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 3, "priority": 0}});
        assert_eq!(
            merge3(&base, &mine, &theirs),
            Err(vec!["spec.replicas".to_string()])
        );
        let removed = json!({"metadata": {"labels": {}}, "spec": {"replicas": 2, "priority": 0}});
        assert_eq!(
            merge3(&base, &removed, &theirs),
            Ok(json!({"metadata": {"labels": {}}, "spec": {"replicas": 3, "priority": 0}})),
            "a key you removed stays removed"
        );
    }

    #[test]
    fn the_comment_block_on_top_is_not_part_of_the_body() {
        assert_eq!(body("# a\n# b\nkind: Job\n# kept\n"), "kind: Job\n# kept\n");
        assert_eq!(body("kind: Job\n"), "kind: Job\n");
        assert_eq!(body("# only\n"), "");
    }
}
