//! `rift import`: the old Python orchestrator's `distributed_hosts.yaml` → rift manifests.
//!
//! Pure: [`hosts::parse`] reads the old file, [`convert::convert`] decides the objects, and
//! [`render`] writes them as YAML. Nothing here does I/O, so every rule is unit-tested on text.
//!
//! Guarantees:
//!
//! * **All or nothing.** Any problem (bad YAML, a wrongly typed field, `gpu: "banana"`, a
//!   voter list of which no voter can be one) fails the whole conversion with every problem
//!   listed, each with the source file, the line when it can be found, and the field path.
//!   Nothing is produced.
//! * **Never fatal for what it does not know, or for what the old system tolerated.** Unknown
//!   host fields are listed in one warning; unknown top-level sections (`sync_routing`,
//!   `auto_sync`, `elo_sync`, ...) in one note; any `status` is read (see [`convert`]); a
//!   stale voter or relay reference is left out with a warning.
//! * **The output validates.** Every object produced passes rift's own validation (checked
//!   here before returning), so `rift apply --dry-run -f` accepts it.

pub mod convert;
pub mod gpu;
pub mod hosts;
pub mod known_hosts;
mod locate;
pub mod render;

use std::fmt;

pub use convert::{convert, Fleet, ImportOptions, ImportedNode};
pub use known_hosts::KnownHosts;

/// One problem with the input: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// 1-based line in the source, when it could be found.
    pub line: Option<usize>,
    /// The field path, e.g. `hosts.gpu-box.gpu` or `p2p_voters[2]`.
    pub path: String,
    pub message: String,
}

/// Why an import failed. Nothing is written when any of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{source_name}{}: YAML syntax error: {message}", at(.line))]
    Syntax {
        source_name: String,
        line: Option<usize>,
        message: String,
    },
    #[error("{}", invalid_message(.source_name, .problems))]
    Invalid {
        source_name: String,
        problems: Vec<Problem>,
    },
    #[error("{path}: line {line}: {message}")]
    KnownHosts {
        path: String,
        line: usize,
        message: String,
    },
    /// Nested too deep to parse (see [`crate::api::input`]).
    #[error(transparent)]
    Input(#[from] crate::api::input::InputError),
}

fn at(line: &Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

fn invalid_message(source: &str, problems: &[Problem]) -> String {
    let mut out = if problems.len() == 1 {
        format!("{source} has a problem; nothing was written:")
    } else {
        format!(
            "{source} has {} problems; nothing was written:",
            problems.len()
        )
    };
    for p in problems {
        out.push_str(&format!("\n  {source}{}: {p}", at(&p.line)));
    }
    out
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}
