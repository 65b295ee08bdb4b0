//! `rift apply -f PATH`: every document in one transaction, all or nothing.

use crate::api::manifest;
use crate::store::{ApplyItem, Store};

use super::{CliError, FileArgs};

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// Validate and show what would change, without writing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// Validates everything, then connects (through `connect`) and applies: bad input changes
/// nothing and needs no cluster.
pub async fn run<F, Fut>(args: ApplyArgs, connect: F) -> Result<(), CliError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Store, CliError>>,
{
    let docs = manifest::load_paths(&args.files.files)?;
    let store = connect().await?;
    apply_docs(&store, docs, args.dry_run).await
}

/// Applies validated documents in one transaction and prints one line per object.
pub async fn apply_docs(
    store: &Store,
    docs: Vec<manifest::Document>,
    dry_run: bool,
) -> Result<(), CliError> {
    for d in &docs {
        for entry in crate::api::secret_env::find(&d.object) {
            eprintln!(
                "warning: {}",
                crate::api::secret_env::warning(&d.origin.to_string(), &entry)
            );
        }
    }
    let items: Vec<ApplyItem> = docs
        .into_iter()
        .map(|d| ApplyItem {
            kind: d.kind,
            name: d.name,
            object: d.object,
        })
        .collect();
    let outcomes = store.apply(&items, dry_run).await?;
    let suffix = if dry_run { " (dry run)" } else { "" };
    for (item, outcome) in items.iter().zip(outcomes) {
        println!(
            "{}/{} {}{suffix}",
            item.kind.singular,
            item.name,
            outcome.as_str()
        );
    }
    Ok(())
}
