//! Changing one stored object in place, as `label`, `annotate`, `scale` and `edit` do: read it
//! with its mod revision, change it, validate it as `apply` would, and write it back only if
//! it is still at that revision (compare-and-swap). A concurrent writer makes the change start
//! over from what is stored now; bad input changes nothing.

use chrono::Utc;
use serde_json::Value;

use crate::api::kinds::{KindInfo, ParseFailure};
use crate::store::apply::merge_for_apply;
use crate::store::objects::Precondition;
use crate::store::{keys, ApplyOutcome, Store, StoreError};

use super::CliError;

/// How often a change starts over after losing a race to another writer.
const ATTEMPTS: usize = 10;

/// One object as stored (spec and metadata, no status) and the revision it was read at.
pub struct Stored {
    pub object: Value,
    pub revision: i64,
}

/// Reads `kind/name` as stored.
pub async fn read(store: &Store, kind: &KindInfo, name: &str) -> Result<Stored, CliError> {
    let not_found = || CliError::NotFound {
        kind: kind.singular.into(),
        name: name.into(),
    };
    if name.is_empty() || name.contains('/') {
        return Err(not_found());
    }
    let kv = store
        .get_raw(&keys::object(kind.plural, name))
        .await?
        .ok_or_else(not_found)?;
    let object = serde_json::from_slice(&kv.value).map_err(|e| StoreError::Decode {
        key: kv.key.clone(),
        reason: e.to_string(),
    })?;
    Ok(Stored {
        object,
        revision: kv.mod_revision,
    })
}

/// Why a changed object is refused, for people: `metadata.labels.x: ...`.
pub fn invalid(kind: &KindInfo, name: &str, failure: ParseFailure) -> CliError {
    let why = match failure {
        ParseFailure::Decode(d) if d.path.is_empty() => d.message,
        ParseFailure::Decode(d) => format!("{}: {}", d.path, d.message),
        ParseFailure::Invalid(errors) => errors.to_string(),
    };
    CliError::Usage(format!(
        "{}/{name} would be invalid, nothing was changed: {why}",
        kind.singular
    ))
}

