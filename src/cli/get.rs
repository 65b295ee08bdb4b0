//! `rift get KIND [NAME] [-o wide|yaml|json] [-l selector] [-w]`.

use std::collections::HashMap;
use std::io::Write;

use chrono::Utc;
use serde_json::Value;

use crate::api::kinds::KindInfo;
use crate::api::selector::LabelSelector;
use crate::store::watcher::{WatchConfig, WatchEvent, Watcher};
use crate::store::{keys, Store};

use super::error::resolve_kind;
use super::printer::{self, Output};
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Kind: nodes (no), jobs, pools, trainingtargets (tt), voterset (vs), tunnels (tun),
    /// notifiers, events (ev).
    pub kind: String,
    /// One object's name; all objects of the kind when omitted.
    pub name: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
    /// Only objects whose labels match, e.g. `gpu=h100,tier!=spot`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// After listing, keep printing objects as they change.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

pub async fn run(args: GetArgs, store: &Store) -> Result<(), CliError> {
    let kind = resolve_kind(&args.kind)?;
    let selector: LabelSelector = match &args.selector {
        Some(s) => s.parse()?,
        None => LabelSelector::everything(),
    };
    let (items, revision) = match &args.name {
        Some(name) => {
            let revision = store.revision().await?;
            match store.get_object(kind, name).await? {
                Some(obj) => (vec![obj], revision),
                None if args.watch => (vec![], revision),
                None => {
                    return Err(CliError::NotFound {
                        kind: kind.singular.into(),
                        name: name.clone(),
                    })
                }
            }
        }
        None => store.list_objects(kind, &selector).await?,
    };
    let mut out = std::io::stdout().lock();
    print_initial(&mut out, kind, &args, items.clone())?;
    drop(out);
    if args.watch {
        watch(store, kind, &args, &selector, items, revision).await?;
    }
    Ok(())
}

fn io_err(source: std::io::Error) -> CliError {
    CliError::Io {
        path: "<stdout>".into(),
        source,
    }
}

fn print_initial(
    out: &mut impl Write,
    kind: &KindInfo,
    args: &GetArgs,
    items: Vec<Value>,
) -> Result<(), CliError> {
    match args.output {
        Output::Table | Output::Wide => {
            let wide = args.output == Output::Wide;
            if items.is_empty() && !args.watch {
                eprintln!("No {} found.", kind.plural);
                return Ok(());
            }
            let now = Utc::now();
            let rows: Vec<_> = items
                .iter()
                .map(|v| printer::row(kind, v, wide, now))
                .collect();
            printer::write_table(out, Some(&printer::headers(kind, wide)), &rows).map_err(io_err)
        }
        Output::Json => {
            let v = if args.name.is_some() && !args.watch {
                items.into_iter().next().unwrap_or(Value::Null)
            } else if args.watch {
                for item in items {
                    writeln!(out, "{}", serde_json::to_string(&item).expect("JSON"))
                        .map_err(io_err)?;
                }
                return Ok(());
            } else {
                printer::list_object(items)
            };
            writeln!(out, "{}", printer::to_json(&v)).map_err(io_err)
        }
        Output::Yaml => {
            if args.name.is_some() || args.watch {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 || args.watch {
                        writeln!(out, "---").map_err(io_err)?;
                    }
                    write!(out, "{}", printer::to_yaml(item)).map_err(io_err)?;
                }
                Ok(())
            } else {
                write!(out, "{}", printer::to_yaml(&printer::list_object(items))).map_err(io_err)
            }
        }
    }
}

/// The object name a changed key belongs to, if the key is part of an object of `kind`.
fn object_name<'a>(kind: &KindInfo, key: &'a str) -> Option<&'a str> {
    [
        keys::objects_prefix(kind.plural),
        keys::status_prefix(kind.plural),
    ]
    .iter()
    .find_map(|p| key.strip_prefix(p.as_str()))
    .filter(|rest| !rest.is_empty() && !rest.contains('/'))
}

/// Prints each object of `kind` again whenever its spec or status changes, until interrupted.
async fn watch(
    store: &Store,
    kind: &KindInfo,
    args: &GetArgs,
    selector: &LabelSelector,
    initial: Vec<Value>,
    revision: i64,
) -> Result<(), CliError> {
    let mut last: HashMap<String, Value> = initial
        .into_iter()
        .map(|v| {
            (
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v,
            )
        })
        .collect();
    let mut watcher =
        Watcher::from_revision(store.clone(), keys::ROOT, revision, WatchConfig::default());
    loop {
        let event = tokio::select! {
            e = watcher.next() => e,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let changed: Vec<String> = match event {
            Ok(WatchEvent::Put(kv)) => object_name(kind, &kv.key)
                .map(str::to_string)
                .into_iter()
                .collect(),
            Ok(WatchEvent::Delete { key, .. }) => object_name(kind, &key)
                .map(str::to_string)
                .into_iter()
                .collect(),
            Ok(WatchEvent::Restarted { .. }) => {
                let (items, _) = store.list_objects(kind, selector).await?;
                let mut names: Vec<String> = last.keys().cloned().collect();
                names.extend(
                    items
                        .iter()
                        .filter_map(|v| v["metadata"]["name"].as_str().map(str::to_string)),
                );
                names.sort();
                names.dedup();
                names
            }
            Err(e) => {
                eprintln!("warning: {e}; retrying");
                continue;
            }
        };
        for name in changed {
            if args.name.as_ref().is_some_and(|n| *n != name) {
                continue;
            }
            let current = store.get_object(kind, &name).await?;
            let (obj, deleted) = match current {
                Some(v) => (v, false),
                None => match last.remove(&name) {
                    Some(v) => (v, true),
                    None => continue,
                },
            };
            let labels = obj["metadata"]["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            if !selector.matches(&labels) {
                continue;
            }
            if !deleted {
                last.insert(name.clone(), obj.clone());
            }
            print_change(kind, args, &obj, deleted)?;
        }
    }
}

fn print_change(
    kind: &KindInfo,
    args: &GetArgs,
    obj: &Value,
    deleted: bool,
) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match args.output {
        Output::Table | Output::Wide => {
            let wide = args.output == Output::Wide;
            let mut r = printer::row(kind, obj, wide, Utc::now());
            if deleted {
                r[0] = format!("{} (deleted)", r[0]);
            }
            printer::write_table(&mut out, None, &[r]).map_err(io_err)
        }
        Output::Json => {
            let mut v = obj.clone();
            if deleted {
                v["metadata"]["deletionTimestamp"] = serde_json::json!(Utc::now());
            }
            writeln!(out, "{}", serde_json::to_string(&v).expect("JSON")).map_err(io_err)
        }
        Output::Yaml => {
            writeln!(out, "---").map_err(io_err)?;
            write!(out, "{}", printer::to_yaml(obj)).map_err(io_err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::lookup;

    #[test]
    fn keys_map_to_object_names_of_their_kind_only() {
        let pools = lookup("pools").unwrap();
        assert_eq!(object_name(pools, "/rift/v1/pools/p"), Some("p"));
        assert_eq!(object_name(pools, "/rift/v1/status/pools/p"), Some("p"));
        assert_eq!(object_name(pools, "/rift/v1/jobs/p"), None);
        assert_eq!(object_name(pools, "/rift/v1/pools/"), None);
    }
}
