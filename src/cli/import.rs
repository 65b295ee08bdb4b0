//! `rift import hosts FILE [-o DIR]`: the old orchestrator's `distributed_hosts.yaml` → rift
//! manifests, on stdout or as files in DIR. The conversion itself is [`crate::import`].
//!
//! Nothing is written when the input has any problem. With `-o`, each file is written to a
//! temporary name and renamed into place, so a reader never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::api::input;
use crate::import::convert::DEFAULT_IDENTITY_FILE;
use crate::import::{self, render, ImportOptions, KnownHosts};

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub what: ImportWhat,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImportWhat {
    /// Convert the old orchestrator's distributed_hosts.yaml into Nodes, Tunnels and the VoterSet.
    Hosts(HostsArgs),
}

#[derive(Debug, clap::Args)]
pub struct HostsArgs {
    /// The old hosts file (`-` for stdin).
    pub file: PathBuf,
    /// Write voterset.yaml, nodes.yaml and tunnels.yaml into this directory instead of stdout.
    #[arg(short = 'o', long = "output-dir")]
    pub output_dir: Option<PathBuf>,
    /// Relay host keys (`ssh-keyscan -t ed25519 RELAY... > relays.keys`) to pin in Tunnels;
    /// relays without a key get a placeholder that never matches.
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// Path of each NAT-blocked node's private key for its relay, written into its Tunnel.
    #[arg(long, default_value = DEFAULT_IDENTITY_FILE)]
    pub identity_file: String,
}

pub fn run(args: ImportArgs) -> Result<(), CliError> {
    match args.what {
        ImportWhat::Hosts(a) => hosts(a),
    }
}

fn hosts(args: HostsArgs) -> Result<(), CliError> {
    let (source, text) = read_input(&args.file)?;
    let known_hosts = match &args.known_hosts {
        Some(path) => {
            let shown = path.display().to_string();
            let budget = input::MAX_INPUT_BYTES.saturating_sub(text.len() as u64);
            KnownHosts::parse(&shown, &input::read_file(path, budget)?)?
        }
        None => KnownHosts::default(),
    };
    let options = ImportOptions {
        known_hosts,
        identity_file: args.identity_file,
    };
    let fleet = import::convert(&source, &text, &options)?;
    match &args.output_dir {
        Some(dir) => write_files(dir, &render::files(&fleet, &source))?,
        None => print!("{}", render::stream(&fleet, &source)),
    }
    for w in &fleet.warnings {
        eprintln!("warning: {w}");
    }
    for n in &fleet.notes {
        eprintln!("note: {n}");
    }
    eprintln!("{}", summary(&fleet, args.output_dir.as_deref()));
    Ok(())
}

fn summary(fleet: &import::Fleet, dir: Option<&Path>) -> String {
    let cordoned = fleet
        .nodes
        .iter()
        .filter(|n| n.node.spec.unschedulable)
        .count();
    let tunnels = fleet.nodes.iter().filter(|n| n.tunnel.is_some()).count();
    let voters = fleet.voter_set.as_ref().map_or(0, |v| v.spec.voters.len());
    let mut s = format!(
        "imported {} node(s) ({cordoned} cordoned), {tunnels} tunnel(s), a VoterSet of {voters} voter(s)",
        fleet.nodes.len()
    );
    if !fleet.left_out.is_empty() {
        let left: Vec<String> = fleet
            .left_out
            .iter()
            .map(|(h, why)| format!("{h} ({why})"))
            .collect();
        s.push_str(&format!("; left out: {}", left.join(", ")));
    }
    if let Some(d) = dir {
        s.push_str(&format!("; written to {}/", d.display()));
    }
    s
}

/// The hosts file (or stdin), within [`input::MAX_INPUT_BYTES`].
fn read_input(path: &Path) -> Result<(String, String), CliError> {
    if path.as_os_str() == "-" {
        return Ok(("<stdin>".into(), input::read_stdin(input::MAX_INPUT_BYTES)?));
    }
    Ok((
        path.display().to_string(),
        input::read_file(path, input::MAX_INPUT_BYTES)?,
    ))
}

/// Writes each file via a temporary name and a rename; removes files of [`render::FILES`] left
/// by an earlier import (recognised by their header) that this import no longer produces.
fn write_files(dir: &Path, files: &[(&str, String)]) -> Result<(), CliError> {
    let io = |path: PathBuf| {
        move |source| CliError::Io {
            path: path.display().to_string(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    for (name, text) in files {
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io(tmp.clone()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io(tmp.clone()))?;
        std::fs::rename(&tmp, dir.join(name)).map_err(io(dir.join(name)))?;
    }
    for stale in render::FILES
        .iter()
        .filter(|f| !files.iter().any(|(n, _)| n == *f))
    {
        let path = dir.join(stale);
        let ours = std::fs::read_to_string(&path)
            .is_ok_and(|t| t.starts_with("# Generated by `rift import hosts"));
        if ours {
            std::fs::remove_file(&path).map_err(io(path.clone()))?;
        }
    }
    Ok(())
}
