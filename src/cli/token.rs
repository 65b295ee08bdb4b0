//! `rift token create | list | revoke`: join tokens (see [`crate::join`]).

use std::time::Duration;

use chrono::Utc;

use super::CliError;
use crate::join::records;
use crate::pki::NodeRole;
use crate::store::{auth, Store};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token a new node joins with; printed once (etcd keeps only an HMAC of it).
    Create {
        /// What the node may do: `worker` (runs jobs, writes only its own keys) or
        /// `controller` (may lead, host an etcd member, admit other nodes).
        #[arg(long, value_enum)]
        role: NodeRole,
        /// How long the token is valid, e.g. `1h`, `24h`, `7d`.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// A note shown by `rift token list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Every token (id, role, expiry); never their secrets.
    List,
    /// Revoke a token: joins with it are refused from now on (nodes that joined stay).
    Revoke {
        /// The token's id (the 6 characters after `::`).
        id: String,
    },
}

async fn trust(store: &Store) -> Result<auth::TrustRecord, CliError> {
    auth::read_trust(store).await?.ok_or_else(|| {
        CliError::Usage(
            "this cluster has no CA in etcd: it is a plaintext cluster, or its first \
             controller has not finished starting"
                .into(),
        )
    })
}

fn join_error(e: crate::join::JoinError) -> CliError {
    match e {
        crate::join::JoinError::Store(s) => CliError::Store(s),
        other => CliError::Usage(other.to_string()),
    }
}

pub async fn run(args: TokenArgs, store: &Store) -> Result<(), CliError> {
    match args.command {
        TokenCommand::Create {
            role,
            ttl,
            description,
        } => {
            let trust = trust(store).await?;
            // Records of tokens expired over a day ago are dropped on the way.
            let _ = records::prune(store, Utc::now()).await;
            let token = records::create(store, &trust, role, ttl, &description)
                .await
                .map_err(join_error)?;
            println!("{token}");
            let until = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
            let flags = if role == NodeRole::Controller {
                " --controllers"
            } else {
                ""
            };
            eprintln!(
                "token {} for a {role}, valid until {}. On the new node:\n  rift agent --name \
                 NAME{flags} --join https://CONTROLLER:8770 --token TOKEN\n(CONTROLLER: any \
                 controller's address; `rift token revoke {}` withdraws it)",
                token.id,
                until.format("%Y-%m-%d %H:%M UTC"),
                token.id
            );
            Ok(())
        }
        TokenCommand::List => {
            let mut tokens = records::list(store).await.map_err(join_error)?;
            tokens.sort_by_key(|t| t.created);
            let now = Utc::now();
            let rows: Vec<Vec<String>> = tokens
                .into_iter()
                .map(|t| {
                    let expires = if t.expires <= now {
                        format!("expired {}", t.expires.format("%Y-%m-%d %H:%M"))
                    } else {
                        t.expires.format("%Y-%m-%d %H:%M").to_string()
                    };
                    vec![t.id, t.role.to_string(), expires, t.description]
                })
                .collect();
            let headers = ["ID", "ROLE", "EXPIRES", "DESCRIPTION"];
            let _ = super::printer::write_table(&mut std::io::stdout(), Some(&headers), &rows);
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            if records::revoke(store, &id).await.map_err(join_error)? {
                println!("token {id} revoked");
                Ok(())
            } else {
                Err(CliError::NotFound {
                    kind: "token".into(),
                    name: id,
                })
            }
        }
    }
}
