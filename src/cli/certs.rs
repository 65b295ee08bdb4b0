//! `rift certs check`: what the certificates in use say and when they expire;
//! `rift certs revoke NODE`: a node's certificate opens nothing in etcd any more.

use std::path::PathBuf;

use chrono::Utc;

use super::CliError;
use crate::pki::credentials::Credentials;
use crate::pki::dir::LeafFile;
use crate::pki::{inspect, PkiDir, RENEW_BEFORE};
use crate::store::{auth, Access, Store};

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Show each certificate's name, names and expiry: RIFT_CONFIG's and a node's <state>/pki/.
    /// Exits 1 when one has expired.
    Check {
        /// A node's state directory (its pki/ is read) [default: /var/lib/rift when present].
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Remove a node's etcd user and role: its certificate opens nothing in etcd any more, and
    /// it can join again with a new token.
    Revoke {
        /// The node.
        node: String,
    },
}

pub async fn run(
    args: CertsArgs,
    access: impl FnOnce() -> Result<Access, CliError>,
) -> Result<(), CliError> {
    match args.command {
        CertsCommand::Check { state_dir } => check(state_dir),
        CertsCommand::Revoke { node } => {
            let store = Store::connect(&access()?).await?;
            if auth::admitted(&store, &node).await?.is_none() {
                return Err(CliError::NotFound {
                    kind: "node identity".into(),
                    name: node,
                });
            }
            auth::forget(&store, &node).await?;
            println!(
                "node {node}'s identity revoked: its certificate opens nothing in etcd any more"
            );
            Ok(())
        }
    }
}

fn check(state_dir: Option<PathBuf>) -> Result<(), CliError> {
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some(path) = std::env::var_os("RIFT_CONFIG")
        .map(PathBuf::from)
        .or_else(|| super::config::default_path().filter(|p| p.exists()))
    {
        match Credentials::load(&path) {
            Ok(c) => rows.push((format!("{} (cert)", path.display()), c.cert)),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    let state_dir = state_dir.or_else(|| {
        let d = PathBuf::from("/var/lib/rift");
        d.join("pki").is_dir().then_some(d)
    });
    if let Some(dir) = &state_dir {
        let pki = PkiDir::new(dir);
        let files =
            std::iter::once(pki.ca_cert()).chain(LeafFile::ALL.iter().map(|l| pki.cert(*l)));
        for path in files {
            match std::fs::read_to_string(&path) {
                Ok(pem) => rows.push((path.display().to_string(), pem)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(CliError::Io {
                        path: path.display().to_string(),
                        source: e,
                    })
                }
            }
        }
    }
    if rows.is_empty() {
        return Err(CliError::Usage(
            "no certificates to check: set RIFT_CONFIG, or pass --state-dir of a node".into(),
        ));
    }
    let now = Utc::now();
    let mut expired = 0;
    let mut table = Vec::new();
    for (file, pem) in rows {
        let info = match inspect::inspect(&pem) {
            Ok(i) => i,
            Err(e) => {
                let dash = || "-".to_string();
                table.push(vec![
                    file,
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    format!("unreadable: {e}"),
                ]);
                expired += 1;
                continue;
            }
        };
        let names: Vec<String> = info
            .dns_names
            .iter()
            .cloned()
            .chain(info.ips.iter().map(|i| i.to_string()))
            .collect();
        let left = info.remaining(now).num_days();
        let state = if info.not_after <= now {
            expired += 1;
            "EXPIRED".to_string()
        } else if !info.is_ca && info.renewal_due(now, RENEW_BEFORE) {
            "renewal due".to_string()
        } else {
            "ok".to_string()
        };
        table.push(vec![
            file,
            info.common_name.clone(),
            if names.is_empty() {
                "-".into()
            } else {
                names.join(",")
            },
            info.not_after.format("%Y-%m-%d").to_string(),
            left.to_string(),
            state,
        ]);
    }
    let headers = ["FILE", "SUBJECT", "NAMES", "EXPIRES", "DAYS LEFT", "STATE"];
    let _ = super::printer::write_table(&mut std::io::stdout(), Some(&headers), &table);
    if expired > 0 {
        return Err(CliError::Usage(format!(
            "{expired} certificate(s) expired or unreadable: a node renews its own within 90 \
             days of expiry while it runs; an expired one needs the node to join again"
        )));
    }
    Ok(())
}