/// Validates `desired` (a whole object of `kind`) and writes it over `current` if that is
/// still what is stored. `Ok(None)` when the store changed in between (a conflict).
pub async fn write_if_unchanged(
    store: &Store,
    kind: &KindInfo,
    current: &Stored,
    desired: Value,
) -> Result<Option<ApplyOutcome>, CliError> {
    let name = desired["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let normalized = (kind.parse_json)(desired).map_err(|f| invalid(kind, &name, f))?;
    let (merged, outcome) = merge_for_apply(Some(&current.object), &normalized, Utc::now());
    if outcome == ApplyOutcome::Unchanged {
        return Ok(Some(outcome));
    }
    match store
        .put_object(kind, &merged, Precondition::Revision(current.revision))
        .await
    {
        Ok(_) => Ok(Some(outcome)),
        Err(StoreError::Conflict { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Applies `change` to `kind/name` with compare-and-swap, starting over on a conflict.
/// `change` edits the stored object in place (and may refuse with an error).
pub async fn modify(
    store: &Store,
    kind: &KindInfo,
    name: &str,
    mut change: impl FnMut(&mut Value) -> Result<(), CliError>,
) -> Result<ApplyOutcome, CliError> {
    for _ in 0..ATTEMPTS {
        let current = read(store, kind, name).await?;
        let mut desired = current.object.clone();
        change(&mut desired)?;
        if let Some(outcome) = write_if_unchanged(store, kind, &current, desired).await? {
            return Ok(outcome);
        }
    }
    Err(CliError::Usage(format!(
        "{}/{name} keeps changing under us; try again",
        kind.singular
    )))
}

/// `label`/`annotate` arguments: `KEY=VALUE` sets, `KEY-` removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    Set(String, String),
    Remove(String),
}

impl Edit {
    /// Parses one argument (for clap).
    pub fn parse(arg: &str) -> Result<Edit, String> {
        if let Some((k, v)) = arg.split_once('=') {
            if k.is_empty() {
                return Err(format!("`{arg}`: the key is missing; write KEY=VALUE"));
            }
            return Ok(Edit::Set(k.to_string(), v.to_string()));
        }
        match arg.strip_suffix('-') {
            Some(k) if !k.is_empty() => Ok(Edit::Remove(k.to_string())),
            _ => Err(format!(
                "`{arg}`: write KEY=VALUE to set, or KEY- to remove"
            )),
        }
    }
}

/// `rift label` / `rift annotate` arguments.
#[derive(Debug, clap::Args)]
pub struct MetaArgs {
    /// Kind of the object (nodes, jobs, pools, ...).
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// `KEY=VALUE` to set, `KEY-` to remove. Repeatable.
    #[arg(required = true, value_name = "KEY=VALUE|KEY-", value_parser = Edit::parse)]
    pub edits: Vec<Edit>,
    /// Allow changing the value of a key that is already set.
    #[arg(long)]
    pub overwrite: bool,
}

/// Which map of metadata a command edits.
#[derive(Clone, Copy, Debug)]
pub enum Map {
    Labels,
    Annotations,
}

impl Map {
    fn field(self) -> &'static str {
        match self {
            Map::Labels => "labels",
            Map::Annotations => "annotations",
        }
    }
}

/// `rift label` and `rift annotate`.
pub async fn meta(args: MetaArgs, map: Map, store: &Store) -> Result<(), CliError> {
    let kind = super::error::resolve_kind(&args.kind)?;
    if kind.kind == "Event" {
        return Err(CliError::Usage(
            "events are written by rift, not edited".into(),
        ));
    }
    let field = map.field();
    let outcome = modify(store, kind, &args.name, |obj| {
        let entries = obj["metadata"]
            .as_object_mut()
            .ok_or_else(|| CliError::Usage("the stored object has no metadata".into()))?
            .entry(field)
            .or_insert_with(|| Value::Object(Default::default()));
        let entries = entries
            .as_object_mut()
            .ok_or_else(|| CliError::Usage(format!("metadata.{field} is not a map")))?;
        for e in &args.edits {
            match e {
                Edit::Set(k, v) => {
                    let old = entries.get(k).and_then(Value::as_str);
                    if old.is_some_and(|o| o != v) && !args.overwrite {
                        return Err(CliError::Usage(format!(
                            "{}/{} already has {field} `{k}={}`; add --overwrite to change it",
                            kind.singular,
                            args.name,
                            old.unwrap_or_default()
                        )));
                    }
                    entries.insert(k.clone(), Value::String(v.clone()));
                }
                Edit::Remove(k) => {
                    entries.remove(k);
                }
            }
        }
        Ok(())
    })
    .await?;
    let what = match (outcome, map) {
        (ApplyOutcome::Unchanged, _) => "unchanged",
        (_, Map::Labels) => "labeled",
        (_, Map::Annotations) => "annotated",
    };
    println!("{}/{} {what}", kind.singular, args.name);
    Ok(())
}

/// `rift scale` arguments.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Kind of the object: only `pool` can be scaled.
    pub kind: String,
    /// The pool's name.
    pub name: String,
    /// How many jobs the pool should run.
    #[arg(long)]
    pub replicas: u32,
}

/// `rift scale pool NAME --replicas N`.
pub async fn scale(args: ScaleArgs, store: &Store) -> Result<(), CliError> {
    let kind = super::error::resolve_kind(&args.kind)?;
    if kind.kind != "Pool" {
        return Err(CliError::Usage(format!(
            "only pools can be scaled, not {}",
            kind.plural
        )));
    }
    let outcome = modify(store, kind, &args.name, |obj| {
        if obj.pointer("/spec/perGpu") == Some(&Value::Bool(true)) {
            return Err(CliError::Usage(format!(
                "pool/{} runs one job per GPU (perGpu: true), so its size follows the GPUs; \
                 to size it by hand, set perGpu: false and replicas in its manifest",
                args.name
            )));
        }
        obj["spec"]["replicas"] = Value::from(args.replicas);
        Ok(())
    })
    .await?;
    match outcome {
        ApplyOutcome::Unchanged => println!("pool/{} unchanged", args.name),
        _ => println!("pool/{} scaled to {}", args.name, args.replicas),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_arguments_set_or_remove_and_anything_else_is_refused() {
        assert_eq!(
            Edit::parse("gpu=h100"),
            Ok(Edit::Set("gpu".into(), "h100".into()))
        );
        assert_eq!(
            Edit::parse("gpu="),
            Ok(Edit::Set("gpu".into(), String::new()))
        );
        assert_eq!(Edit::parse("gpu-"), Ok(Edit::Remove("gpu".into())));
        for bad in ["gpu", "=h100", "-", ""] {
            let e = Edit::parse(bad).unwrap_err();
            assert!(e.contains("KEY=VALUE"), "{bad}: {e}");
        }
    }
}
