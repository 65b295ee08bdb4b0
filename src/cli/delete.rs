//! `rift delete KIND NAME...` and `rift delete -f PATH`.

use std::path::PathBuf;

use crate::api::kinds::KindInfo;
use crate::api::manifest;
use crate::store::{DeleteOutcome, Store};

use super::error::resolve_kind;
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Kind, then one or more names (or use -f).
    #[arg(required_unless_present = "files", conflicts_with = "files")]
    pub kind: Option<String>,
    pub names: Vec<String>,
    /// Delete the objects a manifest file or directory defines.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Treat objects that do not exist as deleted.
    #[arg(long)]
    pub ignore_not_found: bool,
}

pub async fn run(args: DeleteArgs, access: &crate::store::Access) -> Result<(), CliError> {
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
    let store = Store::connect(access).await?;
    let mut missing = 0;
    for (kind, name) in targets {
        match store.delete_object(kind, &name).await? {
            DeleteOutcome::Deleted => println!("{}/{name} deleted", kind.singular),
            DeleteOutcome::Terminating => println!(
                "{}/{name} marked for deletion (finalizers still pending)",
                kind.singular
            ),
            DeleteOutcome::NotFound if args.ignore_not_found => {}
            DeleteOutcome::NotFound => {
                eprintln!("{}/{name} not found", kind.singular);
                missing += 1;
            }
        }
    }
    if missing > 0 {
        return Err(CliError::SomeNotFound(missing));
    }
    Ok(())
}
