//! `rift version`: this client's version, and the cluster's etcd version and id.

use serde::Serialize;

use crate::store::Store;

use super::output;
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// Only this client's version (no connection to etcd).
    #[arg(long)]
    pub client: bool,
    /// Output format: table (for people) or json.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: VersionOutput,
}

/// `rift version -o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VersionOutput {
    Table,
    Json,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Versions {
    client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd: Option<String>,
    /// In hex, as etcdctl prints member and cluster ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoints: Option<String>,
}

/// Runs `rift version`; `connect` gives the store (so unreachable etcd still prints the client).
pub async fn run<F, Fut>(args: VersionArgs, connect: F) -> Result<(), CliError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Store, CliError>>,
{
    let mut v = Versions {
        client: env!("CARGO_PKG_VERSION").to_string(),
        etcd: None,
        cluster_id: None,
        endpoints: None,
    };
    let mut failure = None;
    if !args.client {
        match connect().await {
            Ok(store) => match store.server_version().await {
                Ok((version, id)) => {
                    v.etcd = Some(version);
                    v.cluster_id = Some(format!("{id:x}"));
                    v.endpoints = Some(store.endpoints().to_string());
                }
                Err(e) => failure = Some(CliError::from(e)),
            },
            Err(e) => failure = Some(e),
        }
    }
    match args.output {
        VersionOutput::Json => println!(
            "{}",
            output::to_json(&serde_json::to_value(&v).expect("versions serialize"))
        ),
        VersionOutput::Table => {
            println!("Client:      rift {}", v.client);
            if let (Some(etcd), Some(id)) = (&v.etcd, &v.cluster_id) {
                println!("etcd:        {etcd}");
                println!("Cluster ID:  {id}");
                println!("Endpoints:   {}", v.endpoints.as_deref().unwrap_or("-"));
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
