//! What `rift` prints when a command fails: what went wrong and what to do.

use crate::api::manifest::ManifestErrors;
use crate::api::selector::SelectorError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{}", manifest_message(.0))]
    Manifest(#[from] ManifestErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error(transparent)]
    Input(#[from] crate::api::input::InputError),
    #[error("unknown resource type `{0}`; try one of: nodes (no), jobs, pools, trainingtargets (tt), voterset (vs), tunnels (tun), notifiers, events (ev)")]
    UnknownKind(String),
    #[error("{kind}/{name} not found")]
    NotFound { kind: String, name: String },
    /// Several names, each `kind/name`.
    #[error("{} not found", .0.join(", "))]
    NotFoundNames(Vec<String>),
    /// The command was used wrongly (arguments, flags); the message says how to use it.
    #[error("{0}")]
    Usage(String),
    /// The agent (`rift agent`, or the one `rift up` runs) could not run.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// A node config file or the settings given for it.
    #[error(transparent)]
    AgentConfig(#[from] crate::agent::config::ConfigError),
    /// The cluster's certificates in a state directory.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// A credentials file (`RIFT_CONFIG`, `admin.conf`).
    #[error(transparent)]
    Credentials(#[from] crate::pki::credentials::CredentialsError),
    /// `rift up`'s state directory is in use.
    #[error(transparent)]
    StateLock(#[from] super::up::lock::LockError),
    /// `rift up` could not bring its cluster up: why, with etcd's log where it says more.
    #[error("{0}")]
    NotStarted(String),
    /// A task panicked (a bug): what it was and the panic.
    #[error("{what} crashed: {source}")]
    Crashed {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{} not found ({deleted} other object(s) deleted)", .missing.join(", "))]
    SomeNotFound {
        missing: Vec<String>,
        deleted: usize,
    },
}

fn manifest_message(errors: &ManifestErrors) -> String {
    let n = errors.0.len();
    let head = if n == 1 {
        "the input has a problem; nothing was changed:".to_string()
    } else {
        format!("the input has {n} problems; nothing was changed:")
    };
    format!("{head}\n{errors}")
}

/// Resolves a kind as typed (`no`, `nodes`, `Node`).
pub fn resolve_kind(name: &str) -> Result<&'static crate::api::kinds::KindInfo, CliError> {
    crate::api::kinds::lookup(name).ok_or_else(|| CliError::UnknownKind(name.to_string()))
}
