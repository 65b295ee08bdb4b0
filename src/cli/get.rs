//! `rift get KIND [NAME] [-o wide|yaml|json] [-l selector] [-w]`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::time::Instant;

use crate::api::kinds::KindInfo;
use crate::api::selector::LabelSelector;
use crate::store::compose::{direct_child, parse_agent_key, placement_job, AgentKey};
use crate::store::objects::{mark_if_undecodable, object_from_kv};
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
            let (found, revision) = store.get_object_keyed(kind, name).await?;
            match found {
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
        None => store.list_objects_keyed(kind, &selector).await?,
    };
    let mut out = std::io::stdout().lock();
    let values = items
        .iter()
        .map(|(_, v)| {
            let mut v = v.clone();
            mark_if_undecodable(kind, &mut v);
            v
        })
        .collect();
    print_initial(&mut out, kind, &args, values)?;
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

/// What a changed key means to a watch of `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Affects<'a> {
    /// The object with this name, or a key its status is composed from: read it again.
    Object(&'a str),
    /// An event (controller's or agent's) stored at this very key, with this id: the key holds
    /// the whole object.
    Event(&'a str),
}

/// Which object of `kind` a changed key belongs to, if any: the object's own key, and the keys
/// its status comes from (a Job's placement and runtime reports, a Node's agent `alive` and
/// `status`, any other kind's status key); for Events, controller and agent events.
fn affects<'a>(kind: &KindInfo, key: &'a str) -> Option<Affects<'a>> {
    let own = direct_child(&keys::objects_prefix(kind.plural), key);
    match kind.kind {
        "Event" => own
            .or(match parse_agent_key(key) {
                Some(AgentKey::Event { id, .. }) => Some(id),
                _ => None,
            })
            .map(Affects::Event),
        "Job" => own
            .or_else(|| placement_job(key))
            .or(match parse_agent_key(key) {
                Some(AgentKey::Job { job, .. }) => Some(job),
                _ => None,
            })
            .map(Affects::Object),
        "Node" => own
            .or(match parse_agent_key(key) {
                Some(AgentKey::Alive { node } | AgentKey::Status { node }) => Some(node),
                _ => None,
            })
            .map(Affects::Object),
        "Tunnel" => own
            .or(match parse_agent_key(key) {
                Some(AgentKey::Tunnel { tunnel, .. }) => Some(tunnel),
                _ => None,
            })
            .map(Affects::Object),
        _ => own
            .or_else(|| direct_child(&keys::status_prefix(kind.plural), key))
            .map(Affects::Object),
    }
}

/// How a printed change is marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Changed,
    Deleted,
    /// Its labels changed so that `-l` no longer selects it: printed once, then dropped.
    NoLongerMatches,
}

/// What a watch has printed, by the key each object is stored at.
struct Shown<'a> {
    selector: &'a LabelSelector,
    last: HashMap<String, Value>,
}

impl Shown<'_> {
    /// What to print now that the object at `key` is `current` (`None`: gone): nothing when
    /// it looks as last printed or was never shown and still is not selected.
    fn update(&mut self, key: &str, current: Option<Value>) -> Option<(Value, Mark)> {
        match current {
            Some(v) if self.selector.matches(&labels_of(&v)) => {
                if self.last.get(key) == Some(&v) {
                    return None;
                }
                self.last.insert(key.to_string(), v.clone());
                Some((v, Mark::Changed))
            }
            Some(v) => self.last.remove(key).map(|_| (v, Mark::NoLongerMatches)),
            None => self.last.remove(key).map(|old| (old, Mark::Deleted)),
        }
    }

    /// Everything to print after a fresh list (`current`, all labels) replaces what was known.
    fn replace(&mut self, current: Vec<(String, Value)>) -> Vec<(Value, Mark)> {
        let listed: HashSet<&str> = current.iter().map(|(k, _)| k.as_str()).collect();
        let mut gone: Vec<String> = self
            .last
            .keys()
            .filter(|k| !listed.contains(k.as_str()))
            .cloned()
            .collect();
        gone.sort();
        let mut out: Vec<(Value, Mark)> =
            gone.iter().filter_map(|k| self.update(k, None)).collect();
        for (k, v) in current {
            out.extend(self.update(&k, Some(v)));
        }
        out
    }
}

fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// How long a failed read waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Prints each object of `kind` again whenever it, or a key its status comes from, changes,
/// until interrupted. A failed read is reported and retried; the watch goes on.
async fn watch(
    store: &Store,
    kind: &KindInfo,
    args: &GetArgs,
    selector: &LabelSelector,
    initial: Vec<(String, Value)>,
    revision: i64,
) -> Result<(), CliError> {
    let mut shown = Shown {
        selector,
        last: initial.into_iter().collect(),
    };
    let wanted = |name: &str| args.name.as_deref().is_none_or(|n| n == name);
    let mut watcher =
        Watcher::from_revision(store.clone(), keys::ROOT, revision, WatchConfig::default());
    // Reads that failed, to try again at `retry_at`.
    let mut retry: BTreeSet<String> = BTreeSet::new();
    let mut relist = false;
    let mut retry_at: Option<Instant> = None;
    loop {
        let event = tokio::select! {
            e = watcher.next() => Some(e),
            _ = sleep_until(retry_at) => None,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let mut to_read: BTreeSet<String> = BTreeSet::new();
        let mut prints: Vec<(Value, Mark)> = Vec::new();
        match event {
            None => {
                retry_at = None;
                to_read = std::mem::take(&mut retry);
            }
            Some(Ok(WatchEvent::Put(kv))) => match affects(kind, &kv.key) {
                Some(Affects::Object(name)) if wanted(name) => {
                    to_read.insert(name.to_string());
                }
                Some(Affects::Event(id)) if wanted(id) => match object_from_kv(&kv) {
                    Ok(v) => prints.extend(shown.update(&kv.key, Some(v))),
                    Err(e) => eprintln!("warning: {e}"),
                },
                _ => {}
            },
            Some(Ok(WatchEvent::Delete { key, .. })) => match affects(kind, &key) {
                Some(Affects::Object(name)) if wanted(name) => {
                    to_read.insert(name.to_string());
                }
                Some(Affects::Event(id)) if wanted(id) => {
                    prints.extend(shown.update(&key, None));
                }
                _ => {}
            },
            Some(Ok(WatchEvent::Restarted { .. })) => relist = true,
            Some(Err(e)) => {
                eprintln!("warning: {e}; retrying");
                continue;
            }
        }
        if relist {
            match store
                .list_objects_keyed(kind, &LabelSelector::everything())
                .await
            {
                Ok((items, _)) => {
                    relist = false;
                    let items = items
                        .into_iter()
                        .filter(|(k, _)| wanted(keys::name_of(k)))
                        .collect();
                    prints.extend(shown.replace(items));
                }
                Err(e) => {
                    eprintln!("warning: cannot list {}: {e}; retrying", kind.plural);
                    retry_at.get_or_insert_with(|| Instant::now() + RETRY_AFTER);
                }
            }
        }
        for name in to_read {
            match store.get_object_keyed(kind, &name).await {
                Ok((Some((key, v)), _)) => prints.extend(shown.update(&key, Some(v))),
                Ok((None, _)) => {
                    prints.extend(shown.update(&keys::object(kind.plural, &name), None));
                }
                Err(e) if e.is_transient() => {
                    eprintln!(
                        "warning: cannot read {}/{name}: {e}; retrying",
                        kind.singular
                    );
                    retry.insert(name);
                    retry_at.get_or_insert_with(|| Instant::now() + RETRY_AFTER);
                }
                // Not worth retrying (e.g. a value that does not decode): the next change to
                // the object reads it again.
                Err(e) => eprintln!("warning: cannot read {}/{name}: {e}", kind.singular),
            }
        }
        for (obj, mark) in prints {
            print_change(kind, args, &obj, mark)?;
        }
    }
}

fn print_change(kind: &KindInfo, args: &GetArgs, obj: &Value, mark: Mark) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    let mut obj = obj.clone();
    mark_if_undecodable(kind, &mut obj);
    let obj = &obj;
    let note = match mark {
        Mark::Changed => None,
        Mark::Deleted => Some("deleted"),
        Mark::NoLongerMatches => Some("no longer matches"),
    };
    match args.output {
        Output::Table | Output::Wide => {
            let wide = args.output == Output::Wide;
            let mut r = printer::row(kind, obj, wide, Utc::now());
            if let Some(note) = note {
                r[0] = format!("{} ({note})", r[0]);
            }
            printer::write_table(&mut out, None, &[r]).map_err(io_err)
        }
        Output::Json => {
            let mut v = obj.clone();
            if mark == Mark::Deleted {
                v["metadata"]["deletionTimestamp"] = serde_json::json!(Utc::now());
            }
            writeln!(out, "{}", serde_json::to_string(&v).expect("JSON")).map_err(io_err)
        }
        Output::Yaml => {
            writeln!(out, "---").map_err(io_err)?;
            if let Some(note) = note {
                writeln!(out, "# {note}").map_err(io_err)?;
            }
            write!(out, "{}", printer::to_yaml(obj)).map_err(io_err)?;
            out.flush().map_err(io_err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::lookup;
    use serde_json::json;

    #[test]
    fn keys_map_to_object_names_of_their_kind_only() {
        let pools = lookup("pools").unwrap();
        let o = |n| Some(Affects::Object(n));
        assert_eq!(affects(pools, "/rift/v1/pools/p"), o("p"));
        assert_eq!(affects(pools, "/rift/v1/status/pools/p"), o("p"));
        assert_eq!(affects(pools, "/rift/v1/jobs/p"), None);
        assert_eq!(affects(pools, "/rift/v1/pools/"), None);
        assert_eq!(affects(pools, "/rift/v1/pools/p/x"), None);
    }

    #[test]
    fn a_jobs_placement_and_reports_map_to_the_job() {
        let jobs = lookup("jobs").unwrap();
        let o = |n| Some(Affects::Object(n));
        assert_eq!(affects(jobs, "/rift/v1/jobs/j"), o("j"));
        assert_eq!(affects(jobs, "/rift/v1/placements/j"), o("j"));
        assert_eq!(affects(jobs, "/rift/v1/agents/n1/jobs/j"), o("j"));
        assert_eq!(affects(jobs, "/rift/v1/status/jobs/j"), None);
        assert_eq!(affects(jobs, "/rift/v1/agents/n1/status"), None);
        assert_eq!(affects(jobs, "/rift/v1/bindings/n1/j"), None);
    }

    #[test]
    fn a_nodes_agent_keys_map_to_the_node() {
        let nodes = lookup("nodes").unwrap();
        let o = |n| Some(Affects::Object(n));
        assert_eq!(affects(nodes, "/rift/v1/nodes/n1"), o("n1"));
        assert_eq!(affects(nodes, "/rift/v1/agents/n1/alive"), o("n1"));
        assert_eq!(affects(nodes, "/rift/v1/agents/n1/status"), o("n1"));
        assert_eq!(affects(nodes, "/rift/v1/agents/n1/jobs/j"), None);
        assert_eq!(affects(nodes, "/rift/v1/status/nodes/n1"), None);
    }

    #[test]
    fn controller_and_agent_events_are_events() {
        let events = lookup("ev").unwrap();
        let e = |n| Some(Affects::Event(n));
        assert_eq!(affects(events, "/rift/v1/events/e1"), e("e1"));
        assert_eq!(affects(events, "/rift/v1/agents/n1/events/e2"), e("e2"));
        assert_eq!(affects(events, "/rift/v1/agents/n1/alive"), None);
    }

    fn obj(name: &str, tier: &str, v: i64) -> Value {
        json!({"metadata": {"name": name, "labels": {"tier": tier}}, "spec": {"v": v}})
    }

    #[test]
    fn changes_print_once_and_objects_leaving_the_selector_are_dropped() {
        let selector: LabelSelector = "tier=a".parse().unwrap();
        let mut shown = Shown {
            selector: &selector,
            last: HashMap::new(),
        };
        let k = "/rift/v1/jobs/x";
        assert_eq!(
            shown.update(k, Some(obj("x", "a", 1))),
            Some((obj("x", "a", 1), Mark::Changed))
        );
        assert_eq!(shown.update(k, Some(obj("x", "a", 1))), None, "unchanged");
        assert_eq!(
            shown.update(k, Some(obj("x", "b", 2))),
            Some((obj("x", "b", 2), Mark::NoLongerMatches))
        );
        assert_eq!(shown.update(k, Some(obj("x", "b", 3))), None, "dropped");
        assert_eq!(shown.update(k, None), None, "never shown since");
        assert_eq!(
            shown.update(k, Some(obj("x", "a", 4))),
            Some((obj("x", "a", 4), Mark::Changed)),
            "selected again"
        );
        assert_eq!(
            shown.update(k, None),
            Some((obj("x", "a", 4), Mark::Deleted))
        );
    }

    #[test]
    fn a_relist_reports_what_went_away_and_what_changed() {
        let everything = LabelSelector::everything();
        let mut shown = Shown {
            selector: &everything,
            last: [
                ("/k/a".to_string(), obj("a", "a", 1)),
                ("/k/b".to_string(), obj("b", "a", 1)),
            ]
            .into_iter()
            .collect(),
        };
        let out = shown.replace(vec![
            ("/k/a".into(), obj("a", "a", 1)),
            ("/k/c".into(), obj("c", "a", 1)),
        ]);
        assert_eq!(
            out,
            vec![
                (obj("b", "a", 1), Mark::Deleted),
                (obj("c", "a", 1), Mark::Changed)
            ]
        );
    }
}
