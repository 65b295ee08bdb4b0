//! `rift get KIND -w`: the listing kept current.
//!
//! Guarantees:
//!
//! * **Only what is shown.** An object prints again only when what the chosen format shows of
//!   it changed: for a table its row (timestamps compared as stored, so an age ticking is no
//!   change; a progress counter the table does not show is none either), for `json`/`yaml`
//!   the object, for `name` its appearance and disappearance, for `jsonpath` the template's
//!   output.
//! * **Aligned or in place.** On a terminal the whole table is redrawn in place on each change;
//!   otherwise changed rows are appended, padded to the columns of the first table.
//! * **After any reconnect the view equals a fresh `rift get`.** The watcher resumes from the
//!   last revision it saw (etcd replays what was missed) or, when that revision is compacted,
//!   relists; every object a changed key belongs to is read again at the store's current
//!   revision. A read that fails is retried until it succeeds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{IsTerminal, Write};
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

use super::super::columns::Columns;
use super::super::output::{self, Output};
use super::super::printer::{self, At, Context};
use super::super::CliError;
use super::{io_err, sort, table_headers, table_row, GetArgs};

/// What a changed key means to a watch of `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Affects<'a> {
    /// The object with this name, or a key its status is composed from: read it again.
    Object(&'a str),
    /// An event (controller's or agent's) stored at this very key, with this id: the key holds
    /// the whole object.
    Event(&'a str),
    /// Something every row may show (a Node's ROLES: the leader, the etcd members).
    Context,
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
        "Node"
            if key == keys::LEADER
                || key == keys::status("voterset", crate::api::voter_set::VOTER_SET_NAME) =>
        {
            Some(Affects::Context)
        }
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

/// What a watch has shown, by the key each object is stored at: the object and its view (what
/// the output format shows of it).
struct Shown<'a, V: Fn(&Value) -> String> {
    selector: &'a LabelSelector,
    view: V,
    last: HashMap<String, (String, Value)>,
}

impl<V: Fn(&Value) -> String> Shown<'_, V> {
    /// What to print now that the object at `key` is `current` (`None`: gone): nothing when
    /// it shows as last printed or was never shown and still is not selected.
    fn update(&mut self, key: &str, current: Option<Value>) -> Option<(Value, Mark)> {
        match current {
            Some(v) if self.selector.matches(&labels_of(&v)) => {
                let view = (self.view)(&v);
                let same = self.last.get(key).is_some_and(|(shown, _)| *shown == view);
                self.last.insert(key.to_string(), (view, v.clone()));
                (!same).then_some((v, Mark::Changed))
            }
            Some(v) => self.last.remove(key).map(|_| (v, Mark::NoLongerMatches)),
            None => self.last.remove(key).map(|(_, old)| (old, Mark::Deleted)),
        }
    }

    /// Views every shown object again (the view itself changed, e.g. who leads): what now
    /// shows differently.
    fn review(&mut self) -> Vec<(Value, Mark)> {
        let mut keys: Vec<String> = self.last.keys().cloned().collect();
        keys.sort();
        keys.into_iter()
            .filter_map(|k| {
                let v = self.last.get(&k).map(|(_, v)| v.clone())?;
                self.update(&k, Some(v))
            })
            .collect()
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

/// Where a watch's changes go.
enum Sink {
    /// A terminal: the whole table redrawn in place.
    Redraw,
    /// Rows appended under the first table's header, padded to its columns.
    Append(Columns),
    /// Each changed object in the chosen format.
    Text,
}

/// Keeps the listing of `kind` current until interrupted: every object is shown again whenever
/// what the format shows of it changes. A failed read is reported and retried; the watch goes
/// on.
pub async fn run(
    store: &Store,
    kind: &KindInfo,
    args: &GetArgs,
    selector: &LabelSelector,
    initial: Vec<(String, Value)>,
    revision: i64,
    mut ctx: Context,
) -> Result<(), CliError> {
    let terminal = std::io::stdout().is_terminal();
    let sink = match &args.output {
        Output::Table | Output::Wide if terminal => Sink::Redraw,
        Output::Table | Output::Wide => {
            let rows: Vec<Vec<String>> = initial
                .iter()
                .map(|(_, v)| table_row(kind, v, args, At::now(), &ctx))
                .collect();
            Sink::Append(Columns::fit(&table_headers(kind, args), &rows))
        }
        _ => Sink::Text,
    };
    let view_ctx = std::cell::RefCell::new(ctx.clone());
    let view = |v: &Value| view_of(kind, args, v, &view_ctx.borrow());
    let mut shown = Shown {
        selector,
        view,
        last: HashMap::new(),
    };
    for (k, v) in initial {
        shown.update(&k, Some(v));
    }
    if matches!(sink, Sink::Redraw) {
        redraw(kind, args, &shown.last, &ctx)?;
    }
    let wanted = |name: &str| args.names.is_empty() || args.names.iter().any(|n| n == name);
    let mut watcher =
        Watcher::from_revision(store.clone(), keys::ROOT, revision, WatchConfig::default());
    // Reads that failed, to try again at `retry_at`.
    let mut retry: BTreeSet<String> = BTreeSet::new();
    let mut relist = false;
    let mut reread_context = false;
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
                Some(Affects::Context) => reread_context = true,
                _ => {}
            },
            Some(Ok(WatchEvent::Delete { key, .. })) => match affects(kind, &key) {
                Some(Affects::Object(name)) if wanted(name) => {
                    to_read.insert(name.to_string());
                }
                Some(Affects::Event(id)) if wanted(id) => {
                    prints.extend(shown.update(&key, None));
                }
                Some(Affects::Context) => reread_context = true,
                _ => {}
            },
            Some(Ok(WatchEvent::Restarted { .. })) => {
                relist = true;
                reread_context = kind.kind == "Node";
            }
            Some(Err(e)) => {
                eprintln!("warning: {e}; retrying");
                continue;
            }
        }
        if reread_context {
            reread_context = false;
            let fresh = Context::read(kind, store).await;
            if fresh != ctx {
                ctx = fresh;
                *view_ctx.borrow_mut() = ctx.clone();
                prints.extend(shown.review());
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
                        .map(|(k, mut v)| {
                            mark_if_undecodable(kind, &mut v);
                            (k, v)
                        })
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
                Ok((Some((key, mut v)), _)) => {
                    mark_if_undecodable(kind, &mut v);
                    prints.extend(shown.update(&key, Some(v)))
                }
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
                // Not worth retrying (e.g. a value that does not decode, which a fresh `rift
                // get` skips too): the next change to the object reads it again.
                Err(e) => eprintln!("warning: cannot read {}/{name}: {e}", kind.singular),
            }
        }
        if prints.is_empty() {
            continue;
        }
        match &sink {
            Sink::Redraw => redraw(kind, args, &shown.last, &ctx)?,
            Sink::Append(columns) => {
                for (obj, mark) in prints {
                    let mut r = table_row(kind, &obj, args, At::now(), &ctx);
                    // At the end of the row, so the columns stay under their headers.
                    if let Some(note) = mark.note() {
                        r.push(format!("({note})"));
                    }
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{}", columns.line(&r)).map_err(io_err)?;
                    out.flush().map_err(io_err)?;
                }
            }
            Sink::Text => {
                for (obj, mark) in prints {
                    print_text(kind, args, &obj, mark)?;
                }
            }
        }
    }
}

