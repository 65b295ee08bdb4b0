//! `rift delete KIND NAME...` and `rift delete -f PATH`.

use std::path::PathBuf;

use crate::api::kinds::KindInfo;
use crate::api::manifest;
use crate::store::{DeleteOutcome, Store};

use super::error::resolve_kind;
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Kind of the objects to delete (nodes, jobs, pools, ...); or use -f.
    #[arg(required_unless_present = "files", conflicts_with = "files")]
    pub kind: Option<String>,
    /// Names of the objects to delete.
    pub names: Vec<String>,
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
    let targets: Vec<(&'static KindInfo, String)> = if args.files.is_empty() {
        let kind = resolve_kind(args.kind.as_deref().unwrap_or_default())?;
        if args.names.is_empty() {
            return Err(CliError::Usage(format!(
                "name the {} to delete: rift delete {} NAME",
                kind.plural, kind.singular
            )));
        }
        args.names.iter().map(|n| (kind, n.clone())).collect()
    } else {
        manifest::load_paths(&args.files)?
            .into_iter()
            .map(|d| (d.kind, d.name))
            .collect()
    };
    let store = connect().await?;
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
