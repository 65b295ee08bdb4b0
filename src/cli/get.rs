//! `rift get KIND[,KIND...]|all [NAME...] [-o FORMAT] [-l SELECTOR] [--sort-by PATH]
//! [--show-labels] [-w]`, with kubectl's habits.
//!
//! Names given that do not exist are reported after what was found, and the command fails.
//! A watch ([`watch`]) follows one kind.

mod watch;

use std::io::Write;

use serde_json::Value;

use crate::api::kinds::{KindInfo, KINDS};
use crate::api::selector::LabelSelector;
use crate::store::objects::mark_if_undecodable;
use crate::store::Store;

use super::error::resolve_kind;
use super::jsonpath::Template;
use super::output::{self, Output};
use super::printer::{self, At, Context};
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// What to list: a kind (nodes/no, jobs, pools, trainingtargets/tt, voterset/vs,
    /// tunnels/tun, notifiers, events/ev, artifacts/art, artifactstores/as), several joined by
    /// commas (`jobs,nodes`), or `all` (every kind but events and artifacts).
    #[arg(value_name = "KIND[,KIND...]")]
    pub kinds: String,
    /// Names of objects of that kind to show; every object of the kind when none is given.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Output format: table, wide (more columns), yaml, json, name (`kind/name`), or
    /// jsonpath=TEMPLATE (kubectl's, e.g. `jsonpath={.items[*].metadata.name}`).
    #[arg(short = 'o', long, default_value = "table", value_parser = Output::parse)]
    pub output: Output,
    /// Only objects whose labels match, e.g. `gpu=h100,tier!=spot`, `gpu`, `!spot`.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Sort by the value at this JSONPath, e.g. `.metadata.creationTimestamp` or
    /// `{.status.phase}` (events are sorted by last seen by default).
    #[arg(long, value_name = "JSONPATH", value_parser = Template::parse)]
    pub sort_by: Option<Template>,
    /// Add a LABELS column to tables.
    #[arg(long)]
    pub show_labels: bool,
    /// After listing, keep the view current as objects change (one kind only). On a terminal
    /// the table is redrawn in place; otherwise a changed object prints again.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// Every kind `all` means: everything but events and artifacts (a fleet makes hundreds of
/// thousands of game shards; `rift get artifacts -l ...` lists them on purpose).
fn all_kinds() -> Vec<&'static KindInfo> {
    KINDS
        .iter()
        .filter(|k| k.kind != "Event" && k.kind != "Artifact")
        .collect()
}

/// The kinds named by `rift get`'s first argument.
fn kinds_of(arg: &str) -> Result<Vec<&'static KindInfo>, CliError> {
    let mut out: Vec<&'static KindInfo> = Vec::new();
    for part in arg.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let found = if part.eq_ignore_ascii_case("all") {
            all_kinds()
        } else {
            vec![resolve_kind(part)?]
        };
        for k in found {
            if !out.iter().any(|o| o.kind == k.kind) {
                out.push(k);
            }
        }
    }
    if out.is_empty() {
        return Err(CliError::UnknownKind(arg.to_string()));
    }
    Ok(out)
}

/// What one kind contributed.
struct Section {
    kind: &'static KindInfo,
    items: Vec<(String, Value)>,
}