impl Mark {
    fn note(self) -> Option<&'static str> {
        match self {
            Mark::Changed => None,
            Mark::Deleted => Some("deleted"),
            Mark::NoLongerMatches => Some("no longer matches"),
        }
    }
}

/// What the format shows of `v`: a change to this is a change worth printing.
fn view_of(kind: &KindInfo, args: &GetArgs, v: &Value, ctx: &Context) -> String {
    match &args.output {
        Output::Table | Output::Wide => table_row(kind, v, args, At::Raw, ctx).join("\u{1f}"),
        Output::Json | Output::Yaml => output::to_json_line(v),
        Output::Name => output::name_of(kind, v),
        Output::JsonPath(t) => t.render(v),
    }
}

/// Clears the terminal and draws the whole table as it is now.
fn redraw(
    kind: &KindInfo,
    args: &GetArgs,
    shown: &HashMap<String, (String, Value)>,
    ctx: &Context,
) -> Result<(), CliError> {
    let mut items: Vec<(String, Value)> = shown
        .iter()
        .map(|(k, (_, v))| (k.clone(), v.clone()))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    sort(kind, &mut items, args.sort_by.as_ref());
    let now = At::now();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|(_, v)| table_row(kind, v, args, now, ctx))
        .collect();
    let mut buf = Vec::new();
    printer::write_table(&mut buf, Some(&table_headers(kind, args)), &rows).map_err(io_err)?;
    let mut out = std::io::stdout().lock();
    // Home, the table line by line (each line cleared to its end), then clear what is below.
    write!(out, "\x1b[H").map_err(io_err)?;
    for line in String::from_utf8_lossy(&buf).lines() {
        writeln!(out, "{line}\x1b[K").map_err(io_err)?;
    }
    write!(
        out,
        "\x1b[K\n{} {} at {} (Ctrl-C to stop)\x1b[K\n\x1b[J",
        rows.len(),
        kind.plural,
        Utc::now().format("%H:%M:%S")
    )
    .map_err(io_err)?;
    out.flush().map_err(io_err)
}

