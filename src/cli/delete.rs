//! `rift delete KIND NAME...`, `rift delete KIND/NAME...` (what `rift get -o name` prints, so
//! the two pipe together), `rift delete KIND -l SELECTOR` and `rift delete -f PATH`.

use std::path::PathBuf;

use crate::api::kinds::KindInfo;
use crate::api::manifest;
use crate::api::selector::LabelSelector;
use crate::store::{DeleteOutcome, Store};

use super::error::resolve_kind;
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Kind of the objects to delete (nodes, jobs, pools, ...), or the first KIND/NAME; or use
    /// -f.
    #[arg(required_unless_present = "files", conflicts_with = "files")]
    pub kind: Option<String>,
    /// Names of the objects to delete (or more KIND/NAMEs).
    pub names: Vec<String>,
    /// Delete every object of KIND whose labels match, e.g. `-l app=demo,type!=model`.
    #[arg(short = 'l', long = "selector", conflicts_with = "files")]
    pub selector: Option<String>,
    /// Delete the objects a manifest file or directory defines.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Treat objects that do not exist as deleted.
    #[arg(long)]
    pub ignore_not_found: bool,
}

/// Reads the targets (and any manifests) first, then connects through `connect`.
pub async fn run<F, Fut>(args: DeleteArgs, connect: F) -> Result<(), CliError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Store, CliError>>,
{
    let first = args.kind.as_deref().unwrap_or_default();
    let mut targets: Vec<(&'static KindInfo, String)> = if !args.files.is_empty() {
        manifest::load_paths(&args.files)?
            .into_iter()
            .map(|d| (d.kind, d.name))
            .collect()
    } else if first.contains('/') {
        if args.selector.is_some() {
            return Err(CliError::Usage(
                "-l selects among one kind: rift delete KIND -l SELECTOR".into(),
            ));
        }
        std::iter::once(first)
            .chain(args.names.iter().map(String::as_str))
            .map(kind_and_name)
            .collect::<Result<_, _>>()?
    } else {
        let kind = resolve_kind(first)?;
        if let Some(n) = args.names.iter().find(|n| n.contains('/')) {
            return Err(CliError::Usage(format!(
                "`{n}`: give either KIND NAME... or KIND/NAME..., not both"
            )));
        }
        match (&args.selector, args.names.is_empty()) {
            (Some(_), false) => {
                return Err(CliError::Usage(format!(
                    "give either names or -l, not both: rift delete {} -l SELECTOR",
                    kind.plural
                )))
            }
            (None, true) => {
                return Err(CliError::Usage(format!(
                    "name the {} to delete: rift delete {} NAME (or -l SELECTOR)",
                    kind.plural, kind.singular
                )))
            }
            _ => args.names.iter().map(|n| (kind, n.clone())).collect(),
        }
    };
    let selector: Option<LabelSelector> = args.selector.as_deref().map(str::parse).transpose()?;
    let store = connect().await?;
    if let Some(selector) = &selector {
        let kind = resolve_kind(first)?;
        let (items, _) = store.list_objects_keyed(kind, selector).await?;
        targets = items
            .into_iter()
            .filter_map(|(_, v)| Some((kind, v["metadata"]["name"].as_str()?.to_string())))
            .collect();
        if targets.is_empty() {
            println!("no {} match {selector}", kind.plural);
        }
    }
    let mut missing = Vec::new();
    let mut deleted = 0;
    for (kind, name) in targets {
        match store.delete_object(kind, &name).await? {
            DeleteOutcome::Deleted => {
                deleted += 1;
                println!("{}/{name} deleted", kind.singular)
            }
            DeleteOutcome::Terminating => {
                deleted += 1;
                println!(
                    "{}/{name} marked for deletion (finalizers still pending)",
                    kind.singular
                )
            }
            DeleteOutcome::NotFound if args.ignore_not_found => {}
            DeleteOutcome::NotFound => missing.push(format!("{}/{name}", kind.singular)),
        }
    }
    match (missing.is_empty(), deleted) {
        (true, _) => Ok(()),
        (false, 0) => Err(CliError::NotFoundNames(missing)),
        (false, _) => Err(CliError::SomeNotFound { missing, deleted }),
    }
}

/// `KIND/NAME` (e.g. `job/train-7`, `artifacts/sha256-…`) as a kind and a name.
fn kind_and_name(arg: &str) -> Result<(&'static KindInfo, String), CliError> {
    match arg.split_once('/') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((resolve_kind(kind)?, name.to_string()))
        }
        _ => Err(CliError::Usage(format!(
            "`{arg}` is not KIND/NAME (e.g. job/train-7); or give KIND NAME..."
        ))),
    }
}