pub async fn run(args: GetArgs, store: &Store) -> Result<(), CliError> {
    let kinds = kinds_of(&args.kinds)?;
    let selector: LabelSelector = match &args.selector {
        Some(s) => s.parse()?,
        None => LabelSelector::everything(),
    };
    if kinds.len() > 1 && !args.names.is_empty() {
        return Err(CliError::Usage(format!(
            "names go with one kind, e.g. `rift get {} {}`",
            kinds[0].singular,
            args.names.join(" ")
        )));
    }
    if kinds.len() > 1 && args.watch {
        return Err(CliError::Usage(
            "a watch follows one kind at a time, e.g. `rift get jobs -w`".into(),
        ));
    }
    let mut sections = Vec::new();
    let mut missing = Vec::new();
    let mut revision = 0;
    for kind in &kinds {
        let (mut items, rev) = if args.names.is_empty() {
            store.list_objects_keyed(kind, &selector).await?
        } else {
            let mut found = Vec::new();
            let mut rev = 0;
            for name in &args.names {
                let (obj, r) = store.get_object_keyed(kind, name).await?;
                rev = rev.max(r);
                match obj {
                    Some(o) => found.push(o),
                    None => missing.push(format!("{}/{name}", kind.singular)),
                }
            }
            (found, rev)
        };
        for (_, v) in items.iter_mut() {
            mark_if_undecodable(kind, v);
        }
        sort(kind, &mut items, args.sort_by.as_ref());
        revision = revision.max(rev);
        sections.push(Section { kind, items });
    }
    if args.watch && !missing.is_empty() && args.names.len() == missing.len() {
        // Watching names that do not exist yet: they show up when created.
        missing.clear();
    }
    let ctx = Context::read(kinds[0], store).await;
    print_once(&args, &sections, &ctx, kinds.len() > 1)?;
    if !missing.is_empty() {
        return Err(CliError::NotFoundNames(missing));
    }
    if args.watch {
        let Section { kind, items } = sections.pop().expect("one kind");
        watch::run(store, kind, &args, &selector, items, revision, ctx).await?;
    }
    Ok(())
}

/// Sorts by `--sort-by`, else events by when they were last seen (newest last), else by name.
fn sort(kind: &KindInfo, items: &mut [(String, Value)], by: Option<&Template>) {
    match by {
        Some(t) => items.sort_by(|a, b| compare_values(t.first(&a.1), t.first(&b.1))),
        None if kind.kind == "Event" => items.sort_by(|a, b| {
            let seen = |v: &Value| {
                v.pointer("/spec/lastSeen")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            seen(&a.1).cmp(&seen(&b.1))
        }),
        None => {}
    }
}

/// Missing values first, then numbers by value, then text.
fn compare_values(a: Option<Value>, b: Option<Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            _ => {
                let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
                text(&a).cmp(&text(&b))
            }
        },
    }
}

fn io_err(source: std::io::Error) -> CliError {
    CliError::Io {
        path: "<stdout>".into(),
        source,
    }
}

/// The table header for `kind`, with LABELS when asked.
pub(crate) fn table_headers(kind: &KindInfo, args: &GetArgs) -> Vec<&'static str> {
    let mut h = printer::headers(kind, args.output == Output::Wide);
    if args.show_labels {
        h.push("LABELS");
    }
    h
}

/// One table row, as [`table_headers`] has it.
pub(crate) fn table_row(
    kind: &KindInfo,
    v: &Value,
    args: &GetArgs,
    at: At,
    ctx: &Context,
) -> Vec<String> {
    let mut r = printer::row(kind, v, args.output == Output::Wide, at, ctx);
    if args.show_labels {
        r.push(printer::labels_cell(v));
    }
    r
}