fn print_text(kind: &KindInfo, args: &GetArgs, obj: &Value, mark: Mark) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match &args.output {
        Output::Json => {
            let mut v = obj.clone();
            if mark == Mark::Deleted {
                v["metadata"]["deletionTimestamp"] = serde_json::json!(Utc::now());
            }
            writeln!(out, "{}", output::to_json_line(&v)).map_err(io_err)?;
        }
        Output::Yaml => {
            writeln!(out, "---").map_err(io_err)?;
            if let Some(note) = mark.note() {
                writeln!(out, "# {note}").map_err(io_err)?;
            }
            write!(out, "{}", output::to_yaml(obj)).map_err(io_err)?;
        }
        Output::Name => match mark.note() {
            Some(note) => writeln!(out, "{} ({note})", output::name_of(kind, obj)),
            None => writeln!(out, "{}", output::name_of(kind, obj)),
        }
        .map_err(io_err)?,
        Output::JsonPath(t) => write!(out, "{}", t.render(obj)).map_err(io_err)?,
        Output::Table | Output::Wide => unreachable!("tables go to their own sink"),
    }
    out.flush().map_err(io_err)
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
            view: |v: &Value| v.to_string(),
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
    fn a_change_the_view_does_not_show_prints_nothing() {
        let everything = LabelSelector::everything();
        let mut shown = Shown {
            selector: &everything,
            view: |v: &Value| v["metadata"]["name"].to_string(),
            last: HashMap::new(),
        };
        assert!(shown.update("/k/x", Some(obj("x", "a", 1))).is_some());
        assert_eq!(
            shown.update("/k/x", Some(obj("x", "a", 2))),
            None,
            "v is not shown"
        );
        assert_eq!(
            shown.update("/k/x", None),
            Some((obj("x", "a", 2), Mark::Deleted)),
            "the last object is what a deletion prints"
        );
    }

    #[test]
    fn the_leader_and_voterset_status_change_a_nodes_roles() {
        let nodes = lookup("nodes").unwrap();
        assert_eq!(affects(nodes, keys::LEADER), Some(Affects::Context));
        assert_eq!(
            affects(nodes, "/rift/v1/status/voterset/default"),
            Some(Affects::Context)
        );
        assert_eq!(affects(lookup("jobs").unwrap(), keys::LEADER), None);
    }

    #[test]
    fn a_relist_reports_what_went_away_and_what_changed() {
        let everything = LabelSelector::everything();
        let view = |v: &Value| v.to_string();
        let mut shown = Shown {
            selector: &everything,
            view,
            last: [
                (
                    "/k/a".to_string(),
                    (view(&obj("a", "a", 1)), obj("a", "a", 1)),
                ),
                (
                    "/k/b".to_string(),
                    (view(&obj("b", "a", 1)), obj("b", "a", 1)),
                ),
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