fn print_once(
    args: &GetArgs,
    sections: &[Section],
    ctx: &Context,
    several_kinds: bool,
) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    let total: usize = sections.iter().map(|s| s.items.len()).sum();
    let one_object = sections.len() == 1 && args.names.len() == 1 && !args.watch;
    let values = || -> Vec<Value> {
        sections
            .iter()
            .flat_map(|s| s.items.iter().map(|(_, v)| v.clone()))
            .collect()
    };
    let whole = || -> Value {
        match values().into_iter().next() {
            Some(v) if one_object => v,
            _ => output::list_object(values()),
        }
    };
    match &args.output {
        Output::Table | Output::Wide => {
            if total == 0 && !args.watch {
                if args.names.is_empty() {
                    let what = match sections {
                        [one] => one.kind.plural.to_string(),
                        _ => "resources".to_string(),
                    };
                    eprintln!("No {what} found.");
                }
                return Ok(());
            }
            let mut first = true;
            for s in sections
                .iter()
                .filter(|s| !s.items.is_empty() || args.watch)
            {
                if !first {
                    writeln!(out).map_err(io_err)?;
                }
                first = false;
                let now = At::now();
                let rows: Vec<Vec<String>> = s
                    .items
                    .iter()
                    .map(|(_, v)| {
                        let mut r = table_row(s.kind, v, args, now, ctx);
                        if several_kinds {
                            r[0] = format!("{}/{}", s.kind.singular, r[0]);
                        }
                        r
                    })
                    .collect();
                let headers = table_headers(s.kind, args);
                if args.watch && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    // The watch draws the table itself, in place.
                    continue;
                }
                printer::write_table(&mut out, Some(&headers), &rows).map_err(io_err)?;
            }
            Ok(())
        }
        Output::Json if args.watch => {
            for v in values() {
                writeln!(out, "{}", output::to_json_line(&v)).map_err(io_err)?;
            }
            Ok(())
        }
        Output::Yaml if args.watch => {
            for v in values() {
                write!(out, "---\n{}", output::to_yaml(&v)).map_err(io_err)?;
            }
            Ok(())
        }
        Output::Json => writeln!(out, "{}", output::to_json(&whole())).map_err(io_err),
        Output::Yaml => write!(out, "{}", output::to_yaml(&whole())).map_err(io_err),
        Output::Name => {
            for s in sections {
                for (_, v) in &s.items {
                    writeln!(out, "{}", output::name_of(s.kind, v)).map_err(io_err)?;
                }
            }
            Ok(())
        }
        Output::JsonPath(t) if args.watch => {
            for v in values() {
                write!(out, "{}", t.render(&v)).map_err(io_err)?;
            }
            out.flush().map_err(io_err)
        }
        Output::JsonPath(t) => {
            let mut text = t.render(&whole());
            if !text.ends_with('\n') && !text.is_empty() {
                text.push('\n');
            }
            write!(out, "{text}").map_err(io_err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_are_read_as_a_list_or_all() {
        let names =
            |a: &str| -> Vec<&str> { kinds_of(a).unwrap().iter().map(|k| k.kind).collect() };
        assert_eq!(names("jobs,nodes"), ["Job", "Node"]);
        assert_eq!(names("jobs,job,no"), ["Job", "Node"], "duplicates once");
        assert_eq!(names("all").len(), 8);
        assert!(!names("all").contains(&"Event"));
        assert!(
            !names("all").contains(&"Artifact"),
            "shards are listed on purpose only"
        );
        assert!(matches!(kinds_of("jobs,pods"), Err(CliError::UnknownKind(k)) if k == "pods"));
    }

    #[test]
    fn sorting_puts_missing_first_then_numbers_by_value() {
        let jobs = crate::api::kinds::lookup("jobs").unwrap();
        let mut items: Vec<(String, Value)> = [json!({"p": 10}), json!({}), json!({"p": 9})]
            .into_iter()
            .map(|v| (String::new(), v))
            .collect();
        sort(jobs, &mut items, Some(&Template::parse(".p").unwrap()));
        let order: Vec<Value> = items.into_iter().map(|(_, v)| v["p"].clone()).collect();
        assert_eq!(order, [Value::Null, json!(9), json!(10)]);
    }

    #[test]
    fn events_are_sorted_by_last_seen() {
        let events = crate::api::kinds::lookup("events").unwrap();
        let ev = |name: &str, t: &str| (name.to_string(), json!({"spec": {"lastSeen": t}}));
        let mut items = vec![
            ev("a", "2026-11-22T12:00:09Z"),
            ev("b", "2026-11-22T12:00:01Z"),
        ];
        sort(events, &mut items, None);
        assert_eq!(items[0].0, "b");
    }
}
